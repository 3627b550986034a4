//! Parity of the encoders with Python sentence-transformers, on the real all-MiniLM-L6-v2 weights: this crate's
//! CPU BERT (1 and 2 threads) and candle's BertModel (the reference backend).

mod common;

use chatspace_mpi::encoder::TokenBatch;
use chatspace_mpi::encoder::{self, Backend, BackendOptions, Dtype};
use chatspace_mpi::model::{Architecture, ModelSpec, Pooling};
use chatspace_mpi::tokenize::{TextTokenizer, TokenizerChoice};
use common::*;

fn batch(tok: &tokenizers::Tokenizer, texts: &[&str], first_id: u64) -> TokenBatch {
    let enc = tok.encode_batch(texts.to_vec(), true).unwrap();
    let mut b = TokenBatch { row_ids: vec![], lengths: vec![], ids: vec![] };
    for (i, e) in enc.iter().enumerate() {
        b.row_ids.push(first_id + i as u64);
        b.lengths.push(e.get_ids().len() as u32);
        b.ids.extend_from_slice(e.get_ids());
    }
    b
}

/// The BERT backends under test: this crate's forward pass with 1 and 2 threads, and candle's.
fn bert_backends(spec: &ModelSpec) -> Vec<(&'static str, Box<dyn Backend>)> {
    vec![
        ("cpu, 1 thread", encoder::load(spec, BackendOptions::cpu(1)).unwrap()),
        ("cpu, 2 threads", encoder::load(spec, BackendOptions::cpu(2)).unwrap()),
        ("candle", encoder::load(spec, BackendOptions { reference: true, ..BackendOptions::cpu(1) }).unwrap()),
    ]
}

