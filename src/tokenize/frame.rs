//! What the fast tokenizers (WordPiece and byte-level BPE) share: the added tokens split out of the raw text,
//! the special ids around it, truncation, per-thread scratch buffers, and reading tokenizer.json fields.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use serde_json::Value;

pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<rustc_hash::FxHasher>>;

/// Buffers and caches one thread reuses from text to text.
#[derive(Default)]
pub(crate) struct Scratch {
    pub word: Vec<u8>,
    pub normalized: String,
    pub tmp: String,
    /// BPE: the ids of pieces seen before (pieces under [`crate::tokenize::bpe::CACHED_PIECE_BYTES`]).
    pub pieces: FastMap<Box<[u8]>, Box<[u32]>>,
}

/// What the fast paths share: the added tokens split out of the raw text, the special ids around the text,
/// and truncation.
pub(crate) struct Frame {
    added: AddedTokens,
    before: Vec<u32>,
    after: Vec<u32>,
    /// Most content ids per text (the model's length minus the special tokens).
    limit: usize,
}

impl Frame {
    pub fn from_json(json: &Value, max_seq_length: usize) -> Result<Frame, String> {
        if let Some(t) = json.get("truncation").filter(|t| !t.is_null()) {
            if str_field(t, "direction").is_some_and(|d| d != "Right") {
                return Err("truncation from the left".into());
            }
            if str_field(t, "strategy").is_some_and(|s| s == "OnlySecond") {
                return Err("truncation strategy OnlySecond".into());
            }
        }
        let added = AddedTokens::from_json(&json["added_tokens"])?;
        let (before, after) = specials(&json["post_processor"])?;
        let specials = before.len() + after.len();
        if max_seq_length <= specials {
            return Err(format!("max_seq_length {max_seq_length} leaves no room for text"));
        }
        Ok(Frame { added, before, after, limit: max_seq_length - specials })
    }

    /// The ids of `text`: `segment(seg, out, start, scratch)` appends the ids of each piece of text between
    /// added tokens and returns true once more than `limit` ids follow `start`. Returns whether the text was cut.
    pub fn encode(
        &self,
        text: &str,
        out: &mut Vec<u32>,
        scratch: &mut Scratch,
        segment: impl Fn(&str, &mut Vec<u32>, usize, &mut Scratch) -> bool,
    ) -> bool {
        out.extend_from_slice(&self.before);
        let start = out.len();
        let mut cut = false;
        let mut rest = text;
        while !rest.is_empty() && !cut {
            let (seg, tok, after) = self.added.next(rest);
            cut = !seg.is_empty() && segment(seg, out, start, scratch);
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

    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// Added tokens matched in the raw text, leftmost-longest (those `tokenizers` matches before normalizing:
/// `normalized: false`, without `lstrip`, `rstrip` or `single_word`).
struct AddedTokens {
    /// (content, id), longest first.
    tokens: Vec<(String, u32)>,
    /// First bytes of the tokens: a text without any of them has none.
    first: [bool; 256],
    /// The same, listed (searched with memchr when there are at most three, as for BERT's `[` or Qwen's `<`).
    first_list: Vec<u8>,
}

impl AddedTokens {
    fn from_json(v: &Value) -> Result<AddedTokens, String> {
        let mut tokens = Vec::new();
        for t in v.as_array().map(Vec::as_slice).unwrap_or_default() {
            let content = str_field(t, "content").ok_or("an added token without content")?;
            let id = t["id"].as_u64().and_then(|i| u32::try_from(i).ok()).ok_or("an added token without an id")?;
            for opt in ["single_word", "lstrip", "rstrip", "normalized"] {
                // `normalized` defaults to true for tokens that are not special.
                if t.get(opt).and_then(Value::as_bool).unwrap_or(opt == "normalized" && !t["special"].as_bool().unwrap_or(false)) {
                    return Err(format!("added token {content:?} has {opt}"));
                }
            }
            if !content.is_empty() {
                tokens.push((content.to_string(), id));
            }
        }
        tokens.sort_by_key(|(c, _)| std::cmp::Reverse(c.len()));
        let mut first = [false; 256];
        for (c, _) in &tokens {
            first[c.as_bytes()[0] as usize] = true;
        }
        let first_list = (0..=255u8).filter(|&b| first[b as usize]).collect();
        Ok(AddedTokens { tokens, first, first_list })
    }

    /// The text before the first added token, that token's id, and the text after it.
    fn next<'t>(&self, text: &'t str) -> (&'t str, Option<u32>, &'t str) {
        let bytes = text.as_bytes();
        let candidates: Box<dyn Iterator<Item = usize>> = match self.first_list[..] {
            [] => return (text, None, ""),
            [a] => Box::new(memchr::memchr_iter(a, bytes)),
            [a, b] => Box::new(memchr::memchr2_iter(a, b, bytes)),
            [a, b, c] => Box::new(memchr::memchr3_iter(a, b, c, bytes)),
            _ => Box::new(bytes.iter().enumerate().filter(|(_, &b)| self.first[b as usize]).map(|(i, _)| i)),
        };
        for i in candidates {
            if let Some((c, id)) = self.tokens.iter().find(|(c, _)| bytes[i..].starts_with(c.as_bytes())) {
                return (&text[..i], Some(*id), &text[i + c.len()..]);
            }
        }
        (text, None, "")
    }
}

pub(crate) fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The special ids a post-processor puts before and after a single text.
pub(crate) fn specials(pp: &Value) -> Result<(Vec<u32>, Vec<u32>), String> {
    let ids_of = |v: &Value| -> Option<u32> { v.as_u64().and_then(|i| u32::try_from(i).ok()) };
    match str_field(pp, "type") {
        None if pp.is_null() => Ok((Vec::new(), Vec::new())),
        // Byte-level post-processing trims offsets only.
        Some("ByteLevel") => Ok((Vec::new(), Vec::new())),
        Some("BertProcessing") | Some("RobertaProcessing") => {
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

    #[test]
    fn added_tokens_are_matched_leftmost_longest() {
        let json = serde_json::json!([
            {"id": 1, "content": "<a>", "special": true, "normalized": false},
            {"id": 2, "content": "<a><b>", "special": true, "normalized": false},
            {"id": 3, "content": "x", "special": false, "normalized": false},
        ]);
        let a = AddedTokens::from_json(&json).unwrap();
        assert_eq!(a.next("hi <a><b> there"), ("hi ", Some(2), " there"));
        assert_eq!(a.next("<a>x"), ("", Some(1), "x"));
        assert_eq!(a.next("none here"), ("none here", None, ""));
        assert_eq!(a.next("é<a"), ("é<a", None, ""));
        // More than three first bytes: the table path.
        let many: Vec<Value> =
            ["<a>", "[b]", "{c}", "(d)"].iter().enumerate().map(|(i, c)| serde_json::json!({"id": i, "content": c, "special": true})).collect();
        let m = AddedTokens::from_json(&Value::Array(many)).unwrap();
        assert_eq!(m.next("x (d) {c}"), ("x ", Some(3), " {c}"));
        assert_eq!(AddedTokens::from_json(&Value::Null).unwrap().next("x"), ("x", None, ""));
    }
}
