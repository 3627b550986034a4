//! Text to token ids exactly as the model's tokenizer.json says: a fast path for BERT WordPiece tokenizers and
//! the `tokenizers` crate (the reference) for everything the fast path does not implement.
//!
//! Why a fast path: `tokenizers` tracks offsets and alignments through every step and allocates a `String`
//! per piece; a loader only needs ids. The fast path computes the same ids with one byte-table pass over
//! ASCII text, hash lookups per word (whole-word hit first, then greedy longest match bounded by the longest
//! vocabulary entry), and stops at the truncation limit instead of tokenizing the rest of a long text.
//! Non-ASCII runs go through the same Unicode steps `tokenizers` takes (clean, CJK spacing, NFD and removal
//! of nonspacing marks with the same crates and tables, then `char::to_lowercase`).
//!
//! Exactness: a run of text between two whitespace characters normalizes independently of its neighbours
//! (whitespace is a Unicode starter, so NFD's reordering never crosses it), which is what lets ASCII runs
//! skip the Unicode machinery. Tests compare every id with `tokenizers` on a varied corpus and fuzzed text.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use serde_json::Value;
use unicode_normalization_alignments::UnicodeNormalization;

use crate::model::{ModelError, ModelSpec};

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<rustc_hash::FxHasher>>;

/// Which tokenizer implementation to use (`--tokenizer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TokenizerChoice {
    /// The fast path when the tokenizer.json is one it implements, `tokenizers` otherwise.
    #[default]
    Auto,
    /// The fast path; an error when the tokenizer.json has a feature it does not implement.
    Fast,
    /// Hugging Face `tokenizers` (the reference the fast path is tested against).
    Reference,
}

/// A model's tokenizer, truncating at the model's `max_seq_length` (special tokens included).
pub struct TextTokenizer {
    engine: Engine,
    /// CPU time of the worker threads of [`TextTokenizer::encode_batch`] (nanoseconds), which the CPU clock
    /// of the calling thread does not include.
    worker_cpu_nanos: std::sync::atomic::AtomicU64,
}

enum Engine {
    Fast(Box<WordPiece>),
    Reference(Box<tokenizers::Tokenizer>),
}

/// Token ids of many texts, flat: row `i` is `ids[starts[i]..starts[i + 1]]`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub starts: Vec<usize>,
    /// Rows cut at the model's maximum length.
    pub truncated: u64,
}

impl Encoded {
    fn new() -> Encoded {
        Encoded { ids: Vec::new(), starts: vec![0], truncated: 0 }
    }

    pub fn rows(&self) -> usize {
        self.starts.len() - 1
    }

    pub fn row(&self, i: usize) -> &[u32] {
        &self.ids[self.starts[i]..self.starts[i + 1]]
    }

    pub fn len_of(&self, i: usize) -> usize {
        self.starts[i + 1] - self.starts[i]
    }

    fn append(&mut self, other: Encoded) {
        let base = self.ids.len();
        self.ids.extend_from_slice(&other.ids);
        self.starts.extend(other.starts[1..].iter().map(|s| s + base));
        self.truncated += other.truncated;
    }
}

impl TextTokenizer {
    fn new(engine: Engine) -> TextTokenizer {
        TextTokenizer { engine, worker_cpu_nanos: Default::default() }
    }

    /// CPU seconds spent so far on worker threads (all texts tokenized on the calling thread are not counted).
    pub fn worker_cpu_seconds(&self) -> f64 {
        self.worker_cpu_nanos.load(std::sync::atomic::Ordering::Relaxed) as f64 * 1e-9
    }

    /// Loads the model's tokenizer.json. With `Auto` the fast path is taken when it implements every feature
    /// of the file; otherwise the reason is logged and `tokenizers` is used.
    pub fn load(model: &ModelSpec, choice: TokenizerChoice) -> Result<TextTokenizer, ModelError> {
        let reference = model.tokenizer()?;
        if choice == TokenizerChoice::Reference {
            return Ok(TextTokenizer::new(Engine::Reference(Box::new(reference))));
        }
        let path = std::path::Path::new(&model.path).join("tokenizer.json");
        let json = crate::model::read_json(&path)?;
        match WordPiece::from_json(&json, model.max_seq_length) {
            Ok(wp) => Ok(TextTokenizer::new(Engine::Fast(Box::new(wp)))),
            Err(why) if choice == TokenizerChoice::Auto => {
                log::info!("tokenizer: {} is not one the fast path implements ({why}); using the tokenizers crate", path.display());
                Ok(TextTokenizer::new(Engine::Reference(Box::new(reference))))
            }
            Err(why) => Err(ModelError::Tokenizer(format!("--tokenizer fast: {}: {why}", path.display()))),
        }
    }

