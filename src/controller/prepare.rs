//! Preparing a run: the validated configuration, the model and the dataset resolved (local or Hub), the
//! inputs counted, the output locked, and the checkpoint started fresh or resumed.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::checkpoint::Checkpoint;
use crate::cli::{EmbedArgs, EncoderKind, LongText};
use crate::config::{RunConfig, StartMode};
use crate::layout::Layout;
use crate::manifest::{now_rfc3339, Fingerprint, Manifest, Preprocessing, RunRecord, Source, SourceFile, Status, FORMAT_VERSION, TOOL};
use crate::model::ModelSpec;
use crate::output::{dataset_name, ensure_writable, OutputPaths};
use crate::plan::{discover, scan_inputs, DatasetSource, Plan};
use crate::scheduler::WorkList;

/// Most bytes of float32 embeddings one shard may hold (`--rows-per-shard` x dim x 4): a shard is assembled
/// in the writer's memory and written as one Parquet row group.
pub const MAX_SHARD_EMBEDDING_BYTES: u64 = 2 << 30;

/// A run ready to go: the plan, the checkpoint to extend and the work left.
pub struct Prepared {
    /// Held for the whole run: a second run on the same output is refused, not interleaved.
    pub lock: std::fs::File,
    pub plan: Plan,
    pub checkpoint: Checkpoint,
    pub work: WorkList,
    pub first_shard: u64,
}

pub enum Start {
    Run(Box<Prepared>),
    /// `--resume` of a manifest that is already complete.
    AlreadyComplete(PathBuf),
}

/// Builds the plan from the flags, checking inputs, model and output; errors are one line for the user.
pub fn build_plan(args: &EmbedArgs, layout: &Layout) -> anyhow::Result<Start> {
    let config = RunConfig::from_args(args).map_err(anyhow::Error::msg)?;
    let model = load_model(&config)?;
    // Loaded once here so that a tokenizer.json that does not load, or a max_seq_length it cannot use, is
    // one error before any rank starts rather than a failure in every loader (calibration uses it too).
    let tokenizer = if config.encoder != EncoderKind::Noop {
        // `tokenizers` checks the whole file once here, whichever implementation the loaders then run.
        model.tokenizer()?;
        let tok = crate::tokenize::TextTokenizer::load(&model, config.tokenizer)?;
        log::info!("tokenizer: {}", tok.engine_name());
        Some(tok)
    } else {
        None
    };
    if matches!(config.encoder, EncoderKind::Model | EncoderKind::Candle) {
        // The model's architecture against the encoder's rule table, before any rank loads it.
        crate::encoder::select::check(Some(model.architecture), config.device, config.encoder == EncoderKind::Candle, config.dtype)
            .map_err(|e| anyhow::anyhow!("{e} (model {})", model.name))?;
    }
    if let Some(n) = config.truncate_dim.filter(|&n| n > model.output_dim()) {
        anyhow::bail!("--truncate-dim {n}: the model {} makes embeddings of {} dimensions", model.name, model.output_dim());
    }
    check_shard_size(config.rows_per_shard, config.truncate_dim.unwrap_or(model.output_dim()))?;
    let (files, source) = find_dataset(&config)?;
    if files.iter().any(|(_, f)| *f != files[0].1) {
        anyhow::bail!("--dataset {}: mixes Parquet and JSONL files; use one format", config.dataset);
    }
    let (inputs, rows_total) = scan_inputs(&files, &config.text_field, config.rows_per_shard, config.max_rows)?;
    if rows_total == 0 {
        anyhow::bail!("--dataset {}: no rows to embed", config.dataset);
    }
    let dataset = dataset_label(&config, &source);
    let output = OutputPaths::new(&config.output_root, &model.name, &dataset, config.subset.as_deref(), &config.split);
    ensure_writable(&config.output_root).with_context(|| format!("--output-root {} is not writable", config.output_root.display()))?;
    let created_at = now_rfc3339();
    let run_id = config.run_id.clone().unwrap_or_else(|| format!("run-{}", created_at.replace([':', '.'], "-")));
    let prompt = model.resolve_prompt(config.prompt.as_deref(), config.prompt_name.as_deref()).map_err(anyhow::Error::msg)?;
    let windows = match (config.long_text, config.encoder) {
        (LongText::Chunk, EncoderKind::Model | EncoderKind::Candle) => Some(window_spec(&model, &prompt)?),
        _ => None,
    };
    let mut plan = Plan {
        config,
        layout: layout.clone(),
        inputs,
        rows_total,
        model,
        output,
        run_id,
        created_at,
        prompt,
        source,
        quantization_ranges: None,
        windows,
    };
    for d in [plan.output.manifest.parent().expect("a manifest path has a folder"), &plan.output.shard_dir] {
        crate::output::check_inside_root(&plan.config.output_root, d).map_err(|e| anyhow::anyhow!("--output-root: {e}"))?;
    }
    let lock = lock_output(&plan.output)?;
    let resume = plan.config.start == StartMode::Resume || (plan.config.start == StartMode::AutoResume && plan.output.manifest.exists());
    if plan.config.precision.scalar() {
        plan.quantization_ranges = Some(quantization_ranges(&plan, resume, tokenizer.as_ref())?);
    }
    if resume {
        let m = super::resume::check(&plan, &fingerprint(&plan))?;
        if m.status == Status::Complete && m.rows_done() == m.rows_total {
            return Ok(Start::AlreadyComplete(plan.output.manifest.clone()));
        }
        let work = WorkList::new(plan.rows_total, plan.config.rows_per_shard, m.covered());
        let first_shard = m.next_shard_index();
        let mut manifest = m;
        manifest.status = Status::Running;
        manifest.error = None;
        manifest.run_id = plan.run_id.clone();
        manifest.run_config = Some(plan.config.clone());
        manifest.source = source_of(&plan);
        manifest.runs.push(run_record(&plan));
        let checkpoint =
            Checkpoint::resume(&plan.output.manifest, manifest).with_context(|| format!("--resume: {}", plan.output.manifest.display()))?;
        return Ok(Start::Run(Box::new(Prepared { lock, checkpoint, work, first_shard, plan })));
    }
    clear_output(&plan)?;
    for d in [&plan.output.shard_dir, plan.output.manifest.parent().expect("a manifest path has a folder")] {
        ensure_writable(d).with_context(|| format!("--output-root: cannot write {}", d.display()))?;
    }
    let work = WorkList::new(plan.rows_total, plan.config.rows_per_shard, Vec::new());
    let checkpoint = Checkpoint::create(&plan.output.manifest, new_manifest(&plan)).context("--output-root: cannot write the manifest")?;
    Ok(Start::Run(Box::new(Prepared { lock, checkpoint, work, first_shard: 0, plan })))
}

