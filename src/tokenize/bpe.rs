//! Byte-level BPE without offsets (GPT-2 style, and the Qwen2/Qwen3 and Llama 3 family): optional NFC, the
//! pre-tokenizer regex as a hand-written matcher, byte-level symbols, merges by rank; the same ids as
//! `tokenizers`.
//!
//! `tokenizers` runs the pre-tokenizer regex with `fancy-regex` (a backtracking engine, slow on the
//! `\s+(?!\S)` lookahead) and tracks offsets through every step. Here each supported pattern is a matcher
//! that takes the same decisions as the backtracking engine (the alternatives in order, greedy, with the
//! backtracking they need spelled out), asking the regex engine's own Unicode tables ([`class`]). A pattern
//! that is not one of these (compared as text) is not taken: `tokenizers` is used. Merges follow `tokenizers`'
//! algorithm (lowest rank first, leftmost among equal ranks, stale entries skipped the same way), and pieces
//! are cached per thread.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use serde_json::Value;
use unicode_normalization_alignments::{is_nfc_quick, IsNormalized, UnicodeNormalization};

use super::class;
use super::frame::{str_field, FastMap, Frame, Scratch};

/// Pieces up to this many bytes are cached (longer ones are rare and would fill the cache).
pub const CACHED_PIECE_BYTES: usize = 256;
/// Cached pieces per thread before the cache is emptied (bounded memory on endless distinct words).
const CACHED_PIECES: usize = 1 << 17;

/// GPT-2's pattern (the ByteLevel pre-tokenizer with `use_regex`).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Qwen2 / Qwen2.5 / Qwen3.
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3 (Qwen2's with up to three digits together).
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Pattern {
    Gpt2,
    /// Qwen2 and Llama 3: case-insensitive contractions, a letter run with one leading non-letter, digit runs
    /// of at most `digits`.
    Modern {
        digits: usize,
    },
}

pub(crate) struct Bpe {
    pub(super) frame: Frame,
    nfc: bool,
    pattern: Pattern,
    /// The id of each byte as a symbol; `None` for bytes not in the vocabulary (dropped, as `tokenizers` does
    /// without an unknown token).
    byte_ids: [Option<u32>; 256],
    /// (left id << 32 | right id) -> (rank, merged id).
    merges: FastMap<u64, (u32, u32)>,
    /// With `ignore_merges`: pieces that are vocabulary entries, as bytes.
    whole: Option<FastMap<Box<[u8]>, u32>>,
    /// Characters matching `(?i:x)` for the contraction letters.
    folds: [Vec<char>; 8],
}

/// The letters of the contractions 's 't 're 've 'm 'll 'd, in `Bpe::folds` order.
const FOLD_LETTERS: [char; 8] = ['s', 't', 'r', 'e', 'v', 'm', 'l', 'd'];

/// GPT-2's byte -> character map (printable bytes stand for themselves, the others are moved to U+0100...).
fn byte_chars() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        map[b as usize] = if printable {
            b as char
        } else {
            n += 1;
            char::from_u32(255 + n).expect("below U+0200")
        };
    }
    map
}

fn flag(v: &Value, key: &str) -> Option<bool> {
    v.get(key).and_then(Value::as_bool)
}

impl Pattern {
    fn of(regex: &str) -> Result<Pattern, String> {
        match regex {
            GPT2 => Ok(Pattern::Gpt2),
            QWEN2 => Ok(Pattern::Modern { digits: 1 }),
            LLAMA3 => Ok(Pattern::Modern { digits: 3 }),
            other => Err(format!("pre-tokenizer pattern {other:?}")),
        }
    }

    /// The pattern of the pre_tokenizer: ByteLevel with its own regex, or a Split by a regex then ByteLevel.
    fn from_json(pre: &Value) -> Result<Pattern, String> {
        let byte_level = |v: &Value, regex: bool| {
            str_field(v, "type") == Some("ByteLevel") && flag(v, "add_prefix_space") == Some(false) && flag(v, "use_regex").unwrap_or(true) == regex
        };
        if byte_level(pre, true) {
            return Ok(Pattern::Gpt2);
        }
        if str_field(pre, "type") == Some("Sequence") {
            if let Some([split, bl]) = pre["pretokenizers"].as_array().map(Vec::as_slice) {
                let isolated = str_field(split, "type") == Some("Split")
                    && str_field(split, "behavior") == Some("Isolated")
                    && flag(split, "invert") == Some(false);
                if isolated && byte_level(bl, false) {
                    return Pattern::of(str_field(&split["pattern"], "Regex").ok_or("a Split pattern that is not a regex")?);
                }
            }
        }
        Err(format!("pre_tokenizer {}", serde_json::to_string(pre).unwrap_or_default().chars().take(120).collect::<String>()))
    }
}

