//! BERT-family WordPiece without offsets: BertNormalizer (or none), BertPreTokenizer, greedy longest-match
//! WordPiece, special tokens around the text; the same ids as `tokenizers`.
//!
//! ASCII text goes through one byte table (what each byte becomes after normalization and pre-tokenization);
//! words are looked up whole first, then greedily matched piece by piece, never trying pieces longer than the
//! longest vocabulary entry. Non-ASCII runs go through the same Unicode steps `tokenizers` takes (clean, CJK
//! spacing, NFD and removal of nonspacing marks with the same crates and tables, then `char::to_lowercase`).
//! A run of text between two whitespace characters normalizes independently of its neighbours (whitespace is
//! a Unicode starter, so NFD's reordering never crosses it), which is what lets ASCII runs skip the Unicode
//! machinery. Tokenizing stops once the text has more ids than the model's length.

use serde_json::Value;
use unicode_normalization_alignments::UnicodeNormalization;

use super::class;
use super::frame::{str_field, FastMap, Frame, Scratch};

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
pub(crate) struct WordPiece {
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
    pub(super) frame: Frame,
}

fn is_whitespace(c: char) -> bool {
    class::has(c, class::BERT_WHITESPACE)
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
    pub(crate) fn from_json(json: &Value, max_seq_length: usize) -> Result<WordPiece, String> {
        let model = &json["model"];
        if str_field(model, "type") != Some("WordPiece") {
            return Err(format!("model {}", str_field(model, "type").unwrap_or("?")));
        }
        let norm = Normalize::from_json(&json["normalizer"])?;
        match &json["pre_tokenizer"] {
            v if str_field(v, "type") == Some("BertPreTokenizer") => {}
            v => return Err(format!("pre_tokenizer {}", str_field(v, "type").unwrap_or("none"))),
        }
        let frame = Frame::from_json(json, max_seq_length)?;
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

        let mut ascii = [Ascii::Drop; 128];
        for (b, a) in ascii.iter_mut().enumerate() {
            *a = norm.ascii(b as u8);
        }
        Ok(WordPiece { norm, ascii, words, conts, longest_word, longest_cont, unk, max_chars_per_word, frame })
    }

    /// Tokenizes a segment without added tokens; true once more than `limit` ids follow `start`.
    pub(super) fn segment(&self, seg: &str, out: &mut Vec<u32>, start: usize, scratch: &mut Scratch) -> bool {
        let bytes = seg.as_bytes();
        let Scratch { word, normalized, tmp, .. } = scratch;
        word.clear();
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
                            if self.word(word, out, start) || self.word(&[c], out, start) {
                                return true;
                            }
                            word.clear();
                        }
                    }
                }
                if self.word(word, out, start) {
                    return true;
                }
                word.clear();
            } else {
                normalized.clear();
                self.norm.apply(run, tmp, normalized);
                let mut buf = [0u8; 4];
                for c in normalized.chars() {
                    if class::has(c, class::SPACE) {
                        if self.word(word, out, start) {
                            return true;
                        }
                        word.clear();
                    } else if is_bert_punc(c) {
                        if self.word(word, out, start) || self.word(c.encode_utf8(&mut buf).as_bytes(), out, start) {
                            return true;
                        }
                        word.clear();
                    } else {
                        word.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
                if self.word(word, out, start) {
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
        out.len() - start > self.frame.limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::tests::{assert_same, corpus, fuzz_text, pair, root};

    fn minilm() -> Option<&'static (crate::tokenize::TextTokenizer, crate::tokenize::TextTokenizer)> {
        pair(&root().join("models/all-MiniLM-L6-v2/tokenizer.json"), 256)
    }

    #[test]
    fn the_fast_path_gives_the_ids_of_tokenizers_on_a_varied_corpus() {
        let Some(p) = minilm() else { return };
        assert_eq!(p.0.engine_name(), "fast-wordpiece");
        assert_same(p, &corpus());
        let cut = p.0.encode_batch(&corpus(), "", 1).unwrap().truncated;
        assert!(cut >= 4, "long texts are cut: {cut}");
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz::config())]
        /// The fast path gives the ids of `tokenizers` on random text, truncation included.
        #[test]
        fn fuzzed_text_gives_the_ids_of_tokenizers(text in fuzz_text()) {
            let Some((fast, reference)) = minilm() else { return Ok(()) };
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let cut_a = fast.encode_into(&text, &mut a).unwrap();
            let cut_b = reference.encode_into(&text, &mut b).unwrap();
            proptest::prop_assert_eq!(&a, &b, "text {:?}", text);
            proptest::prop_assert_eq!(cut_a, cut_b);
        }
    }

    fn encode(wp: &WordPiece, text: &str) -> (Vec<u32>, bool) {
        let mut out = Vec::new();
        let cut = wp.frame.encode(text, &mut out, &mut Scratch::default(), |s, o, st, sc| wp.segment(s, o, st, sc));
        (out, cut)
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
        assert_eq!(encode(&wp, "A ab"), (vec![1, 3, 3, 4, 2], false));
        assert_eq!(encode(&wp, "a a a a a a a"), (vec![1, 3, 3, 3, 3, 3, 3, 2], true), "8 minus 2 special tokens leave room for 6");
        assert_eq!(encode(&wp, "a [CLS]b ax"), (vec![1, 3, 1, 0, 0, 2], false), "[CLS] typed in the text; b and ax unknown");
        for (pp, norm, pre, added, why) in [
            (bert, r#"{"type":"Sequence","normalizers":[]}"#, pre, tok, "normalizer Sequence"),
            (bert, norm, r#"{"type":"Whitespace"}"#, tok, "pre_tokenizer Whitespace"),
            (r#"{"type":"Sequence"}"#, norm, pre, tok, "post_processor Sequence"),
            (r#"{"type":"RobertaProcessing","sep":["</s>",2]}"#, norm, pre, tok, "without a cls id"),
            (bert, norm, pre, r#"{"id":1,"content":"[CLS]","special":true,"lstrip":true}"#, "has lstrip"),
            (bert, norm, pre, r#"{"id":1,"content":"x","special":false}"#, "has normalized"),
        ] {
            let e = WordPiece::from_json(&json(pp, norm, pre, added), 8).err().expect("falls back");
            assert!(e.contains(why), "{e}");
        }
    }
}
