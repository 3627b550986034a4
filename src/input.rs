//! Reading one chunk (a row-id range) of Parquet or JSONL input: texts to embed, the rows skipped, and the
//! source columns that travel to the writer.

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{
    Array, ArrayRef, BooleanArray, LargeListArray, LargeStringArray, ListArray, RecordBatch, StringArray, StringViewArray, StructArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cli::ChatFormat;

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

/// Input file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Parquet,
    Jsonl,
}

/// One input file and where its rows sit in the global row-id space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputFile {
    pub path: String,
    pub format: Format,
    /// Rows in the file (JSONL: lines, blank ones included).
    pub rows: u64,
    pub bytes: u64,
    /// Global row id of the file's first row.
    pub first_row: u64,
    /// JSONL only: `(local line, byte offset)` of every line that starts a chunk, so loaders seek directly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offsets: Vec<(u64, u64)>,
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
pub fn jsonl_field_names(path: &Path) -> Result<Vec<String>, InputError> {
    Ok(sniff_jsonl(path, true)?.names)
}

/// The source schema of a JSONL file, inferred from its first lines.
struct JsonlSchema {
    schema: Schema,
    /// Field names in first-appearance order.
    names: Vec<String>,
    /// Fields whose values have different shapes in those lines (a string in one, a list or object in another:
    /// chat `content` given both ways, say): their column holds each value as JSON text.
    json_text: Vec<String>,
}

/// Infers the schema of a JSONL file from its first lines; field order is first appearance. A field whose
/// values cannot share one Arrow type becomes a column of JSON text, with a warning naming the first line
/// that differs (with `warn`: once per file, when planning, not again in every loader).
fn sniff_jsonl(path: &Path, warn: bool) -> Result<JsonlSchema, InputError> {
    let name = path.display().to_string();
    let file = crate::output::open_input(path).map_err(|e| file_err(&name, e))?;
    let mut values = Vec::new();
    let mut lines = Vec::new();
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
        values.push(obj);
        lines.push(i as u64 + 1);
    }
    let infer = |column: &[Value]| arrow_json::reader::infer_json_schema_from_iterator(column.iter().map(Ok));
    let mut rows: Vec<Value> = values.into_iter().map(Value::Object).collect();
    // The common case in one pass; fields are searched one by one only when the lines do not fit one schema.
    let (inferred, json_text) = match infer(&rows) {
        Ok(schema) => (schema, Vec::new()),
        Err(_) => {
            let mut json_text = Vec::new();
            for k in &names {
                // One field's values as objects of that field alone: inference fails exactly when they conflict.
                let column: Vec<Value> =
                    rows.iter().filter_map(|o| o.get(k).map(|v| Value::Object(std::iter::once((k.clone(), v.clone())).collect()))).collect();
                if infer(&column).is_ok() {
                    continue;
                }
                // The first line that conflicts: a failing prefix stays failing as lines are added.
                let owners: Vec<u64> = rows.iter().zip(&lines).filter(|(o, _)| o.get(k).is_some()).map(|(_, &l)| l).collect();
                let (mut lo, mut hi) = (1, column.len());
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    if infer(&column[..mid]).is_err() {
                        hi = mid;
                    } else {
                        lo = mid + 1;
                    }
                }
                if warn {
                    log::warn!(
                        "{name}:{}: field '{k}' has values of different shapes (e.g. a string and a list); its column holds them as JSON text",
                        owners[lo - 1]
                    );
                }
                json_text.push(k.clone());
            }
            for row in &mut rows {
                if let Value::Object(obj) = row {
                    to_json_text(obj, &json_text);
                }
            }
            (infer(&rows).map_err(|e| file_err(&name, format!("cannot infer the columns: {e}")))?, json_text)
        }
    };
    let fields: Vec<Field> = names
        .iter()
        .filter_map(|n| inferred.field_with_name(n).ok())
        .map(|f| if f.data_type() == &DataType::Null { Field::new(f.name(), DataType::Utf8, true) } else { f.clone() })
        .collect();
    Ok(JsonlSchema { schema: Schema::new(fields), names, json_text })
}

/// Replaces the values of `fields` that are not strings (or null) by their JSON text.
fn to_json_text(obj: &mut serde_json::Map<String, Value>, fields: &[String]) {
    for f in fields {
        if let Some(v) = obj.get_mut(f).filter(|v| !v.is_string() && !v.is_null()) {
            *v = Value::String(v.to_string());
        }
    }
}

