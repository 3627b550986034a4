//! Unicode properties the tokenizers ask of every character, cached in one byte per character.
//!
//! Exactness depends on asking the same tables `tokenizers` asks: the BERT steps use the `unicode_categories`
//! crate (its Unicode version, not the standard library's), the byte-level BPE pre-tokenizers use the regex
//! engine's tables (`regex-syntax`, which `fancy-regex` parses `\p{L}`, `\p{N}` and `\s` with). Category lookups
//! are binary searches, so each character is looked up the first time any thread sees it and cached.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use unicode_categories::UnicodeCategories;

/// `tokenizers`' BERT whitespace: \t, \n, \r and Unicode White_Space.
pub const BERT_WHITESPACE: u8 = 1;
/// Categories Cc, Cf, Co (not \t, \n, \r): removed by BERT's clean_text.
pub const CONTROL: u8 = 2;
/// ASCII or Unicode punctuation: a word of its own for BERT.
pub const PUNCT: u8 = 4;
/// Category Mn: removed with the accents.
pub const NONSPACING_MARK: u8 = 8;
/// White_Space (`char::is_whitespace`, regex `\s`): where BERT's pre-tokenizer splits; `\s` of the BPE patterns.
pub const SPACE: u8 = 16;
/// Regex `\p{L}`.
pub const LETTER: u8 = 32;
/// Regex `\p{N}`.
pub const NUMBER: u8 = 64;
/// Set in a cache entry once it holds the character's flags.
const KNOWN: u8 = 128;

/// Sorted ranges of a regex class, as the regex engine's tables give them.
fn regex_class(pattern: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class, HirKind};
    let hir = regex_syntax::parse(pattern).expect("a fixed class pattern parses (this is a bug)");
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => c.ranges().iter().map(|r| (r.start() as u32, r.end() as u32)).collect(),
        HirKind::Literal(l) => std::str::from_utf8(&l.0).expect("a literal of a str").chars().map(|c| (c as u32, c as u32)).collect(),
        other => unreachable!("{pattern} is a class (this is a bug): {other:?}"),
    }
}

fn in_ranges(ranges: &[(u32, u32)], c: char) -> bool {
    let c = c as u32;
    ranges
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

struct RegexTables {
    letter: Vec<(u32, u32)>,
    number: Vec<(u32, u32)>,
}

fn regex_tables() -> &'static RegexTables {
    static T: OnceLock<RegexTables> = OnceLock::new();
    T.get_or_init(|| RegexTables { letter: regex_class(r"\p{L}"), number: regex_class(r"\p{N}") })
}

fn compute(c: char) -> u8 {
    let mut f = 0;
    if matches!(c, '\t' | '\n' | '\r') || c.is_whitespace() {
        f |= BERT_WHITESPACE;
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
        f |= SPACE;
    }
    let t = regex_tables();
    if in_ranges(&t.letter, c) {
        f |= LETTER;
    }
    if in_ranges(&t.number, c) {
        f |= NUMBER;
    }
    f
}

/// The flags of `c`.
pub fn of(c: char) -> u8 {
    // The first three planes: every script, emoji, CJK extensions (192 KiB).
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

/// The characters a case-insensitive regex matches for `letter` (for `(?i:'s|...)`: `s`, `S` and `ſ`).
pub fn case_insensitive(letter: char) -> Vec<char> {
    regex_class(&format!("(?i:{letter})")).into_iter().flat_map(|(lo, hi)| (lo..=hi).filter_map(char::from_u32)).collect()
}

/// The White_Space set of the regex engine (`\s`) is the standard library's `char::is_whitespace`.
#[cfg(test)]
pub fn regex_space_ranges() -> Vec<(u32, u32)> {
    regex_class(r"\s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_flags_are_the_tables_flags() {
        for c in ['a', 'Z', ' ', '\t', '\u{0}', '\u{85}', '\u{a0}', 'é', '\u{301}', '中', '١', 'Ⅻ', '😀', '\u{3000}', '\u{fffd}', '\u{e000}', '𝔘']
        {
            assert_eq!(of(c) & !KNOWN, compute(c), "{c:?}");
            assert_eq!(of(c) & !KNOWN, compute(c), "{c:?} cached");
        }
        assert!(has('中', LETTER) && has('١', NUMBER) && has('Ⅻ', NUMBER) && !has('_', LETTER) && has('_', PUNCT));
        assert!(has('\u{301}', NONSPACING_MARK) && has('\u{0}', CONTROL) && !has('\t', CONTROL) && has('\t', BERT_WHITESPACE));
    }

    #[test]
    fn the_regex_space_class_is_white_space() {
        for (lo, hi) in regex_space_ranges() {
            for c in (lo..=hi).filter_map(char::from_u32) {
                assert!(c.is_whitespace(), "{c:?}");
            }
        }
        let n: u32 = regex_space_ranges().iter().map(|(lo, hi)| hi - lo + 1).sum();
        assert_eq!(n as usize, (0..=0x10FFFFu32).filter_map(char::from_u32).filter(|c| c.is_whitespace()).count());
    }

    #[test]
    fn case_insensitive_letters_include_their_unicode_folds() {
        let mut s = case_insensitive('s');
        s.sort();
        assert_eq!(s, vec!['S', 's', 'ſ']);
        assert_eq!(case_insensitive('t').len(), 2);
    }
}
