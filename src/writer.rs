//! Writer role: gathers a chunk's rows (from its loader) and embeddings (from encoders), writes the shard
//! durably (tmp -> fsync -> rename) and reports it to the controller, which commits it in the manifest.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Array, ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use sha2::{Digest, Sha256};

use crate::manifest::{now_rfc3339, ShardEntry, TOOL};
use crate::output::{write_atomic_large, AlignedBytes};
use crate::plan::{ChunkSpec, Plan};
use crate::protocol::{Embeddings, Header, PayloadReader};
use crate::ranges::{self, Range};
use crate::roles::{RoleError, RoleResult};
use crate::transport::Mailbox;

/// What the loader sent about a chunk: the rows to embed (sorted ids, columns), rows skipped, and the
/// row ranges the chunk had to do in this run.
struct ChunkRows {
    ids: Vec<u64>,
    columns: RecordBatch,
    skipped: u64,
    todo: Vec<Range>,
    shard: u64,
}

/// A chunk being assembled.
struct Pending {
    spec: ChunkSpec,
    rows: Option<ChunkRows>,
    /// Rows a drain cut off (sorted): they will not arrive and are not covered by the shard.
    dropped: Vec<u64>,
    dim: usize,
    /// `values[(row_id - start) * dim ..]`; `filled[row_id - start]` marks arrival.
    values: Vec<f32>,
    filled: Vec<bool>,
    arrived: usize,
}

impl Pending {
    fn new(spec: ChunkSpec) -> Self {
        Pending {
            spec,
            rows: None,
            dropped: Vec::new(),
            dim: 0,
            values: Vec::new(),
            filled: vec![false; (spec.end - spec.start) as usize],
            arrived: 0,
        }
    }

    fn add(&mut self, e: &Embeddings) -> Result<(), String> {
        if self.dim == 0 {
            self.dim = e.dim;
            self.values = vec![0.0; self.filled.len() * e.dim];
        } else if self.dim != e.dim {
            return Err(format!("chunk {}: embedding dim changed from {} to {}", self.spec.index, self.dim, e.dim));
        }
        for (k, &id) in e.row_ids.iter().enumerate() {
            if id < self.spec.start || id >= self.spec.end {
                return Err(format!("row {id} does not belong to chunk {} ({}..{})", self.spec.index, self.spec.start, self.spec.end));
            }
            let i = (id - self.spec.start) as usize;
            if self.filled[i] {
                return Err(format!("row {id} was embedded twice"));
            }
            self.filled[i] = true;
            self.arrived += 1;
            self.values[i * self.dim..(i + 1) * self.dim].copy_from_slice(&e.values[k * e.dim..(k + 1) * e.dim]);
        }
        Ok(())
    }

    fn complete(&self) -> bool {
        matches!(&self.rows, Some(r) if r.ids.len() == self.arrived + self.dropped.len())
    }
}

/// Shards encoded and written at once, off the receive loop: Parquet encoding and fsync of one shard overlap
/// the arrival of the next chunks. Each holds one chunk in memory.
const SHARD_THREADS: usize = 2;
/// Complete chunks waiting for a shard thread (beyond those being written). When full, the receive loop
/// waits, and with it the encoders and loaders that feed it: memory stays bounded.
const SHARD_QUEUE: usize = 1;

