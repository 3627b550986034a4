//! Reading one chunk (a row-id range) of Parquet or JSONL input: texts to embed, the rows skipped, and the
//! source columns that travel to the writer.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BooleanArray, LargeListArray, LargeStringArray, ListArray, RecordBatch, StringArray, StringViewArray, StructArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde_json::Value;

use crate::cli::ChatFormat;
use crate::plan::{Format, InputFile, PlanError};

/// Lines sniffed to infer a JSONL schema.
const SNIFF_LINES: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}:{line}: {message}")]
    Line { path: String, line: u64, message: String },
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

fn file_err(path: &str, message: impl ToString) -> InputError {
    InputError::File { path: path.to_string(), message: message.to_string() }
}

/// How a row's text is taken from the text field.
#[derive(Debug, Clone)]
pub struct TextRule {
    pub field: String,
    pub chat: Option<ChatFormat>,
}

/// The rows of one chunk that will be embedded.
#[derive(Debug)]
pub struct ChunkRows {
    pub row_ids: Vec<u64>,
    pub texts: Vec<String>,
    /// `text` then the source columns (renamed where they collide), one row per kept row.
    pub columns: RecordBatch,
    /// Rows of the chunk not embedded (empty or missing text, no assistant turn).
    pub skipped: u64,
}

/// Output column names the writer adds; source columns with these names are renamed `source_<name>`.
const RESERVED: [&str; 3] = ["row_id", "text", "embedding"];

/// Field names of a JSONL file in first-appearance order (from its first lines), for checks at plan time.
pub fn jsonl_field_names(path: &Path) -> Result<Vec<String>, PlanError> {
    let (_, names) = sniff_jsonl(path).map_err(|e| match e {
        InputError::Line { path, line, message } => PlanError::Jsonl { path, line, message },
        InputError::File { path, message } => PlanError::Jsonl { path, line: 0, message },
    })?;
    Ok(names)
}

/// Infers the schema of a JSONL file from its first lines; field order is first appearance.
fn sniff_jsonl(path: &Path) -> Result<(Schema, Vec<String>), InputError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|e| file_err(&name, e))?;
    let mut values = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let reader = BufReader::new(file);
    for (i, line) in reader.split(b'\n').take(SNIFF_LINES).enumerate() {
        let line = line.map_err(|e| file_err(&name, e))?;
        let Some(obj) = parse_line(&name, i as u64 + 1, &line)? else { continue };
        for k in obj.keys() {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
        values.push(Value::Object(obj));
    }
    let inferred = arrow_json::reader::infer_json_schema_from_iterator(values.iter().map(Ok))
        .map_err(|e| file_err(&name, format!("cannot infer a schema: {e}")))?;
    let fields: Vec<Field> = names
        .iter()
        .filter_map(|n| inferred.field_with_name(n).ok())
        .map(|f| if f.data_type() == &DataType::Null { Field::new(f.name(), DataType::Utf8, true) } else { f.clone() })
        .collect();
    Ok((Schema::new(fields), names))
}

/// Parses one JSONL line; `None` for a blank line.
fn parse_line(path: &str, line: u64, bytes: &[u8]) -> Result<Option<serde_json::Map<String, Value>>, InputError> {
    let err = |message: String| InputError::Line { path: path.to_string(), line, message };
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| err(format!("line is not valid UTF-8 ({e})")))?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(err("expected a JSON object".into())),
        Err(e) => Err(err(format!("invalid JSON: {e}"))),
    }
}

/// Text of a JSON value under the rule; `Ok(None)` means the row is skipped.
fn text_of_json(v: Option<&Value>, rule: &TextRule) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if rule.chat.is_none() => Ok(non_empty(s)),
        Some(Value::Array(turns)) if rule.chat.is_some() => {
            let turns = turns.iter().map(|t| (t.get("role").and_then(Value::as_str), t.get("content").and_then(Value::as_str)));
            Ok(chat_text(turns, rule.chat.expect("checked")))
        }
        Some(other) => Err(format!(
            "field '{}' is {}, expected {}",
            rule.field,
            json_kind(other),
            if rule.chat.is_some() { "a list of {role, content}" } else { "a string" }
        )),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Text of a conversation: the first non-empty assistant/model turn (stripped), or every turn with content as