#[test]
fn minilm_matches_sentence_transformers_reference() {
    let spec = ModelSpec::load(&model(), None).unwrap();
    assert_eq!((spec.pooling, spec.normalize, spec.max_seq_length, spec.dim), (Pooling::Mean, true, 256, 384));
    let tok = spec.tokenizer().unwrap();
    let refs = reference();
    let texts: Vec<&str> = refs.iter().map(|r| r["text"].as_str().unwrap()).collect();

    // Token ids, truncation at 256 included, are the reference's.
    for (r, t) in refs.iter().zip(&texts) {
        let want: Vec<u32> = r["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(*t, true).unwrap().get_ids(), &want[..], "token ids of {t:?}");
    }

    // Mixed-length batches of 7: every embedding within the issue's tolerance, for every backend.
    let mut outputs = Vec::new();
    for (name, mut backend) in bert_backends(&spec) {
        let mut worst = (1.0f64, 0.0f32);
        let mut all = Vec::new();
        for (k, group) in texts.chunks(7).enumerate() {
            let b = batch(&tok, group, (k * 7) as u64);
            let out = backend.embed(&b).unwrap();
            assert_eq!(out.len(), group.len() * 384);
            for (i, v) in out.chunks(384).enumerate() {
                let r = &refs[k * 7 + i];
                let want: Vec<f32> = r["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
                let (c, d) = (cosine(v, &want), max_abs_diff(v, &want));
                worst = (worst.0.min(c), worst.1.max(d));
                assert!(c >= 0.99999 && d <= 1e-4, "{name}: text {:?}: cosine {c}, max abs diff {d}", r["text"]);
            }
            all.extend(out);
        }
        eprintln!("parity ({name}): worst cosine {:.9}, worst max abs diff {:.2e}", worst.0, worst.1);
        outputs.push(all);
    }
    // The backends agree with each other far more closely than with PyTorch.
    for o in &outputs[1..] {
        assert!(max_abs_diff(o, &outputs[0]) <= 1e-5);
    }
}

/// A copy of the real model folder (files linked) with one pooling mode and no Normalize module.
fn minilm_with_pooling(dir: &std::path::Path, flag: &str) -> std::path::PathBuf {
    let folder = dir.join(flag);
    std::fs::create_dir_all(folder.join("1_Pooling")).unwrap();
    for e in std::fs::read_dir(model()).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() && e.file_name() != "modules.json" {
            std::os::unix::fs::symlink(e.path(), folder.join(e.file_name())).unwrap();
        }
    }
    let modules = r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
        {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#;
    std::fs::write(folder.join("modules.json"), modules).unwrap();
    std::fs::write(folder.join("1_Pooling/config.json"), format!(r#"{{"word_embedding_dimension": 384, "{flag}": true}}"#)).unwrap();
    folder
}

#[test]
fn every_pooling_mode_matches_sentence_transformers() {
    // tests/fixtures/minilm-pooling-reference.jsonl (scripts/make-pooling-fixtures.py): 16 texts pooled by each
    // mode of sentence-transformers' Pooling, not normalized.
    let fixture: Vec<serde_json::Value> = std::fs::read_to_string(root().join("tests/fixtures/minilm-pooling-reference.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    for (mode, flag, pooling) in [
        ("cls", "pooling_mode_cls_token", Pooling::Cls),
        ("mean", "pooling_mode_mean_tokens", Pooling::Mean),
        ("max", "pooling_mode_max_tokens", Pooling::Max),
        ("mean_sqrt_len_tokens", "pooling_mode_mean_sqrt_len_tokens", Pooling::MeanSqrtLen),
        ("weightedmean", "pooling_mode_weightedmean_tokens", Pooling::WeightedMean),
        ("lasttoken", "pooling_mode_lasttoken", Pooling::LastToken),
    ] {
        let spec = ModelSpec::load(&minilm_with_pooling(dir.path(), flag), None).unwrap();
        assert_eq!((spec.pooling, spec.normalize), (pooling, false), "{mode}");
        let tok = spec.tokenizer().unwrap();
        let refs: Vec<&serde_json::Value> = fixture.iter().filter(|r| r["mode"] == mode).collect();
        assert_eq!(refs.len(), 16, "{mode}");
        let texts: Vec<&str> = refs.iter().map(|r| r["text"].as_str().unwrap()).collect();
        for (name, mut backend) in bert_backends(&spec) {
            let mut worst = (1.0f64, 0.0f32);
            for (k, group) in texts.chunks(5).enumerate() {
                let out = backend.embed(&batch(&tok, group, (k * 5) as u64)).unwrap();
                for (i, v) in out.chunks(384).enumerate() {
                    let want: Vec<f32> = refs[k * 5 + i]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
                    let scale = want.iter().fold(1.0f32, |m, x| m.max(x.abs()));
                    let (c, d) = (cosine(v, &want), max_abs_diff(v, &want) / scale);
                    worst = (worst.0.min(c), worst.1.max(d));
                    assert!(c >= 0.99999 && d <= 1e-4, "{mode}, {name}: text {:?}: cosine {c}, max abs diff {d} (of the largest value)", group[i]);
                }
            }
            eprintln!("pooling {mode} ({name}): worst cosine {:.9}, worst max abs diff {:.2e} of the largest value", worst.0, worst.1);
        }
    }
    // include_prompt false (prompt tokens left out of pooling) with a prompt is refused; without one it is the
    // same model.
    let folder = minilm_with_pooling(&dir.path().join("no-prompt"), "pooling_mode_mean_tokens");
    std::fs::write(folder.join("1_Pooling/config.json"), r#"{"pooling_mode_mean_tokens": true, "include_prompt": false}"#).unwrap();
    let spec = ModelSpec::load(&folder, None).unwrap();
    assert_eq!(spec.resolve_prompt(None, None).unwrap(), "");
    let e = spec.resolve_prompt(Some("query: "), None).unwrap_err();
    assert!(e.contains("include_prompt false"), "{e}");
    // Two modes at once (sentence-transformers concatenates them) are refused by name.
    let folder = minilm_with_pooling(&dir.path().join("two"), "pooling_mode_max_tokens");
    std::fs::write(folder.join("1_Pooling/config.json"), r#"{"pooling_mode_max_tokens": true, "pooling_mode_mean_tokens": true}"#).unwrap();
    let e = ModelSpec::load(&folder, None).unwrap_err().to_string();
    assert!(e.contains("1_Pooling/config.json") && e.contains("max") && e.contains("mean"), "{e}");
}

#[test]
fn dense_modules_match_sentence_transformers() {
    // tests/fixtures/minilm-dense (scripts/make-dense-fixtures.py): MiniLM with seeded random Dense modules,
    // saved by sentence-transformers 6.2 (its module names and `pooling_mode` config). a: mean pooling, Dense
    // 384->128 Tanh, Dense 128->96 Identity without bias, Normalize (safetensors). b: cls pooling, Dense
    // 384->64 GELU with a projected residual, 64->64 Sigmoid with the input added, 64->48 ReLU, 48->48 SiLU, no
    // Normalize (pytorch_model.bin).
    let dir = tempfile::tempdir().unwrap();
    for (variant, pooling, dims, normalize) in [("a", Pooling::Mean, vec![128, 96], true), ("b", Pooling::Cls, vec![64, 64, 48, 48], false)] {
        let spec = ModelSpec::load(&minilm_with_dense(dir.path(), variant), None).unwrap();
        assert_eq!((spec.pooling, spec.normalize, spec.dim), (pooling, normalize, 384), "{variant}");
        assert_eq!(spec.dense.iter().map(|d| d.out_features).collect::<Vec<_>>(), dims, "{variant}");
        let dim = spec.output_dim();
        let tok = spec.tokenizer().unwrap();
        let refs = dense_reference(variant);
        assert_eq!(refs.len(), 16, "{variant}");
        let texts: Vec<&str> = refs.iter().map(|(t, _)| t.as_str()).collect();
        for (name, mut backend) in bert_backends(&spec) {
            assert_eq!(backend.dim(), dim, "{variant} {name}");
            let mut worst = (1.0f64, 0.0f32);
            for (k, group) in texts.chunks(5).enumerate() {
                let out = backend.embed(&batch(&tok, group, (k * 5) as u64)).unwrap();
                assert_eq!(out.len(), group.len() * dim);
                for (i, v) in out.chunks(dim).enumerate() {
                    let want = &refs[k * 5 + i].1;
                    let (c, d) = (cosine(v, want), max_abs_diff(v, want));
                    worst = (worst.0.min(c), worst.1.max(d));
                    assert!(c >= 0.99999 && d <= 1e-5, "dense {variant}, {name}: text {:?}: cosine {c}, max abs diff {d}", group[i]);
                }
            }
            eprintln!("dense {variant} ({name}): worst cosine {:.9}, worst max abs diff {:.2e}", worst.0, worst.1);
        }
    }
}

#[test]
fn mpnet_matches_sentence_transformers() {
    // The real all-mpnet-base-v2 (scripts/fetch-model.sh) against Python sentence-transformers on the 64 parity
    // texts (tests/fixtures/mpnet-reference.jsonl, scripts/make-reference.py). Its tokenizer.json truncates at
    // 128 but sentence-transformers at its max_seq_length, 384: that one wins.
    let spec = ModelSpec::load(&mpnet(), None).unwrap();
    assert_eq!(
        (spec.architecture, spec.pooling, spec.normalize, spec.max_seq_length, spec.dim),
        (Architecture::Mpnet, Pooling::Mean, true, 384, 768)
    );
    let refs = mpnet_reference();
    assert_eq!(refs.len(), 64);
    assert!(refs.iter().any(|(_, ids, _)| ids.len() == 384) && refs.iter().filter(|(_, ids, _)| ids.len() > 128).count() >= 3);
    let texts: Vec<String> = refs.iter().map(|(t, _, _)| t.clone()).collect();
    // (Its added tokens `<unk>` (normalized) and `<mask>` (lstrip) are outside the fast path: `auto` runs
    // `tokenizers`.)
    for choice in [TokenizerChoice::Auto, TokenizerChoice::Reference] {
        let tok = TextTokenizer::load(&spec, choice).unwrap();
        let enc = tok.encode_batch(&texts, "", 1).unwrap();
        for (i, (t, ids, _)) in refs.iter().enumerate() {
            assert_eq!(enc.row(i), &ids[..], "{choice:?}: ids of {t:?}");
        }
    }
    // This crate's CPU forward pass (packed rows, relative position bias added per head) with 1 and 2 threads,
    // and MPNet on candle ops (the GPU code, `--encoder candle` on the CPU).
    let backends = [
        ("cpu, 1 thread", BackendOptions::cpu(1)),
        ("cpu, 2 threads", BackendOptions::cpu(2)),
        ("candle", BackendOptions { reference: true, ..BackendOptions::cpu(1) }),
    ];
    for (name, opts) in backends {
        let mut backend = encoder::load(&spec, opts).unwrap();
        assert_eq!(backend.dim(), 768);
        let mut worst = (1.0f64, 0.0f32);
        for (k, group) in refs.chunks(8).enumerate() {
            let out = backend.embed(&fixture_batch(group, k as u64 * 8)).unwrap();
            for (v, (t, _, want)) in out.chunks(768).zip(group) {
                let (c, d) = (cosine(v, want), max_abs_diff(v, want));
                worst = (worst.0.min(c), worst.1.max(d));
                assert!(c >= 0.99999 && d <= 1e-5, "mpnet ({name}): text {t:?}: cosine {c}, max abs diff {d}");
            }
        }
        eprintln!("mpnet ({name}, float32): worst cosine {:.9}, worst max abs diff {:.2e} over 64 texts", worst.0, worst.1);
    }
    // The CPU forward pass's bfloat16 mode (where the CPU has it) stays close, as for MiniLM; int8 is refused
    // for MPNet (its activation outliers: cosine 0.74 on one parity text).
    let e = encoder::load(&spec, BackendOptions { dtype: Dtype::Int8, ..BackendOptions::cpu(1) }).err().expect("refused");
    assert!(e.to_string().contains("--dtype int8: on cpu for mpnet models use float32 or bfloat16"), "{e}");
    for (dtype, available, min_cos) in [(Dtype::Bf16, encoder::kernels::has_bf16_dot(), 0.999)] {
        if !available {
            eprintln!("mpnet {}: this CPU lacks the instructions", dtype.name());
            continue;
        }
        let mut backend = encoder::load(&spec, BackendOptions { dtype, ..BackendOptions::cpu(2) }).unwrap();
        let mut worst = 1.0f64;
        for (k, group) in refs.chunks(8).enumerate() {
            for (v, (t, _, want)) in backend.embed(&fixture_batch(group, k as u64 * 8)).unwrap().chunks(768).zip(group) {
                let c = cosine(v, want);
                worst = worst.min(c);
                assert!(c >= min_cos, "mpnet {}: text {t:?}: cosine {c}", dtype.name());
            }
        }
        eprintln!("mpnet (cpu {}): worst cosine {worst:.6} over 64 texts", dtype.name());
    }
    // The reference runs float32 only on the CPU.
    let e = encoder::load(&spec, BackendOptions { dtype: Dtype::Bf16, reference: true, ..BackendOptions::cpu(1) }).err().expect("refused");
    assert!(e.to_string().contains("mpnet models with --encoder candle"), "{e}");
}

#[test]
fn multilingual_models_with_unigram_tokenizers_and_roberta_match_sentence_transformers() {
    // tiny-roberta (scripts/make-roberta-fixtures.py: byte-level BPE, RoBERTa's post-processor) runs the same
    // way. tests/fixtures/tiny-xlm-roberta and tiny-bert-unigram (scripts/make-multilingual-fixtures.py): seeded random
    // models with a trained SentencePiece Unigram tokenizer, saved and run by sentence-transformers 6.2. The
    // Unigram tokenizer runs on `tokenizers` (`auto` falls back to it); ids must equal Python's, embeddings the
    // reference on this crate's CPU forward pass (1 and 2 threads) and on candle (the GPU code).
    for (folder, arch, pooling) in [
        ("tiny-xlm-roberta", Architecture::XlmRoberta, Pooling::Mean),
        ("tiny-bert-unigram", Architecture::Bert, Pooling::Cls),
        ("tiny-roberta", Architecture::Roberta, Pooling::Mean),
    ] {
        let spec = ModelSpec::load(&root().join("tests/fixtures").join(folder), None).unwrap();
        assert_eq!((spec.architecture, spec.pooling, spec.normalize, spec.max_seq_length, spec.dim), (arch, pooling, true, 128, 64), "{folder}");
        let refs = fixture_reference(&format!("{folder}-reference.jsonl"));
        assert_eq!(refs.len(), 64);
        assert!(refs.iter().any(|(_, ids, _)| ids.len() == 128), "{folder}: texts past the max length");
        let texts: Vec<String> = refs.iter().map(|(t, _, _)| t.clone()).collect();
        for choice in [TokenizerChoice::Auto, TokenizerChoice::Reference] {
            let tok = TextTokenizer::load(&spec, choice).unwrap();
            if folder != "tiny-roberta" {
                assert_eq!(tok.engine_name(), "tokenizers", "{folder}: Unigram is outside the fast paths");
            }
            let enc = tok.encode_batch(&texts, "", 1).unwrap();
            for (i, (t, ids, _)) in refs.iter().enumerate() {
                assert_eq!(enc.row(i), &ids[..], "{folder} {choice:?}: ids of {t:?}");
            }
        }
        let reference = if arch == Architecture::Bert { "candle BertModel" } else { "candle BERT ops" };
        for (name, opts) in [
            ("cpu, 1 thread", BackendOptions::cpu(1)),
            ("cpu, 2 threads", BackendOptions::cpu(2)),
            (reference, BackendOptions { reference: true, ..BackendOptions::cpu(1) }),
        ] {
            let mut backend = encoder::load(&spec, opts).unwrap();
            let mut worst = (1.0f64, 0.0f32);
            for (k, group) in refs.chunks(7).enumerate() {
                for (v, (t, _, want)) in backend.embed(&fixture_batch(group, k as u64 * 7)).unwrap().chunks(64).zip(group) {
                    let (c, d) = (cosine(v, want), max_abs_diff(v, want));
                    worst = (worst.0.min(c), worst.1.max(d));
                    assert!(c >= 0.99999 && d <= 1e-5, "{folder} ({name}): text {t:?}: cosine {c}, max abs diff {d}");
                }
            }
            eprintln!("{folder} ({name}): worst cosine {:.9}, worst max abs diff {:.2e} over 64 texts", worst.0, worst.1);
        }
    }
}

#[test]
fn modernbert_matches_sentence_transformers() {
    // tests/fixtures/tiny-modernbert (scripts/make-modernbert-fixtures.py): a seeded random ModernBERT with a
    // trained byte-level BPE tokenizer, 4 layers (global, sliding, sliding, global; window 16 tokens), RoPE,
    // GeGLU, no biases, mean pooling, saved and run by sentence-transformers 6.2. Texts of up to 128 tokens
    // cross the window, so a wrong window, theta or layer pattern moves them.
    let spec = ModelSpec::load(&root().join("tests/fixtures/tiny-modernbert"), None).unwrap();
    assert_eq!(
        (spec.architecture, spec.pooling, spec.normalize, spec.max_seq_length, spec.dim),
        (Architecture::ModernBert, Pooling::Mean, true, 128, 64)
    );
    let refs = fixture_reference("tiny-modernbert-reference.jsonl");
    assert_eq!(refs.len(), 64);
    assert!(refs.iter().filter(|(_, ids, _)| ids.len() > 17).count() >= 20, "texts past the window");
    assert!(refs.iter().any(|(_, ids, _)| ids.len() == 128), "texts past the max length");
    let texts: Vec<String> = refs.iter().map(|(t, _, _)| t.clone()).collect();
    for choice in [TokenizerChoice::Auto, TokenizerChoice::Reference] {
        let tok = TextTokenizer::load(&spec, choice).unwrap();
        let enc = tok.encode_batch(&texts, "", 1).unwrap();
        for (i, (t, ids, _)) in refs.iter().enumerate() {
            assert_eq!(enc.row(i), &ids[..], "{choice:?} ({}): ids of {t:?}", tok.engine_name());
        }
    }
    // The packed CPU pass (1 and 2 threads) and the candle ops (the GPU code; --encoder candle on the CPU).
    for (name, opts) in [
        ("cpu, 1 thread", BackendOptions::cpu(1)),
        ("cpu, 2 threads", BackendOptions::cpu(2)),
        ("--encoder candle", BackendOptions { reference: true, ..BackendOptions::cpu(1) }),
    ] {
        let mut backend = encoder::load(&spec, opts).unwrap();
        assert_eq!(backend.pads(), opts.reference, "{name}");
        let mut worst = (1.0f64, 0.0f32);
        for (k, group) in refs.chunks(7).enumerate() {
            for (v, (t, _, want)) in backend.embed(&fixture_batch(group, k as u64 * 7)).unwrap().chunks(64).zip(group) {
                let (c, d) = (cosine(v, want), max_abs_diff(v, want));
                worst = (worst.0.min(c), worst.1.max(d));
                assert!(c >= 0.99999 && d <= 1e-5, "modernbert ({name}): text {t:?}: cosine {c}, max abs diff {d}");
            }
        }
        eprintln!("tiny-modernbert ({name}): worst cosine {:.9}, worst max abs diff {:.2e} over 64 texts", worst.0, worst.1);
    }
    // Float16 as CUDA takes it, on the same code run on the CPU (candle's CPU has no bfloat16 matmul): finite
    // (padding queries of sliding layers see only padding: their scores must not sum to -inf) and close.
    use candle_core::{DType, Device};
    use chatspace_mpi::encoder::modernbert::ModernBertBackend;
    for dtype in [DType::F16] {
        let mut backend = ModernBertBackend::load(&spec, &Device::Cpu, dtype).unwrap();
        let mut worst = 1.0f64;
        for (k, group) in refs.chunks(7).enumerate() {
            for (v, (t, _, want)) in backend.embed(&fixture_batch(group, k as u64 * 7)).unwrap().chunks(64).zip(group) {
                assert!(v.iter().all(|x| x.is_finite()), "{dtype:?}: non-finite values for {t:?}");
                worst = worst.min(cosine(v, want));
            }
        }
        assert!(worst >= 0.99, "{dtype:?}: worst cosine {worst}");
        eprintln!("tiny-modernbert ({dtype:?} on candle ops, cpu): worst cosine {worst:.6}");
    }
    // The CPU pass's bfloat16 mode (AVX512_BF16 CPUs): close, not float32-exact; refused elsewhere.
    let bf16 = encoder::load(&spec, BackendOptions { dtype: Dtype::Bf16, ..BackendOptions::cpu(2) });
    if !chatspace_mpi::encoder::kernels::has_bf16_dot() {
        assert!(bf16.err().expect("refused without AVX512_BF16").to_string().contains("AVX512_BF16"));
        return;
    }
    let mut backend = bf16.unwrap();
    let mut worst = 1.0f64;
    for (k, group) in refs.chunks(7).enumerate() {
        for (v, (_, _, want)) in backend.embed(&fixture_batch(group, k as u64 * 7)).unwrap().chunks(64).zip(group) {
            worst = worst.min(cosine(v, want));
        }
    }
    assert!((0.99..0.999_999_9).contains(&worst), "cpu bfloat16: worst cosine {worst}");
    eprintln!("tiny-modernbert (cpu bfloat16): worst cosine {worst:.6}");
}

#[test]
fn gemma_embedding_matches_sentence_transformers_for_documents_and_queries() {
    // tests/fixtures/tiny-gemma-embedding (scripts/make-gemma-fixtures.py): a seeded random gemma3_text encoder
    // laid out as embeddinggemma (bidirectional, grouped key/value heads, q/k norms, sliding and full layers,
    // mean pooling, two Dense modules, Normalize, prompts), saved and run by sentence-transformers 6.2: the
    // 64 parity texts as documents (no prompt) and as queries (its `query` prompt before the text).
    use candle_core::{DType, Device};
    use chatspace_mpi::encoder::gemma::GemmaBackend;
    let folder = root().join("tests/fixtures/tiny-gemma-embedding");
    let spec = ModelSpec::load(&folder, None).unwrap();
    assert_eq!(
        (spec.architecture, spec.pooling, spec.normalize, spec.max_seq_length, spec.dim, spec.dense.len()),
        (Architecture::Gemma3Text, Pooling::Mean, true, 128, 64, 2)
    );
    let query = spec.resolve_prompt(None, Some("query")).unwrap();
    assert_eq!(query, "task: search result | query: ");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(root().join("tests/fixtures/tiny-gemma-embedding-reference.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 64);
    let texts: Vec<String> = lines.iter().map(|r| r["text"].as_str().unwrap().to_string()).collect();
    let floats = |v: &serde_json::Value| -> Vec<f32> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect() };
    let tok = TextTokenizer::load(&spec, TokenizerChoice::Auto).unwrap();
    // The packed CPU pass (1 and 2 threads) and the candle ops (the GPU code; --encoder candle on the CPU).
    let mut backends: Vec<(&str, Box<dyn Backend>)> = [
        ("cpu, 1 thread", BackendOptions::cpu(1)),
        ("cpu, 2 threads", BackendOptions::cpu(2)),
        ("--encoder candle", BackendOptions { reference: true, ..BackendOptions::cpu(1) }),
    ]
    .into_iter()
    .map(|(name, opts)| (name, encoder::load(&spec, opts).unwrap()))
    .collect();
    let mut half = GemmaBackend::load(&ModelSpec { dense: Vec::new(), normalize: false, ..spec.clone() }, &Device::Cpu, DType::F16).unwrap();
    let mut full = GemmaBackend::load(&ModelSpec { dense: Vec::new(), normalize: false, ..spec.clone() }, &Device::Cpu, DType::F32).unwrap();
    for (prompt, ids_key, key) in [("", "input_ids", "embedding"), (query.as_str(), "query_input_ids", "query_embedding")] {
        let enc = tok.encode_batch(&texts, prompt, 1).unwrap();
        let refs: Vec<(String, Vec<u32>, Vec<f32>)> = lines
            .iter()
            .map(|r| {
                let ids: Vec<u32> = r[ids_key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
                (r["text"].as_str().unwrap().to_string(), ids, floats(&r[key]))
            })
            .collect();
        assert!(refs.iter().any(|(_, ids, _)| ids.len() == 128), "texts past the max length");
        let mut worst = (1.0f64, 0.0f32, 1.0f64);
        for (i, (t, ids, _)) in refs.iter().enumerate() {
            assert_eq!(enc.row(i), &ids[..], "{key}: ids of {t:?} ({})", tok.engine_name());
        }
        for (k, group) in refs.chunks(7).enumerate() {
            let b = fixture_batch(group, k as u64 * 7);
            let (f32_pooled, f16_pooled) = (full.embed(&b).unwrap(), half.embed(&b).unwrap());
            for (name, backend) in backends.iter_mut() {
                let exact = backend.embed(&b).unwrap();
                for (i, (t, _, want)) in group.iter().enumerate() {
                    let v = &exact[i * 64..(i + 1) * 64];
                    let (c, d) = (cosine(v, want), max_abs_diff(v, want));
                    worst = (worst.0.min(c), worst.1.max(d), worst.2);
                    assert!(c >= 0.99999 && d <= 1e-5, "{key} ({name}): text {t:?}: cosine {c}, max abs diff {d}");
                }
            }
            for (i, (t, _, _)) in group.iter().enumerate() {
                // float16 on the candle ops (what CUDA runs) before the Dense modules: against float32 there.
                let (a, h) = (&f32_pooled[i * 64..(i + 1) * 64], &f16_pooled[i * 64..(i + 1) * 64]);
                assert!(h.iter().all(|x| x.is_finite()), "float16: non-finite values for {t:?}");
                worst.2 = worst.2.min(cosine(a, h));
            }
        }
        assert!(worst.2 >= 0.99, "float16: worst cosine {}", worst.2);
        eprintln!(
            "tiny-gemma-embedding ({key}s, 3 backends): worst cosine {:.9}, worst max abs diff {:.2e}; float16 worst cosine {:.6}",
            worst.0, worst.1, worst.2
        );
    }
    // The CPU pass's bfloat16 mode (AVX512_BF16 CPUs): close, not float32-exact; refused elsewhere.
    let bf16 = encoder::load(&spec, BackendOptions { dtype: Dtype::Bf16, ..BackendOptions::cpu(2) });
    if !chatspace_mpi::encoder::kernels::has_bf16_dot() {
        assert!(bf16.err().expect("refused without AVX512_BF16").to_string().contains("AVX512_BF16"));
        return;
    }
    let mut backend = bf16.unwrap();
    let refs = fixture_reference("tiny-gemma-embedding-reference.jsonl");
    let mut worst = 1.0f64;
    for (k, group) in refs.chunks(7).enumerate() {
        for (v, (_, _, want)) in backend.embed(&fixture_batch(group, k as u64 * 7)).unwrap().chunks(64).zip(group) {
            worst = worst.min(cosine(v, want));
        }
    }
    assert!((0.99..0.999_999_9).contains(&worst), "cpu bfloat16: worst cosine {worst}");
    eprintln!("tiny-gemma-embedding (cpu bfloat16): worst cosine {worst:.6}");
}

#[test]
fn embedding_does_not_depend_on_batch_composition() {
    let spec = ModelSpec::load(&model(), None).unwrap();
    let tok = spec.tokenizer().unwrap();
    let refs = reference();
    let texts: Vec<&str> = refs.iter().take(24).map(|r| r["text"].as_str().unwrap()).collect();
    for (name, mut backend) in bert_backends(&spec) {
        let together = backend.embed(&batch(&tok, &texts, 0)).unwrap();
        for (i, t) in texts.iter().enumerate() {
            let alone = backend.embed(&batch(&tok, &[t], 0)).unwrap();
            let d = max_abs_diff(&alone, &together[i * 384..(i + 1) * 384]);
            assert!(d <= 1e-5, "{name}: text {t:?} differs by {d} alone vs. in a batch of 24");
        }
    }
}

/// Embeds all 64 reference texts in mixed-length batches of 7; every vector must be finite and within
/// `min_cos` of the reference. Returns the worst cosine.
fn worst_cosine_against_reference(backend: &mut dyn Backend, spec: &ModelSpec, min_cos: f64, name: &str) -> f64 {
    let tok = spec.tokenizer().unwrap();
    let refs = reference();
    let texts: Vec<&str> = refs.iter().map(|r| r["text"].as_str().unwrap()).collect();
    let (mut worst, mut sum) = (1.0f64, 0.0f64);
    for (k, group) in texts.chunks(7).enumerate() {
        let out = backend.embed(&batch(&tok, group, (k * 7) as u64)).unwrap();
        assert_eq!(out.len(), group.len() * 384);
        for (i, v) in out.chunks(384).enumerate() {
            let r = &refs[k * 7 + i];
            let want: Vec<f32> = r["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            assert!(v.iter().all(|x| x.is_finite()), "{name}: non-finite values for {:?}", r["text"]);
            let c = cosine(v, &want);
            worst = worst.min(c);
            sum += c;
            assert!(c >= min_cos, "{name}: text {:?}: cosine {c}", r["text"]);
        }
    }
    eprintln!("parity ({name}): worst cosine {worst:.7}, mean {:.7} over {} texts", sum / texts.len() as f64, texts.len());
    worst
}

/// A faster CPU mode (`dtype`): refused, naming `needs`, on CPUs without it; otherwise every reference text
/// within `min_cos`, numerics not silently float32, and refused for Qwen3.
fn low_precision_mode_stays_close(dtype: Dtype, available: bool, needs: &str, min_cos: f64, name: &str) {
    let spec = ModelSpec::load(&model(), None).unwrap();
    if !available {
        let e = encoder::load(&spec, BackendOptions { dtype, ..BackendOptions::cpu(1) }).err().expect("refused without the instructions");
        assert!(e.to_string().contains(needs), "{e}");
        eprintln!("{name} parity skipped: this CPU has no {needs}");
        return;
    }
    let mut backend = encoder::load(&spec, BackendOptions { dtype, ..BackendOptions::cpu(2) }).unwrap();
    let worst = worst_cosine_against_reference(backend.as_mut(), &spec, min_cos, name);
    assert!(worst < 0.999_999_9, "{name} changes numerics");
    let qwen = ModelSpec::load(&root().join("tests/fixtures/tiny-qwen3-embedding"), None).unwrap();
    assert!(encoder::load(&qwen, BackendOptions { dtype, ..BackendOptions::cpu(1) }).is_err());
}

/// The optional bfloat16 mode (AVX512_BF16 CPUs): close to the reference, though not float32-exact.
#[test]
fn minilm_bf16_mode_stays_close_to_the_reference() {
    low_precision_mode_stays_close(Dtype::Bf16, chatspace_mpi::encoder::kernels::has_bf16_dot(), "AVX512_BF16", 0.999, "cpu bf16");
}

/// The optional int8 mode (AVX512-VNNI CPUs): the linear layers in int8, further from the reference than
/// bfloat16 but still close (the bound is the one docs/benchmarks.md reports).
#[test]
fn minilm_int8_mode_stays_close_to_the_reference() {
    low_precision_mode_stays_close(Dtype::Int8, chatspace_mpi::encoder::kernels::has_int8_dot(), "AVX512-VNNI", 0.995, "cpu int8");
    let spec = ModelSpec::load(&model(), None).unwrap();
    assert!(encoder::load(&spec, BackendOptions { dtype: Dtype::Int8, reference: true, ..BackendOptions::cpu(1) }).is_err());
}

/// The GPU encoder's code (BERT on candle ops, any device) run on the CPU: float32 matches the reference like
/// the other backends; float16 (where candle-transformers' BertModel turns every score into NaN through its
/// f32::MIN mask) stays finite and close.
#[test]
fn candle_ops_bert_matches_the_reference_in_float32_and_float16() {
    use candle_core::{DType, Device};
    use chatspace_mpi::encoder::bert_candle::BertCandleBackend;
    let spec = ModelSpec::load(&model(), None).unwrap();
    for (dtype, min_cos) in [(DType::F32, 0.99999), (DType::F16, 0.999)] {
        let mut backend = BertCandleBackend::load(&spec, &Device::Cpu, dtype).unwrap();
        assert!(backend.pads());
        worst_cosine_against_reference(&mut backend, &spec, min_cos, &format!("candle ops on cpu, {dtype:?}"));
    }
}

/// Bad rows reach the caller as errors, never as panics or garbage vectors.
#[test]
fn bert_rejects_rows_it_cannot_embed() {
    let spec = ModelSpec::load(&model(), None).unwrap();
    for (name, mut backend) in bert_backends(&spec) {
        let empty = TokenBatch { row_ids: vec![0, 1], lengths: vec![2, 0], ids: vec![101, 102] };
        assert!(backend.embed(&empty).is_err(), "{name}: an empty row");
        let long = TokenBatch { row_ids: vec![0], lengths: vec![300], ids: vec![101; 300] };
        assert!(backend.embed(&long).is_err(), "{name}: a row longer than max_seq_length");
    }
    let mut fast = encoder::load(&spec, BackendOptions::cpu(2)).unwrap();
    let bad_id = TokenBatch { row_ids: vec![0, 1], lengths: vec![2, 2], ids: vec![101, 102, 101, 999_999] };
    let e = fast.embed(&bad_id).unwrap_err().to_string();
    assert!(e.contains("999999"), "{e}");
}

/// Qwen3-Embedding layout (tiny random weights): left padding, appended <|endoftext|>, last-token pooling,
/// Normalize, and the `query` prompt, against sentence-transformers.
#[test]
fn tiny_qwen3_matches_sentence_transformers_for_documents_and_queries() {
    let folder = root().join("tests/fixtures/tiny-qwen3-embedding");
    let spec = ModelSpec::load(&folder, None).unwrap();
    assert_eq!((spec.pooling, spec.normalize, spec.dim), (Pooling::LastToken, true, 64));
    let tok = spec.tokenizer().unwrap();
    let mut backend = encoder::load(&spec, BackendOptions::cpu(1)).unwrap();
    let refs: Vec<serde_json::Value> = std::fs::read_to_string(root().join("tests/fixtures/tiny-qwen3-embedding-reference.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (mut docs, mut queries, mut worst) = (0, 0, 1.0f64);
    for group in refs.chunks(5) {
        let texts: Vec<String> = group
            .iter()
            .map(|r| {
                let prompt = spec.resolve_prompt(None, r["prompt_name"].as_str()).unwrap();
                format!("{prompt}{}", r["text"].as_str().unwrap())
            })
            .collect();
        let b = batch(&tok, &texts.iter().map(String::as_str).collect::<Vec<_>>(), 0);
        let out = backend.embed(&b).unwrap();
        let mut at = 0;
        for (i, r) in group.iter().enumerate() {
            let n = b.lengths[i] as usize;
            if let Some(ids) = r["input_ids"].as_array() {
                let want: Vec<u32> = ids.iter().map(|v| v.as_u64().unwrap() as u32).collect();
                assert_eq!(&b.ids[at..at + n], &want[..], "token ids of {:?}", r["text"]);
            }
            at += n;
            let want: Vec<f32> = r["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            let c = cosine(&out[i * 64..(i + 1) * 64], &want);
            worst = worst.min(c);
            assert!(c >= 0.99999, "{:?} (prompt {:?}): cosine {c}", r["text"], r["prompt_name"]);
            if r["prompt_name"].is_null() {
                docs += 1
            } else {
                queries += 1
            }
        }
    }
    assert_eq!((docs, queries), (64, 16));
    eprintln!("qwen3 parity: worst cosine {worst:.9}");
}

/// `chatspace-mpi encode` (the encoder alone, as the GPU check runs it): timings per batch size, and the
/// embeddings it writes match the reference.
#[test]
fn encode_subcommand_times_batch_sizes_and_writes_reference_embeddings() {
    let d = tempfile::tempdir().unwrap();
    let refs = reference();
    let input = d.path().join("texts.jsonl");
    std::fs::write(&input, refs.iter().map(|r| format!("{}\n", serde_json::json!({ "text": r["text"] }))).collect::<String>()).unwrap();
    let out = d.path().join("vectors.jsonl");
    let o = std::process::Command::new(bin())
        .args(["encode", "--model"])
        .arg(model())
        .arg("--input")
        .arg(&input)
        .args(["--batch-sizes", "7,32", "--threads", "2", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<&str> = stdout.lines().filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())).collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].split_whitespace().next() == Some("7") && lines[1].split_whitespace().next() == Some("32"), "{stdout}");
    let got: Vec<Vec<f32>> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    assert_eq!(got.len(), refs.len());
    for (v, r) in got.iter().zip(&refs) {
        let want: Vec<f32> = r["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert!(cosine(v, &want) >= 0.99999, "{:?}", r["text"]);
    }
    let bad = std::process::Command::new(bin())
        .args(["encode", "--model"])
        .arg(model())
        .arg("--input")
        .arg(d.path().join("missing.jsonl"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && e.lines().next().unwrap_or("").contains("--input"), "{e}");
}
