//! GLUE tasks read from the GLUE tsv release (the files
//! `download_glue_data.py` writes: `train.tsv`, `dev.tsv`, `test.tsv`; MNLI
//! `dev_matched.tsv` / `dev_mismatched.tsv` / `test_matched.tsv`).
//!
//! The files are split on tabs with quoting disabled (several sentences hold
//! unbalanced `"`), as HF `datasets`' `glue` loader reads them
//! (`csv.QUOTE_NONE`). Columns are found by header name; CoLA's train and dev
//! have no header (4 columns: source, label, original mark, sentence). Every
//! row must have as many columns as the header.
//!
//! Inputs follow THUDM/P-tuning-v2 `tasks/glue/dataset.py` `task_to_keys`
//! (HF field ← tsv column):
//!
//! | task  | text                    | pair                      | label column (values)                      |
//! |-------|-------------------------|---------------------------|--------------------------------------------|
//! | CoLA  | sentence (col 3)        | —                         | col 1 (0/1)                                |
//! | SST-2 | `sentence`              | —                         | `label` (0/1)                              |
//! | MRPC  | `#1 String`             | `#2 String`               | `Quality` (0/1)                            |
//! | RTE   | `sentence1`             | `sentence2`               | `label` (entailment/not_entailment)        |
//! | QNLI  | `question`              | `sentence`                | `label` (entailment/not_entailment)        |
//! | QQP   | `question1`             | `question2`               | `is_duplicate` (0/1)                       |
//! | MNLI  | `sentence1` (premise)   | `sentence2` (hypothesis)  | `gold_label` (entailment/neutral/contradiction) |
//! | STS-B | `sentence1`             | `sentence2`               | `score` (a real number, regression)        |
//!
//! Texts are kept byte for byte (SST-2's trailing spaces included), as HF
//! does. Label names and order are HF `glue`'s `ClassLabel` names (the
//! official code's `label_list`); a test file without the label column reads
//! as unlabeled.
//!
//! Metrics are HF `glue`'s (CoLA: Matthews correlation, here `"mcc"`, plus
//! accuracy; MRPC/QQP: accuracy, F1 of class 1 and `"combined_score"`, their
//! mean, as the official `compute_metrics` adds; STS-B: `"pearson"`,
//! `"spearman"` and `"combined_score"`; the rest accuracy). The official GLUE
//! trainer keeps `BaseTrainer`'s default `test_key = "accuracy"`, so that is
//! the main metric wherever accuracy exists (MRPC and QQP included). CoLA and
//! STS-B report no accuracy there; for them the main metric is CoLA's only
//! official metric, `"mcc"`, and STS-B's `"pearson"` (the first of its two,
//! the usual headline number).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::formats::{invalid, no_examples, read_tsv, Row};
use super::{
    class_pairs, file_stem, list, metric_map, metrics, score_pairs, Example, Label, Prediction,
    Split, Task, TaskKind,
};
use crate::Result;

/// Which GLUE task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Glue {
    Cola,
    Sst2,
    Mrpc,
    Rte,
    Qnli,
    Qqp,
    Mnli,
    Stsb,
}

/// How a task's label column reads.
#[derive(Debug, Clone, Copy)]
enum Labels {
    /// `file_values[i]` in the file means class `i`, named `names[i]`.
    Classes {
        names: &'static [&'static str],
        file_values: &'static [&'static str],
    },
    /// A real-valued score.
    Score,
}

/// The column layout of a task's header-bearing files.
#[derive(Debug, Clone, Copy)]
struct Layout {
    text: &'static str,
    pair: Option<&'static str>,
    label: &'static str,
    labels: Labels,
}

const BINARY_VALUES: &[&str] = &["0", "1"];
const ENTAILMENT2: &[&str] = &["entailment", "not_entailment"];
const MNLI3: &[&str] = &["entailment", "neutral", "contradiction"];

/// A GLUE task (see the module docs for formats).
#[derive(Debug, Clone)]
pub struct GlueTask {
    which: Glue,
}

impl GlueTask {
    /// The task for a registry name (`"glue/cola"`), if it is one.
    pub fn by_name(name: &str) -> Option<Self> {
        let which = match name {
            "glue/cola" => Glue::Cola,
            "glue/sst2" => Glue::Sst2,
            "glue/mrpc" => Glue::Mrpc,
            "glue/rte" => Glue::Rte,
            "glue/qnli" => Glue::Qnli,
            "glue/qqp" => Glue::Qqp,
            "glue/mnli" => Glue::Mnli,
            "glue/stsb" => Glue::Stsb,
            _ => return None,
        };
        Some(Self { which })
    }

