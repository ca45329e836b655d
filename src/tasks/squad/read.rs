//! Reading the official SQuAD JSON.

use std::collections::HashSet;
use std::path::Path;

use serde_json::Value;

use crate::tasks::formats::type_name;
use crate::{Error, Result};

/// One gold answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub text: String,
    /// `answer_start`: a char (Unicode scalar) offset into the context, as
    /// Python counts string positions, not a byte offset.
    pub start: usize,
}

/// One question with its paragraph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SquadExample {
    pub id: String,
    /// As in the file; leading whitespace is stripped only when tokenizing
    /// (as the official code does).
    pub question: String,
    pub context: String,
    /// Gold answers in file order. The first one is the training target (the
    /// official `prepare_train_dataset` uses `answers[0]`); all of them count
    /// for the metrics. Empty for unanswerable (SQuAD 2.0) questions.
    pub answers: Vec<Answer>,
    /// SQuAD 2.0: the question has no answer in the paragraph
    /// (`is_impossible`, or an empty `answers` list when reading a 2.0 file).
    /// Always false for SQuAD 1.1.
    pub is_impossible: bool,
}

/// What [`read_squad`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SquadRead {
    /// The questions in file order (article, paragraph, question).
    pub examples: Vec<SquadExample>,
    /// Questions left out because their first answer's `answer_start` does
    /// not point at its text in the context (each one is also logged with
    /// its id at warn level).
    pub skipped_misaligned: usize,
}

/// Reads an official SQuAD file (`{"version", "data": [{"title",
/// "paragraphs": [{"context", "qas": [{"id", "question", "answers":
/// [{"text", "answer_start"}], "is_impossible"?}]}]}]}`).
///
/// `version_2`: a SQuAD 2.0 file, where `is_impossible` (optional, default
/// false) marks unanswerable questions and an empty `answers` list also means
/// unanswerable. With `version_2 = false` a question marked impossible is an
/// error (read the file as 2.0).
///
/// A question whose first answer (the training target) does not match the
/// context at its `answer_start` (or is empty) is skipped, logged and counted
/// in [`SquadRead::skipped_misaligned`]: training on it would teach a wrong
/// span. Later answers are only scored by their text, so a misaligned
/// offset there is logged but the question kept.
///
/// Errors name the file; a JSON syntax error its line and column; a missing
/// or mistyped field its path inside the JSON, e.g.
/// `data[3].paragraphs[0].qas[2].id: missing`. Duplicate question ids are an
/// error (predictions are keyed by id).
pub fn read_squad(path: &Path, version_2: bool) -> Result<SquadRead> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let root: Value = serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: format!(
            "line {}, column {}: {}",
            e.line(),
            e.column(),
            strip_position(&e.to_string())
        ),
    })?;
    drop(text);
    let err = |at: &str, what: &str| Error::Json {
        path: path.to_path_buf(),
        message: format!("{at}: {what}"),
    };

    let mut examples = Vec::new();
    let mut skipped = 0usize;
    let mut seen = HashSet::new();
    let data = match &root {
        Value::Object(map) => map.get("data").ok_or_else(|| err("data", "missing"))?,
        other => {
            return Err(err(
                "top level",
                &format!(
                    "expected an object with \"data\", found {}",
                    type_name(other)
                ),
            ))
        }
    };
    let data = array(data).map_err(|m| err("data", &m))?;
    for (a, article) in data.iter().enumerate() {
        let at_a = format!("data[{a}]");
        let paragraphs =
            lookup_array(article, &at_a, "paragraphs").map_err(|(p, m)| err(&p, &m))?;
        for (p, paragraph) in paragraphs.iter().enumerate() {
            let at_p = format!("{at_a}.paragraphs[{p}]");
            let context = lookup_str(paragraph, &at_p, "context").map_err(|(p, m)| err(&p, &m))?;
            let qas = lookup_array(paragraph, &at_p, "qas").map_err(|(p, m)| err(&p, &m))?;
            for (q, qa) in qas.iter().enumerate() {
                let at_q = format!("{at_p}.qas[{q}]");
                let id = lookup_str(qa, &at_q, "id").map_err(|(p, m)| err(&p, &m))?;
                let question = lookup_str(qa, &at_q, "question").map_err(|(p, m)| err(&p, &m))?;
                let impossible = match qa.get("is_impossible") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(other) => {
                        return Err(err(
                            &format!("{at_q}.is_impossible"),
                            &format!("expected true or false, found {}", type_name(other)),
                        ))
                    }
                };
                if impossible && !version_2 {
                    return Err(err(
                        &format!("{at_q}.is_impossible"),
                        "the question is marked unanswerable, which only SQuAD 2.0 has; read the file as version 2",
                    ));
                }
                let raw_answers =
                    lookup_array(qa, &at_q, "answers").map_err(|(p, m)| err(&p, &m))?;
                let mut answers = Vec::with_capacity(raw_answers.len());
                for (k, ans) in raw_answers.iter().enumerate() {
                    let at_k = format!("{at_q}.answers[{k}]");
                    let text = lookup_str(ans, &at_k, "text").map_err(|(p, m)| err(&p, &m))?;
                    let start =
                        lookup_usize(ans, &at_k, "answer_start").map_err(|(p, m)| err(&p, &m))?;
                    answers.push(Answer {
                        text: text.to_string(),
                        start,
                    });
                }
                if !seen.insert(id.to_string()) {
                    return Err(err(
                        &format!("{at_q}.id"),
                        &format!("duplicate question id {id:?}"),
                    ));
                }
                // SQuAD 2.0 keeps `plausible_answers` apart; `answers` of an
                // impossible question is empty, and the official v2 script
                // treats an empty list as "no answer".
                let is_impossible = version_2 && (impossible || answers.is_empty());
                if is_impossible {
                    answers.clear();
                }
                if let Some(first) = answers.first() {
                    if first.text.is_empty() || !aligned(context, first) {
                        tracing::warn!(
                            "{}: question {id} skipped: its answer {:?} is not at answer_start {} of the context",
                            path.display(),
                            first.text,
                            first.start
                        );
                        skipped += 1;
                        continue;
                    }
                }
                for (k, other) in answers.iter().enumerate().skip(1) {
                    if !aligned(context, other) {
                        tracing::warn!(
                            "{}: question {id}: answer {k} {:?} is not at answer_start {} (kept: only its text is scored)",
                            path.display(),
                            other.text,
                            other.start
                        );
                    }
                }
                examples.push(SquadExample {
                    id: id.to_string(),
                    question: question.to_string(),
                    context: context.to_string(),
                    answers,
                    is_impossible,
                });
            }
        }
    }
    if skipped > 0 {
        tracing::warn!(
            "{}: {skipped} question(s) skipped for misaligned answers",
            path.display()
        );
    }
    Ok(SquadRead {
        examples,
        skipped_misaligned: skipped,
    })
}