/// The int8/uint8 ranges: a resumed output's own (so every shard shares one scale), `--calibration-ranges`,
/// or calibrated here on `--calibration-rows` rows.
/// `--long-text chunk`: windows of the model's max length that repeat the special tokens the tokenizer puts
/// around a text (found by encoding a word with and without them) and the prompt's tokens.
fn window_spec(model: &crate::model::ModelSpec, prompt: &str) -> anyhow::Result<crate::windows::WindowSpec> {
    let tok = model.tokenizer()?;
    let ids = |text: &str, special: bool| -> anyhow::Result<Vec<u32>> {
        Ok(tok.encode(text, special).map_err(|e| anyhow::anyhow!("--long-text chunk: {}/tokenizer.json: {e}", model.path))?.get_ids().to_vec())
    };
    let (with, bare) = (ids("hello", true)?, ids("hello", false)?);
    let head = (0..=with.len().saturating_sub(bare.len()))
        .find(|&i| !bare.is_empty() && with[i..i + bare.len()] == bare[..])
        .ok_or_else(|| anyhow::anyhow!("--long-text chunk: cannot tell the special tokens of {}/tokenizer.json from the text's", model.path))?;
    let tail = with.len() - head - bare.len();
    let prompt_tokens = if prompt.is_empty() { 0 } else { ids(prompt, false)?.len() };
    crate::windows::WindowSpec::new(model.max_seq_length, head + prompt_tokens, tail).map_err(anyhow::Error::msg)
}