pub fn run(mb: &Mailbox) -> RoleResult {
    let Some(plan) = crate::roles::wait_for_plan(mb)? else { return Ok(()) };
    std::fs::create_dir_all(&plan.output.shard_dir).map_err(|e| RoleError::new(format!("{}: {e}", plan.output.shard_dir.display())))?;
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<Pending>(SHARD_QUEUE);
    let job_rx = std::sync::Mutex::new(job_rx);
    // Shard threads report what they wrote straight to the controller (a report waiting for the receive loop
    // to wake would hold the next chunk's assignment back); failures go to the receive loop, which ends the role.
    let (failed_tx, failed_rx) = std::sync::mpsc::channel::<RoleError>();
    std::thread::scope(|s| {
        for k in 0..SHARD_THREADS {
            let (plan, job_rx, failed_tx, me, outbox) = (&plan, &job_rx, failed_tx.clone(), mb.me, mb.outbox());
            s.spawn(move || loop {
                let job = job_rx.lock().map_err(|_| ()).and_then(|rx| rx.recv().map_err(|_| ()));
                let Ok(p) = job else {
                    log::info!("writer {me} shard thread {k}: {:.2}s CPU", crate::walltime::thread_cpu_seconds());
                    return;
                };
                let index = p.spec.index;
                let report = match write_shard(plan, p) {
                    Ok(Some(entry)) => {
                        crate::roles::test_delay("writer-commit");
                        Header::ShardWritten(Box::new(entry))
                    }
                    Ok(None) => Header::Released { chunk: index },
                    Err(e) => {
                        let _ = failed_tx.send(e);
                        return;
                    }
                };
                if outbox.send(plan.layout.controller(), report, Vec::new()).is_err() {
                    return;
                }
            });
        }
        drop(failed_tx);
        // Dropping `job_tx` on return lets the shard threads finish what they hold and end.
        receive(mb, &plan, job_tx, &failed_rx)
    })
}

/// Assembles chunks from loader and encoder messages and hands complete ones to the shard threads; ends with
/// the first failure of a shard thread.
fn receive(mb: &Mailbox, plan: &Plan, jobs: std::sync::mpsc::SyncSender<Pending>, failed: &std::sync::mpsc::Receiver<RoleError>) -> RoleResult {
    let mut chunks: HashMap<u64, Pending> = HashMap::new();
    loop {
        if let Ok(e) = failed.try_recv() {
            return Err(e);
        }
        let Some(env) = mb.recv_timeout(Duration::from_millis(10))? else { continue };
        let index = match env.header {
            Header::Shutdown { .. } => return Ok(()),
            Header::ChunkData { chunk, shard, todo, rows, skipped } => {
                let mut r = PayloadReader::new(&env.payload);
                let ids = r.take::<u64>("chunk row ids", rows as usize).map_err(RoleError::from_display)?;
                let columns = read_ipc(r.rest()).map_err(|e| RoleError::new(format!("chunk {chunk}: {e}")))?;
                let p = chunks.entry(chunk).or_insert_with(|| Pending::new(plan.chunk(chunk)));
                p.rows = Some(ChunkRows { ids, columns, skipped, todo, shard });
                chunk
            }
            Header::Cut { chunk, rows } => {
                let cut = PayloadReader::new(&env.payload).take::<u64>("cut row ids", rows as usize).map_err(RoleError::from_display)?;
                let p = chunks.entry(chunk).or_insert_with(|| Pending::new(plan.chunk(chunk)));
                // Cuts come from the loader (batches never sent) and from encoders (batches never started).
                p.dropped.extend(cut);
                p.dropped.sort_unstable();
                chunk
            }
            Header::Embedded { chunk, rows, dim } => {
                let e = Embeddings::from_payload(rows as usize, dim as usize, &env.payload).map_err(RoleError::from_display)?;
                let p = chunks.entry(chunk).or_insert_with(|| Pending::new(plan.chunk(chunk)));
                p.add(&e).map_err(RoleError::new)?;
                chunk
            }
            other => return Err(RoleError::new(format!("writer got unexpected {}", other.kind()))),
        };
        if chunks[&index].complete() {
            let p = chunks.remove(&index).expect("present");
            jobs.send(p).map_err(|_| RoleError::new("the shard threads stopped (this is a bug)"))?;
        }
    }
}

fn read_ipc(bytes: &[u8]) -> Result<RecordBatch, String> {
    let reader = arrow_ipc::reader::StreamReader::try_new(Cursor::new(bytes), None).map_err(|e| e.to_string())?;
    let schema = reader.schema();
    let batches: Result<Vec<_>, _> = reader.collect();
    let batches = batches.map_err(|e| e.to_string())?;
    arrow_select::concat::concat_batches(&schema, &batches).map_err(|e| e.to_string())
}

/// Columns in a shard: `row_id`, `text`, `embedding` (float32), then the source columns.
pub fn shard_batch(ids: &[u64], columns: &RecordBatch, dim: usize, values: Vec<f32>) -> Result<RecordBatch, String> {
    shard_batch_of(ids, columns, dim, Arc::new(Float32Array::from(values)))
}