impl Bpe {
    /// The fast path for a tokenizer.json, or why it does not apply.
    pub(crate) fn from_json(json: &Value, max_seq_length: usize) -> Result<Bpe, String> {
        let model = &json["model"];
        if str_field(model, "type") != Some("BPE") {
            return Err(format!("model {}", str_field(model, "type").unwrap_or("?")));
        }
        if model.get("dropout").and_then(Value::as_f64).is_some_and(|d| d > 0.0) {
            return Err("BPE dropout".into());
        }
        for key in ["unk_token", "continuing_subword_prefix", "end_of_word_suffix"] {
            if str_field(model, key).is_some_and(|s| !s.is_empty()) {
                return Err(format!("BPE {key}"));
            }
        }
        if flag(model, "byte_fallback") == Some(true) {
            return Err("BPE byte_fallback".into());
        }
        let nfc = match &json["normalizer"] {
            Value::Null => false,
            v if str_field(v, "type") == Some("NFC") => true,
            v => return Err(format!("normalizer {}", str_field(v, "type").unwrap_or("?"))),
        };
        let pattern = Pattern::from_json(&json["pre_tokenizer"])?;
        let frame = Frame::from_json(json, max_seq_length)?;

        let vocab = model["vocab"].as_object().ok_or("model.vocab is not a map")?;
        let id_of = |k: &str| vocab.get(k).and_then(Value::as_u64).and_then(|i| u32::try_from(i).ok());
        let chars = byte_chars();
        let mut byte_ids = [None; 256];
        for (b, c) in chars.iter().enumerate() {
            byte_ids[b] = id_of(&c.to_string());
        }
        let mut merges = FastMap::default();
        let list = model["merges"].as_array().ok_or("model.merges is not a list")?;
        let mut rank = 0u32;
        for m in list {
            let (a, b) = match m {
                Value::String(s) if s.starts_with("#version") => continue,
                Value::String(s) => s.split_once(' ').filter(|(_, b)| !b.contains(' ')).ok_or_else(|| format!("merge {s:?}"))?,
                Value::Array(p) if p.len() == 2 => (p[0].as_str().ok_or("a merge part")?, p[1].as_str().ok_or("a merge part")?),
                other => return Err(format!("merge {other}")),
            };
            let (Some(ia), Some(ib), Some(new)) = (id_of(a), id_of(b), id_of(&format!("{a}{b}"))) else {
                return Err(format!("merge {a:?} {b:?} out of the vocabulary"));
            };
            merges.insert((u64::from(ia) << 32) | u64::from(ib), (rank, new));
            rank += 1;
        }
        let whole = if flag(model, "ignore_merges") == Some(true) {
            let mut back = FastMap::default();
            for (b, c) in chars.iter().enumerate() {
                back.insert(*c, b as u8);
            }
            let mut whole = FastMap::default();
            for (k, v) in vocab {
                let bytes: Option<Vec<u8>> = k.chars().map(|c| back.get(&c).copied()).collect();
                if let (Some(bytes), Some(id)) = (bytes, v.as_u64().and_then(|i| u32::try_from(i).ok())) {
                    whole.insert(bytes.into_boxed_slice(), id);
                }
            }
            Some(whole)
        } else {
            None
        };
        Ok(Bpe { frame, nfc, pattern, byte_ids, merges, whole, folds: FOLD_LETTERS.map(class::case_insensitive) })
    }

    /// Tokenizes a segment without added tokens; true once more than `limit` ids follow `start`.
    pub(super) fn segment(&self, seg: &str, out: &mut Vec<u32>, start: usize, scratch: &mut Scratch) -> bool {
        let mut normalized = std::mem::take(&mut scratch.normalized);
        let text = if self.nfc && is_nfc_quick(seg.chars()) != IsNormalized::Yes {
            normalized.clear();
            normalized.extend(seg.nfc().map(|(c, _)| c));
            normalized.as_str()
        } else {
            seg
        };
        let mut pos = 0;
        let mut cut = false;
        while pos < text.len() {
            let end = self.next_piece(text, pos);
            self.piece(&text.as_bytes()[pos..end], out, scratch);
            pos = end;
            if out.len() - start > self.frame.limit() {
                cut = true;
                break;
            }
        }
        scratch.normalized = normalized;
        cut
    }

