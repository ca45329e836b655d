//! `custom/classification`: single-sentence or sentence-pair classification
//! from your own files, chosen by extension:
//!
//! - `.csv`: RFC 4180 (quoted fields may hold commas, line breaks and `""`);
//! - `.tsv` / `.tab`: tab split, no quoting (the GLUE convention);
//! - `.jsonl` / `.ndjson`: one JSON object per line.
//!
//! [`TaskOptions::text_fields`] names the text column(s) (one, or two for a
//! pair; default `["text"]`) and [`TaskOptions::label_field`] the label
//! column (default `"label"`). CSV and TSV files have a header row, unless
//! every field is given as a 0-based column index (`"0"`, `"3"`): then the
//! file has no header and the label column is only read if given.
//!
//! The label set ([`Task::label_names`], class index order) is
//! [`TaskOptions::labels`] if given; otherwise the sorted distinct labels of
//! the first labeled file this task reads, kept for later reads (so reading
//! train, then dev, with one task maps dev onto train's labels; a dev label
//! unseen in train is an "unknown label" error). A file whose label column
//! (or key) is absent reads as unlabeled; within a file, labels are present
//! on every row or on none (an empty cell or JSON `null` counts as absent).
//! JSON labels may be strings, integers or booleans (read as their text).
//!
//! Metrics: accuracy (main) and macro-F1 `"f1"`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value;

use super::formats::{invalid, read_csv, read_jsonl, read_tsv, At, Row};
use super::{
    class_pairs, file_stem, list, metric_map, metrics, Example, Label, Prediction, Split, Task,
    TaskKind, TaskOptions,
};
use crate::{Error, Result};

/// The registry name.
pub const NAME: &str = "custom/classification";

/// Classification from a user's CSV/TSV/JSONL file (see the module docs).
#[derive(Debug)]
pub struct CustomClassification {
    text_fields: Vec<String>,
    label_field: Option<String>,
    given_labels: Option<Vec<String>>,
    /// Labels inferred from the first labeled file read (when none were given).
    inferred: Mutex<Option<Vec<String>>>,
}

/// A file format, from the extension.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Csv,
    Tsv,
    Jsonl,
}

/// One record before labels are mapped to classes.
struct Raw {
    line: usize,
    texts: Vec<String>,
    label: Option<String>,
}