fn quantization_ranges(plan: &Plan, resume: bool, tokenizer: Option<&crate::tokenize::TextTokenizer>) -> anyhow::Result<crate::quantize::Ranges> {
    let dim = plan.output_dim();
    if resume && plan.output.manifest.exists() {
        let m = Manifest::read(&plan.output.manifest).map_err(|e| anyhow::anyhow!("--resume: {e}"))?;
        if let Some(r) = m.fingerprint.quantization_ranges {
            return Ok(r);
        }
        // A manifest without ranges was made with another precision: the fingerprint check names it.
    }
    let ranges = match &plan.config.calibration_ranges {
        Some(path) => {
            let v = crate::model::read_json(path).map_err(|e| anyhow::anyhow!("--calibration-ranges {}: {e}", path.display()))?;
            let ranges = v.pointer("/fingerprint/quantization_ranges").unwrap_or(&v);
            serde_json::from_value::<crate::quantize::Ranges>(ranges.clone()).map_err(|e| {
                anyhow::anyhow!(
                    "--calibration-ranges {}: neither a manifest with quantization ranges nor {{\"min\": [...], \"max\": [...]}}: {e}",
                    path.display()
                )
            })?
        }
        None => super::calibrate::calibrate(plan, tokenizer)?,
    };
    let what = plan.config.calibration_ranges.as_ref().map_or("calibration".to_string(), |p| format!("--calibration-ranges {}", p.display()));
    ranges.check(dim).map_err(|e| anyhow::anyhow!("{what}: {e} (the output has {dim} dimensions)"))?;
    Ok(ranges)
}

/// Refuses `--rows-per-shard` values whose shards would not fit in memory or in one row group.
fn check_shard_size(rows_per_shard: u64, dim: usize) -> anyhow::Result<()> {
    let per_row = 4 * dim.max(1) as u64;
    let max_rows = MAX_SHARD_EMBEDDING_BYTES / per_row;
    if rows_per_shard > max_rows {
        anyhow::bail!(
            "--rows-per-shard {rows_per_shard}: {rows_per_shard} rows x {dim} dims x 4 bytes is more than the {} GiB of embeddings a shard may hold; use at most {max_rows}",
            MAX_SHARD_EMBEDDING_BYTES >> 30
        );
    }
    Ok(())
}

/// An existing output is refused, or removed with `--overwrite`.
fn clear_output(plan: &Plan) -> anyhow::Result<()> {
    let o = &plan.output;
    let existing = o.manifest.exists() || std::fs::read_dir(&o.shard_dir).map(|mut d| d.next().is_some()).unwrap_or(false);
    if !existing {
        return Ok(());
    }
    if plan.config.start != StartMode::Overwrite {
        anyhow::bail!("output already exists: {} (pass --resume to continue it or --overwrite to replace it)", o.manifest.display());
    }
    for p in [&o.manifest, &o.shard_log, &o.run_summary] {
        if p.exists() {
            std::fs::remove_file(p).with_context(|| format!("--overwrite: removing {}", p.display()))?;
        }
    }
    if o.shard_dir.exists() {
        std::fs::remove_dir_all(&o.shard_dir).with_context(|| format!("--overwrite: removing {}", o.shard_dir.display()))?;
    }
    Ok(())
}