    /// "fast-wordpiece" or "tokenizers": which implementation runs.
    pub fn engine_name(&self) -> &'static str {
        match self.engine {
            Engine::Fast(_) => "fast-wordpiece",
            Engine::Reference(_) => "tokenizers",
        }
    }

    /// Appends the ids of `text` (special tokens included, truncated to the model's length) to `out`;
    /// returns whether the text was cut.
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) -> Result<bool, String> {
        match &self.engine {
            Engine::Fast(wp) => Ok(wp.encode_into(text, out)),
            Engine::Reference(tok) => {
                let e = tok.encode(text, true).map_err(|e| e.to_string())?;
                out.extend_from_slice(e.get_ids());
                Ok(!e.get_overflowing().is_empty())
            }
        }
    }

    /// The ids of `prompt + text` for every text, on `threads` threads (contiguous parts of about equal bytes).
    pub fn encode_batch(&self, texts: &[String], prompt: &str, threads: usize) -> Result<Encoded, String> {
        let parts = split_by_bytes(texts, threads.max(1));
        if parts.len() <= 1 {
            return self.encode_part(texts, prompt);
        }
        let results: Vec<Result<Encoded, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = parts
                .iter()
                .map(|r| {
                    s.spawn(|| {
                        let e = self.encode_part(&texts[r.clone()], prompt);
                        let nanos = (crate::roles::thread_cpu_seconds() * 1e9) as u64;
                        self.worker_cpu_nanos.fetch_add(nanos, std::sync::atomic::Ordering::Relaxed);
                        e
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a tokenizer thread panicked (this is a bug)".into()))).collect()
        });
        let mut all = Encoded::new();
        for r in results {
            all.append(r?);
        }
        Ok(all)
    }

    fn encode_part(&self, texts: &[String], prompt: &str) -> Result<Encoded, String> {
        let mut e = Encoded::new();
        e.ids.reserve(texts.iter().map(|t| t.len() / 4 + 2).sum::<usize>().min(1 << 24));
        let mut joined = String::new();
        for t in texts {
            let text = if prompt.is_empty() {
                t.as_str()
            } else {
                // The prompt goes before the text for the model only; the shard keeps the text as it was.
                joined.clear();
                joined.push_str(prompt);
                joined.push_str(t);
                joined.as_str()
            };
            if self.encode_into(text, &mut e.ids)? {
                e.truncated += 1;
            }
            e.starts.push(e.ids.len());
        }
        Ok(e)
    }
}

/// Splits `texts` into at most `parts` contiguous ranges of about equal total bytes (none empty).
fn split_by_bytes(texts: &[String], parts: usize) -> Vec<std::ops::Range<usize>> {
    let total: usize = texts.iter().map(|t| t.len() + 16).sum();
    let per = total.div_ceil(parts.max(1)).max(1);
    let mut out = Vec::new();
    let (mut start, mut acc) = (0, 0);
    for (i, t) in texts.iter().enumerate() {
        acc += t.len() + 16;
        if acc >= per && out.len() + 1 < parts {
            out.push(start..i + 1);
            start = i + 1;
            acc = 0;
        }
    }
    if start < texts.len() {
        out.push(start..texts.len());
    }
    out
}

/// What a byte below 0x80 becomes after normalization and pre-tokenization.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ascii {
    /// Removed by the normalizer.
    Drop,
    /// Whitespace: ends a word.
    Space,
    /// Punctuation: a word of its own.
    Punct(u8),
    /// Part of a word, as this byte.
    Letter(u8),
}

/// The BertNormalizer settings.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Normalize {
    clean_text: bool,
    chinese: bool,
    strip_accents: bool,
    lowercase: bool,
}

/// BERT-family WordPiece: BertNormalizer (or none), BertPreTokenizer, WordPiece, special tokens around the text.
struct WordPiece {
    norm: Normalize,
    ascii: [Ascii; 128],
    /// Every vocabulary entry: the first piece of a word.
    words: FastMap<Box<str>, u32>,
    /// Entries that start with the continuing-subword prefix, without it: the later pieces of a word.
    conts: FastMap<Box<str>, u32>,
    longest_word: usize,
    longest_cont: usize,
    unk: u32,
    max_chars_per_word: usize,
    /// Added tokens matched in the raw text (content, id), longest first for leftmost-longest matching.
    added: Vec<(String, u32)>,
    /// First bytes of the added tokens: a text without any of them has none.
    added_first: [bool; 256],
    /// Special ids before and after the text.
    before: Vec<u32>,
    after: Vec<u32>,
    /// Most content ids per text (the model's length minus the special tokens).
    limit: usize,
}

