//! Text to token ids exactly as the model's tokenizer.json says: fast paths for BERT WordPiece
//! ([`wordpiece`]) and byte-level BPE ([`bpe`], GPT-2 and Qwen2/Qwen3 tokenizers), and the `tokenizers` crate
//! (the reference) for every tokenizer.json feature they do not implement (detected at load and logged).
//!
//! Why fast paths: `tokenizers` tracks offsets and alignments through every step and allocates a `String` per
//! piece; a loader only needs ids. The fast paths compute the same ids without offsets, cache what they
//! look up, and stop at the truncation limit instead of tokenizing the rest of a long text. Both split the
//! added tokens (e.g. `[SEP]` typed in a text) out of the raw text first and put the post-processor's special
//! ids around the text, as `tokenizers` does ([`Frame`]). Tests compare every id with `tokenizers` on varied
//! corpora and fuzzed text; `tests/tokens.rs` compares with Python `tokenizers` on a corpus made fresh per run.

use std::path::Path;

use crate::model::{ModelError, ModelSpec};

pub mod bpe;
pub(crate) mod class;
pub(crate) mod frame;
pub mod wordpiece;

use frame::{str_field, Scratch};

pub use crate::cli::TokenizerChoice;

/// A model's tokenizer, truncating at the model's `max_seq_length` (special tokens included).
pub struct TextTokenizer {
    engine: Engine,
    /// CPU time of the worker threads of [`TextTokenizer::encode_batch`] (nanoseconds), which the CPU clock
    /// of the calling thread does not include.
    worker_cpu_nanos: std::sync::atomic::AtomicU64,
}

enum Engine {
    WordPiece(Box<wordpiece::WordPiece>),
    Bpe(Box<bpe::Bpe>),
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
        Self::with_reference(&Path::new(&model.path).join("tokenizer.json"), || model.tokenizer(), model.max_seq_length, choice)
    }

    /// A tokenizer.json outside a model folder, truncating at `max_seq_length` (special tokens included).
    pub fn from_file(path: &Path, max_seq_length: usize, choice: TokenizerChoice) -> Result<TextTokenizer, ModelError> {
        Self::with_reference(path, || crate::model::hf_tokenizer(path, max_seq_length), max_seq_length, choice)
    }

    /// The fast path when it applies; `reference` (loading `tokenizers`, which parses the whole file again:
    /// half a second for a 150k-token BPE) only when it does not, or when asked for.
    fn with_reference(
        path: &Path,
        reference: impl FnOnce() -> Result<tokenizers::Tokenizer, ModelError>,
        max_seq_length: usize,
        choice: TokenizerChoice,
    ) -> Result<TextTokenizer, ModelError> {
        if choice == TokenizerChoice::Reference {
            return Ok(TextTokenizer::new(Engine::Reference(Box::new(reference()?))));
        }
        let json = crate::model::read_json(path)?;
        let fast = match str_field(&json["model"], "type") {
            Some("WordPiece") => wordpiece::WordPiece::from_json(&json, max_seq_length).map(|w| Engine::WordPiece(Box::new(w))),
            Some("BPE") => bpe::Bpe::from_json(&json, max_seq_length).map(|b| Engine::Bpe(Box::new(b))),
            other => Err(format!("model {}", other.unwrap_or("?"))),
        };
        match fast {
            Ok(engine) => Ok(TextTokenizer::new(engine)),
            Err(why) if choice == TokenizerChoice::Auto => {
                log::info!("tokenizer: {} is not one the fast paths implement ({why}); using the tokenizers crate", path.display());
                Ok(TextTokenizer::new(Engine::Reference(Box::new(reference()?))))
            }
            Err(why) => Err(ModelError::Tokenizer(format!("--tokenizer fast: {}: {why}", path.display()))),
        }
    }

    /// "fast-wordpiece", "fast-bpe" or "tokenizers": which implementation runs.
    pub fn engine_name(&self) -> &'static str {
        match self.engine {
            Engine::WordPiece(_) => "fast-wordpiece",
            Engine::Bpe(_) => "fast-bpe",
            Engine::Reference(_) => "tokenizers",
        }
    }

    /// Appends the ids of `text` (special tokens included, truncated to the model's length) to `out`;
    /// returns whether the text was cut.
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) -> Result<bool, String> {
        self.encode_with(text, out, &mut Scratch::default())
    }

    fn encode_with(&self, text: &str, out: &mut Vec<u32>, scratch: &mut Scratch) -> Result<bool, String> {
        match &self.engine {
            Engine::WordPiece(wp) => Ok(wp.frame.encode(text, out, scratch, |seg, out, start, scratch| wp.segment(seg, out, start, scratch))),
            Engine::Bpe(b) => Ok(b.frame.encode(text, out, scratch, |seg, out, start, scratch| b.segment(seg, out, start, scratch))),
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
                        let nanos = (crate::walltime::thread_cpu_seconds() * 1e9) as u64;
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
        let mut scratch = Scratch::default();
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
            if self.encode_with(text, &mut e.ids, &mut scratch)? {
                e.truncated += 1;
            }
            e.starts.push(e.ids.len());
        }
        Ok(e)
    }
}