/// "role: content" lines. `None` when there is nothing to embed.
fn chat_text<'a>(turns: impl Iterator<Item = (Option<&'a str>, Option<&'a str>)>, format: ChatFormat) -> Option<String> {
    match format {
        ChatFormat::FirstAssistant => turns
            .filter(|(role, _)| role.is_some_and(is_assistant))
            .find_map(|(_, content)| content.and_then(non_empty))
            .map(|c| c.trim().to_string()),
        ChatFormat::Turns => {
            let lines: Vec<String> =
                turns.filter_map(|(role, content)| Some(format!("{}: {}", role.unwrap_or("unknown"), content.and_then(non_empty)?.trim()))).collect();
            (!lines.is_empty()).then(|| lines.join("\n"))
        }
    }
}

fn is_assistant(role: &str) -> bool {
    role.eq_ignore_ascii_case("assistant") || role.eq_ignore_ascii_case("model")
}

fn non_empty(s: &str) -> Option<String> {
    if s.trim().is_empty() {
        None
    } else {
        Some(s.to_string())
    }
}

/// Reads the rows of `chunk` from the input files.
pub struct ChunkReader {
    inputs: Vec<InputFile>,
    rule: TextRule,
    /// JSONL: the source schema from the first file (the same for every chunk).
    jsonl_schema: Option<SchemaRef>,
}

impl ChunkReader {
    pub fn new(inputs: Vec<InputFile>, rule: TextRule) -> Result<Self, InputError> {
        let jsonl_schema = match inputs.first() {
            Some(f) if f.format == Format::Jsonl => Some(Arc::new(sniff_jsonl(Path::new(&f.path))?.0)),
            _ => None,
        };
        Ok(ChunkReader { inputs, rule, jsonl_schema })
    }

    /// Reads the rows with ids in `ranges` (sorted, disjoint), in row-id order.
    pub fn read(&self, ranges: &[(u64, u64)]) -> Result<ChunkRows, InputError> {
        let mut parts = Vec::new();
        for &(start, end) in ranges {
            for f in &self.inputs {
                let (lo, hi) = (start.max(f.first_row), end.min(f.first_row + f.rows));
                if lo >= hi {
                    continue;
                }
                let (a, b) = (lo - f.first_row, hi - f.first_row);
                let part = match f.format {
                    Format::Jsonl => self.read_jsonl(f, a, b)?,
                    Format::Parquet => self.read_parquet(f, a, b)?,
                };
                parts.push((part, f.path.as_str()));
            }
        }
        let mut out = ChunkRows { row_ids: Vec::new(), texts: Vec::new(), columns: RecordBatch::new_empty(Arc::new(Schema::empty())), skipped: 0 };
        let mut batches = Vec::new();
        let mut paths = Vec::new();
        for (p, path) in parts {
            paths.push(path);
            out.row_ids.extend(p.row_ids);
            out.texts.extend(p.texts);
            out.skipped += p.skipped;
            batches.push(p.columns);
        }
        if let Some(first) = batches.first() {
            let schema = first.schema();
            for (b, path) in batches.iter().zip(&paths) {
                if b.schema().fields() != schema.fields() {
                    return Err(file_err(path, "columns differ from the first input file's; all files must share one schema"));
                }
            }
            out.columns = arrow_select::concat::concat_batches(&schema, &batches).map_err(|e| file_err(&self.inputs[0].path, e))?;
        }
        Ok(out)
    }