/// Unicode properties the BERT steps ask of every character, cached in one byte per character of the first
/// three planes (every script, emoji, CJK extensions; the category tables are binary searches: each character is looked up the first time
/// it is seen, by any thread, instead of every time).
mod class {
    use unicode_categories::UnicodeCategories;

    /// `tokenizers`' BERT whitespace: \t, \n, \r and Unicode White_Space.
    pub const WHITESPACE: u8 = 1;
    /// Categories Cc, Cf, Co (not \t, \n, \r): removed by clean_text.
    pub const CONTROL: u8 = 2;
    /// ASCII or Unicode punctuation: a word of its own.
    pub const PUNCT: u8 = 4;
    /// Category Mn: removed with the accents.
    pub const NONSPACING_MARK: u8 = 8;
    /// `char::is_whitespace`: where the pre-tokenizer splits.
    pub const SPLIT: u8 = 16;

    fn compute(c: char) -> u8 {
        let mut f = 0;
        if matches!(c, '\t' | '\n' | '\r') || c.is_whitespace() {
            f |= WHITESPACE;
        }
        if !matches!(c, '\t' | '\n' | '\r') && c.is_other() {
            f |= CONTROL;
        }
        if c.is_ascii_punctuation() || c.is_punctuation() {
            f |= PUNCT;
        }
        if c.is_mark_nonspacing() {
            f |= NONSPACING_MARK;
        }
        if c.is_whitespace() {
            f |= SPLIT;
        }
        f
    }

    /// Set in a cache entry once it holds the character's flags.
    const KNOWN: u8 = 128;

    /// The flags of `c`.
    pub fn of(c: char) -> u8 {
        use std::sync::atomic::{AtomicU8, Ordering};
        static CACHE: [AtomicU8; 0x30000] = [const { AtomicU8::new(0) }; 0x30000];
        let Some(slot) = CACHE.get(c as usize) else { return compute(c) };
        // Relaxed is enough: every thread computes the same value for a character.
        let f = slot.load(Ordering::Relaxed);
        if f & KNOWN != 0 {
            return f;
        }
        let f = compute(c) | KNOWN;
        slot.store(f, Ordering::Relaxed);
        f
    }

    pub fn has(c: char, flag: u8) -> bool {
        of(c) & flag != 0
    }
}

fn is_whitespace(c: char) -> bool {
    class::has(c, class::WHITESPACE)
}

fn is_control(c: char) -> bool {
    class::has(c, class::CONTROL)
}

fn is_chinese_char(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F | 0x2B740..=0x2B81F | 0x2B920..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F
    )
}