/// As [`shard_batch`] with the embeddings' stored values (`rows x dim` of any type: see `quantize`).
pub fn shard_batch_of(ids: &[u64], columns: &RecordBatch, dim: usize, values: ArrayRef) -> Result<RecordBatch, String> {
    let item = Arc::new(Field::new("item", values.data_type().clone(), false));
    let emb = FixedSizeListArray::try_new(item, dim as i32, values, None).map_err(|e| e.to_string())?;
    let mut fields = vec![Field::new("row_id", DataType::UInt64, false)];
    let mut cols: Vec<ArrayRef> = vec![Arc::new(UInt64Array::from(ids.to_vec()))];
    let schema = columns.schema();
    for (i, f) in schema.fields().iter().enumerate() {
        fields.push(f.as_ref().clone());
        cols.push(columns.column(i).clone());
        if i == 0 {
            fields.push(Field::new("embedding", emb.data_type().clone(), false));
            cols.push(Arc::new(emb.clone()));
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).map_err(|e| e.to_string())
}

/// Writes the chunk's shard; `None` when a drain left it with nothing done.
fn write_shard(plan: &Plan, p: Pending) -> Result<Option<ShardEntry>, RoleError> {
    let ChunkRows { ids, columns, skipped, todo, shard } = p.rows.expect("complete chunks have rows; this is a bug");
    let (ids, columns, covered) = if p.dropped.is_empty() {
        (ids, columns, todo)
    } else {
        let covered = ranges::subtract(&todo, &ranges::from_sorted_ids(&p.dropped));
        if covered.is_empty() {
            return Ok(None);
        }
        let keep: Vec<bool> = ids.iter().map(|id| p.dropped.binary_search(id).is_err()).collect();
        let columns =
            arrow_select::filter::filter_record_batch(&columns, &arrow_array::BooleanArray::from(keep.clone())).map_err(RoleError::from_display)?;
        let ids: Vec<u64> = ids.iter().zip(&keep).filter(|(_, k)| **k).map(|(id, _)| *id).collect();
        (ids, columns, covered)
    };
    let dim = if p.dim == 0 { plan.output_dim() } else { p.dim };
    let mut entry = ShardEntry {
        path: String::new(),
        shard_index: shard,
        chunk: p.spec.index,
        rows: ids.len() as u64,
        rows_skipped: skipped,
        row_ranges: covered,
        bytes: 0,
        sha256: String::new(),
        embedding_dim: dim,
        min_norm: None,
        max_norm: None,
        created_at: now_rfc3339(),
        tool: TOOL.to_string(),
    };
    if ids.is_empty() {
        // Every row of the range was skipped: the entry records them, and no file is written (a Parquet file
        // without rows makes readers such as Hugging Face `datasets` fail on the whole output).
        return Ok(Some(entry));
    }
    // Embeddings in row-id order (ids are sorted). When every row of the chunk is there, they already are.
    let values = if ids.len() == p.filled.len() {
        p.values
    } else {
        let mut values = Vec::with_capacity(ids.len() * dim);
        for &id in &ids {
            let i = (id - p.spec.start) as usize;
            values.extend_from_slice(&p.values[i * dim..(i + 1) * dim]);
        }
        values
    };
    for v in values.chunks_exact(dim.max(1)) {
        let n = crate::encoder::kernels::norm(v);
        entry.min_norm = Some(entry.min_norm.map_or(n, |m| m.min(n)));
        entry.max_norm = Some(entry.max_norm.map_or(n, |m| m.max(n)));
    }
    let precision = plan.config.precision;
    let stored = crate::quantize::quantize(values, dim, precision, plan.quantization_ranges.as_ref()).map_err(RoleError::new)?;
    let batch = shard_batch_of(&ids, &columns, precision.stored_dim(dim), stored).map_err(RoleError::new)?;
    let meta = [
        ("chatspace.model", plan.model.name.clone()),
        ("chatspace.model_sha256", plan.model.weights_sha256.clone()),
        ("chatspace.run_id", plan.run_id.clone()),
        ("chatspace.created_at", entry.created_at.clone()),
        ("chatspace.dtype", plan.config.dtype.name().to_string()),
        ("chatspace.pooling", plan.model.pooling.name().to_string()),
        ("chatspace.truncate_dim", plan.config.truncate_dim.map_or(String::new(), |n| n.to_string())),
        ("chatspace.normalize", plan.model.normalize.to_string()),
        ("chatspace.precision", precision.name().to_string()),
        ("chatspace.embedding_dim", dim.to_string()),
        (
            "chatspace.quantization_ranges",
            plan.quantization_ranges.as_ref().map_or(String::new(), |r| serde_json::to_string(r).expect("ranges serialize")),
        ),
        ("chatspace.chunk", p.spec.index.to_string()),
        ("chatspace.row_ranges", serde_json::to_string(&entry.row_ranges).expect("ranges serialize")),
        ("chatspace.tool", TOOL.to_string()),
    ];
    // Run metadata lives in the schema (readers such as pyarrow expose it there) and so in the file footer.
    let schema = Arc::new(
        batch
            .schema()
            .as_ref()
            .clone()
            .with_metadata(meta.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<std::collections::HashMap<_, _>>()),
    );
    let batch = batch.with_schema(schema).map_err(RoleError::from_display)?;
    let buf = encode_parquet(&batch).map_err(RoleError::from_display)?;
    let path = plan.output.shard_path(shard);
    write_atomic_large(&path, &buf).map_err(|e| RoleError::new(format!("{}: {e}", path.display())))?;
    (entry.path, entry.bytes, entry.sha256) =
        (plan.output.shard_entry_path(shard), buf.len() as u64, crate::model::hex(&Sha256::digest(buf.as_slice())));
    Ok(Some(entry))
}

/// Writer settings of a shard. zstd level 1: embeddings are mostly high-entropy floats, where higher levels
/// cost time and save little. The embedding column gets no dictionary (floats do not repeat), no min/max
/// statistics (384 floats per row; they would cost a third of the writer's time and serve no query) and
/// byte-stream-split encoding, which lets zstd shrink MiniLM embeddings by 15% instead of 7%.
/// Quantized embeddings (`--precision`) keep the plain encoding every reader knows.
fn shard_properties(embedding_floats: bool) -> WriterProperties {
    let mut props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("valid level")));
    for leaf in ["list.item", "list.element"] {
        let path = ColumnPath::from(format!("embedding.{leaf}").split('.').map(String::from).collect::<Vec<_>>());
        props = props.set_column_dictionary_enabled(path.clone(), false).set_column_statistics_enabled(path.clone(), EnabledStatistics::None);
        if embedding_floats {
            props = props.set_column_encoding(path, Encoding::BYTE_STREAM_SPLIT);
        }
    }
    props.build()
}

