//! What `predict` makes of a tagger's input file. A `.txt` file (any case)
//! is raw text, one text per line, unless it is in column form: CoNLL-2003's
//! own splits are `.txt` files, so a `-DOCSTART-` line, or a tag ending every
//! line, means the task's files rather than text to tag. Any other file is
//! read as the task's files are.

use std::path::Path;

use serde_json::Value;

use super::read::column_form;
use super::spans::split_words;
use super::{TaggedSentence, TaggingTask, Word};
use crate::tasks::formats::{invalid, read_text};
use crate::{Error, Result};

/// A raw text line and its words with char offsets (start, end exclusive).
pub type RawLine = (String, Vec<Word>);

/// A tagger's input file, read ([`read_tagging_input`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggingInput {
    pub sentences: Vec<TaggedSentence>,
    /// Raw text: each line (one per sentence) and its words' char offsets;
    /// `None` when the file was read as the task's files.
    pub raw: Option<Vec<RawLine>>,
    /// How a `.txt` file was read and why, to tell the user ("read as raw
    /// text, one text per line"); `None` for other files, whose name says.
    pub read_as: Option<String>,
}

/// Reads `path` to predict on (see the module docs).
///
/// Errors: those of [`TaggingTask::read`], a `.txt` file that is not UTF-8
/// or holds no text, and, for tasks whose files are not JSON, a JSON file
/// (JSON Lines input is what the classifiers read, not the taggers).
pub fn read_tagging_input(task: &dyn TaggingTask, path: &Path) -> Result<TaggingInput> {
    let txt = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("txt"));
    if !txt {
        let sentences = task.read(path).map_err(|e| match json_line(path, task) {
            Some(line) => invalid(
                path,
                line,
                format!(
                    "this is JSON, but a {} tagger reads raw text (.txt, one text per line) or {}",
                    task.name(),
                    task.file_format()
                ),
            ),
            None => e,
        })?;
        return Ok(TaggingInput {
            sentences,
            raw: None,
            read_as: None,
        });
    }
    // read_text drops a byte-order mark, which would otherwise be a word of
    // its own and shift every char offset by one.
    let text = read_text(path)?;
    if let Some(why) = column_form(&text) {
        return Ok(TaggingInput {
            sentences: task.read(path)?,
            raw: None,
            read_as: Some(format!(
                "read as {}, not raw text: {why}",
                task.file_format()
            )),
        });
    }
    let raw: Vec<RawLine> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| (l.to_string(), split_words(l)))
        .collect();
    if raw.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{}: no text to tag (a .txt input is raw text, one text per line)",
            path.display()
        )));
    }
    Ok(TaggingInput {
        sentences: raw
            .iter()
            .map(|(_, words)| TaggedSentence::unlabeled(words))
            .collect(),
        raw: Some(raw),
        read_as: Some("read as raw text, one text per line".to_string()),
    })
}

/// For a task whose files are not JSON: the line on which `path`'s JSON
/// starts, when it is JSON Lines or one JSON document; `None` otherwise
/// (a column file may well start with a `{` or `[` word, but never parses).
fn json_line(path: &Path, task: &dyn TaggingTask) -> Option<usize> {
    if task.reads_json() {
        return None;
    }
    let text = read_text(path).ok()?;
    let (i, first) = text
        .lines()
        .enumerate()
        .find(|(_, l)| !l.trim().is_empty())?;
    let structured =
        |s: &str| serde_json::from_str::<Value>(s).is_ok_and(|v| v.is_object() || v.is_array());
    (structured(first) || structured(&text)).then_some(i + 1)
}
