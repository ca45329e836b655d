//! Raw text for the `predict` command and serving: words with their
//! character offsets, and entity spans from a tag per word.

use super::Word;
use crate::tasks::seqeval::{self, Mode};

/// An entity found in raw text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntitySpan {
    /// The entity type, e.g. `"PER"`.
    pub label: String,
    /// Char offset of the first char (not byte).
    pub start: usize,
    /// Char offset one past the last char.
    pub end: usize,
    /// `text` between the offsets.
    pub text: String,
}

/// Splits raw text into words for the tagger, with **char** offsets
/// (`start`, `end` exclusive), roughly as CoNLL data is tokenized: runs of
/// letters and digits are words, and keep inner `-`, `.`, `'` and `’`
/// between two of them ("Chicago-based", "U.S", "3.5", "O'Neil") and `,`
/// between two digits ("1,000"); every other non-space char is a word of
/// its own ("U.S." → "U.S" "."; "(AP)" → "(" "AP" ")").
pub fn split_words(text: &str) -> Vec<Word> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if !c.is_alphanumeric() {
            out.push((c.to_string(), i, i + 1));
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        while i < chars.len() {
            let c = chars[i];
            if c.is_alphanumeric() {
                i += 1;
                continue;
            }
            let next = chars.get(i + 1).copied();
            let joins = match c {
                '-' | '.' | '\'' | '’' => next.is_some_and(char::is_alphanumeric),
                ',' => chars[i - 1].is_ascii_digit() && next.is_some_and(|n| n.is_ascii_digit()),
                _ => false,
            };
            if !joins {
                break;
            }
            i += 2;
        }
        out.push((chars[start..i].iter().collect(), start, i));
    }
    out
}

/// The entities of one tagged text, chunked conlleval-style (seqeval's
/// default mode: an `I-X` without `B-X` starts an entity, a type change
/// ends one). `words` come from [`split_words`] on `text`, `tags` are one
/// per word (extra words or tags are ignored; an empty tag reads as `O`).
pub fn entity_spans(words: &[Word], tags: &[String], text: &str) -> Vec<EntitySpan> {
    let n = words.len().min(tags.len());
    let tags: Vec<&str> = tags[..n]
        .iter()
        .map(|t| if t.is_empty() { "O" } else { t.as_str() })
        .collect();
    // Cannot fail: no empty tag is left.
    let found = seqeval::entities(&tags, Mode::Default).unwrap_or_default();
    // Byte position of every char offset (and of the end).
    let bytes: Vec<usize> = text
        .char_indices()
        .map(|(b, _)| b)
        .chain(std::iter::once(text.len()))
        .collect();
    found
        .into_iter()
        .map(|e| {
            let start = words[e.start].1;
            let end = words[e.end - 1].2;
            let slice = |c: usize| bytes[c.min(bytes.len() - 1)];
            EntitySpan {
                label: e.label,
                start,
                end,
                text: text[slice(start)..slice(end)].to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_of_raw_text() {
        let w = split_words("Müller (AP) visited U.S. firms, 1,000 O'Neil-based.");
        let words: Vec<&str> = w.iter().map(|(s, _, _)| s.as_str()).collect();
        assert_eq!(
            words,
            [
                "Müller",
                "(",
                "AP",
                ")",
                "visited",
                "U.S",
                ".",
                "firms",
                ",",
                "1,000",
                "O'Neil-based",
                "."
            ]
        );
        assert_eq!((w[0].1, w[0].2), (0, 6));
        assert_eq!((w[1].1, w[1].2), (7, 8));
    }
}