/// The float values of a column that is a non-nullable FixedSizeList of non-nullable float32 (the
/// embeddings): the one shape whose Parquet levels are always (rep 0, def 1), then (rep 1, def 1).
fn flat_floats<'a>(field: &Field, array: &'a ArrayRef) -> Option<(usize, &'a [f32])> {
    let DataType::FixedSizeList(item, _) = field.data_type() else { return None };
    if field.is_nullable() || item.is_nullable() {
        return None;
    }
    let list = array.as_any().downcast_ref::<FixedSizeListArray>()?;
    let values = list.values().as_any().downcast_ref::<Float32Array>()?;
    let dim = list.value_length() as usize;
    // Slicing a list slices its values, so the values are exactly this list's rows when the lengths agree.
    let whole = values.len() == list.len() * dim;
    (list.null_count() == 0 && values.null_count() == 0 && whole && dim > 0).then(|| (dim, values.values().as_ref()))
}

/// Most bytes of Arrow data (embeddings, text and source columns) in one Parquet row group. Readers load a
/// row group at a time (Hugging Face `datasets`, pandas, DuckDB's scans): a shard of 8,192 rows of 4,096-dim
/// float32 embeddings is 134 MB, written as five groups rather than one.
pub const MAX_ROW_GROUP_BYTES: usize = 32 << 20;

/// Encodes a shard as one Parquet file in memory (row groups of at most [`MAX_ROW_GROUP_BYTES`]), with the
/// Arrow schema in its footer so readers get the same types and schema metadata back.
///
/// The embedding column skips the Arrow writer's generic path, which computes repetition/definition
/// levels and an index for every one of the 384 floats of a row and then gathers the floats through it:
/// its levels are the same for every row, so they are built once, and the floats go to the column writer
/// as they are. Other columns (any Arrow type from the source) go through the Arrow column writers.
pub fn encode_parquet(batch: &RecordBatch) -> Result<AlignedBytes, parquet::errors::ParquetError> {
    encode_parquet_with(batch, MAX_ROW_GROUP_BYTES)
}