/// Takes the output's lock (`.lock-{S}` beside the manifest; released when the process ends, even if
/// killed). Another live run on the same output, e.g. a cancelled job still draining, is refused.
fn lock_output(output: &OutputPaths) -> anyhow::Result<std::fs::File> {
    let dir = output.manifest.parent().expect("a manifest path has a folder");
    std::fs::create_dir_all(dir).with_context(|| format!("--output-root: cannot create {}", dir.display()))?;
    // `.lock-{S}`, not `.json`: it is empty, and tools that read every `*.json` of an output would choke on it.
    let name = output.manifest.file_name().expect("a manifest path has a name").to_string_lossy().replace("manifest-", ".lock-");
    let name = name.strip_suffix(".json").unwrap_or(&name);
    let path = dir.join(name);
    let file = crate::output::open_own(&path, std::fs::OpenOptions::new().create(true).truncate(false).write(true))
        .with_context(|| format!("--output-root: cannot create {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            anyhow::bail!("output {} is in use by another run (lock {}); wait for it to end", output.manifest.display(), path.display())
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

/// The dataset's name in the layout and manifest: `--dataset-name`, the Hub repo id, or the file/folder name.
fn dataset_label(config: &RunConfig, source: &DatasetSource) -> String {
    config.dataset_name.clone().or_else(|| source.repo.clone()).unwrap_or_else(|| dataset_name(&config.dataset))
}

/// A local path names a local dataset; otherwise an `org/name[@revision]` (or `hf://...`) is a Hub dataset.
pub(crate) fn find_dataset(config: &RunConfig) -> anyhow::Result<(Vec<(PathBuf, crate::plan::Format)>, DatasetSource)> {
    let d = &config.dataset;
    let local_looking = [".jsonl", ".json", ".ndjson", ".parquet"].iter().any(|e| d.ends_with(e)) || d.contains(['*', '?', '[']);
    if !std::path::Path::new(d).exists() {
        let repo = crate::hub::hub_repo(d, local_looking).map_err(|id| {
            anyhow::anyhow!(
                "--dataset {d}: not found (taken as a local path: its first folder is here; for the Hub dataset write hf://datasets/{id})"
            )
        })?;
        if let Some((id, revision)) = repo {
            let (snap, paths) = crate::hub::resolve_dataset(&id, &revision, config.subset.as_deref(), &config.split)?;
            log::info!("dataset {id}@{}: {} Parquet files", snap.sha, paths.len());
            let source = DatasetSource { kind: "hf-hub".into(), repo: Some(id), revision: Some(snap.sha), snapshot: Some(snap.dir), root: None };
            return Ok((paths.into_iter().map(|p| (p, crate::plan::Format::Parquet)).collect(), source));
        }
    }
    Ok((discover(d)?, DatasetSource::local(d)))
}

/// A local sentence-transformers folder, or a Hub model repo (`org/name[@revision]`) fetched into the HF cache.
pub(crate) fn load_model(config: &RunConfig) -> anyhow::Result<ModelSpec> {
    let spec = config.model.to_string_lossy();
    if !config.model.exists() {
        let repo = crate::hub::hub_repo(&spec, false).map_err(|id| {
            anyhow::anyhow!(
                "--model {spec}: no such model folder (taken as a local path: its first folder is here; for the Hub model write hf://{id})"
            )
        })?;
        if let Some((id, revision)) = repo {
            let snap = crate::hub::resolve_model(&id, &revision)?;
            let mut model = ModelSpec::load(&snap.dir, Some(config.model_name.as_deref().unwrap_or(&id)))?;
            model.source = Some(format!("hf://{id}@{}", snap.sha));
            return Ok(model);
        }
    }
    // Recorded as an absolute path, so the manifest says where the model was whatever folder the run started in.
    Ok(ModelSpec::load(&crate::plan::absolute(&config.model), config.model_name.as_deref())?)
}

/// The manifest's `source`: for people, where each input file is now, as an absolute path (the fingerprint
/// names files independently of where they are).
fn source_of(plan: &Plan) -> Source {
    let files = plan.inputs.iter().map(|f| SourceFile {
        path: crate::plan::absolute(Path::new(&f.path)).display().to_string(),
        rows: f.rows,
        bytes: f.bytes,
    });
    Source { kind: plan.source.kind.clone(), files: files.collect(), repo: plan.source.repo.clone(), revision: plan.source.revision.clone() }
}

pub fn fingerprint(plan: &Plan) -> Fingerprint {
    let c = &plan.config;
    Fingerprint {
        dataset: dataset_label(c, &plan.source),
        subset: c.subset.clone(),
        split: c.split.clone(),
        files: plan.inputs.iter().map(|f| SourceFile { path: plan.source.file_id(&f.path), rows: f.rows, bytes: f.bytes }).collect(),
        revision: plan.source.revision.clone(),
        text_field: c.text_field.clone(),
        extract_first_assistant: c.chat_format == Some(crate::cli::ChatFormat::FirstAssistant),
        chat_format: c.chat_format,
        prompt: plan.prompt.clone(),
        max_rows: c.max_rows,
        rows_per_shard: c.rows_per_shard,
        model_sha256: plan.model.weights_sha256.clone(),
        architecture: plan.model.architecture,
        pooling: plan.model.pooling,
        normalize: plan.model.normalize,
        max_seq_length: plan.model.max_seq_length,
        dim: plan.model.dim,
        dense: plan.model.dense.clone(),
        precision: c.precision,
        quantization_ranges: plan.quantization_ranges.clone(),
        truncate_dim: c.truncate_dim,
        long_text: c.long_text,
        dtype: c.dtype.name().to_string(),
        encoder: c.encoder,
    }
}

fn run_record(plan: &Plan) -> RunRecord {
    RunRecord {
        run_id: plan.run_id.clone(),
        started_at: plan.created_at.clone(),
        ended_at: None,
        world_size: plan.layout.world_size,
        layout: plan.layout.summary(),
        exit: None,
        restart_count: std::env::var("SLURM_RESTART_COUNT").ok().and_then(|v| v.parse().ok()),
        rows_embedded: 0,
        duration_seconds: 0.0,
        first_batch_seconds: None,
        deadline: None,
        drain_estimate_seconds: None,
        rows_tokenized: 0,
        tokens: 0,
        rows_truncated: 0,
        token_lengths: Vec::new(),
        ranks: (0..plan.layout.world_size)
            .map(|rank| crate::manifest::RankPlace {
                rank,
                host: plan.layout.hosts.get(rank).cloned().unwrap_or_default(),
                roles: plan.layout.roles_of_rank(rank),
            })
            .collect(),
    }
}

fn new_manifest(plan: &Plan) -> Manifest {
    let fp = fingerprint(plan);
    let c = &plan.config;
    Manifest {
        format_version: FORMAT_VERSION,
        status: Status::Running,
        dataset: fp.dataset.clone(),
        subset: c.subset.clone(),
        split: c.split.clone(),
        model: plan.model.name.clone(),
        model_info: plan.model.clone(),
        source: source_of(plan),
        rows_total: plan.rows_total,
        rows_embedded: 0,
        rows_skipped: 0,
        num_shards: 0,
        embedding_dim: plan.output_dim(),
        rows_per_shard: c.rows_per_shard,
        shard_log: crate::manifest::log_name_for(&plan.output.manifest),
        created_at: plan.created_at.clone(),
        updated_at: plan.created_at.clone(),
        run_id: plan.run_id.clone(),
        min_norm: None,
        max_norm: None,
        preprocessing: Preprocessing {
            text_field: c.text_field.clone(),
            extract_first_assistant: fp.extract_first_assistant,
            chat_format: c.chat_format,
            prompt: plan.prompt.clone(),
            max_seq_length: plan.model.max_seq_length,
            pooling: plan.model.pooling,
            normalize: plan.model.normalize,
            dtype: fp.dtype.clone(),
        },
        run_config: Some(c.clone()),
        runs: vec![run_record(plan)],
        error: None,
        tool: TOOL.into(),
        fingerprint: fp,
        shards: Vec::new(),
        log: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_windows_repeat_the_special_and_prompt_tokens_each_tokenizer_adds() {
        let fixture = |name: &str| ModelSpec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name), None).unwrap();
        // Gemma: <bos> text <eos>; its query prompt adds its own tokens to the head.
        let gemma = fixture("tiny-gemma-embedding");
        let w = window_spec(&gemma, "").unwrap();
        assert_eq!((w.max_len, w.head, w.tail), (128, 1, 1));
        let prompt = gemma.resolve_prompt(None, Some("query")).unwrap();
        let prompt_tokens = gemma.tokenizer().unwrap().encode(prompt.as_str(), false).unwrap().get_ids().len();
        assert!(prompt_tokens > 3);
        assert_eq!(window_spec(&gemma, &prompt).unwrap().head, 1 + prompt_tokens);
        // Qwen3: text <|endoftext|>, nothing before.
        let w = window_spec(&fixture("tiny-qwen3-embedding"), "").unwrap();
        assert_eq!((w.head, w.tail), (0, 1));
    }

    #[test]
    fn shard_size_is_bounded_by_rows_times_dim() {
        check_shard_size(8192, 4096).unwrap();
        check_shard_size(131_072, 4096).unwrap();
        let e = check_shard_size(131_073, 4096).unwrap_err().to_string();
        assert!(e.starts_with("--rows-per-shard 131073") && e.contains("at most 131072"), "{e}");
        assert!(check_shard_size(u64::MAX, 384).is_err());
    }
}
