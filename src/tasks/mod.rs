//! Tasks: reading benchmark files into [`Example`]s, formatted exactly as the
//! official P-Tuning v2 code (THUDM/P-tuning-v2, `tasks/superglue/dataset.py`
//! and `tasks/glue/dataset.py`) feeds them to the tokenizer, and scoring
//! predictions with the metrics that code reports.
//!
//! - [`superglue`]: BoolQ, CB, COPA, RTE, WiC, WSC, MultiRC from the official
//!   SuperGLUE jsonl files.
//! - [`glue`]: CoLA, SST-2, MRPC, RTE, QNLI, QQP, MNLI, STS-B from the GLUE
//!   tsv files (the layout `download_glue_data.py` writes).
//! - [`custom`]: single- or pair-sentence classification from any CSV, TSV
//!   or JSONL file.
//! - [`metrics`]: the metric functions (accuracy, F1, MCC, correlations,
//!   MultiRC F1a/EM).
//!
//! The flow a trainer follows:
//! ```no_run
//! use ptuning::tasks::{task_by_name, Split, TaskOptions, Prediction};
//! # fn main() -> ptuning::Result<()> {
//! let task = task_by_name("superglue/cb", &TaskOptions::default())?;
//! let dir = std::path::Path::new("../shared/data/superglue/CB");
//! let train = task.read(&task.split_path(dir, Split::Train))?;
//! let dev = task.read_split(dir, Split::Dev)?;
//! // ... tokenize `ex.inputs` (one (text, pair) per choice), train, predict ...
//! let predictions: Vec<Prediction> = dev.iter().map(|_| Prediction::Class(0)).collect();
//! let scores = task.metrics(&dev, &predictions)?;
//! let best_key = task.main_metric(); // "accuracy" for CB
//! # let _ = (train, scores, best_key); Ok(()) }
//! ```
//!
//! Every reading error names the file, the line and what was expected.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::{Error, Result};

pub mod custom;
pub mod features;
pub(crate) mod formats;
pub mod glue;
pub mod metrics;
pub mod seqeval;
pub mod squad;
pub mod superglue;
pub mod tagging;

/// A dataset split. `Dev` is the labeled evaluation split: `val.jsonl` in
/// SuperGLUE, `dev.tsv` in GLUE (`dev_matched.tsv` for MNLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Dev,
    Test,
}

impl Split {
    /// All splits, in the usual order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Dev, Split::Test];

    /// "train", "dev" or "test".
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Split {
    type Err = Error;

    /// "train"; "val", "dev" or "validation"; "test" (case-insensitive).
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "val" | "dev" | "validation" => Ok(Split::Dev),
            "test" => Ok(Split::Test),
            _ => Err(Error::InvalidArgument(format!(
                "unknown split {s:?}; expected one of: train, val (or dev, validation), test"
            ))),
        }
    }
}

/// A gold label.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Label {
    /// An index into [`Task::label_names`]; for multiple choice, the index
    /// of the correct choice in [`Example::inputs`].
    Class(usize),
    /// A regression target (STS-B: similarity in [0, 5]).
    Score(f32),
}

/// A model's prediction for one example, the counterpart of [`Label`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Prediction {
    /// The arg-max class (or chosen choice index for multiple choice).
    Class(usize),
    /// The regression output.
    Score(f32),
}

/// One example, ready for the tokenizer.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// A stable id: `"<file stem>-<idx>"` with the file's own `idx` for
    /// SuperGLUE (`"val-12"`; MultiRC `"val-<passage>-<question>-<answer>"`),
    /// the 0-based data row for GLUE (`"dev-0"`, as HF `datasets` numbers
    /// them) and custom files.
    pub guid: String,
    /// The tokenizer inputs: one `(text, pair text)` per choice. Exactly one
    /// entry unless the task is multiple choice (COPA: two, one per choice,
    /// all sharing the same first text).
    pub inputs: Vec<(String, Option<String>)>,
    /// The gold label, `None` when the file is unlabeled (official test
    /// splits).
    pub label: Option<Label>,
    /// The group the example is scored with: for MultiRC the question
    /// (`"<passage idx>-<question idx>"`), for exact match over all of a
    /// question's answer options; for AX-g the minimal pair (two lines that
    /// differ in the pronoun's gender), for gender parity. `None` elsewhere.
    pub group: Option<String>,
    /// The slices of a diagnostic set the example is also scored in: AX-b's
    /// coarse linguistic categories (`logic`, `knowledge`, ...). Empty elsewhere.
    pub categories: Vec<String>,
}

/// What kind of head a task needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// One sequence in, one of `label_names().len()` classes out.
    Classification,
    /// `choices` sequences in (one per choice), one score each; the
    /// prediction is the arg-max choice.
    MultipleChoice { choices: usize },
    /// One sequence in, one real number out.
    Regression,
}

/// A task: how to find, read, format and score one dataset.
pub trait Task: Send + Sync {
    /// The registry name, e.g. `"superglue/cb"`.
    fn name(&self) -> &str;