impl CustomClassification {
    /// Checks the options: 1 or 2 text fields, no duplicate labels.
    pub fn new(options: &TaskOptions) -> Result<Self> {
        let text_fields = if options.text_fields.is_empty() {
            vec!["text".to_string()]
        } else {
            options.text_fields.clone()
        };
        if text_fields.len() > 2 {
            return Err(Error::InvalidArgument(format!(
                "{NAME}: expected 1 or 2 text fields (a sentence or a sentence pair), got {}: {}",
                text_fields.len(),
                list(&text_fields)
            )));
        }
        let label_field = options.label_field.as_deref().unwrap_or("label");
        if text_fields.iter().any(|f| f == label_field) {
            return Err(Error::InvalidArgument(format!(
                "{NAME}: \"{label_field}\" is both a text field and the label field: the \
                 model would read the answer (--text-fields, --label-field)"
            )));
        }
        if text_fields.len() == 2 && text_fields[0] == text_fields[1] {
            return Err(Error::InvalidArgument(format!(
                "{NAME}: the text field \"{}\" is given twice",
                text_fields[0]
            )));
        }
        if let Some(labels) = &options.labels {
            if labels.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "{NAME}: the label list is empty"
                )));
            }
            let distinct: BTreeSet<&String> = labels.iter().collect();
            if distinct.len() != labels.len() {
                return Err(Error::InvalidArgument(format!(
                    "{NAME}: the label list has duplicates: {}",
                    list(labels)
                )));
            }
        }
        Ok(Self {
            text_fields,
            label_field: options.label_field.clone(),
            given_labels: options.labels.clone(),
            inferred: Mutex::new(None),
        })
    }

    fn format(path: &Path) -> Result<Format> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "csv" => Ok(Format::Csv),
            "tsv" | "tab" => Ok(Format::Tsv),
            "jsonl" | "ndjson" => Ok(Format::Jsonl),
            _ => Err(Error::InvalidArgument(format!(
                "{}: unknown file type {:?} for {NAME}; expected .csv, .tsv or .jsonl",
                path.display(),
                ext
            ))),
        }
    }

    /// Column indices, when every field is given as one (headerless files).
    fn indices(&self) -> Option<(Vec<usize>, Option<usize>)> {
        let texts: Option<Vec<usize>> = self.text_fields.iter().map(|f| f.parse().ok()).collect();
        let label = match &self.label_field {
            None => None,
            Some(l) => Some(l.parse::<usize>().ok()?),
        };
        Some((texts?, label))
    }

    fn label_name(&self) -> &str {
        self.label_field.as_deref().unwrap_or("label")
    }

    fn read_delimited(&self, path: &Path, rows: Vec<Row>) -> Result<Vec<Raw>> {
        let (texts, label, width, data) = match self.indices() {
            Some((texts, label)) => {
                let width = rows[0].fields.len();
                for &t in &texts {
                    if t >= width {
                        return Err(invalid(
                            path,
                            rows[0].line,
                            format!("text column {t} does not exist: the row has {width} columns (numbered from 0)"),
                        ));
                    }
                }
                // A label column past the end: an unlabeled (test) file.
                let label = label.filter(|&l| l < width);
                if let Some(l) = label {
                    warn_if_header(path, &rows, l);
                }
                (texts, label, width, &rows[..])
            }
            None => {
                let header = &rows[0];
                let wanted = self.text_fields.iter().map(String::as_str);
                for name in wanted.chain([self.label_name()]) {
                    if header.fields.iter().filter(|h| *h == name).count() > 1 {
                        return Err(invalid(
                            path,
                            header.line,
                            format!("the header names the column \"{name}\" more than once"),
                        ));
                    }
                }
                let find = |name: &str| header.fields.iter().position(|h| h == name);
                let texts = self
                    .text_fields
                    .iter()
                    .map(|name| {
                        find(name).ok_or_else(|| {
                            invalid(
                                path,
                                header.line,
                                format!(
                                    "the header has no text column \"{name}\" (found: {}); give column names, or 0-based indices for a file without a header",
                                    list(&header.fields)
                                ),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let label = find(self.label_name());
                if rows.len() == 1 {
                    return Err(super::formats::no_examples(path, "only a header line"));
                }
                (texts, label, header.fields.len(), &rows[1..])
            }
        };
        data.iter()
            .map(|row| {
                if row.fields.len() != width {
                    return Err(invalid(
                        path,
                        row.line,
                        format!(
                            "expected {width} columns as in the first line, found {}",
                            row.fields.len()
                        ),
                    ));
                }
                Ok(Raw {
                    line: row.line,
                    texts: texts.iter().map(|&i| row.fields[i].clone()).collect(),
                    label: label
                        .map(|i| row.fields[i].clone())
                        .filter(|s| !s.is_empty()),
                })
            })
            .collect()
    }

    fn read_json(&self, path: &Path) -> Result<Vec<Raw>> {
        let key = self.label_name();
        read_jsonl(path)?
            .into_iter()
            .map(|rec| {
                let at = At {
                    path,
                    line: rec.line,
                    prefix: "",
                };
                let texts = self
                    .text_fields
                    .iter()
                    .map(|f| at.str(&rec.object, f).map(str::to_string))
                    .collect::<Result<Vec<_>>>()?;
                let label = match rec.object.get(key) {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) if s.is_empty() => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Bool(b)) => Some(b.to_string()),
                    Some(v @ Value::Number(n)) => {
                        if n.is_i64() || n.is_u64() {
                            Some(n.to_string())
                        } else {
                            return Err(at.wrong_type(key, "a string, an integer or a boolean", v));
                        }
                    }
                    Some(v) => {
                        return Err(at.wrong_type(key, "a string, an integer or a boolean", v))
                    }
                };
                Ok(Raw {
                    line: rec.line,
                    texts,
                    label,
                })
            })
            .collect()
    }

    /// The label set for a file whose labels are `seen`: the given list, the
    /// one an earlier read fixed, or (first labeled read) `seen` sorted.
    fn label_set(&self, seen: &[&str]) -> Vec<String> {
        if let Some(given) = &self.given_labels {
            return given.clone();
        }
        let mut inferred = self.inferred.lock().unwrap_or_else(|e| e.into_inner());
        if inferred.is_none() && !seen.is_empty() {
            *inferred = Some(sorted_labels(seen));
        }
        inferred.clone().unwrap_or_default()
    }
}

/// The distinct labels in class order: by value when every label is an
/// integer (2 before 10), else as text. Labels with a fractional part are
/// classes too, one per value, which is seldom what a file of scores
/// means: that gets a warning.
fn sorted_labels(seen: &[&str]) -> Vec<String> {
    let set: BTreeSet<&str> = seen.iter().copied().collect();
    let mut labels: Vec<String> = set.into_iter().map(str::to_string).collect();
    let numbers: Option<Vec<f64>> = labels.iter().map(|l| l.trim().parse().ok()).collect();
    if let Some(numbers) = numbers {
        if numbers.iter().all(|x| x.fract() == 0.0) {
            labels.sort_by(|a, b| {
                let value = |s: &String| s.trim().parse::<f64>().unwrap_or(f64::NAN);
                value(a).total_cmp(&value(b))
            });
        } else {
            tracing::warn!(
                "{NAME}: the labels are numbers with fractions ({}, ...), read as {} classes, \
                 one per value; {NAME} does not regress scores",
                labels[..labels.len().min(3)].join(", "),
                labels.len()
            );
        }
    }
    labels
}

/// Column indices mean "no header"; a header read as data would become an
/// example of a class named after the label column. Its mark: a label on
/// the first line that no other line has.
fn warn_if_header(path: &Path, rows: &[Row], label: usize) {
    let first = &rows[0].fields[label];
    let elsewhere = rows[1..].iter().any(|r| r.fields.get(label) == Some(first));
    if rows.len() > 2 && !elsewhere {
        tracing::warn!(
            "{}: line 1's label {first:?} is on no other line; if line 1 is a header, \
             name the columns (--text-fields NAME --label-field NAME) instead of giving \
             indices, which read every line as data",
            path.display()
        );
    }
}

impl Task for CustomClassification {
    fn name(&self) -> &str {
        NAME
    }

    fn kind(&self) -> TaskKind {
        TaskKind::Classification
    }

    /// The given labels, else those inferred by the first labeled read
    /// (empty before it).
    fn label_names(&self) -> Vec<String> {
        match &self.given_labels {
            Some(l) => l.clone(),
            None => self
                .inferred
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default(),
        }
    }

    /// The first existing of `dir/<name>.{csv,tsv,jsonl}` with name `train`;
    /// `dev`, `val` or `validation`; `test`. If none exists, `dir/<name>.csv`
    /// for the first name (reading it then reports the missing file).
    fn split_path(&self, dir: &Path, split: Split) -> PathBuf {
        let names: &[&str] = match split {
            Split::Train => &["train"],
            Split::Dev => &["dev", "val", "validation"],
            Split::Test => &["test"],
        };
        for name in names {
            for ext in ["csv", "tsv", "jsonl"] {
                let p = dir.join(format!("{name}.{ext}"));
                if p.is_file() {
                    return p;
                }
            }
        }
        dir.join(format!("{}.csv", names[0]))
    }

    fn read(&self, path: &Path) -> Result<Vec<Example>> {
        if !path.exists() {
            return Err(Error::MissingFile {
                path: path.to_path_buf(),
                message: format!(
                    "no such file ({NAME} reads .csv, .tsv or .jsonl files; a data folder \
                     holds train.*, and dev.*, val.* or validation.*)"
                ),
            });
        }
        let raws = match Self::format(path)? {
            Format::Csv => self.read_delimited(path, read_csv(path)?)?,
            Format::Tsv => self.read_delimited(path, read_tsv(path)?)?,
            Format::Jsonl => self.read_json(path)?,
        };
        // Labels on every record or on none; the first record decides.
        let labeled = raws[0].label.is_some();
        if let Some(r) = raws.iter().find(|r| r.label.is_some() != labeled) {
            let msg = if labeled {
                format!(
                    "missing label \"{}\" (line {} has one, so every example needs one)",
                    self.label_name(),
                    raws[0].line
                )
            } else {
                format!(
                    "has a label but line {} has none; a file is labeled on every example or on none",
                    raws[0].line
                )
            };
            return Err(invalid(path, r.line, msg));
        }
        let seen: Vec<&str> = raws.iter().filter_map(|r| r.label.as_deref()).collect();
        let labels = self.label_set(&seen);
        let stem = file_stem(path);
        raws.iter()
            .enumerate()
            .map(|(n, r)| {
                let label = match &r.label {
                    None => None,
                    Some(l) => Some(Label::Class(
                        labels.iter().position(|k| k == l).ok_or_else(|| {
                            invalid(
                                path,
                                r.line,
                                format!("unknown label {l:?}; expected one of: {}", list(&labels)),
                            )
                        })?,
                    )),
                };
                let mut texts = r.texts.iter().cloned();
                let text = texts.next().unwrap_or_default();
                Ok(Example {
                    guid: format!("{stem}-{n}"),
                    inputs: vec![(text, texts.next())],
                    label,
                    group: None,
                    categories: Vec::new(),
                })
            })
            .collect()
    }

    fn main_metric(&self) -> &'static str {
        "accuracy"
    }

    fn metrics(
        &self,
        examples: &[Example],
        predictions: &[Prediction],
    ) -> Result<BTreeMap<String, f64>> {
        let n = self.label_names().len();
        let (gold, pred) = class_pairs(NAME, examples, predictions, n)?;
        Ok(metric_map(&[
            ("accuracy", metrics::accuracy(&gold, &pred)),
            ("f1", metrics::macro_f1(&gold, &pred)),
        ]))
    }
}
