//! Readers of the tagged sentence files: column files (CoNLL-2003, WNUT-17,
//! custom), SpERT JSON (CoNLL-04, entity spans made BIO) and the official SRL
//! line format. Every error names the file, the line and what was expected.

use std::path::Path;

use serde::Deserialize;

use super::TaggedSentence;
use crate::tasks::formats::{invalid, no_examples, read_text};
use crate::{Error, Result};

/// Which tags a reader accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum TagCheck {
    /// `O`, `B-TYPE`, `I-TYPE` (the NER and SRL data are IOB2).
    Iob2,
    /// Also `E-TYPE` and `S-TYPE` (custom files may be IOBES; seqeval's
    /// default mode reads both).
    Iobes,
}

impl TagCheck {
    pub(super) fn check(self, tag: &str) -> std::result::Result<(), String> {
        let prefixes: &[&str] = match self {
            TagCheck::Iob2 => &["B-", "I-"],
            TagCheck::Iobes => &["B-", "I-", "E-", "S-"],
        };
        let ok = tag == "O"
            || prefixes
                .iter()
                .any(|p| tag.strip_prefix(p).is_some_and(|ty| !ty.is_empty()));
        if ok {
            Ok(())
        } else {
            Err(match self {
                TagCheck::Iob2 => {
                    format!("tag {tag:?} is not in IOB form (expected O, B-TYPE or I-TYPE)")
                }
                TagCheck::Iobes => format!(
                    "tag {tag:?} is not in IOB form (expected O, B-TYPE, I-TYPE, E-TYPE or S-TYPE)"
                ),
            })
        }
    }
}

/// The layout of a column file.
pub(super) struct ColumnSpec {
    /// Exact column count; `None`: that of the first word line.
    pub(super) width: Option<usize>,
    /// Column names for error messages ("token POS chunk NER").
    pub(super) columns: &'static str,
    pub(super) token_col: usize,
    /// `None`: the last column.
    pub(super) tag_col: Option<usize>,
    pub(super) check: TagCheck,
}

/// The lines of a file with their 1-based numbers, `\r` dropped.
fn numbered(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
}

/// Splits a column line: on tabs when it holds one (tokens may then hold
/// spaces), else on runs of whitespace.
fn split_columns(line: &str) -> Vec<&str> {
    if line.contains('\t') {
        line.trim_end().split('\t').collect()
    } else {
        line.split_whitespace().collect()
    }
}

/// Why `text` (a `.txt` input to predict on) is a column file rather than
/// raw text: it has a `-DOCSTART-` line, or every non-blank line has two or
/// more columns, the last an IOB (or IOBES) tag. `None`: raw text.
pub(super) fn column_form(text: &str) -> Option<&'static str> {
    let mut lines = numbered(text)
        .map(|(_, l)| l)
        .filter(|l| !l.trim().is_empty())
        .peekable();
    lines.peek()?;
    let mut tagged = true;
    for line in lines {
        if line.starts_with("-DOCSTART-") {
            return Some("it has a -DOCSTART- line");
        }
        let fields = split_columns(line);
        tagged &= fields.len() >= 2
            && fields
                .last()
                .is_some_and(|t| TagCheck::Iobes.check(t).is_ok());
    }
    tagged.then_some("every line ends in a tag")
}