    fn read_jsonl(&self, f: &InputFile, a: u64, b: u64) -> Result<ChunkRows, InputError> {
        let schema = self.jsonl_schema.clone().expect("JSONL schema is set for JSONL inputs; this is a bug");
        let mut file = File::open(&f.path).map_err(|e| file_err(&f.path, e))?;
        // Start from the nearest recorded offset at or before line `a`.
        // Offsets are sorted by line: a binary search, not a scan (a file may have millions of chunks).
        let at = f.offsets.partition_point(|(l, _)| *l <= a);
        let (mut line, offset) = at.checked_sub(1).map_or((0, 0), |i| f.offsets[i]);
        file.seek(SeekFrom::Start(offset)).map_err(|e| file_err(&f.path, e))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut decoder = arrow_json::ReaderBuilder::new(schema.clone())
            .with_coerce_primitive(true)
            .with_batch_size((b - a) as usize + 1)
            .build_decoder()
            .map_err(|e| file_err(&f.path, e))?;
        let mut rows = ChunkRows { row_ids: vec![], texts: vec![], columns: RecordBatch::new_empty(schema.clone()), skipped: 0 };
        let mut buf = Vec::new();
        while line < b {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf).map_err(|e| file_err(&f.path, e))?;
            if n == 0 {
                return Err(file_err(&f.path, format!("file ended at line {line}, expected {} lines (did it change?)", f.rows)));
            }
            if line >= a {
                let lineno = line + 1;
                match parse_line(&f.path, lineno, &buf)? {
                    None => rows.skipped += 1,
                    Some(obj) => match text_of_json(obj.get(&self.rule.field), &self.rule).map_err(|message| InputError::Line {
                        path: f.path.clone(),
                        line: lineno,
                        message,
                    })? {
                        None => rows.skipped += 1,
                        Some(t) => {
                            rows.row_ids.push(f.first_row + line);
                            rows.texts.push(t);
                            decoder.decode(&buf).map_err(|e| InputError::Line { path: f.path.clone(), line: lineno, message: e.to_string() })?;
                        }
                    },
                }
            }
            line += 1;
        }
        let batch = decoder
            .flush()
            .map_err(|e| file_err(&f.path, format!("lines {}-{}: {e}", a + 1, b)))?
            .unwrap_or_else(|| RecordBatch::new_empty(schema.clone()));
        rows.columns = self.output_columns(batch, &rows.texts, &f.path)?;
        Ok(rows)
    }

    fn read_parquet(&self, f: &InputFile, a: u64, b: u64) -> Result<ChunkRows, InputError> {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let file = File::open(&f.path).map_err(|e| file_err(&f.path, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| file_err(&f.path, format!("not a valid Parquet file: {e}")))?;
        // Pick the row groups that overlap [a, b) and skip into the first one.
        let (mut groups, mut first_start, mut start) = (Vec::new(), None, 0u64);
        for (i, rg) in builder.metadata().row_groups().iter().enumerate() {
            let n = rg.num_rows().max(0) as u64;
            if start < b && start + n > a {
                groups.push(i);
                first_start.get_or_insert(start);
            }
            start += n;
        }
        let schema = builder.schema().clone();
        let first_start = first_start.unwrap_or(a);
        let reader = builder
            .with_row_groups(groups)
            .with_offset((a - first_start) as usize)
            .with_limit((b - a) as usize)
            .with_batch_size(8192)
            .build()
            .map_err(|e| file_err(&f.path, e))?;
        let mut batches = Vec::new();
        for batch in reader {
            batches.push(batch.map_err(|e| file_err(&f.path, format!("cannot decode rows {}..{}: {e}", a, b)))?);
        }
        let all = arrow_select::concat::concat_batches(&schema, &batches).map_err(|e| file_err(&f.path, e))?;
        if all.num_rows() as u64 != b - a {
            return Err(file_err(&f.path, format!("read {} rows for rows {a}..{b}", all.num_rows())));
        }
        let col = all.column_by_name(&self.rule.field).ok_or_else(|| file_err(&f.path, format!("text field '{}' not found", self.rule.field)))?;
        let texts = texts_of_column(col, &self.rule).map_err(|(row, message)| InputError::Line {
            path: f.path.clone(),
            line: a + row as u64 + 1,
            message,
        })?;
        let mut rows = ChunkRows { row_ids: vec![], texts: vec![], columns: RecordBatch::new_empty(schema.clone()), skipped: 0 };
        let mut keep = Vec::with_capacity(texts.len());
        for (i, t) in texts.into_iter().enumerate() {
            keep.push(t.is_some());
            match t {
                Some(t) => {
                    rows.row_ids.push(f.first_row + a + i as u64);
                    rows.texts.push(t);
                }
                None => rows.skipped += 1,
            }
        }
        let kept = arrow_select::filter::filter_record_batch(&all, &BooleanArray::from(keep)).map_err(|e| file_err(&f.path, e))?;
        rows.columns = self.output_columns(kept, &rows.texts, &f.path)?;
        Ok(rows)
    }

    /// `text` followed by the source columns: the source text column is dropped when it is the plain `text`
    /// field (identical), other names the writer uses are renamed `source_<name>`.
    fn output_columns(&self, source: RecordBatch, texts: &[String], path: &str) -> Result<RecordBatch, InputError> {
        // Arrow strings have 32-bit offsets: a column holds at most i32::MAX bytes of text.
        let bytes: usize = texts.iter().map(String::len).sum();
        if bytes > i32::MAX as usize {
            return Err(file_err(
                path,
                format!("{bytes} bytes of text in one chunk, more than the 2 GiB a shard's text column holds; lower --rows-per-shard"),
            ));
        }
        let mut fields = vec![Field::new("text", DataType::Utf8, false)];
        let mut columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(texts))];
        let schema = source.schema();
        for (f, c) in schema.fields().iter().zip(source.columns()) {
            let name = f.name().as_str();
            if name == self.rule.field && name == "text" && self.rule.chat.is_none() {
                continue;
            }
            let new_name = if RESERVED.contains(&name) { format!("source_{name}") } else { name.to_string() };
            fields.push(Field::new(new_name, f.data_type().clone(), f.is_nullable()));
            columns.push(c.clone());
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| file_err(path, e))
    }
}

