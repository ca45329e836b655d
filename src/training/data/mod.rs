//! What the training loop needs from a task, whatever its shape: train units
//! to batch, a head to build, and an evaluation on dev. Sequence tasks
//! (classification, multiple choice, regression) live here; sequence labelling
//! and extractive QA implement the same trait.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod qa;
mod sequence;
mod tagging;

pub use qa::QaData;
pub use sequence::SequenceData;
pub use tagging::TaggingData;

use crate::error::Result;
use crate::model::batch::Batch;
use crate::model::heads::HeadKind;
use crate::model::prompt_model::{PromptModel, Targets};
use crate::model::tokenizer::Tokenizer;
use crate::rng::Rng;
use crate::tasks::{task_by_name, Split, Task, TaskOptions};
use crate::training::trainer::TrainConfig;

/// The head a task needs.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadSpec {
    pub kind: HeadKind,
    /// Outputs of the linear layer: classes, tags, 1 or 2.
    pub outputs: usize,
    /// Class or tag names in output order (empty for choices, regression, QA).
    pub label_names: Vec<String>,
}

/// Owned targets of one training batch (see `Targets` for the borrowed view).
#[derive(Clone, Debug, PartialEq)]
pub enum TrainTargets {
    Classes(Vec<usize>),
    Choices { choices: usize, labels: Vec<usize> },
    Scores(Vec<f32>),
    Tokens(Vec<i64>),
    Spans { start: Vec<usize>, end: Vec<usize> },
}

impl TrainTargets {
    pub fn as_targets(&self) -> Targets<'_> {
        match self {
            TrainTargets::Classes(l) => Targets::Classes(l),
            TrainTargets::Choices { choices, labels } => Targets::Choices {
                choices: *choices,
                labels,
            },
            TrainTargets::Scores(s) => Targets::Scores(s),
            TrainTargets::Tokens(t) => Targets::Tokens(t),
            TrainTargets::Spans { start, end } => Targets::Spans { start, end },
        }
    }
}

/// What `predict` writes.
#[derive(Clone, Debug, PartialEq)]
pub enum Predictions {
    Lines(Vec<serde_json::Value>),
    Document(serde_json::Value),
}

/// A task's data, tokenized, as the loop consumes it.
pub trait TaskData {
    fn task_name(&self) -> &str;
    fn head(&self) -> HeadSpec;
    /// The dev metric that selects best/ (higher is better).
    fn main_metric(&self) -> &str;
    /// Train units (examples, or windows for long inputs); the loop shuffles these.
    fn train_len(&self) -> usize;
    fn train_batch(&self, indices: &[usize]) -> Result<(Batch, TrainTargets)>;
    fn has_dev(&self) -> bool;
    /// Metrics on dev, without dropout.
    fn evaluate_dev(&self, model: &PromptModel, batch_size: usize)
        -> Result<BTreeMap<String, f64>>;
    /// Predictions on the dev (or given) data: one JSON value per line, or
    /// one JSON document (QA's predictions.json).
    fn predict_dev(&self, model: &PromptModel, batch_size: usize) -> Result<Predictions>;
    /// One line for the log: counts, truncation, splitting.
    fn describe(&self) -> String;
    /// The same for the dev (or given) data alone, as `eval` and `predict`
    /// read it: e.g. "56 examples (0 truncated to 128 tokens)".
    fn describe_dev(&self) -> String;
    /// Counts for summary.json.
    fn summary(&self) -> serde_json::Value;
}

/// A stream of the run's seed: distinct, reproducible values per (tag, n).
pub fn derive_seed(seed: u64, tag: u64, n: u64) -> u64 {
    Rng::new(seed ^ tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03))
        .next_u64()
}

/// Seed tags of the run's random streams.
pub const SHUFFLE: u64 = 1;
pub const DROPOUT: u64 = 2;
pub const HOLDOUT: u64 = 3;
/// The order of a multi-task epoch's batches across tasks.
pub const TASK_MIX: u64 = 4;
pub const INIT_PREFIX: u64 = 10;
pub const INIT_HEAD: u64 = 11;

/// A seeded permutation of 0..n (Fisher-Yates).
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
}