fn is_bert_punc(c: char) -> bool {
    class::has(c, class::PUNCT)
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

impl Normalize {
    fn from_json(v: &Value) -> Result<Normalize, String> {
        if v.is_null() {
            return Ok(Normalize { clean_text: false, chinese: false, strip_accents: false, lowercase: false });
        }
        if str_field(v, "type") != Some("BertNormalizer") {
            return Err(format!("normalizer {}", str_field(v, "type").unwrap_or("?")));
        }
        let flag = |k: &str, default: bool| v.get(k).and_then(Value::as_bool).unwrap_or(default);
        let lowercase = flag("lowercase", true);
        let strip_accents = v.get("strip_accents").and_then(Value::as_bool).unwrap_or(lowercase);
        Ok(Normalize { clean_text: flag("clean_text", true), chinese: flag("handle_chinese_chars", true), strip_accents, lowercase })
    }

    /// Normalizes `run` (text without whitespace boundaries inside that matter) the way BertNormalizer does,
    /// appending to `out`; `s` is scratch space.
    fn apply(&self, run: &str, s: &mut String, out: &mut String) {
        s.clear();
        for c in run.chars() {
            let c = if self.clean_text {
                if c == '\0' || c == '\u{fffd}' || is_control(c) {
                    continue;
                }
                if is_whitespace(c) {
                    ' '
                } else {
                    c
                }
            } else {
                c
            };
            if self.chinese && is_chinese_char(c) {
                s.push(' ');
                s.push(c);
                s.push(' ');
            } else {
                s.push(c);
            }
        }
        let push = |out: &mut String, c: char| {
            if self.lowercase {
                out.extend(c.to_lowercase());
            } else {
                out.push(c);
            }
        };
        // Nonspacing marks all lie at U+0300 and above.
        let kept = |c: &char| *c < '\u{300}' || !class::has(*c, class::NONSPACING_MARK);
        if !self.strip_accents {
            s.chars().for_each(|c| push(out, c));
        } else if unicode_normalization_alignments::is_nfd_quick(s.chars()) == unicode_normalization_alignments::IsNormalized::Yes {
            // Already in NFD (most text of scripts without precomposed letters): no decomposition to do.
            s.chars().filter(kept).for_each(|c| push(out, c));
        } else {
            s.as_str().nfd().map(|(c, _)| c).filter(kept).for_each(|c| push(out, c));
        }
    }

    /// What an ASCII character becomes.
    fn ascii(&self, b: u8) -> Ascii {
        let mut s = String::new();
        self.apply(&(b as char).to_string(), &mut String::new(), &mut s);
        let mut chars = s.chars();
        match (chars.next(), chars.next()) {
            (None, _) => Ascii::Drop,
            (Some(c), None) if c.is_whitespace() => Ascii::Space,
            (Some(c), None) if c.is_ascii() && is_bert_punc(c) => Ascii::Punct(c as u8),
            (Some(c), None) if c.is_ascii() => Ascii::Letter(c as u8),
            _ => unreachable!("ASCII normalizes to at most one ASCII character (this is a bug)"),
        }
    }
}

impl WordPiece {
    /// The fast path for a tokenizer.json, or why it does not apply.
    fn from_json(json: &Value, max_seq_length: usize) -> Result<WordPiece, String> {
        let model = &json["model"];
        if str_field(model, "type") != Some("WordPiece") {
            return Err(format!("model {}", str_field(model, "type").unwrap_or("?")));
        }
        let norm = Normalize::from_json(&json["normalizer"])?;
        match &json["pre_tokenizer"] {
            v if str_field(v, "type") == Some("BertPreTokenizer") => {}
            v => return Err(format!("pre_tokenizer {}", str_field(v, "type").unwrap_or("none"))),
        }
        if let Some(t) = json.get("truncation").filter(|t| !t.is_null()) {
            if str_field(t, "direction").is_some_and(|d| d != "Right") {
                return Err("truncation from the left".into());
            }
            if str_field(t, "strategy").is_some_and(|s| s == "OnlySecond") {
                return Err("truncation strategy OnlySecond".into());
            }
        }
        let vocab = model["vocab"].as_object().ok_or("model.vocab is not a map")?;
        let prefix = str_field(model, "continuing_subword_prefix").unwrap_or("##");
        let mut words = FastMap::default();
        let mut conts = FastMap::default();
        let (mut longest_word, mut longest_cont) = (0, 0);
        for (k, v) in vocab {
            let id = v.as_u64().and_then(|i| u32::try_from(i).ok()).ok_or_else(|| format!("vocab entry {k:?} has no id"))?;
            words.insert(k.as_str().into(), id);
            longest_word = longest_word.max(k.len());
            if let Some(rest) = k.strip_prefix(prefix) {
                conts.insert(rest.into(), id);
                longest_cont = longest_cont.max(rest.len());
            }
        }
        let unk_token = str_field(model, "unk_token").unwrap_or("[UNK]");
        let unk = *words.get(unk_token).ok_or_else(|| format!("unk_token {unk_token:?} is not in the vocabulary"))?;
        let max_chars_per_word = model.get("max_input_chars_per_word").and_then(Value::as_u64).unwrap_or(100) as usize;

        let mut added = Vec::new();
        for t in json["added_tokens"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let content = str_field(t, "content").ok_or("an added token without content")?;
            let id = t["id"].as_u64().and_then(|i| u32::try_from(i).ok()).ok_or("an added token without an id")?;
            for opt in ["single_word", "lstrip", "rstrip", "normalized"] {
                if t.get(opt).and_then(Value::as_bool).unwrap_or(opt == "normalized" && !t["special"].as_bool().unwrap_or(false)) {
                    return Err(format!("added token {content:?} has {opt}"));
                }
            }
            if !content.is_empty() {
                added.push((content.to_string(), id));
            }
        }
        added.sort_by_key(|(c, _)| std::cmp::Reverse(c.len()));
        let mut added_first = [false; 256];
        for (c, _) in &added {
            added_first[c.as_bytes()[0] as usize] = true;
        }

        let (before, after) = specials(&json["post_processor"])?;
        let specials = before.len() + after.len();
        if max_seq_length <= specials {
            return Err(format!("max_seq_length {max_seq_length} leaves no room for text"));
        }
        let mut ascii = [Ascii::Drop; 128];
        for (b, a) in ascii.iter_mut().enumerate() {
            *a = norm.ascii(b as u8);
        }
        Ok(WordPiece {
            norm,
            ascii,
            words,
            conts,
            longest_word,
            longest_cont,
            unk,
            max_chars_per_word,
            added,
            added_first,
            before,
            after,
            limit: max_seq_length - specials,
        })
    }

    fn encode_into(&self, text: &str, out: &mut Vec<u32>) -> bool {
        out.extend_from_slice(&self.before);
        let start = out.len();
        let mut cut = false;
        let mut rest = text;
        // Added tokens (e.g. "[SEP]" typed in the text) are split out of the raw text first, leftmost-longest.
        while !rest.is_empty() && !cut {
            let (seg, tok, after) = self.next_added(rest);
            cut = self.segment(seg, out, start);
            if let Some(id) = tok.filter(|_| !cut) {
                out.push(id);
                cut = out.len() - start > self.limit;
            }
            rest = after;
        }
        if out.len() - start > self.limit {
            out.truncate(start + self.limit);
            cut = true;
        }
        out.extend_from_slice(&self.after);
        cut
    }

    /// The text before the first added token, that token's id, and the text after it.
    fn next_added<'t>(&self, text: &'t str) -> (&'t str, Option<u32>, &'t str) {
        let bytes = text.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            if !self.added_first[b as usize] {
                continue;
            }
            if let Some((c, id)) = self.added.iter().find(|(c, _)| bytes[i..].starts_with(c.as_bytes())) {
                return (&text[..i], Some(*id), &text[i + c.len()..]);
            }
        }
        (text, None, "")
    }

    /// Tokenizes a segment without added tokens; true once more than `limit` ids follow `start`.
    fn segment(&self, seg: &str, out: &mut Vec<u32>, start: usize) -> bool {
        let bytes = seg.as_bytes();
        let mut word: Vec<u8> = Vec::new();
        let (mut normalized, mut scratch) = (String::new(), String::new());
        let mut i = 0;
        while i < bytes.len() {
            // One run: up to the next ASCII byte that normalizes to whitespace.
            let run_start = i;
            let mut ascii_only = true;
            while i < bytes.len() {
                let b = bytes[i];
                if b < 0x80 {
                    if self.ascii[b as usize] == Ascii::Space {
                        break;
                    }
                } else {
                    ascii_only = false;
                }
                i += 1;
            }
            let run = &seg[run_start..i];
            i += 1; // the whitespace byte
            if run.is_empty() {
                continue;
            }
            if ascii_only {
                for &b in run.as_bytes() {
                    match self.ascii[b as usize] {
                        Ascii::Drop | Ascii::Space => {}
                        Ascii::Letter(c) => word.push(c),
                        Ascii::Punct(c) => {
                            if self.word(&word, out, start) || self.word(&[c], out, start) {
                                return true;
                            }
                            word.clear();
                        }
                    }
                }
                if self.word(&word, out, start) {
                    return true;
                }
                word.clear();
            } else {
                normalized.clear();
                self.norm.apply(run, &mut scratch, &mut normalized);
                let mut buf = [0u8; 4];
                for c in normalized.chars() {
                    if class::has(c, class::SPLIT) {
                        if self.word(&word, out, start) {
                            return true;
                        }
                        word.clear();
                    } else if is_bert_punc(c) {
                        if self.word(&word, out, start) || self.word(c.encode_utf8(&mut buf).as_bytes(), out, start) {
                            return true;
                        }
                        word.clear();
                    } else {
                        word.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
                if self.word(&word, out, start) {
                    return true;
                }
                word.clear();
            }
        }
        false
    }

    /// WordPiece of one word (valid UTF-8): greedy longest match first; a word with a part not in the
    /// vocabulary, or longer than `max_input_chars_per_word` characters, is one unknown token. True once more
    /// than `limit` ids follow `start`.
    fn word(&self, word: &[u8], out: &mut Vec<u32>, start: usize) -> bool {
        if word.is_empty() {
            return false;
        }
        let w = std::str::from_utf8(word).expect("words are cut at character boundaries (this is a bug)");
        if w.len() > self.max_chars_per_word && w.chars().nth(self.max_chars_per_word).is_some() {
            out.push(self.unk);
        } else if let Some(&id) = self.words.get(w) {
            out.push(id);
        } else {
            let mark = out.len();
            let mut from = 0;
            while from < w.len() {
                let (map, longest) = if from == 0 { (&self.words, self.longest_word) } else { (&self.conts, self.longest_cont) };
                let mut end = w.len().min(from + longest);
                while !w.is_char_boundary(end) {
                    end -= 1;
                }
                let found = loop {
                    if end <= from {
                        break None;
                    }
                    if let Some(&id) = map.get(&w[from..end]) {
                        break Some(id);
                    }
                    end -= 1;
                    while !w.is_char_boundary(end) {
                        end -= 1;
                    }
                };
                match found {
                    Some(id) => {
                        out.push(id);
                        from = end;
                    }
                    None => {
                        out.truncate(mark);
                        out.push(self.unk);
                        break;
                    }
                }
            }
        }
        out.len() - start > self.limit
    }
}

/// The special ids a post-processor puts before and after a single text.
fn specials(pp: &Value) -> Result<(Vec<u32>, Vec<u32>), String> {
    let ids_of = |v: &Value| -> Option<u32> { v.as_u64().and_then(|i| u32::try_from(i).ok()) };
    match str_field(pp, "type") {
        None if pp.is_null() => Ok((Vec::new(), Vec::new())),
        Some("BertProcessing") => {
            let cls = pp["cls"].get(1).and_then(ids_of).ok_or("BertProcessing without a cls id")?;
            let sep = pp["sep"].get(1).and_then(ids_of).ok_or("BertProcessing without a sep id")?;
            Ok((vec![cls], vec![sep]))
        }
        Some("TemplateProcessing") => {
            let (mut before, mut after) = (Vec::new(), Vec::new());
            let mut seen_text = false;
            for piece in pp["single"].as_array().ok_or("TemplateProcessing without a single template")? {
                if let Some(seq) = piece.get("Sequence") {
                    if seen_text || str_field(seq, "id") != Some("A") {
                        return Err("a single template with other sequences than one A".into());
                    }
                    seen_text = true;
                } else if let Some(sp) = piece.get("SpecialToken") {
                    let name = str_field(sp, "id").ok_or("a special token without an id")?;
                    let ids = pp["special_tokens"][name]["ids"].as_array().ok_or_else(|| format!("special token {name:?} has no ids"))?;
                    let ids: Vec<u32> =
                        ids.iter().map(ids_of).collect::<Option<_>>().ok_or_else(|| format!("special token {name:?} has a bad id"))?;
                    if seen_text { &mut after } else { &mut before }.extend(ids);
                } else {
                    return Err("an unknown piece in the single template".into());
                }
            }
            if !seen_text {
                return Err("a single template without the text".into());
            }
            Ok((before, after))
        }
        other => Err(format!("post_processor {}", other.unwrap_or("?"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minilm() -> Option<ModelSpec> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
        dir.join("tokenizer.json").exists().then(|| ModelSpec::load(&dir, None).expect("the bundled model loads"))
    }

    /// A varied corpus: prose, code, scripts, emoji, accents, control characters, long words and texts.
    pub(crate) fn corpus() -> Vec<String> {
        let mut v: Vec<String> = [
            "Hello, world! This is a test.",
            "",
            "   ",
            "The quick brown fox jumps over the lazy dog.",
            "fn main() { println!(\"{}\", x.iter().map(|a| a * 2).sum::<u32>()); } // code_with_underscores",
            "def f(x):\n\treturn x**2 if x>0 else -x  # comment\r\n",
            "日本語のテキストと中文文本，还有한국어 텍스트。",
            "مرحبا بالعالم! هذا نص عربي.",
            "שלום עולם, זה טקסט בעברית.",
            "Emoji: 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇫🇷 😀😃😄",
            "Café naïve résumé Ångström Über straße ǅ İstanbul ﬁ ΣΑΣ Ωμέγα",
            "e\u{0301} a\u{0300}\u{0316} o\u{0308}\u{0304} combining marks and q\u{0323}\u{0307}",
            "nul\u{0}byte and \u{1}\u{7f}\u{85}\u{200b}zero\u{200d}width\u{feff}bom \u{fffd} replacement",
            "vertical\u{0b}tab form\u{0c}feed line\u{2028}sep para\u{2029}sep nbsp\u{a0}here ideographic\u{3000}space",
            "[CLS] already [SEP] special [MASK] tokens [UNK] and [PAD] and [sep] [ MASK ] [[SEP]]",
            "URLs https://example.com/a/b?c=d&e=f#g and emails someone@example.org",
            "Numbers 3.14159 1,000,000 42nd 1e-9 0x1F -7",
            "ALL CAPS SHOUTING AND MiXeD CaSe",
            "Punctuation!!! ??? ... --- ___ ~~~ ``` ''' \"\" «» „“ ‘’ — – • · ¿¡ 、。",
            "Ελληνικά κείμενα και русский текст и українська мова",
            "हिन्दी पाठ और বাংলা লেখা และภาษาไทย",
            "Math: ∑ x² ≤ ∞, ∀ε>0 ∃δ; ½ ¼ ⅓ ℕ ℝ √2 ≠ π",
            "tabs\tand\nnewlines\r\nand  double  spaces",
            "a-b_c.d/e\\f|g@h#i$j%k^l&m*n(o)p[q]r{s}t<u>v=w+x~y`z",
            "Private use \u{e000} and unassigned \u{378} and surrogates never appear",
            "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕬𝖑𝖕𝖍𝖆 𝟙𝟚𝟛 and 𠀀𠀁 (CJK Ext B) and 龘",
            "unaffable unbelievable antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
            "It's don't won't y'all o'clock rock'n'roll",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push("x".repeat(100));
        v.push("x".repeat(101));
        v.push("é".repeat(100));
        v.push("é".repeat(101));
        v.push("a".repeat(100_000));
        v.push("word ".repeat(5000));
        v.push("Lorem ipsum dolor sit amet, ".repeat(200));
        v.push("日本".repeat(3000));
        v.push(format!("{}{}", "ab".repeat(60), "[SEP]".repeat(300)));
        // Pseudo-random mixes of the pieces above, cut at arbitrary character boundaries.
        let pieces: Vec<char> = v.iter().take(28).flat_map(|s| s.chars()).collect();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..400 {
            let mut s = String::new();
            let n = (seed % 300) as usize;
            for _ in 0..n {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                s.push(pieces[(seed % pieces.len() as u64) as usize]);
            }
            v.push(s);
        }
        v
    }

    #[test]
    fn the_fast_path_gives_the_ids_of_tokenizers_on_a_varied_corpus() {
        let Some(model) = minilm() else { return eprintln!("skipped: models/all-MiniLM-L6-v2 not fetched (scripts/fetch-model.sh)") };
        let fast = TextTokenizer::load(&model, TokenizerChoice::Fast).expect("fast path applies to MiniLM");
        assert_eq!(fast.engine_name(), "fast-wordpiece");
        let reference = TextTokenizer::load(&model, TokenizerChoice::Reference).unwrap();
        let texts = corpus();
        for prompt in ["", "query: "] {
            let a = fast.encode_batch(&texts, prompt, 3).unwrap();
            let b = reference.encode_batch(&texts, prompt, 1).unwrap();
            for (i, t) in texts.iter().enumerate() {
                assert_eq!(a.row(i), b.row(i), "text {i}: {:?}", t.chars().take(80).collect::<String>());
            }
            assert_eq!(a.truncated, b.truncated);
            assert!(a.truncated >= 4, "long texts are cut: {}", a.truncated);
        }
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz::config())]
        /// Random text mixing ASCII, whitespace of every kind, controls, accents, CJK, emoji and the special
        /// tokens: the fast path gives the ids of `tokenizers`, truncation included (max_seq_length 256).
        #[test]
        fn fuzzed_text_gives_the_ids_of_tokenizers(
            parts in proptest::collection::vec(proptest::prop_oneof![
                "[a-zA-Z0-9 ]{1,12}",
                "[ \t\n\r\x0b\x0c\u{85}\u{a0}\u{2028}\u{3000}]{1,3}",
                "[\x00-\x1f\x7f\u{200b}-\u{200f}\u{fffd}\u{feff}]",
                "[!-/:-@\\[-`{-~\u{a1}-\u{bf}\u{2010}-\u{2027}]{1,3}",
                "[\u{c0}-\u{24f}\u{300}-\u{36f}\u{1e00}-\u{1eff}]{1,4}",
                "[\u{4e00}-\u{4e40}\u{3040}-\u{30ff}\u{ac00}-\u{ac40}\u{600}-\u{6ff}]{1,4}",
                "[\u{1f300}-\u{1f64f}\u{200d}\u{fe0f}\u{1f3fb}-\u{1f3ff}]{1,4}",
                "\\[(CLS|SEP|MASK|UNK|PAD)\\]",
                "(?s).{1,8}",
            ], 0..60)
        ) {
            let Some((fast, reference)) = tokenizers_pair() else { return Ok(()) };
            let text: String = parts.concat();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let cut_a = fast.encode_into(&text, &mut a).unwrap();
            let cut_b = reference.encode_into(&text, &mut b).unwrap();
            proptest::prop_assert_eq!(&a, &b, "text {:?}", text);
            proptest::prop_assert_eq!(cut_a, cut_b);
        }
    }

    /// The two engines for MiniLM, loaded once for all fuzz cases.
    fn tokenizers_pair() -> Option<&'static (TextTokenizer, TextTokenizer)> {
        static PAIR: std::sync::OnceLock<Option<(TextTokenizer, TextTokenizer)>> = std::sync::OnceLock::new();
        PAIR.get_or_init(|| {
            let model = minilm()?;
            Some((TextTokenizer::load(&model, TokenizerChoice::Fast).unwrap(), TextTokenizer::load(&model, TokenizerChoice::Reference).unwrap()))
        })
        .as_ref()
    }

    #[test]
    fn the_bert_processing_and_other_settings_take_the_fast_path_or_fall_back_with_a_reason() {
        let json = |pp: &str, norm: &str, pre: &str, added: &str| -> Value {
            serde_json::from_str(&format!(
                r###"{{"model":{{"type":"WordPiece","unk_token":"[UNK]","vocab":{{"[UNK]":0,"[CLS]":1,"[SEP]":2,"a":3,"##b":4}}}},
                "normalizer":{norm},"pre_tokenizer":{pre},"post_processor":{pp},"added_tokens":[{added}]}}"###
            ))
            .unwrap()
        };
        let bert = r#"{"type":"BertProcessing","sep":["[SEP]",2],"cls":["[CLS]",1]}"#;
        let norm = r#"{"type":"BertNormalizer","lowercase":true}"#;
        let pre = r#"{"type":"BertPreTokenizer"}"#;
        let tok = r#"{"id":1,"content":"[CLS]","special":true,"normalized":false}"#;
        let wp = WordPiece::from_json(&json(bert, norm, pre, tok), 8).unwrap();
        let mut out = Vec::new();
        assert!(!wp.encode_into("A ab", &mut out));
        assert_eq!(out, vec![1, 3, 3, 4, 2]);
        out.clear();
        assert!(wp.encode_into("a a a a a a a", &mut out), "8 minus 2 special tokens leave room for 6");
        assert_eq!(out, vec![1, 3, 3, 3, 3, 3, 3, 2]);
        for (pp, norm, pre, added, why) in [
            (bert, r#"{"type":"Sequence","normalizers":[]}"#, pre, tok, "normalizer Sequence"),
            (bert, norm, r#"{"type":"Whitespace"}"#, tok, "pre_tokenizer Whitespace"),
            (r#"{"type":"RobertaProcessing"}"#, norm, pre, tok, "post_processor RobertaProcessing"),
            (bert, norm, pre, r#"{"id":1,"content":"[CLS]","special":true,"lstrip":true}"#, "has lstrip"),
            (bert, norm, pre, r#"{"id":1,"content":"x","special":false}"#, "has normalized"),
        ] {
            let e = WordPiece::from_json(&json(pp, norm, pre, added), 8).err().expect("falls back");
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn other_tokenizers_fall_back_to_the_tokenizers_crate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen3-embedding");
        let model = ModelSpec::load(&dir, None).unwrap();
        let t = TextTokenizer::load(&model, TokenizerChoice::Auto).unwrap();
        assert_eq!(t.engine_name(), "tokenizers");
        let e = TextTokenizer::load(&model, TokenizerChoice::Fast).err().expect("no fast path for BPE yet");
        assert!(e.to_string().contains("model BPE"), "{e}");
        let enc = t.encode_batch(&["hello world".to_string(), String::new()], "", 2).unwrap();
        assert_eq!(enc.rows(), 2);
        assert_eq!(enc.row(1), &[0], "an empty text is the end-of-text token alone");
    }

    #[test]
    fn texts_split_into_parts_of_about_equal_bytes() {
        let texts: Vec<String> = [10, 10, 10, 10, 100, 10].iter().map(|&n| "x".repeat(n)).collect();
        let parts = split_by_bytes(&texts, 3);
        assert!(parts.len() <= 3 && !parts.is_empty());
        assert_eq!(parts.first().unwrap().start, 0);
        assert_eq!(parts.last().unwrap().end, texts.len());
        for w in parts.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert_eq!(split_by_bytes(&[], 4), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(split_by_bytes(&texts[..1], 4), vec![0..1]);
    }
}