    /// The ids of one piece, from the cache when it was seen before.
    fn piece(&self, bytes: &[u8], out: &mut Vec<u32>, scratch: &mut Scratch) {
        if let Some(id) = self.whole.as_ref().and_then(|w| w.get(bytes)) {
            out.push(*id);
            return;
        }
        if bytes.len() <= CACHED_PIECE_BYTES {
            if let Some(ids) = scratch.pieces.get(bytes) {
                out.extend_from_slice(ids);
                return;
            }
        }
        let from = out.len();
        self.merge(bytes, out);
        if bytes.len() <= CACHED_PIECE_BYTES {
            if scratch.pieces.len() >= CACHED_PIECES {
                scratch.pieces.clear();
            }
            scratch.pieces.insert(bytes.into(), out[from..].into());
        }
    }

    /// BPE of one piece as `tokenizers` does it: every adjacent pair with a merge in a min-heap by (rank,
    /// position); the top merged unless it is stale (its pair no longer merges into the same id).
    fn merge(&self, bytes: &[u8], out: &mut Vec<u32>) {
        #[derive(Clone, Copy)]
        struct Sym {
            id: u32,
            prev: usize,
            next: usize,
            gone: bool,
        }
        const NONE: usize = usize::MAX;
        let mut syms: Vec<Sym> = Vec::with_capacity(bytes.len());
        for &b in bytes {
            if let Some(id) = self.byte_ids[b as usize] {
                let i = syms.len();
                syms.push(Sym { id, prev: if i == 0 { NONE } else { i - 1 }, next: NONE, gone: false });
                if i > 0 {
                    syms[i - 1].next = i;
                }
            }
        }
        let pair = |a: u32, b: u32| self.merges.get(&((u64::from(a) << 32) | u64::from(b))).copied();
        let mut heap: BinaryHeap<Reverse<(u32, usize, u32)>> = BinaryHeap::with_capacity(syms.len());
        for i in 1..syms.len() {
            if let Some((rank, new)) = pair(syms[i - 1].id, syms[i].id) {
                heap.push(Reverse((rank, i - 1, new)));
            }
        }
        while let Some(Reverse((_, pos, new))) = heap.pop() {
            let s = syms[pos];
            if s.gone || s.next == NONE {
                continue;
            }
            let right = syms[s.next];
            if pair(s.id, right.id).is_none_or(|(_, id)| id != new) {
                continue;
            }
            syms[pos].id = new;
            syms[pos].next = right.next;
            syms[s.next].gone = true;
            if right.next != NONE {
                syms[right.next].prev = pos;
            }
            if s.prev != NONE {
                if let Some((rank, id)) = pair(syms[s.prev].id, new) {
                    heap.push(Reverse((rank, s.prev, id)));
                }
            }
            if right.next != NONE {
                if let Some((rank, id)) = pair(new, syms[right.next].id) {
                    heap.push(Reverse((rank, pos, id)));
                }
            }
        }
        out.extend(syms.iter().filter(|s| !s.gone).map(|s| s.id));
    }

    /// The end of the pattern's match starting at `pos` (every character starts a match of these patterns).
    fn next_piece(&self, s: &str, pos: usize) -> usize {
        match self.pattern {
            Pattern::Gpt2 => self.gpt2(s, pos),
            Pattern::Modern { digits } => self.modern(s, pos, digits),
        }
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    fn gpt2(&self, s: &str, pos: usize) -> usize {
        let c0 = char_at(s, pos).expect("pos is inside s");
        if c0 == '\'' {
            let rest = &s[pos + 1..];
            if let Some(n) = ["s", "t", "re", "ve", "m", "ll", "d"].iter().find(|c| rest.starts_with(**c)).map(|c| c.len()) {
                return pos + 1 + n;
            }
        }
        let c1 = if c0 == ' ' { char_at(s, pos + 1) } else { None };
        for want in [class::LETTER, class::NUMBER, OTHER] {
            if c1.is_some_and(|c| is(c, want)) {
                return run(s, pos + 1, |c| is(c, want));
            }
            if is(c0, want) {
                return run(s, pos, |c| is(c, want));
            }
        }
        spaces(s, pos)
    }

    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,digits}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    fn modern(&self, s: &str, pos: usize, digits: usize) -> usize {
        let c0 = char_at(s, pos).expect("pos is inside s");
        let after0 = pos + c0.len_utf8();
        if c0 == '\'' {
            if let Some(end) = self.contraction(s, after0) {
                return end;
            }
        }
        if is(c0, class::LETTER) {
            return run(s, pos, |c| is(c, class::LETTER));
        }
        let c1 = char_at(s, after0);
        if !matches!(c0, '\r' | '\n') && !is(c0, class::NUMBER) && c1.is_some_and(|c| is(c, class::LETTER)) {
            return run(s, after0, |c| is(c, class::LETTER));
        }
        if is(c0, class::NUMBER) {
            let mut end = after0;
            for _ in 1..digits {
                match char_at(s, end) {
                    Some(c) if is(c, class::NUMBER) => end += c.len_utf8(),
                    _ => break,
                }
            }
            return end;
        }
        let others = if c0 == ' ' && c1.is_some_and(|c| is(c, OTHER)) {
            Some(run(s, after0, |c| is(c, OTHER)))
        } else if is(c0, OTHER) {
            Some(run(s, pos, |c| is(c, OTHER)))
        } else {
            None
        };
        if let Some(end) = others {
            return run(s, end, |c| matches!(c, '\r' | '\n'));
        }
        // c0 is whitespace. `\s*[\r\n]+`: up to the last line break of the whitespace run.
        let ws_end = run(s, pos, |c| is(c, class::SPACE));
        if let Some(i) = s[pos..ws_end].rfind(['\r', '\n']) {
            return pos + i + 1;
        }
        spaces(s, pos)
    }