    /// The head the task needs.
    fn kind(&self) -> TaskKind;

    /// The class names, indexed by [`Label::Class`]: e.g. `["entailment",
    /// "contradiction", "neutral"]` for CB (the official label order);
    /// `["0", "1"]` (the choice index) for COPA; empty for regression.
    fn label_names(&self) -> Vec<String>;

    /// Where `split` lives inside the task's data folder `dir` (e.g.
    /// `../shared/data/superglue/CB`; see [`task_dir`]).
    fn split_path(&self, dir: &Path, split: Split) -> PathBuf;

    /// Reads one file of the task's format (any split; labels may be absent).
    fn read(&self, path: &Path) -> Result<Vec<Example>>;

    /// Reads `split` from the task's data folder: `read(split_path(dir, split))`.
    fn read_split(&self, dir: &Path, split: Split) -> Result<Vec<Example>> {
        self.read(&self.split_path(dir, split))
    }

    /// The key of [`Task::metrics`] used for model selection (higher is
    /// better), as in the official code (`test_key`).
    fn main_metric(&self) -> &'static str;

    /// Scores predictions (one per example, same order) against the gold
    /// labels. Errors when the counts differ, an example has no label, or a
    /// prediction has the wrong kind or is out of range.
    fn metrics(
        &self,
        examples: &[Example],
        predictions: &[Prediction],
    ) -> Result<BTreeMap<String, f64>>;
}

/// Options for the tasks that are not fixed by a benchmark
/// (`custom/classification`); the built-in tasks ignore them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskOptions {
    /// The text column(s): one (single sentence) or two (sentence pair).
    /// Column names, or 0-based column indices for files without a header
    /// row. Empty means `["text"]`.
    pub text_fields: Vec<String>,
    /// The label column (a name, or an index for headerless files). `None`
    /// means `"label"` (for headerless files: no label column).
    pub label_field: Option<String>,
    /// The label set, in index order. `None`: the sorted distinct labels of
    /// the first labeled file read (pass the train split's labels when
    /// reading dev with a fresh task).
    pub labels: Option<Vec<String>>,
}

const KNOWN: &[&str] = &[
    "superglue/boolq",
    "superglue/cb",
    "superglue/copa",
    "superglue/rte",
    "superglue/wic",
    "superglue/wsc",
    "superglue/multirc",
    "glue/cola",
    "glue/sst2",
    "glue/mrpc",
    "glue/rte",
    "glue/qnli",
    "glue/qqp",
    "glue/mnli",
    "glue/stsb",
    "custom/classification",
];

/// The names [`task_by_name`] accepts.
pub fn known_tasks() -> &'static [&'static str] {
    KNOWN
}

/// Makes the task `name` (case-insensitive; `glue/sst-2` and `glue/sts-b`
/// are accepted too). Unknown names get an error listing the known ones.
pub fn task_by_name(name: &str, options: &TaskOptions) -> Result<Box<dyn Task>> {
    let key = canonical(name);
    if let Some(t) = superglue::SuperGlueTask::by_name(&key) {
        return Ok(Box::new(t));
    }
    if let Some(t) = glue::GlueTask::by_name(&key) {
        return Ok(Box::new(t));
    }
    if key == custom::NAME {
        return Ok(Box::new(custom::CustomClassification::new(options)?));
    }
    let every = KNOWN
        .iter()
        .chain(tagging::known_tagging_tasks())
        .chain(&squad::QA_TASKS);
    Err(Error::InvalidArgument(format!(
        "unknown task {name:?}; known tasks: {}",
        every.copied().collect::<Vec<_>>().join(", ")
    )))
}

fn canonical(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    match lower.as_str() {
        "glue/sst-2" => "glue/sst2".into(),
        "glue/sts-b" => "glue/stsb".into(),
        _ => lower,
    }
}

/// The conventional data folder of a built-in task under a data root laid
/// out like `shared/data` (`superglue/CB`, `glue/SST-2`, ...); `None` for
/// unknown names and for `custom/classification`.
pub fn task_dir(data_root: &Path, name: &str) -> Option<PathBuf> {
    let key = canonical(name);
    let folder = match key.as_str() {
        "superglue/boolq" => "superglue/BoolQ",
        "superglue/cb" => "superglue/CB",
        "superglue/copa" => "superglue/COPA",
        "superglue/rte" => "superglue/RTE",
        "superglue/wic" => "superglue/WiC",
        "superglue/wsc" => "superglue/WSC",
        "superglue/multirc" => "superglue/MultiRC",
        "glue/cola" => "glue/CoLA",
        "glue/sst2" => "glue/SST-2",
        "glue/mrpc" => "glue/MRPC",
        "glue/rte" => "glue/RTE",
        "glue/qnli" => "glue/QNLI",
        "glue/qqp" => "glue/QQP",
        "glue/mnli" => "glue/MNLI",
        "glue/stsb" => "glue/STS-B",
        _ => return None,
    };
    Some(data_root.join(folder))
}