/// Whether any line of a JSONL file has `field` at its top level: for a field that the sniffed first lines
/// lack. Lines are parsed only when the quoted name occurs in them; unreadable lines are left to the reader.
pub fn jsonl_has_field(path: &Path, field: &str) -> Result<bool, InputError> {
    let name = path.display().to_string();
    let file = crate::output::open_input(path).map_err(|e| file_err(&name, e))?;
    let quoted = serde_json::to_string(field).expect("a string serializes; this is a bug");
    let finder = memchr::memmem::Finder::new(quoted.as_bytes());
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(|e| file_err(&name, e))? == 0 {
            break;
        }
        if finder.find(&line).is_some() {
            if let Ok(Some(obj)) = parse_line(&name, number, &line) {
                if obj.contains_key(field) {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// Parses one JSONL line; `None` for a blank line.
fn parse_line(path: &str, line: u64, bytes: &[u8]) -> Result<Option<serde_json::Map<String, Value>>, InputError> {
    let err = |message: String| InputError::Line { path: path.to_string(), line, message };
    let bytes = without_bom(line, bytes);
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| err(format!("line is not valid UTF-8 ({e})")))?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(Value::Array(_)) if line == 1 => Err(err(
            "expected a JSON object, found a list (input is JSON Lines: one object per line; a file holding one JSON array is not read)".into(),
        )),
        Ok(_) => Err(err("expected a JSON object".into())),
        Err(e) => Err(err(format!("invalid JSON: {e}"))),
    }
}

/// A file's first line without the UTF-8 byte order mark that some editors and Windows tools write.
fn without_bom(line: u64, bytes: &[u8]) -> &[u8] {
    if line == 1 {
        bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes)
    } else {
        bytes
    }
}

/// Text of a JSON value under the rule; `Ok(None)` means the row is skipped.
fn text_of_json(v: Option<&Value>, rule: &TextRule) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if rule.chat.is_none() => Ok(non_empty(s)),
        Some(Value::Array(turns)) if rule.chat.is_some() => {
            let turns = turns.iter().map(|t| (t.get("role").and_then(Value::as_str), json_content(t.get("content"))));
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

/// Separator of the text parts of one message.
const PART_SEPARATOR: &str = "\n";

/// A message's `content`: a string, or a list of parts (`[{"type": "text", "text": ...}, {"type":
/// "image_url", ...}]`, the OpenAI / Hugging Face multimodal form; plain strings count as text parts) whose
/// text parts are joined with a newline; other parts are ignored. `None` for anything else.
fn json_content(v: Option<&Value>) -> Option<Cow<'_, str>> {
    match v? {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|p| match p {
                    Value::String(s) => Some(s.as_str()),
                    Value::Object(o) if o.get("type").and_then(Value::as_str).is_none_or(|t| t == "text") => o.get("text").and_then(Value::as_str),
                    _ => None,
                })
                .collect();
            (!texts.is_empty()).then(|| Cow::Owned(texts.join(PART_SEPARATOR)))
        }
        _ => None,
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
fn chat_text<'a>(turns: impl Iterator<Item = (Option<&'a str>, Option<Cow<'a, str>>)>, format: ChatFormat) -> Option<String> {
    match format {
        ChatFormat::FirstAssistant => turns
            .filter(|(role, _)| role.is_some_and(is_assistant))
            .find_map(|(_, content)| content.and_then(|c| non_empty(&c)))
            .map(|c| c.trim().to_string()),
        ChatFormat::Turns => {
            let lines: Vec<String> = turns
                .filter_map(|(role, content)| Some(format!("{}: {}", role.unwrap_or("unknown"), content.and_then(|c| non_empty(&c))?.trim())))
                .collect();
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
    /// JSONL: fields whose column holds JSON text (see [`JsonlSchema::json_text`]).
    json_text: Vec<String>,
}

impl ChunkReader {
    pub fn new(inputs: Vec<InputFile>, rule: TextRule) -> Result<Self, InputError> {
        let (jsonl_schema, json_text) = match inputs.first() {
            Some(f) if f.format == Format::Jsonl => {
                let s = sniff_jsonl(Path::new(&f.path), false)?;
                (Some(Arc::new(s.schema)), s.json_text)
            }
            _ => (None, Vec::new()),
        };
        Ok(ChunkReader { inputs, rule, jsonl_schema, json_text })
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
        let mut decoder = self.decoder(&schema, f, (b - a) as usize + 1)?;
        let mut rows = ChunkRows { row_ids: vec![], texts: vec![], columns: RecordBatch::new_empty(schema.clone()), skipped: 0 };
        self.kept_lines(f, a, b, |line, bytes, obj, text| {
            match text {
                None => rows.skipped += 1,
                Some(t) => {
                    rows.row_ids.push(f.first_row + line - 1);
                    rows.texts.push(t);
                    self.decode_row(&mut decoder, f, line, bytes, obj)?;
                }
            }
            Ok(())
        })?;
        let batch = match decoder.flush() {
            Ok(batch) => batch.unwrap_or_else(|| RecordBatch::new_empty(schema.clone())),
            // Values of another type than the column's are found only here, for the whole chunk: the line is
            // found by decoding the chunk's rows again one by one.
            Err(e) => return Err(self.first_bad_line(f, &schema, a, b).unwrap_or_else(|| file_err(&f.path, format!("lines {}-{b}: {e}", a + 1)))),
        };
        rows.columns = self.output_columns(batch, &rows.texts, &f.path)?;
        Ok(rows)
    }

    fn decoder(&self, schema: &SchemaRef, f: &InputFile, rows: usize) -> Result<arrow_json::reader::Decoder, InputError> {
        arrow_json::ReaderBuilder::new(schema.clone())
            .with_coerce_primitive(true)
            .with_batch_size(rows)
            .build_decoder()
            .map_err(|e| file_err(&f.path, e))
    }

    /// Adds one kept line (1-based `line`) to the decoder: as it is, or with the JSON-text fields rewritten.
    fn decode_row(
        &self,
        decoder: &mut arrow_json::reader::Decoder,
        f: &InputFile,
        line: u64,
        bytes: &[u8],
        obj: serde_json::Map<String, Value>,
    ) -> Result<(), InputError> {
        let bad_line = |e: arrow_schema::ArrowError| InputError::Line { path: f.path.clone(), line, message: e.to_string() };
        if self.json_text.iter().any(|k| obj.get(k).is_some_and(|v| !v.is_string() && !v.is_null())) {
            let mut obj = obj;
            to_json_text(&mut obj, &self.json_text);
            decoder.serialize(&[obj]).map_err(bad_line)
        } else {
            decoder.decode(without_bom(line, bytes)).map(|_| ()).map_err(bad_line)
        }
    }

    /// The first kept line of `a..b` whose row does not decode on its own, as an error naming it.
    fn first_bad_line(&self, f: &InputFile, schema: &SchemaRef, a: u64, b: u64) -> Option<InputError> {
        let mut bad = None;
        self.kept_lines(f, a, b, |line, bytes, obj, text| {
            if bad.is_none() && text.is_some() {
                let mut one = self.decoder(schema, f, 1)?;
                if let Err(e) = self
                    .decode_row(&mut one, f, line, bytes, obj)
                    .and_then(|()| one.flush().map(|_| ()).map_err(|e| InputError::Line { path: f.path.clone(), line, message: e.to_string() }))
                {
                    bad = Some(e);
                }
            }
            Ok(())
        })
        .ok()?;
        bad
    }

    /// Calls `each(line, bytes, object, text)` for every non-blank line of `a..b` (0-based; `line` is 1-based),
    /// with the text the rule takes from it (`None`: a skipped row); blank lines count as skipped rows through
    /// `each` too, with an empty object.
    fn kept_lines(
        &self,
        f: &InputFile,
        a: u64,
        b: u64,
        mut each: impl FnMut(u64, &[u8], serde_json::Map<String, Value>, Option<String>) -> Result<(), InputError>,
    ) -> Result<(), InputError> {
        let mut file = crate::output::open_input(Path::new(&f.path)).map_err(|e| file_err(&f.path, e))?;
        // Start from the nearest recorded offset at or before line `a`.
        // Offsets are sorted by line: a binary search, not a scan (a file may have millions of chunks).
        let at = f.offsets.partition_point(|(l, _)| *l <= a);
        let (mut line, offset) = at.checked_sub(1).map_or((0, 0), |i| f.offsets[i]);
        file.seek(SeekFrom::Start(offset)).map_err(|e| file_err(&f.path, e))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut buf = Vec::new();
        while line < b {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf).map_err(|e| file_err(&f.path, e))?;
            if n == 0 {
                return Err(file_err(&f.path, format!("file ended at line {line}, expected {} lines (did it change?)", f.rows)));
            }
            line += 1;
            if line <= a {
                continue;
            }
            match parse_line(&f.path, line, &buf)? {
                None => each(line, &buf, serde_json::Map::new(), None)?,
                Some(obj) => {
                    let text = text_of_json(obj.get(&self.rule.field), &self.rule).map_err(|message| InputError::Line {
                        path: f.path.clone(),
                        line,
                        message,
                    })?;
                    each(line, &buf, obj, text)?;
                }
            }
        }
        Ok(())
    }

    fn read_parquet(&self, f: &InputFile, a: u64, b: u64) -> Result<ChunkRows, InputError> {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let file = crate::output::open_input(Path::new(&f.path)).map_err(|e| file_err(&f.path, e))?;
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

/// Texts of an Arrow column; `Err((row, message))` for a value of the wrong type. A column of type Null
/// (all values null) gives no text: every row is skipped.
fn texts_of_column(col: &ArrayRef, rule: &TextRule) -> Result<Vec<Option<String>>, (usize, String)> {
    let n = col.len();
    if col.data_type() == &DataType::Null {
        return Ok(vec![None; n]);
    }
    let Some(format) = rule.chat else {
        if let Some(get) = string_getter(col) {
            return Ok((0..n).map(|i| get(i).and_then(non_empty)).collect());
        }
        // Strings written as plain binary (BYTE_ARRAY without the UTF8 annotation, as older Spark and Hive
        // writers do): read as text when they are valid UTF-8.
        let get = binary_getter(col).ok_or_else(|| (0, format!("field '{}' has type {}, expected a string", rule.field, col.data_type())))?;
        return (0..n)
            .map(|i| match get(i) {
                None => Ok(None),
                Some(b) => {
                    std::str::from_utf8(b).map(non_empty).map_err(|e| (i, format!("field '{}' is binary and not valid UTF-8 ({e})", rule.field)))
                }
            })
            .collect();
    };
    if list_values(col, 0).is_none() {
        return Err((0, format!("field '{}' has type {}, expected a list of {{role, content}}", rule.field, col.data_type())));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let Some(turns) = list_values(col, i).flatten() else {
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
        let Some(role) = string_getter(role) else {
            return Err((i, format!("field '{}': 'role' must be a string", rule.field)));
        };
        let Some(content) = content_getter(content) else {
            return Err((i, format!("field '{}': 'content' must be a string or a list of text parts, not {}", rule.field, content.data_type())));
        };
        out.push(chat_text((0..s.len()).filter(|&t| s.is_valid(t)).map(|t| (role(t), content(t))), format));
    }
    Ok(out)
}

/// The values of row `i` of a list column: `None` when the column is not a list, `Some(None)` for a null row.
fn list_values(col: &ArrayRef, i: usize) -> Option<Option<ArrayRef>> {
    if let Some(l) = col.as_any().downcast_ref::<ListArray>() {
        Some((i < l.len() && l.is_valid(i)).then(|| l.value(i)))
    } else {
        col.as_any().downcast_ref::<LargeListArray>().map(|l| (i < l.len() && l.is_valid(i)).then(|| l.value(i)))
    }
}

/// A function reading a message's content at row `i`: a string column, or a list of parts (strings, or
/// structs with `text` and an optional `type`, where only `type` "text" or null counts) joined as in
/// [`json_content`]. `None` for other types.
fn content_getter<'a>(col: &'a ArrayRef) -> Option<Getter<'a, Cow<'a, str>>> {
    if col.data_type() == &DataType::Null {
        return Some(Box::new(|_| None));
    }
    if let Some(get) = string_getter(col) {
        return Some(Box::new(move |i| get(i).map(Cow::Borrowed)));
    }
    let element = match col.data_type() {
        DataType::List(f) | DataType::LargeList(f) => f.data_type().clone(),
        _ => return None,
    };
    let text_parts = |parts: &ArrayRef| -> Vec<String> {
        if let Some(get) = string_getter(parts) {
            return (0..parts.len()).filter_map(|p| get(p).map(str::to_string)).collect();
        }
        let Some(s) = parts.as_any().downcast_ref::<StructArray>() else { return Vec::new() };
        let Some(text) = s.column_by_name("text").and_then(string_getter) else { return Vec::new() };
        let kind = s.column_by_name("type").and_then(string_getter);
        (0..s.len())
            .filter(|&p| s.is_valid(p) && kind.as_ref().is_none_or(|k| k(p).is_none_or(|t| t == "text")))
            .filter_map(|p| text(p).map(str::to_string))
            .collect()
    };
    let parts_ok = match &element {
        DataType::Struct(fields) => fields.iter().any(|f| f.name() == "text"),
        other => matches!(other, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(_, _)),
    };
    if !parts_ok {
        return None;
    }
    Some(Box::new(move |i| {
        let parts = list_values(col, i).flatten()?;
        let texts = text_parts(&parts);
        (!texts.is_empty()).then(|| Cow::Owned(texts.join(PART_SEPARATOR)))
    }))
}

/// Reads row `i` of a column: `None` for a null (or, for conversions, absent) value.
type Getter<'a, T> = Box<dyn Fn(usize) -> Option<T> + 'a>;

/// A function reading row `i` of a binary column (`Binary`, `LargeBinary`, `BinaryView`), or `None`.
fn binary_getter<'a>(col: &'a ArrayRef) -> Option<Getter<'a, &'a [u8]>> {
    use arrow_array::{BinaryArray, BinaryViewArray, LargeBinaryArray};
    if let Some(a) = col.as_any().downcast_ref::<BinaryArray>() {
        Some(Box::new(move |i| a.is_valid(i).then(|| a.value(i))))
    } else if let Some(a) = col.as_any().downcast_ref::<LargeBinaryArray>() {
        Some(Box::new(move |i| a.is_valid(i).then(|| a.value(i))))
    } else {
        col.as_any().downcast_ref::<BinaryViewArray>().map(|a| -> Getter<'a, &'a [u8]> { Box::new(move |i| a.is_valid(i).then(|| a.value(i))) })
    }
}

/// A function reading row `i` of a string column (any Arrow string type, or a dictionary of one), or `None`
/// for other types.
fn string_getter<'a>(col: &'a ArrayRef) -> Option<Getter<'a, &'a str>> {
    if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
        Some(Box::new(move |i| a.is_valid(i).then(|| a.value(i))))
    } else if let Some(a) = col.as_any().downcast_ref::<LargeStringArray>() {
        Some(Box::new(move |i| a.is_valid(i).then(|| a.value(i))))
    } else if let Some(a) = col.as_any().downcast_ref::<StringViewArray>() {
        Some(Box::new(move |i| a.is_valid(i).then(|| a.value(i))))
    } else if let Some(d) = col.as_any_dictionary_opt() {
        let values = string_getter(d.values())?;
        let keys = d.normalized_keys();
        Some(Box::new(move |i| if col.is_valid(i) { keys.get(i).and_then(|&k| values(k)) } else { None }))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::scan_inputs;
    use std::fs::File;
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

    fn parquet_file(dir: &Path, name: &str, columns: Vec<(&str, ArrayRef)>) -> Vec<InputFile> {
        use parquet::arrow::ArrowWriter;
        let p = dir.join(name);
        let batch = RecordBatch::try_from_iter_with_nullable(columns.into_iter().map(|(n, c)| (n, c, true))).unwrap();
        let mut w = ArrowWriter::try_new(File::create(&p).unwrap(), batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let field = batch.schema().field(0).name().clone();
        scan_inputs(&[(p, Format::Parquet)], &field, 100, None).unwrap().0
    }

    #[test]
    fn every_arrow_string_form_is_read_and_a_null_column_is_all_skipped() {
        use arrow_array::types::Int32Type;
        use arrow_array::DictionaryArray;
        let d = tempfile::tempdir().unwrap();
        let dict: DictionaryArray<Int32Type> = vec![Some("cat"), None, Some("dog"), Some("cat"), Some(" ")].into_iter().collect();
        let inputs = parquet_file(d.path(), "dict.parquet", vec![("text", Arc::new(dict) as ArrayRef)]);
        let c = ChunkReader::new(inputs, rule(false)).unwrap().read(&[(0, 5)]).unwrap();
        assert_eq!((c.row_ids, c.texts, c.skipped), (vec![0, 2, 3], vec!["cat".to_string(), "dog".into(), "cat".into()], 2));
        for col in
            [Arc::new(LargeStringArray::from(vec![Some("a"), None])) as ArrayRef, Arc::new(StringViewArray::from(vec![Some("a"), None])) as ArrayRef]
        {
            let texts = texts_of_column(&col, &rule(false)).unwrap();
            assert_eq!(texts, vec![Some("a".to_string()), None], "{}", col.data_type());
        }
        let inputs = parquet_file(
            d.path(),
            "null.parquet",
            vec![
                ("text", Arc::new(arrow_array::NullArray::new(3)) as ArrayRef),
                ("n", Arc::new(arrow_array::Int64Array::from(vec![1, 2, 3])) as ArrayRef),
            ],
        );
        let c = ChunkReader::new(inputs, rule(false)).unwrap().read(&[(0, 3)]).unwrap();
        assert_eq!((c.row_ids.len(), c.skipped), (0, 3));
        let binary = Arc::new(arrow_array::BinaryArray::from(vec![Some(&b"bytes"[..]), None, Some(b"  ")])) as ArrayRef;
        assert_eq!(texts_of_column(&binary, &rule(false)).unwrap(), vec![Some("bytes".to_string()), None, None]);
        let bad = Arc::new(arrow_array::LargeBinaryArray::from(vec![Some(&b"ok"[..]), Some(b"\xff")])) as ArrayRef;
        assert_eq!(texts_of_column(&bad, &rule(false)).unwrap_err().0, 1, "the row that is not UTF-8");
        let numbers = Arc::new(arrow_array::Int64Array::from(vec![1])) as ArrayRef;
        assert!(texts_of_column(&numbers, &rule(false)).unwrap_err().1.contains("expected a string"));
    }

    #[test]
    fn chat_content_given_as_parts_embeds_the_text_parts() {
        let d = tempfile::tempdir().unwrap();
        let body = br#"{"messages":[{"role":"user","content":[{"type":"text","text":"q"}]},{"role":"assistant","content":[{"type":"text","text":"part one"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"part two"}]}]}
{"messages":[{"role":"assistant","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}
{"messages":[{"role":"assistant","content":["plain", "strings"]}]}
{"messages":[{"role":"assistant","content":5},{"role":"assistant","content":{"a":1}},"not a turn",{"role":"assistant","content":"late"}]}
"#;
        let r = ChunkReader::new(jsonl(d.path(), body), rule(true)).unwrap();
        let c = r.read(&[(0, 4)]).unwrap();
        assert_eq!(c.texts, vec!["part one\npart two".to_string(), "plain\nstrings".into(), "late".into()]);
        assert_eq!((c.row_ids, c.skipped), (vec![0, 2, 3], 1));
        let r = ChunkReader::new(jsonl(d.path(), body), TextRule { field: "messages".into(), chat: Some(ChatFormat::Turns) }).unwrap();
        assert_eq!(r.read(&[(0, 1)]).unwrap().texts, vec!["user: q\nassistant: part one\npart two".to_string()]);
    }

    #[test]
    fn parquet_chat_content_parts_are_read() {
        use arrow_array::builder::{ListBuilder, StringBuilder, StructBuilder};
        use arrow_schema::Fields;
        let d = tempfile::tempdir().unwrap();
        // messages: list<struct<role: utf8, content: list<struct<type: utf8, text: utf8>>>>
        let part_fields = Fields::from(vec![Field::new("type", DataType::Utf8, true), Field::new("text", DataType::Utf8, true)]);
        let content_item = Field::new("item", DataType::Struct(part_fields.clone()), true);
        let turn_fields =
            Fields::from(vec![Field::new("role", DataType::Utf8, true), Field::new("content", DataType::List(Arc::new(content_item.clone())), true)]);
        let turn_builder = StructBuilder::new(
            turn_fields.clone(),
            vec![
                Box::new(StringBuilder::new()),
                Box::new(ListBuilder::new(StructBuilder::from_fields(part_fields.clone(), 0)).with_field(Arc::new(content_item))),
            ],
        );
        let mut messages = ListBuilder::new(turn_builder);
        for parts in [vec![("text", "hello"), ("image", "ignored"), ("text", "world")], vec![("image", "only")]] {
            let turns = messages.values();
            turns.field_builder::<StringBuilder>(0).unwrap().append_value("assistant");
            let content = turns.field_builder::<ListBuilder<StructBuilder>>(1).unwrap();
            for (kind, text) in parts {
                let p = content.values();
                p.field_builder::<StringBuilder>(0).unwrap().append_value(kind);
                p.field_builder::<StringBuilder>(1).unwrap().append_value(text);
                p.append(true);
            }
            content.append(true);
            turns.append(true);
            messages.append(true);
        }
        let inputs = parquet_file(d.path(), "chat.parquet", vec![("messages", Arc::new(messages.finish()) as ArrayRef)]);
        let c = ChunkReader::new(inputs, rule(true)).unwrap().read(&[(0, 2)]).unwrap();
        assert_eq!((c.texts, c.skipped), (vec!["hello\nworld".to_string()], 1));
    }

    #[test]
    fn jsonl_schema_problems_name_the_line_and_late_fields_work() {
        let d = tempfile::tempdir().unwrap();
        // The text field only after the first 1,000 lines: found, and its rows embedded.
        let mut body = b"{\"id\":1}\n".repeat(1500);
        body.extend_from_slice(b"{\"id\":2,\"text\":\"late\"}\n");
        let p = d.path().join("late.jsonl");
        std::fs::write(&p, &body).unwrap();
        let (inputs, total) = scan_inputs(&[(p.clone(), Format::Jsonl)], "text", 1000, None).unwrap();
        assert_eq!(total, 1501);
        let c = ChunkReader::new(inputs, rule(false)).unwrap().read(&[(1000, 1501)]).unwrap();
        assert_eq!((c.row_ids, c.texts, c.skipped), (vec![1500], vec!["late".to_string()], 500));
        // A field nowhere in the file is still an error naming what is there.
        let e = scan_inputs(&[(p, Format::Jsonl)], "body", 1000, None).unwrap_err().to_string();
        assert!(e.contains("late.jsonl") && e.contains("'body' not found") && e.contains("columns: id"), "{e}");
        // Values of different shapes in one field: its column holds them as JSON text (strings stay as they are).
        let p = d.path().join("shapes.jsonl");
        std::fs::write(
            &p,
            "{\"text\":\"a\",\"meta\":{\"k\":1}}\n{\"text\":\"b\",\"meta\":\"plain\"}\n{\"text\":\"c\",\"meta\":[1,2]}\n{\"text\":\"d\"}\n",
        )
        .unwrap();
        let (inputs, _) = scan_inputs(&[(p, Format::Jsonl)], "text", 10, None).unwrap();
        let c = ChunkReader::new(inputs, rule(false)).unwrap().read(&[(0, 4)]).unwrap();
        let meta = c.columns.column_by_name("meta").unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone();
        let got: Vec<Option<&str>> = (0..4).map(|i| meta.is_valid(i).then(|| meta.value(i))).collect();
        assert_eq!(got, vec![Some("{\"k\":1}"), Some("plain"), Some("[1,2]"), None]);
        // A value of another shape after the inferred lines: an error naming its line.
        let mut body = b"{\"text\":\"a\",\"meta\":{\"k\":1}}\n".repeat(1001);
        body.extend_from_slice(b"{\"text\":\"b\",\"meta\":[1]}\n");
        let p = d.path().join("late-shape.jsonl");
        std::fs::write(&p, &body).unwrap();
        let (inputs, _) = scan_inputs(&[(p, Format::Jsonl)], "text", 2000, None).unwrap();
        let e = ChunkReader::new(inputs, rule(false)).unwrap().read(&[(0, 1002)]).unwrap_err().to_string();
        assert!(e.contains("late-shape.jsonl:1002:"), "{e}");
        // A first line that is not an object names line 1; a byte order mark is allowed.
        let p = d.path().join("array.jsonl");
        std::fs::write(&p, "[1,2]\n{\"text\":\"a\"}\n").unwrap();
        let e = scan_inputs(&[(p, Format::Jsonl)], "text", 10, None).unwrap_err().to_string();
        assert!(e.contains("array.jsonl:1:") && e.contains("expected a JSON object"), "{e}");
        let p = d.path().join("bom.jsonl");
        std::fs::write(&p, b"\xef\xbb\xbf{\"text\":\"a\"}\r\n{\"text\":\"b\"}\r\n").unwrap();
        let (inputs, _) = scan_inputs(&[(p, Format::Jsonl)], "text", 10, None).unwrap();
        let c = ChunkReader::new(inputs, rule(false)).unwrap().read(&[(0, 2)]).unwrap();
        assert_eq!(c.texts, vec!["a".to_string(), "b".into()]);
    }

    mod fuzz {
        //! JSONL parsing and text / chat extraction against arbitrary input: an error or a skipped row, never
        //! a panic; what is embedded is never blank.
        use super::*;
        use crate::fuzz::{config, json_value};
        use proptest::prelude::*;

        fn rules() -> Vec<TextRule> {
            vec![
                TextRule { field: "t".into(), chat: None },
                TextRule { field: "t".into(), chat: Some(ChatFormat::FirstAssistant) },
                TextRule { field: "t".into(), chat: Some(ChatFormat::Turns) },
            ]
        }

        /// A conversation-shaped value: turns with arbitrary roles and content (strings, parts, anything).
        fn chat_value() -> impl Strategy<Value = Value> {
            let role = prop_oneof![Just(Value::from("assistant")), Just(Value::from("MODEL")), Just(Value::from("user")), json_value()];
            let part = prop_oneof![
                "(?s).{0,8}".prop_map(|t| serde_json::json!({"type": "text", "text": t})),
                json_value().prop_map(|v| serde_json::json!({"type": "image_url", "image_url": v})),
                json_value(),
            ];
            let content = prop_oneof!["(?s).{0,8}".prop_map(Value::from), proptest::collection::vec(part, 0..4).prop_map(Value::Array), json_value()];
            let turn = prop_oneof![(role, content).prop_map(|(r, c)| serde_json::json!({"role": r, "content": c})), json_value()];
            proptest::collection::vec(turn, 0..5).prop_map(Value::Array)
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn any_value_gives_text_a_skip_or_an_error(v in prop_oneof![json_value(), chat_value()]) {
                for rule in rules() {
                    if let Ok(Some(text)) = text_of_json(Some(&v), &rule) {
                        prop_assert!(!text.trim().is_empty());
                    }
                }
            }

            #[test]
            fn any_line_parses_or_names_its_line(bytes in proptest::collection::vec(any::<u8>(), 0..64), line in 1u64..4) {
                if let Err(e) = parse_line("f.jsonl", line, &bytes) {
                    let prefix = format!("f.jsonl:{}: ", line);
                    prop_assert!(e.to_string().starts_with(&prefix), "{}", e);
                }
            }

            #[test]
            fn any_file_is_read_or_refused_with_a_named_error(
                lines in proptest::collection::vec(prop_oneof![
                    json_value().prop_map(|v| serde_json::to_vec(&serde_json::json!({"t": v, "x": v})).unwrap()),
                    chat_value().prop_map(|v| serde_json::to_vec(&serde_json::json!({"t": v})).unwrap()),
                    proptest::collection::vec(any::<u8>(), 0..24),
                ], 1..12),
                rule in 0usize..3,
            ) {
                let d = tempfile::tempdir().unwrap();
                let p = d.path().join("f.jsonl");
                let body: Vec<u8> = lines.iter().flat_map(|l| l.iter().copied().filter(|&b| b != b'\n').chain([b'\n'])).collect();
                std::fs::write(&p, &body).unwrap();
                let rule = rules().swap_remove(rule);
                match scan_inputs(&[(p, Format::Jsonl)], "t", 4, None) {
                    Err(e) => prop_assert!(e.to_string().contains("f.jsonl"), "{e}"),
                    Ok((inputs, total)) => match ChunkReader::new(inputs, rule) {
                        Err(e) => prop_assert!(e.to_string().contains("f.jsonl"), "{e}"),
                        Ok(r) => {
                            if let Ok(c) = r.read(&[(0, total)]) {
                                prop_assert_eq!(c.row_ids.len() as u64 + c.skipped, total);
                                prop_assert!(c.texts.iter().all(|t| !t.trim().is_empty()));
                            }
                        }
                    },
                }
            }
        }
    }
}