    /// The end of `(?i:'s|'t|'re|'ve|'m|'ll|'d)` after the apostrophe at `at`, if it matches.
    fn contraction(&self, s: &str, at: usize) -> Option<usize> {
        let fold = |c: Option<char>, letter: char| {
            let k = FOLD_LETTERS.iter().position(|&l| l == letter).expect("a contraction letter");
            c.is_some_and(|c| self.folds[k].contains(&c))
        };
        let c1 = char_at(s, at);
        let after1 = at + c1.map_or(0, char::len_utf8);
        let c2 = char_at(s, after1);
        let end2 = after1 + c2.map_or(0, char::len_utf8);
        for alt in ["s", "t", "re", "ve", "m", "ll", "d"] {
            let mut l = alt.chars();
            let (a, b) = (l.next().expect("one letter"), l.next());
            if fold(c1, a) {
                match b {
                    None => return Some(after1),
                    Some(b) if fold(c2, b) => return Some(end2),
                    Some(_) => {}
                }
            }
        }
        None
    }
}

/// Neither whitespace, letter nor number: `[^\s\p{L}\p{N}]`.
const OTHER: u8 = 0;

fn is(c: char, want: u8) -> bool {
    let f = class::of(c);
    if want == OTHER {
        f & (class::SPACE | class::LETTER | class::NUMBER) == 0
    } else {
        f & want != 0
    }
}

fn char_at(s: &str, i: usize) -> Option<char> {
    s.get(i..).and_then(|r| r.chars().next())
}

/// The end of the run of characters from `from` that satisfy `f`.
fn run(s: &str, from: usize, f: impl Fn(char) -> bool) -> usize {
    s[from..].char_indices().find(|&(_, c)| !f(c)).map_or(s.len(), |(i, _)| from + i)
}