/// Rows per row group so that a group of `batch` holds at most `max_bytes` (at least one row).
fn rows_per_group(batch: &RecordBatch, max_bytes: usize) -> usize {
    let per_row = batch.get_array_memory_size().div_ceil(batch.num_rows().max(1)).max(1);
    (max_bytes / per_row).max(1)
}

fn encode_parquet_with(batch: &RecordBatch, max_row_group_bytes: usize) -> Result<AlignedBytes, parquet::errors::ParquetError> {
    use parquet::arrow::arrow_writer::ArrowRowGroupWriterFactory;
    use parquet::file::writer::SerializedFileWriter;
    let schema = batch.schema();
    let floats = batch
        .schema()
        .field_with_name("embedding")
        .is_ok_and(|f| matches!(f.data_type(), DataType::FixedSizeList(i, _) if i.data_type() == &DataType::Float32));
    let mut props = shard_properties(floats);
    parquet::arrow::add_encoded_arrow_schema_to_metadata(&schema, &mut props);
    let props = Arc::new(props);
    let parquet_schema = parquet::arrow::ArrowSchemaConverter::new().with_coerce_types(props.coerce_types()).convert(&schema)?;
    // Sized for the embeddings plus the other columns, so the buffer is not regrown (and copied) while encoding.
    let mut buf = AlignedBytes::with_capacity(batch.get_array_memory_size() + (1 << 16));
    let mut file = SerializedFileWriter::new(&mut buf, parquet_schema.root_schema_ptr(), props)?;
    let factory = ArrowRowGroupWriterFactory::new(&file, schema.clone());
    let per_group = rows_per_group(batch, max_row_group_bytes);
    // An empty batch still makes one (empty) row group, as before.
    let groups = batch.num_rows().div_ceil(per_group).max(1);
    for g in 0..groups {
        let offset = g * per_group;
        let part = batch.slice(offset, per_group.min(batch.num_rows() - offset));
        write_row_group(&mut file, factory.create_column_writers(g)?, &part)?;
    }
    // The schema's metadata (`chatspace.*`) also as the file's own key-value metadata, where readers that
    // do not decode the Arrow schema (DuckDB's `parquet_kv_metadata()`, Spark, polars) find it.
    let mut keys: Vec<_> = schema.metadata().iter().collect();
    keys.sort();
    for (k, v) in keys {
        file.append_key_value_metadata(parquet::file::metadata::KeyValue::new(k.clone(), v.clone()));
    }
    file.close()?;
    Ok(buf)
}