/// Splits `fraction` of `items` off as a held-out dev set, reproducibly.
pub fn hold_out<T>(items: Vec<T>, fraction: f32, seed: u64) -> (Vec<T>, Vec<T>) {
    let order = shuffled(items.len(), derive_seed(seed, HOLDOUT, 0));
    let n_dev = ((items.len() as f32 * fraction).round() as usize)
        .clamp(1, items.len().saturating_sub(1).max(1));
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    let dev = order[..n_dev]
        .iter()
        .filter_map(|&i| slots[i].take())
        .collect();
    (slots.into_iter().flatten().collect(), dev)
}

/// The task object for a config (custom tasks need their columns).
pub fn task_for(config: &TrainConfig, labels: Option<Vec<String>>) -> Result<Box<dyn Task>> {
    task_by_name(
        &config.task,
        &TaskOptions {
            text_fields: config.text_fields.clone(),
            label_field: config.label_field.clone(),
            labels,
        },
    )
}

/// Which family of task a name belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Classification, multiple choice, regression (SuperGLUE, GLUE, custom).
    Sequence,
    /// Tags per word (NER, SRL, custom/conll).
    Tagging,
    /// Extractive QA (SQuAD).
    Qa,
}

impl Family {
    pub fn of(task: &str) -> Family {
        let t = task.trim().to_ascii_lowercase();
        if t.starts_with("ner/") || t.starts_with("srl/") || t == "custom/conll" {
            Family::Tagging
        } else if t.starts_with("qa/") {
            Family::Qa
        } else {
            Family::Sequence
        }
    }

    /// The maximum sequence length when --max-seq-len is not given: 128, and
    /// 384 for QA as the official code fixes it.
    pub fn default_max_seq_len(self) -> usize {
        match self {
            Family::Qa => 384,
            Family::Sequence | Family::Tagging => 128,
        }
    }
}

/// Checks that `config.task` names a task (with its options, for custom
/// tasks) before any data is read.
pub fn check_task(config: &TrainConfig) -> Result<()> {
    match Family::of(&config.task) {
        Family::Sequence => task_for(config, None).map(drop),
        Family::Tagging => tagging::task(config).map(drop),
        Family::Qa => qa::is_squad_v2(&config.task).map(drop),
    }
}

/// The file of `split` in a task's data folder.
pub fn split_file(config: &TrainConfig, dir: &Path, split: Split) -> Result<PathBuf> {
    Ok(match Family::of(&config.task) {
        Family::Sequence => task_for(config, None)?.split_path(dir, split),
        Family::Tagging => tagging::task(config)?.split_path(dir, split),
        Family::Qa => dir.join(match split {
            Split::Train => "train.json",
            Split::Dev => "dev.json",
            Split::Test => "test.json",
        }),
    })
}

/// Where evaluation data comes from.
#[derive(Clone, Debug)]
pub enum DevSource<'a> {
    /// The task's dev split in `config.data`, or a hold-out of train.
    Training,
    /// One file in the task's format, to evaluate (labels needed) or to
    /// predict on (labels optional).
    File(&'a Path),
    /// One file to predict on: as `File`, except that for sequence
    /// labelling a `.txt` file is raw text, one text per line, unless it is
    /// in column form (CoNLL-2003's own splits are .txt files; see
    /// `tasks::tagging::read_tagging_input`).
    Input(&'a Path),
}

impl<'a> DevSource<'a> {
    /// The file of `File` and `Input`.
    pub fn file(&self) -> Option<&'a Path> {
        match *self {
            DevSource::File(p) | DevSource::Input(p) => Some(p),
            DevSource::Training => None,
        }
    }
}

/// The data of a run's task. `labels`: the label (or tag) set the adapter was
/// trained with, when resuming or evaluating (custom tasks read it from train
/// otherwise). With a file source, no train split is read.
pub fn load_task_data(
    config: &TrainConfig,
    tokenizer: &Tokenizer,
    labels: Option<Vec<String>>,
    source: DevSource<'_>,
) -> Result<Box<dyn TaskData>> {
    Ok(match Family::of(&config.task) {
        Family::Sequence => Box::new(SequenceData::load(config, tokenizer, labels, source)?),
        Family::Tagging => Box::new(TaggingData::load(config, tokenizer, labels, source)?),
        Family::Qa => Box::new(QaData::load(config, tokenizer, source)?),
    })
}