/// Texts of an Arrow column; `Err((row, message))` for a value of the wrong type.
fn texts_of_column(col: &ArrayRef, rule: &TextRule) -> Result<Vec<Option<String>>, (usize, String)> {
    let n = col.len();
    let Some(format) = rule.chat else {
        let get = string_getter(col).ok_or_else(|| (0, format!("field '{}' has type {}, expected a string", rule.field, col.data_type())))?;
        return Ok((0..n).map(|i| get(i).and_then(non_empty)).collect());
    };
    let turns_of = |i: usize| -> Option<ArrayRef> {
        if col.is_null(i) {
            return None;
        }
        if let Some(l) = col.as_any().downcast_ref::<ListArray>() {
            Some(l.value(i))
        } else {
            col.as_any().downcast_ref::<LargeListArray>().map(|l| l.value(i))
        }
    };
    if col.as_any().downcast_ref::<ListArray>().is_none() && col.as_any().downcast_ref::<LargeListArray>().is_none() {
        return Err((0, format!("field '{}' has type {}, expected a list of {{role, content}}", rule.field, col.data_type())));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let Some(turns) = turns_of(i) else {
            out.push(None);
            continue;
        };
        let s = turns
            .as_any()
            .downcast_ref::<StructArray>()
            .ok_or_else(|| (i, format!("field '{}' holds {}, expected {{role, content}} structs", rule.field, turns.data_type())))?;
        let (Some(role), Some(content)) = (s.column_by_name("role"), s.column_by_name("content")) else {
            return Err((i, format!("field '{}' turns need 'role' and 'content'", rule.field)));
        };
        let (Some(role), Some(content)) = (string_getter(role), string_getter(content)) else {
            return Err((i, format!("field '{}': 'role' and 'content' must be strings", rule.field)));
        };
        out.push(chat_text((0..s.len()).filter(|&t| s.is_valid(t)).map(|t| (role(t), content(t))), format));
    }
    Ok(out)
}