    /// The task.
    pub fn new(which: Glue) -> Self {
        Self { which }
    }

    fn layout(&self) -> Layout {
        let classes = |names, file_values| Labels::Classes { names, file_values };
        match self.which {
            Glue::Cola => Layout {
                text: "sentence",
                pair: None,
                label: "label",
                labels: classes(&["unacceptable", "acceptable"], BINARY_VALUES),
            },
            Glue::Sst2 => Layout {
                text: "sentence",
                pair: None,
                label: "label",
                labels: classes(&["negative", "positive"], BINARY_VALUES),
            },
            Glue::Mrpc => Layout {
                text: "#1 String",
                pair: Some("#2 String"),
                label: "Quality",
                labels: classes(&["not_equivalent", "equivalent"], BINARY_VALUES),
            },
            Glue::Rte => Layout {
                text: "sentence1",
                pair: Some("sentence2"),
                label: "label",
                labels: classes(ENTAILMENT2, ENTAILMENT2),
            },
            Glue::Qnli => Layout {
                text: "question",
                pair: Some("sentence"),
                label: "label",
                labels: classes(ENTAILMENT2, ENTAILMENT2),
            },
            Glue::Qqp => Layout {
                text: "question1",
                pair: Some("question2"),
                label: "is_duplicate",
                labels: classes(&["not_duplicate", "duplicate"], BINARY_VALUES),
            },
            Glue::Mnli => Layout {
                text: "sentence1",
                pair: Some("sentence2"),
                label: "gold_label",
                labels: classes(MNLI3, MNLI3),
            },
            Glue::Stsb => Layout {
                text: "sentence1",
                pair: Some("sentence2"),
                label: "score",
                labels: Labels::Score,
            },
        }
    }

    /// Parses one label cell.
    fn parse_label(&self, path: &Path, line: usize, column: &str, value: &str) -> Result<Label> {
        match self.layout().labels {
            Labels::Classes { file_values, .. } => file_values
                .iter()
                .position(|v| *v == value)
                .map(Label::Class)
                .ok_or_else(|| {
                    invalid(
                        path,
                        line,
                        format!(
                            "unknown label {value:?} in column \"{column}\" for {}; expected one of: {}",
                            self.name(),
                            list(file_values)
                        ),
                    )
                }),
            Labels::Score => value
                .trim()
                .parse::<f32>()
                .ok()
                .filter(|s| s.is_finite())
                .map(Label::Score)
                .ok_or_else(|| {
                    invalid(
                        path,
                        line,
                        format!("column \"{column}\": expected a number (the similarity score), found {value:?}"),
                    )
                }),
        }
    }

    /// CoLA train/dev: no header, `source \t label \t mark \t sentence`.
    fn read_cola_headerless(&self, path: &Path, rows: &[Row]) -> Result<Vec<Example>> {
        let stem = file_stem(path);
        rows.iter()
            .enumerate()
            .map(|(n, row)| {
                if row.fields.len() != 4 {
                    return Err(invalid(
                        path,
                        row.line,
                        format!(
                            "expected 4 tab-separated columns (source, label, mark, sentence: CoLA train/dev have no header), found {}",
                            row.fields.len()
                        ),
                    ));
                }
                let label = self.parse_label(path, row.line, "label (column 2)", &row.fields[1])?;
                Ok(Example {
                    guid: format!("{stem}-{n}"),
                    inputs: vec![(row.fields[3].clone(), None)],
                    label: Some(label),
                    group: None,
                    categories: Vec::new(),
                })
            })
            .collect()
    }