/// Reads a CoNLL-style column file (see the module docs).
pub(super) fn read_columns(path: &Path, spec: &ColumnSpec) -> Result<Vec<TaggedSentence>> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut tags: Vec<String> = Vec::new();
    // Set by the first word line when the spec leaves it open.
    let mut width = spec.width;
    let mut labeled = true;
    let flush =
        |words: &mut Vec<String>, tags: &mut Vec<String>, labeled: bool, out: &mut Vec<_>| {
            if !words.is_empty() {
                out.push(TaggedSentence {
                    words: std::mem::take(words),
                    tags: labeled.then(|| std::mem::take(tags)),
                    predicate: None,
                });
                tags.clear();
            }
        };
    for (line_no, line) in numbered(&text) {
        // As the official reader: `-DOCSTART-` lines and blank lines end a
        // sentence.
        if line.trim().is_empty() || line.starts_with("-DOCSTART-") {
            flush(&mut words, &mut tags, labeled, &mut out);
            continue;
        }
        let fields = split_columns(line);
        let w = match width {
            Some(w) => w,
            None => {
                let w = fields.len();
                let needed = spec.token_col.max(spec.tag_col.unwrap_or(0)) + 1;
                if w < needed {
                    return Err(invalid(
                        path,
                        line_no,
                        format!(
                            "expected at least {needed} columns (token column {}, tag column {}), found {w}",
                            spec.token_col,
                            spec.tag_col.map_or("last".to_string(), |c| c.to_string())
                        ),
                    ));
                }
                labeled = !(w == 1 && spec.tag_col.is_none());
                width = Some(w);
                w
            }
        };
        if fields.len() != w {
            let what = if spec.columns.is_empty() {
                format!("{w} columns as on the first line")
            } else {
                format!("{w} columns ({})", spec.columns)
            };
            return Err(invalid(
                path,
                line_no,
                format!("expected {what}, found {}: {line:?}", fields.len()),
            ));
        }
        words.push(fields[spec.token_col].to_string());
        if labeled {
            let tag = fields[spec.tag_col.unwrap_or(w - 1)];
            spec.check
                .check(tag)
                .map_err(|m| invalid(path, line_no, m))?;
            tags.push(tag.to_string());
        }
    }
    flush(&mut words, &mut tags, labeled, &mut out);
    if out.is_empty() {
        return Err(no_examples(path, "the file holds no sentence"));
    }
    Ok(out)
}

#[derive(Deserialize)]
struct SpertSentence {
    tokens: Vec<String>,
    entities: Vec<SpertEntity>,
}

#[derive(Deserialize)]
struct SpertEntity {
    #[serde(rename = "type")]
    ty: String,
    start: usize,
    end: usize,
}

/// Reads SpERT JSON and turns each sentence's entity spans (`end`
/// exclusive) into BIO tags: `B-<type>` on the first word, `I-<type>` on the
/// rest, `O` elsewhere.
pub(super) fn read_spert(path: &Path) -> Result<Vec<TaggedSentence>> {
    let text = read_text(path)?;
    if text.trim().is_empty() {
        return Err(no_examples(path, "the file is empty"));
    }
    // serde's message already says "at line N column M".
    let sentences: Vec<SpertSentence> =
        serde_json::from_str(&text).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            message: format!(
                "{e}; expected a SpERT array of {{\"tokens\": [...], \"entities\": [{{\"type\", \"start\", \"end\"}}]}}"
            ),
        })?;
    if sentences.is_empty() {
        return Err(no_examples(path, "the JSON array is empty"));
    }
    let mut lines: Option<Vec<usize>> = None;
    let mut out = Vec::with_capacity(sentences.len());
    for (i, s) in sentences.into_iter().enumerate() {
        let n = s.tokens.len();
        let mut tags = vec!["O".to_string(); n];
        for (k, e) in s.entities.iter().enumerate() {
            let problem = if e.start >= e.end || e.end > n {
                Some(format!(
                    "entity {k} ({}) spans tokens {}..{} but the sentence has {n} tokens; expected 0 <= start < end <= {n}",
                    e.ty, e.start, e.end
                ))
            } else if e.ty.is_empty() || e.ty.chars().any(char::is_whitespace) {
                Some(format!("entity {k} has type {:?}; expected a word", e.ty))
            } else if tags[e.start..e.end].iter().any(|t| t != "O") {
                Some(format!(
                    "entity {k} ({}, tokens {}..{}) overlaps an earlier entity; BIO tags cannot hold nested entities",
                    e.ty, e.start, e.end
                ))
            } else {
                None
            };
            if let Some(msg) = problem {
                // Line numbers are only looked up on error.
                let line = lines.get_or_insert_with(|| element_lines(&text))[i];
                return Err(invalid(path, line, format!("sentence {i}: {msg}")));
            }
            tags[e.start] = format!("B-{}", e.ty);
            for t in &mut tags[e.start + 1..e.end] {
                *t = format!("I-{}", e.ty);
            }
        }
        out.push(TaggedSentence {
            words: s.tokens,
            tags: Some(tags),
            predicate: None,
        });
    }
    Ok(out)
}