/// A function reading row `i` of a string column (any Arrow string type), or `None` for other types.
fn string_getter<'a>(col: &'a ArrayRef) -> Option<Box<dyn Fn(usize) -> Option<&'a str> + 'a>> {
    if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
        Some(Box::new(move |i| a.is_valid(i).then(|| a.value(i))))
    } else if let Some(a) = col.as_any().downcast_ref::<LargeStringArray>() {
        Some(Box::new(move |i| a.is_valid(i).then(|| a.value(i))))
    } else if let Some(a) = col.as_any().downcast_ref::<StringViewArray>() {
        Some(Box::new(move |i| a.is_valid(i).then(|| a.value(i))))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::scan_inputs;
    use std::io::Write;

    fn rule(extract: bool) -> TextRule {
        TextRule { field: if extract { "messages".into() } else { "text".into() }, chat: extract.then_some(ChatFormat::FirstAssistant) }
    }

    fn jsonl(dir: &Path, body: &[u8]) -> Vec<InputFile> {
        let p = dir.join("d.jsonl");
        File::create(&p).unwrap().write_all(body).unwrap();
        let field = if body.windows(8).any(|w| w == b"messages") { "messages" } else { "text" };
        scan_inputs(&[(p, Format::Jsonl)], field, 2, None).unwrap().0
    }

    #[test]
    fn jsonl_chunks_skip_empty_rows_and_keep_source_columns() {
        let d = tempfile::tempdir().unwrap();
        let inputs = jsonl(d.path(), b"{\"text\":\"a\",\"model\":\"m1\",\"n\":1}\n{\"text\":\"  \",\"model\":\"m2\",\"n\":2}\n\n{\"text\":null,\"n\":4}\n{\"text\":\"e\",\"model\":\"m5\",\"n\":5}\n");
        let r = ChunkReader::new(inputs, rule(false)).unwrap();
        let c0 = r.read(&[(0, 2)]).unwrap();
        assert_eq!((c0.row_ids.clone(), c0.texts.clone(), c0.skipped), (vec![0], vec!["a".to_string()], 1));
        let c2 = r.read(&[(4, 5)]).unwrap();
        assert_eq!(c2.row_ids, vec![4]);
        let names: Vec<_> = c2.columns.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, vec!["text", "model", "n"]);
        let model = c2.columns.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(model.value(0), "m5");
        let c1 = r.read(&[(2, 4)]).unwrap();
        assert_eq!((c1.row_ids.len(), c1.skipped), (0, 2));
        let some = r.read(&[(0, 1), (4, 5)]).unwrap();
        assert_eq!((some.row_ids, some.texts, some.skipped), (vec![0, 4], vec!["a".to_string(), "e".to_string()], 0));
    }

    #[test]
    fn jsonl_errors_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        // Within the sniffed head, bad lines are caught when planning.
        let p = d.path().join("head.jsonl");
        std::fs::write(&p, b"{\"text\":\"a\"}\n{\"text\":\"b\xff\"}\n").unwrap();
        let e = scan_inputs(&[(p, Format::Jsonl)], "text", 2, None).unwrap_err().to_string();
        assert!(e.contains("head.jsonl:2:") && e.contains("UTF-8"), "{e}");
        // Past it, when the chunk is read.
        let mut body = b"{\"text\":\"a\"}\n".repeat(1002);
        body.extend_from_slice(b"{\"text\":\"b\xff\"}\n{\"text\":\"c\"}\n{\"text\": 5}\n");
        let r = ChunkReader::new(jsonl(d.path(), &body), rule(false)).unwrap();
        let e = r.read(&[(1000, 1004)]).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:1003:") && e.contains("UTF-8"), "{e}");
        let e = r.read(&[(1003, 1005)]).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:1005:") && e.contains("a number"), "{e}");
    }

    #[test]
    fn first_assistant_turn_is_extracted_from_jsonl() {
        let d = tempfile::tempdir().unwrap();
        let body = br#"{"messages":[{"role":"user","content":"q"},{"role":"Assistant","content":"  "},{"role":"MODEL","content":" answer "}]}
{"messages":[{"role":"user","content":"only user"}]}
"#;
        let r = ChunkReader::new(jsonl(d.path(), body), rule(true)).unwrap();
        let c = r.read(&[(0, 2)]).unwrap();
        assert_eq!((c.texts.clone(), c.skipped), (vec!["answer".to_string()], 1));
        let r = ChunkReader::new(jsonl(d.path(), body), TextRule { field: "messages".into(), chat: Some(ChatFormat::Turns) }).unwrap();
        let c = r.read(&[(0, 2)]).unwrap();
        assert_eq!(c.texts, vec!["user: q\nMODEL: answer".to_string(), "user: only user".to_string()]);
    }

    #[test]
    fn parquet_chunks_cross_row_groups_and_extract_turns() {
        use parquet::arrow::ArrowWriter;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("d.parquet");
        let texts: Vec<Option<String>> = (0..10).map(|i| if i == 3 { None } else { Some(format!("row {i}")) }).collect();
        let batch = RecordBatch::try_from_iter(vec![
            ("text", Arc::new(StringArray::from(texts)) as ArrayRef),
            ("row_id", Arc::new(arrow_array::Int64Array::from_iter_values(100..110)) as ArrayRef),
        ])
        .unwrap();
        let props = parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(4)).build();
        let mut w = ArrowWriter::try_new(File::create(&p).unwrap(), batch.schema(), Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let (inputs, total) = scan_inputs(&[(p, Format::Parquet)], "text", 4, None).unwrap();
        assert_eq!(total, 10);
        let r = ChunkReader::new(inputs, rule(false)).unwrap();
        let c = r.read(&[(2, 7)]).unwrap();
        assert_eq!(c.row_ids, vec![2, 4, 5, 6]);
        assert_eq!(c.texts, vec!["row 2", "row 4", "row 5", "row 6"]);
        assert_eq!(c.skipped, 1);
        let names: Vec<_> = c.columns.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, vec!["text", "source_row_id"]);
    }
}