/// Whether `context`, counted in chars, holds `answer.text` at `answer.start`.
fn aligned(context: &str, answer: &Answer) -> bool {
    match context.char_indices().nth(answer.start) {
        Some((byte, _)) => context[byte..].starts_with(answer.text.as_str()),
        // At the very end only the empty answer fits.
        None => answer.start == context.chars().count() && answer.text.is_empty(),
    }
}

/// serde_json appends " at line L column C"; we print the position first.
fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    }
}

fn array(v: &Value) -> std::result::Result<&Vec<Value>, String> {
    v.as_array()
        .ok_or_else(|| format!("expected an array, found {}", type_name(v)))
}

type Located<T> = std::result::Result<T, (String, String)>;

/// `obj.key` as an array; errors carry the JSON path they concern.
fn lookup_array<'v>(obj: &'v Value, at: &str, key: &str) -> Located<&'v Vec<Value>> {
    let v = lookup(obj, at, key)?;
    array(v).map_err(|m| (format!("{at}.{key}"), m))
}

fn lookup_str<'v>(obj: &'v Value, at: &str, key: &str) -> Located<&'v str> {
    let v = lookup(obj, at, key)?;
    v.as_str().ok_or_else(|| {
        (
            format!("{at}.{key}"),
            format!("expected a string, found {}", type_name(v)),
        )
    })
}

fn lookup_usize(obj: &Value, at: &str, key: &str) -> Located<usize> {
    let v = lookup(obj, at, key)?;
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| {
            (
                format!("{at}.{key}"),
                format!("expected a non-negative integer, found {v}"),
            )
        })
}

fn lookup<'v>(obj: &'v Value, at: &str, key: &str) -> Located<&'v Value> {
    match obj {
        Value::Object(map) => map
            .get(key)
            .ok_or_else(|| (format!("{at}.{key}"), "missing".to_string())),
        other => Err((
            at.to_string(),
            format!(
                "expected an object with {key:?}, found {}",
                type_name(other)
            ),
        )),
    }
}