/// The 1-based line on which each element of a top-level JSON array starts
/// (for error messages: serde_json keeps no positions).
fn element_lines(text: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    let (mut depth, mut line) = (0usize, 1usize);
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if c == '\n' {
            line += 1;
        }
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => {
                if depth == 1 {
                    lines.push(line);
                }
                depth += 1;
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    lines
}

/// Reads the official SRL line format (`tasks/srl/datasets/conll2005.py`,
/// `_generate_examples`): the predicate's word index, the words, `|||`,
/// one tag per word, all whitespace-separated. Blank lines are skipped (as
/// the conll2012 reader does).
pub(super) fn read_srl(path: &Path) -> Result<Vec<TaggedSentence>> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (line_no, line) in numbered(&text) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let err = |m: String| invalid(path, line_no, m);
        let predicate: usize = fields[0].parse().map_err(|_| {
            err(format!(
                "expected the predicate's word index (a non-negative integer) first, found {:?}; \
                 the format is `index w1 ... wn ||| t1 ... tn`",
                fields[0]
            ))
        })?;
        // As the official reader: join the rest with spaces, split on "|||".
        let rest = fields[1..].join(" ");
        let parts: Vec<&str> = rest.split("|||").collect();
        if parts.len() != 2 {
            return Err(err(format!(
                "expected one `|||` between the words and the tags, found {}",
                parts.len() - 1
            )));
        }
        let words: Vec<String> = parts[0].split_whitespace().map(String::from).collect();
        let tags: Vec<String> = parts[1].split_whitespace().map(String::from).collect();
        if words.is_empty() {
            return Err(err("no words before `|||`".to_string()));
        }
        if words.len() != tags.len() {
            return Err(err(format!(
                "{} words but {} tags; expected one tag per word",
                words.len(),
                tags.len()
            )));
        }
        if predicate >= words.len() {
            return Err(err(format!(
                "predicate index {predicate} is out of range; the sentence has {} words",
                words.len()
            )));
        }
        for t in &tags {
            TagCheck::Iob2.check(t).map_err(err)?;
        }
        out.push(TaggedSentence {
            words,
            tags: Some(tags),
            predicate: Some(predicate),
        });
    }
    if out.is_empty() {
        return Err(no_examples(path, "the file holds no sentence"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_forms() {
        assert!(TagCheck::Iob2.check("B-PER").is_ok());
        assert!(TagCheck::Iob2.check("B-").is_err());
        assert!(TagCheck::Iob2.check("E-PER").is_err());
        assert!(TagCheck::Iobes.check("E-PER").is_ok());
        assert!(TagCheck::Iob2.check("PER").is_err());
    }

    #[test]
    fn column_form_or_raw_text() {
        let conll2003 = "-DOCSTART- -X- -X- O\n\nCRICKET NNP B-NP O\n";
        assert_eq!(column_form(conll2003), Some("it has a -DOCSTART- line"));
        // A -DOCSTART- line anywhere, whatever the other lines hold.
        assert!(column_form("Some text\n-DOCSTART- -X- O\n").is_some());
        let two = "John\tB-PER\r\nsleeps\tO\r\n\r\nParis S-LOC\n";
        assert_eq!(column_form(two), Some("every line ends in a tag"));
        // Raw text: one line without a tag is enough, as is a lone word.
        assert_eq!(column_form("John B-PER\nJohn visited Paris.\n"), None);
        assert_eq!(column_form("O\n"), None);
        assert_eq!(column_form("Paris X-LOC\n"), None);
        assert_eq!(column_form("\n \n"), None);
    }

    #[test]
    fn json_element_lines() {
        let text = "[\n  {\"a\": \"[x\\\"{\"},\n  {\"b\": [1,\n 2]}, {}\n]";
        assert_eq!(element_lines(text), vec![2, 3, 4]);
    }
}