/// The length bin of a row of `len` tokens: 0 for 0-16, 1 for 17-32, 2 for 33-64, ... (powers of two).
pub fn length_bin(len: usize) -> usize {
    if len <= 16 {
        0
    } else {
        (usize::BITS - (len - 1).leading_zeros()) as usize - 4
    }
}

/// Adds per-bin counts `more` to `bins`, growing it as needed.
pub fn add_bins(bins: &mut Vec<u64>, more: &[u64]) {
    if bins.len() < more.len() {
        bins.resize(more.len(), 0);
    }
    for (a, b) in bins.iter_mut().zip(more) {
        *a += b;
    }
}

/// The token range `(from, to)` of length bin `i` (both ends included).
pub fn bin_range(i: usize) -> (usize, usize) {
    if i == 0 {
        (0, 16)
    } else {
        ((8 << i) + 1, 16 << i)
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

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use serde_json::Value;

    use super::*;

    pub fn root() -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// Fast and reference tokenizers of a tokenizer.json (loaded once per file for all tests), if present.
    pub fn pair(path: &Path, max_seq_length: usize) -> Option<&'static (TextTokenizer, TextTokenizer)> {
        type Pairs = std::sync::Mutex<HashMap<std::path::PathBuf, &'static (TextTokenizer, TextTokenizer)>>;
        static PAIRS: std::sync::OnceLock<Pairs> = std::sync::OnceLock::new();
        if !path.exists() {
            eprintln!("skipped: {} is not there (scripts/fetch-model.sh makes it)", path.display());
            return None;
        }
        let mut pairs = PAIRS.get_or_init(Default::default).lock().unwrap();
        Some(*pairs.entry(path.to_path_buf()).or_insert_with(|| {
            let fast = TextTokenizer::from_file(path, max_seq_length, TokenizerChoice::Fast).expect("the fast path applies");
            let reference = TextTokenizer::from_file(path, max_seq_length, TokenizerChoice::Reference).unwrap();
            Box::leak(Box::new((fast, reference)))
        }))
    }

    /// Every text of `texts` (with and without a prompt) gives the same ids and cut flags on both.
    pub fn assert_same(pair: &(TextTokenizer, TextTokenizer), texts: &[String]) {
        for prompt in ["", "query: "] {
            let a = pair.0.encode_batch(texts, prompt, 3).unwrap();
            let b = pair.1.encode_batch(texts, prompt, 1).unwrap();
            for (i, t) in texts.iter().enumerate() {
                assert_eq!(a.row(i), b.row(i), "text {i}: {:?}", t.chars().take(120).collect::<String>());
            }
            assert_eq!(a.truncated, b.truncated);
        }
    }

    /// A varied corpus: prose, code, scripts, emoji, accents, control characters, long words and texts.
    pub fn corpus() -> Vec<String> {
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
            "<|endoftext|> and <|im_start|>user\nhi<|im_end|> and <|endoftext|<|im_end|>>",
            "URLs https://example.com/a/b?c=d&e=f#g and emails someone@example.org",
            "Numbers 3.14159 1,000,000 42nd 1e-9 0x1F -7 ١٢٣ ½ Ⅻ 2024年",
            "ALL CAPS SHOUTING AND MiXeD CaSe, IT'S DON'T I'M WE'RE THEY'VE YOU'LL HE'D 'ſ 'S",
            "Punctuation!!! ??? ... --- ___ ~~~ ``` ''' \"\" «» „“ ‘’ — – • · ¿¡ 、。",
            "Ελληνικά κείμενα και русский текст и українська мова",
            "हिन्दी पाठ और বাংলা লেখা และภาษาไทย",
            "Math: ∑ x² ≤ ∞, ∀ε>0 ∃δ; ½ ¼ ⅓ ℕ ℝ √2 ≠ π",
            "tabs\tand\nnewlines\r\nand  double  spaces   \n\n  \r\n\t end with spaces   ",
            "a-b_c.d/e\\f|g@h#i$j%k^l&m*n(o)p[q]r{s}t<u>v=w+x~y`z",
            "Private use \u{e000} and unassigned \u{378} and surrogates never appear",
            "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕬𝖑𝖕𝖍𝖆 𝟙𝟚𝟛 and 𠀀𠀁 (CJK Ext B) and 龘",
            "unaffable unbelievable antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
            "It's don't won't y'all o'clock rock'n'roll 'tis 'twas",
            "   leading spaces and trailing\n",
            "\n\n\nnewlines first",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let seeds = v.len();
        v.push("x".repeat(100));
        v.push("x".repeat(101));
        v.push("é".repeat(100));
        v.push("é".repeat(101));
        v.push("a".repeat(100_000));
        v.push("word ".repeat(5000));
        v.push("Lorem ipsum dolor sit amet, ".repeat(200));
        v.push("日本".repeat(3000));
        v.push(format!("{}{}", "ab".repeat(60), "[SEP]".repeat(300)));
        v.push(" ".repeat(3000));
        v.push("\n".repeat(3000));
        // Pseudo-random mixes of the pieces above, cut at arbitrary character boundaries.
        let pieces: Vec<char> = v.iter().take(seeds).flat_map(|s| s.chars()).collect();
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

    /// Random text mixing ASCII, whitespace of every kind, controls, accents, CJK, emoji, numbers,
    /// contractions and the special tokens of BERT and Qwen.
    pub fn fuzz_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        proptest::collection::vec(
            prop_oneof![
                "[a-zA-Z0-9 ]{1,12}",
                "[ \\t\\n\\r\\x0b\\x0c\\u{85}\\u{a0}\\u{2028}\\u{3000}]{1,3}",
                "[\\x00-\\x1f\\x7f\\u{200b}-\\u{200f}\\u{fffd}\\u{feff}]",
                "[!-/:-@\\[-`{-~\\u{a1}-\\u{bf}\\u{2010}-\\u{2027}]{1,3}",
                "[\\u{c0}-\\u{24f}\\u{300}-\\u{36f}\\u{1e00}-\\u{1eff}]{1,4}",
                "[\\u{4e00}-\\u{4e40}\\u{3040}-\\u{30ff}\\u{ac00}-\\u{ac40}\\u{600}-\\u{6ff}\\u{660}-\\u{669}]{1,4}",
                "[\\u{1f300}-\\u{1f64f}\\u{200d}\\u{fe0f}\\u{1f3fb}-\\u{1f3ff}]{1,4}",
                "'(s|t|re|ve|m|ll|d|S|T|RE|Ve|ſ|x)",
                "\\[(CLS|SEP|MASK|UNK|PAD)\\]",
                "<\\|(endoftext|im_start|im_end)\\|>",
                "(?s).{1,8}",
            ],
            0..60,
        )
        .prop_map(|parts| parts.concat())
    }

    #[test]
    fn tokenizers_the_fast_paths_do_not_implement_fall_back_to_the_tokenizers_crate() {
        let dir = tempfile::tempdir().unwrap();
        let src = root().join("tests/fixtures/tiny-qwen3-embedding");
        let status = std::process::Command::new("cp").arg("-r").arg(src.join(".")).arg(dir.path()).status().unwrap();
        assert!(status.success());
        let model = ModelSpec::load(dir.path(), None).unwrap();
        assert_eq!(TextTokenizer::load(&model, TokenizerChoice::Auto).unwrap().engine_name(), "fast-bpe");
        // A normalizer the fast paths do not implement.
        let path = dir.path().join("tokenizer.json");
        let mut json: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        json["normalizer"] = serde_json::json!({"type": "Lowercase"});
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        let model = ModelSpec::load(dir.path(), None).unwrap();
        let t = TextTokenizer::load(&model, TokenizerChoice::Auto).unwrap();
        assert_eq!(t.engine_name(), "tokenizers");
        let e = TextTokenizer::load(&model, TokenizerChoice::Fast).err().expect("fast refuses it");
        assert!(e.to_string().contains("--tokenizer fast") && e.to_string().contains("normalizer Lowercase"), "{e}");
        let enc = t.encode_batch(&["Hello World".to_string(), String::new()], "", 2).unwrap();
        assert_eq!(enc.rows(), 2);
        assert_eq!(enc.row(1), &[0], "an empty text is the end-of-text token alone");
    }

    #[test]
    fn length_bins_are_powers_of_two() {
        let bins: Vec<usize> = [0, 1, 16, 17, 32, 33, 64, 65, 128, 129, 256, 32768].iter().map(|&n| length_bin(n)).collect();
        assert_eq!(bins, vec![0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 11]);
        assert_eq!((bin_range(0), bin_range(1), bin_range(4)), ((0, 16), (17, 32), (129, 256)));
        for n in 0..5000 {
            let (lo, hi) = bin_range(length_bin(n));
            assert!(lo <= n && n <= hi, "{n}");
        }
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