/// One row group of `batch`'s rows.
fn write_row_group<W: std::io::Write + Send>(
    file: &mut parquet::file::writer::SerializedFileWriter<W>,
    arrow_writers: Vec<parquet::arrow::arrow_writer::ArrowColumnWriter>,
    batch: &RecordBatch,
) -> Result<(), parquet::errors::ParquetError> {
    use parquet::arrow::arrow_writer::compute_leaves;
    use parquet::data_type::FloatType;
    let schema = batch.schema();
    let mut arrow_writers = arrow_writers.into_iter();
    let mut row_group = file.next_row_group()?;
    for (field, array) in schema.fields().iter().zip(batch.columns()) {
        // A FixedSizeList of float32 is a single Parquet leaf.
        if let Some((dim, values)) = flat_floats(field, array) {
            // One leaf, max repetition and definition level 1: each row is levels (rep 0, def 1) then
            // dim - 1 times (rep 1, def 1). Written a block of rows at a time with the same level buffers.
            let _arrow_path = arrow_writers.next();
            let mut column = row_group.next_column()?.expect("the schema has a leaf for every Arrow column; this is a bug");
            let writer = column.typed::<FloatType>();
            let block_rows = 256.min(array.len()).max(1);
            let def = vec![1i16; block_rows * dim];
            let rep: Vec<i16> = (0..block_rows * dim).map(|i| (i % dim != 0) as i16).collect();
            for block in values.chunks(block_rows * dim) {
                writer.write_batch(block, Some(&def[..block.len()]), Some(&rep[..block.len()]))?;
            }
            column.close()?;
        } else {
            for leaf in compute_leaves(field, array)? {
                let mut w = arrow_writers.next().expect("one Arrow column writer per leaf; this is a bug");
                w.write(&leaf)?;
                w.close()?.append_to_row_group(&mut row_group)?;
            }
        }
    }
    row_group.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_chunk_tracks_arrivals_and_rejects_strays() {
        let mut p = Pending::new(ChunkSpec { index: 1, start: 10, end: 14 });
        let columns = RecordBatch::new_empty(Arc::new(Schema::empty()));
        p.rows = Some(ChunkRows { ids: vec![10, 12, 13], columns, skipped: 1, todo: vec![(10, 14)], shard: 0 });
        p.add(&Embeddings { row_ids: vec![13, 10], dim: 2, values: vec![3., 3., 1., 1.] }).unwrap();
        assert!(!p.complete());
        assert!(p.add(&Embeddings { row_ids: vec![10], dim: 2, values: vec![0., 0.] }).unwrap_err().contains("twice"));
        assert!(p.add(&Embeddings { row_ids: vec![14], dim: 2, values: vec![0., 0.] }).unwrap_err().contains("does not belong"));
        p.add(&Embeddings { row_ids: vec![12], dim: 2, values: vec![2., 2.] }).unwrap();
        assert!(p.complete());
        assert_eq!(&p.values[4..6], &[2., 2.]);
    }

    #[test]
    fn cuts_from_several_senders_complete_a_chunk() {
        let mut p = Pending::new(ChunkSpec { index: 0, start: 0, end: 4 });
        let columns = RecordBatch::new_empty(Arc::new(Schema::empty()));
        p.rows = Some(ChunkRows { ids: vec![0, 2, 3], columns, skipped: 1, todo: vec![(0, 4)], shard: 5 });
        p.add(&Embeddings { row_ids: vec![3], dim: 1, values: vec![1.] }).unwrap();
        p.dropped.extend([2]); // from the loader
        assert!(!p.complete());
        p.dropped.extend([0]); // from an encoder
        assert!(p.complete());
    }

    #[test]
    fn shard_columns_are_row_id_text_embedding_then_source() {
        let cols = RecordBatch::try_from_iter(vec![
            ("text", Arc::new(arrow_array::StringArray::from(vec!["a", "b"])) as ArrayRef),
            ("model", Arc::new(arrow_array::StringArray::from(vec!["x", "y"])) as ArrayRef),
        ])
        .unwrap();
        let b = shard_batch(&[4, 9], &cols, 2, vec![1., 2., 3., 4.]).unwrap();
        let names: Vec<_> = b.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, vec!["row_id", "text", "embedding", "model"]);
        assert_eq!(b.num_rows(), 2);
    }

    /// The file's Arrow schema (from its footer, with the schema metadata) and its rows as one batch.
    fn read_parquet(bytes: &[u8]) -> RecordBatch {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, bytes).unwrap();
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let schema = builder.schema().clone();
        let batches: Vec<RecordBatch> = builder.with_batch_size(1 << 20).build().unwrap().map(|b| b.unwrap()).collect();
        assert_eq!(batches.len(), 1);
        batches.into_iter().next().unwrap().with_schema(schema).unwrap()
    }

    #[test]
    fn shards_read_back_as_written_with_types_and_metadata() {
        use arrow_array::{Int64Array, StringArray, StructArray};
        let rows = 700; // more than one block of levels, and a partial last block
        let dim = 5;
        let values: Vec<f32> = (0..rows * dim).map(|i| (i as f32 * 0.37).sin()).collect();
        let nested = StructArray::from(vec![
            (
                Arc::new(Field::new("a", DataType::Int64, true)),
                Arc::new(Int64Array::from((0..rows as i64).map(|i| (i % 3 != 0).then_some(i)).collect::<Vec<_>>())) as ArrayRef,
            ),
            (
                Arc::new(Field::new("b", DataType::Utf8, false)),
                Arc::new(StringArray::from((0..rows).map(|i| format!("b{i}")).collect::<Vec<_>>())) as ArrayRef,
            ),
        ]);
        let cols = RecordBatch::try_from_iter(vec![
            ("text", Arc::new(StringArray::from((0..rows).map(|i| format!("text {i}")).collect::<Vec<_>>())) as ArrayRef),
            ("meta", Arc::new(nested) as ArrayRef),
        ])
        .unwrap();
        let ids: Vec<u64> = (1000..1000 + rows as u64).collect();
        let batch = shard_batch(&ids, &cols, dim, values).unwrap();
        let meta: std::collections::HashMap<String, String> = [("chatspace.chunk".to_string(), "3".to_string())].into();
        let schema = Arc::new(batch.schema().as_ref().clone().with_metadata(meta));
        let batch = batch.with_schema(schema).unwrap();
        let bytes = encode_parquet(&batch).unwrap();
        let back = read_parquet(bytes.as_slice());
        assert_eq!(back.schema(), batch.schema(), "types, nullability and schema metadata come back");
        assert_eq!(back, batch);
    }

    #[test]
    fn row_groups_are_bounded_in_bytes_and_read_back_whole() {
        let (rows, dim) = (700, 16);
        let cols = RecordBatch::try_from_iter(vec![(
            "text",
            Arc::new(arrow_array::StringArray::from((0..rows).map(|i| format!("text {i}")).collect::<Vec<_>>())) as ArrayRef,
        )])
        .unwrap();
        let ids: Vec<u64> = (0..rows as u64).collect();
        let batch = shard_batch(&ids, &cols, dim, (0..rows * dim).map(|i| i as f32).collect()).unwrap();
        let limit = batch.get_array_memory_size() / 6;
        let per_group = rows_per_group(&batch, limit);
        let bytes = encode_parquet_with(&batch, limit).unwrap();
        let groups = row_groups(bytes.as_slice());
        assert!(groups.len() >= 6, "{} groups", groups.len());
        assert!(groups.iter().all(|&n| n <= per_group));
        assert_eq!(groups.iter().sum::<usize>(), rows);
        assert_eq!(read_parquet(bytes.as_slice()), batch);
        assert_eq!(row_groups(encode_parquet(&batch).unwrap().as_slice()), vec![rows], "a small shard is one group");
    }

    /// Rows of each row group of a Parquet file.
    fn row_groups(bytes: &[u8]) -> Vec<usize> {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, bytes).unwrap();
        let reader = parquet::file::reader::SerializedFileReader::new(file).unwrap();
        parquet::file::reader::FileReader::metadata(&reader).row_groups().iter().map(|g| g.num_rows() as usize).collect()
    }

    #[test]
    fn sliced_or_nullable_embeddings_round_trip() {
        // A list with a null row is not the fast path; a sliced list is, with the right values; a nullable
        // column without nulls is not (its Parquet levels differ).
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let field = |nullable: bool, array: &ArrayRef| Field::new("embedding", array.data_type().clone(), nullable);
        let full = FixedSizeListArray::try_new(item.clone(), 2, Arc::new(Float32Array::from(vec![1., 2., 3., 4., 5., 6.])), None).unwrap();
        let sliced: ArrayRef = Arc::new(full.slice(1, 2));
        assert_eq!(flat_floats(&field(false, &sliced), &sliced), Some((2, &[3f32, 4., 5., 6.][..])));
        assert!(flat_floats(&field(true, &sliced), &sliced).is_none());
        let with_null: ArrayRef = Arc::new(
            FixedSizeListArray::try_new(item.clone(), 2, Arc::new(Float32Array::from(vec![1., 2., 0., 0.])), Some(vec![true, false].into())).unwrap(),
        );
        assert!(flat_floats(&field(true, &with_null), &with_null).is_none());
        let no_nulls: ArrayRef = Arc::new(full.clone());
        for (name, array, nullable) in [("sliced", sliced, false), ("with_null", with_null, true), ("nullable, no nulls", no_nulls, true)] {
            let schema = Arc::new(Schema::new(vec![field(nullable, &array)]));
            let batch = RecordBatch::try_new(schema, vec![array]).unwrap();
            let back = read_parquet(encode_parquet(&batch).unwrap().as_slice());
            assert_eq!(back, batch, "{name}");
        }
    }
}