    /// Any file with a header row: columns by name.
    fn read_with_header(&self, path: &Path, rows: &[Row]) -> Result<Vec<Example>> {
        let layout = self.layout();
        let header = &rows[0];
        let find = |name: &str| header.fields.iter().position(|h| h == name);
        let require = |name: &str| {
            find(name).ok_or_else(|| {
                invalid(
                    path,
                    header.line,
                    format!(
                        "the header has no column \"{name}\" needed by {} (found: {})",
                        self.name(),
                        list(&header.fields)
                    ),
                )
            })
        };
        let text = require(layout.text)?;
        let pair = layout.pair.map(require).transpose()?;
        let label = find(layout.label);
        let width = header.fields.len();
        let data = &rows[1..];
        if data.is_empty() {
            return Err(no_examples(path, "only a header line"));
        }
        let stem = file_stem(path);
        data.iter()
            .enumerate()
            .map(|(n, row)| {
                if row.fields.len() != width {
                    return Err(invalid(
                        path,
                        row.line,
                        format!(
                            "expected {width} tab-separated columns as in the header, found {}",
                            row.fields.len()
                        ),
                    ));
                }
                let label = label
                    .map(|i| self.parse_label(path, row.line, layout.label, &row.fields[i]))
                    .transpose()?;
                Ok(Example {
                    guid: format!("{stem}-{n}"),
                    inputs: vec![(
                        row.fields[text].clone(),
                        pair.map(|i| row.fields[i].clone()),
                    )],
                    label,
                    group: None,
                    categories: Vec::new(),
                })
            })
            .collect()
    }
}

impl Task for GlueTask {
    fn name(&self) -> &str {
        match self.which {
            Glue::Cola => "glue/cola",
            Glue::Sst2 => "glue/sst2",
            Glue::Mrpc => "glue/mrpc",
            Glue::Rte => "glue/rte",
            Glue::Qnli => "glue/qnli",
            Glue::Qqp => "glue/qqp",
            Glue::Mnli => "glue/mnli",
            Glue::Stsb => "glue/stsb",
        }
    }

    fn kind(&self) -> TaskKind {
        match self.which {
            Glue::Stsb => TaskKind::Regression,
            _ => TaskKind::Classification,
        }
    }

    fn label_names(&self) -> Vec<String> {
        match self.layout().labels {
            Labels::Classes { names, .. } => names.iter().map(|s| s.to_string()).collect(),
            Labels::Score => Vec::new(),
        }
    }

    /// `dir/{train,dev,test}.tsv`; MNLI: `dev_matched.tsv` and
    /// `test_matched.tsv` (read `dev_mismatched.tsv` by path with
    /// [`Task::read`]).
    fn split_path(&self, dir: &Path, split: Split) -> PathBuf {
        let file = match (self.which, split) {
            (_, Split::Train) => "train.tsv",
            (Glue::Mnli, Split::Dev) => "dev_matched.tsv",
            (Glue::Mnli, Split::Test) => "test_matched.tsv",
            (_, Split::Dev) => "dev.tsv",
            (_, Split::Test) => "test.tsv",
        };
        dir.join(file)
    }

    fn read(&self, path: &Path) -> Result<Vec<Example>> {
        let rows = read_tsv(path)?;
        // CoLA: the test file has the header "index\tsentence"; train and dev
        // have none.
        if self.which == Glue::Cola && rows[0].fields != ["index", "sentence"] {
            return self.read_cola_headerless(path, &rows);
        }
        self.read_with_header(path, &rows)
    }

    fn main_metric(&self) -> &'static str {
        match self.which {
            Glue::Cola => "mcc",
            Glue::Stsb => "pearson",
            _ => "accuracy",
        }
    }

    fn metrics(
        &self,
        examples: &[Example],
        predictions: &[Prediction],
    ) -> Result<BTreeMap<String, f64>> {
        if self.which == Glue::Stsb {
            let (gold, pred) = score_pairs(self.name(), examples, predictions)?;
            let p = metrics::pearson(&pred, &gold);
            let s = metrics::spearman(&pred, &gold);
            return Ok(metric_map(&[
                ("pearson", p),
                ("spearman", s),
                ("combined_score", (p + s) / 2.0),
            ]));
        }
        let n = self.label_names().len();
        let (gold, pred) = class_pairs(self.name(), examples, predictions, n)?;
        let acc = metrics::accuracy(&gold, &pred);
        Ok(match self.which {
            Glue::Cola => metric_map(&[
                ("mcc", metrics::matthews_corrcoef(&gold, &pred)),
                ("accuracy", acc),
            ]),
            Glue::Mrpc | Glue::Qqp => {
                let f1 = metrics::binary_f1(&gold, &pred, 1);
                metric_map(&[
                    ("accuracy", acc),
                    ("f1", f1),
                    ("combined_score", (acc + f1) / 2.0),
                ])
            }
            _ => metric_map(&[("accuracy", acc)]),
        })
    }
}