/// `\s+(?!\S)|\s+` at a whitespace character: the whole run at the end of the text; otherwise the run less
/// its last character when that leaves at least one (the last one then starts the next piece with what follows).
fn spaces(s: &str, pos: usize) -> usize {
    let end = run(s, pos, |c| is(c, class::SPACE));
    if end == s.len() {
        return end;
    }
    let last = s[pos..end].chars().next_back().map_or(0, char::len_utf8);
    if end - last > pos {
        end - last
    } else {
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::tests::{assert_same, corpus, fuzz_text, pair, root};

    fn tiny() -> Option<&'static (crate::tokenize::TextTokenizer, crate::tokenize::TextTokenizer)> {
        pair(&root().join("tests/fixtures/tiny-qwen3-embedding/tokenizer.json"), 512)
    }

    /// The Qwen2-style tokenizer made from Qwen's own vocabulary and merges by scripts/fetch-model.sh.
    fn qwen() -> Option<&'static (crate::tokenize::TextTokenizer, crate::tokenize::TextTokenizer)> {
        pair(&root().join("models/qwen-tokenizer/tokenizer.json"), 512)
    }

    #[test]
    fn gpt2_style_bpe_gives_the_ids_of_tokenizers_on_a_varied_corpus() {
        let Some(p) = tiny() else { return };
        assert_eq!(p.0.engine_name(), "fast-bpe");
        assert_same(p, &corpus());
    }

    #[test]
    fn qwen_bpe_gives_the_ids_of_tokenizers_on_a_varied_corpus() {
        let Some(p) = qwen() else { return };
        assert_eq!(p.0.engine_name(), "fast-bpe");
        assert_same(p, &corpus());
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz::config())]
        /// Both BPE styles give the ids of `tokenizers` on random text, truncation included.
        #[test]
        fn fuzzed_text_gives_the_ids_of_tokenizers(text in fuzz_text()) {
            for p in [tiny(), qwen()].into_iter().flatten() {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                let cut_a = p.0.encode_into(&text, &mut a).unwrap();
                let cut_b = p.1.encode_into(&text, &mut b).unwrap();
                proptest::prop_assert_eq!(&a, &b, "text {:?}", text);
                proptest::prop_assert_eq!(cut_a, cut_b);
            }
        }
    }

    fn pieces(pattern: Pattern, s: &str) -> Vec<String> {
        let bpe = Bpe {
            frame: Frame::from_json(&serde_json::json!({}), 8).unwrap(),
            nfc: false,
            pattern,
            byte_ids: [None; 256],
            merges: FastMap::default(),
            whole: None,
            folds: FOLD_LETTERS.map(class::case_insensitive),
        };
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < s.len() {
            let end = bpe.next_piece(s, pos);
            out.push(s[pos..end].to_string());
            pos = end;
        }
        out
    }

    #[test]
    fn the_patterns_split_as_the_regex_engine_does() {
        // Pieces checked against fancy-regex's find_iter with the same patterns.
        let text = "Hello  world's IT'S 'ſ x123 (hi)\n\n  \tend  ";
        let qwen = Pattern::Modern { digits: 1 };
        for (pattern, regex) in [(Pattern::Gpt2, GPT2), (qwen, QWEN2), (Pattern::Modern { digits: 3 }, LLAMA3)] {
            let re = fancy_regex::Regex::new(regex).unwrap();
            for t in [text, "", "a", " ", "  a", "\r\n\r\n x", "12345 ١٢٣", "'re 'RE 'Ll", " \u{3000}x \u{a0}\u{a0}", "!!\n\nx"] {
                let expected: Vec<String> = re.find_iter(t).map(|m| m.unwrap().as_str().to_string()).collect();
                assert_eq!(pieces(pattern, t), expected, "{pattern:?} on {t:?}");
            }
        }
        assert_eq!(pieces(qwen, "IT'S x123"), ["IT", "'S", " x", "1", "2", "3"]);
    }

    #[test]
    fn unsupported_settings_fall_back_with_a_reason() {
        let base = |pre: Value, norm: Value, extra: (&str, Value)| {
            let mut model = serde_json::json!({"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]});
            model[extra.0] = extra.1;
            serde_json::json!({"model": model, "pre_tokenizer": pre, "normalizer": norm, "post_processor": null, "added_tokens": []})
        };
        let gpt2 = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "use_regex": true});
        assert!(Bpe::from_json(&base(gpt2.clone(), Value::Null, ("dropout", Value::Null)), 8).is_ok());
        for (json, why) in [
            (base(serde_json::json!({"type": "ByteLevel", "add_prefix_space": true}), Value::Null, ("x", Value::Null)), "pre_tokenizer"),
            (base(gpt2.clone(), serde_json::json!({"type": "NFKC"}), ("x", Value::Null)), "normalizer NFKC"),
            (base(gpt2.clone(), Value::Null, ("byte_fallback", Value::Bool(true))), "byte_fallback"),
            (base(gpt2.clone(), Value::Null, ("unk_token", Value::from("<unk>"))), "unk_token"),
            (
                base(
                    serde_json::json!({"type": "Sequence", "pretokenizers": [
                        {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated", "invert": false},
                        {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]}),
                    Value::Null,
                    ("x", Value::Null),
                ),
                "pattern",
            ),
        ] {
            let e = Bpe::from_json(&json, 8).err().expect("falls back");
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn merges_pick_the_lowest_rank_then_the_leftmost_pair() {
        let json = serde_json::json!({
            "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "aa": 2, "ab": 3, "aab": 4}, "merges": ["a b", "a a", "aa b"]},
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
            "normalizer": null, "post_processor": null, "added_tokens": []
        });
        let bpe = Bpe::from_json(&json, 64).unwrap();
        let ids = |s: &str| {
            let mut out = Vec::new();
            bpe.merge(s.as_bytes(), &mut out);
            out
        };
        assert_eq!(ids("aab"), vec![0, 3], "a b ranks first");
        assert_eq!(ids("aaaa"), vec![2, 2], "leftmost first among equal ranks");
        assert_eq!(ids("aaa"), vec![2, 0]);
        assert_eq!(ids("c"), Vec::<u32>::new(), "a byte outside the vocabulary is dropped");
    }
}