// ---------------------------------------------------------------------------
// Helpers shared by the task files.

/// "a, b, c" for error messages.
pub(crate) fn list<S: AsRef<str>>(items: &[S]) -> String {
    items
        .iter()
        .map(|s| s.as_ref())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The file name without extension ("val" for `.../val.jsonl`), for guids.
pub(crate) fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".to_string())
}

/// Checks the shared preconditions of every metric: as many predictions as
/// examples, at least one example, every example labeled.
fn check_metric_inputs(task: &str, examples: &[Example], predictions: &[Prediction]) -> Result<()> {
    if examples.len() != predictions.len() {
        return Err(Error::InvalidArgument(format!(
            "{task}: {} predictions for {} examples",
            predictions.len(),
            examples.len()
        )));
    }
    if examples.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{task}: no examples to score"
        )));
    }
    if let Some(e) = examples.iter().find(|e| e.label.is_none()) {
        return Err(Error::InvalidArgument(format!(
            "{task}: example {} has no gold label; metrics need a labeled split (not test)",
            e.guid
        )));
    }
    Ok(())
}

/// Gold and predicted class indices, checked: both are `Class`, predictions
/// are below `n_classes`.
pub(crate) fn class_pairs(
    task: &str,
    examples: &[Example],
    predictions: &[Prediction],
    n_classes: usize,
) -> Result<(Vec<usize>, Vec<usize>)> {
    check_metric_inputs(task, examples, predictions)?;
    let mut gold = Vec::with_capacity(examples.len());
    let mut pred = Vec::with_capacity(examples.len());
    for (e, p) in examples.iter().zip(predictions) {
        match (e.label, *p) {
            (Some(Label::Class(g)), Prediction::Class(q)) => {
                if q >= n_classes {
                    return Err(Error::InvalidArgument(format!(
                        "{task}: prediction {q} for example {} is out of range (the task has {n_classes} classes)",
                        e.guid
                    )));
                }
                gold.push(g);
                pred.push(q);
            }
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "{task}: example {} has label {:?} and prediction {p:?}; expected class labels and class predictions",
                    e.guid, e.label
                )))
            }
        }
    }
    Ok((gold, pred))
}

/// Gold and predicted scores (regression), checked.
pub(crate) fn score_pairs(
    task: &str,
    examples: &[Example],
    predictions: &[Prediction],
) -> Result<(Vec<f64>, Vec<f64>)> {
    check_metric_inputs(task, examples, predictions)?;
    let mut gold = Vec::with_capacity(examples.len());
    let mut pred = Vec::with_capacity(examples.len());
    for (e, p) in examples.iter().zip(predictions) {
        match (e.label, *p) {
            (Some(Label::Score(g)), Prediction::Score(q)) => {
                gold.push(g as f64);
                pred.push(q as f64);
            }
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "{task}: example {} has label {:?} and prediction {p:?}; expected scores for a regression task",
                    e.guid, e.label
                )))
            }
        }
    }
    Ok((gold, pred))
}

/// `{"name": value, ...}` from pairs.
pub(crate) fn metric_map(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_parsing() {
        assert_eq!("train".parse::<Split>().unwrap(), Split::Train);
        for s in ["val", "dev", "validation", "VAL"] {
            assert_eq!(s.parse::<Split>().unwrap(), Split::Dev);
        }
        assert_eq!("test".parse::<Split>().unwrap(), Split::Test);
        let err = "eval".parse::<Split>().unwrap_err().to_string();
        assert!(err.contains("\"eval\"") && err.contains("train"), "{err}");
    }

    #[test]
    fn every_known_task_builds() {
        for name in known_tasks() {
            let t = task_by_name(name, &TaskOptions::default()).unwrap();
            assert_eq!(t.name(), *name);
        }
        assert_eq!(
            task_by_name("GLUE/SST-2", &TaskOptions::default())
                .unwrap()
                .name(),
            "glue/sst2"
        );
    }

    #[test]
    fn unknown_task_lists_known_names() {
        let err = task_by_name("glue/wnli", &TaskOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("\"glue/wnli\""), "{err}");
        for name in known_tasks() {
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn metric_input_checks() {
        let ex = |label| Example {
            guid: "x-0".into(),
            inputs: vec![("a".into(), None)],
            label,
            group: None,
            categories: Vec::new(),
        };
        let e = class_pairs("t", &[ex(Some(Label::Class(0)))], &[], 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("0 predictions for 1 examples"), "{e}");
        let e = class_pairs("t", &[ex(None)], &[Prediction::Class(0)], 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no gold label"), "{e}");
        let e = class_pairs(
            "t",
            &[ex(Some(Label::Class(0)))],
            &[Prediction::Class(2)],
            2,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("out of range"), "{e}");
        let e = score_pairs("t", &[ex(Some(Label::Class(0)))], &[Prediction::Score(1.0)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected scores"), "{e}");
    }
}
