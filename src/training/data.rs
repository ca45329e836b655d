//! What the training loop needs from a task, whatever its shape: train units
//! to batch, a head to build, and an evaluation on dev. Sequence tasks
//! (classification, multiple choice, regression) live here; sequence labelling
//! and extractive QA implement the same trait.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::model::batch::Batch;
use crate::model::heads::HeadKind;
use crate::model::prompt_model::{PromptModel, Targets};
use crate::model::tokenizer::Tokenizer;
use crate::rng::Rng;
use crate::tasks::features::{collate, featurize, BatchTargets, Feature, Features};
use crate::tasks::{task_by_name, Example, Split, Task, TaskKind, TaskOptions};
use crate::training::evaluate::evaluate;
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
    /// One line for the log: counts, truncation, splitting.
    fn describe(&self) -> String;
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

/// The data of a run's task. `labels`: the label set a resumed run was
/// trained with (custom tasks read it from train otherwise).
pub fn load_task_data(
    config: &TrainConfig,
    tokenizer: &Tokenizer,
    labels: Option<Vec<String>>,
) -> Result<Box<dyn TaskData>> {
    Ok(Box::new(SequenceData::load(config, tokenizer, labels)?))
}

/// Classification, multiple choice and regression over whole sequences.
pub struct SequenceData {
    task: Box<dyn Task>,
    train: Features,
    dev: Option<(Vec<Example>, Features)>,
    pad_id: u32,
    max_seq_len: usize,
}

impl SequenceData {
    pub fn load(
        config: &TrainConfig,
        tokenizer: &Tokenizer,
        labels: Option<Vec<String>>,
    ) -> Result<Self> {
        // Custom tasks take their label set from train; reading dev with the
        // same task object then rejects labels train never had.
        let task = task_for(config, labels)?;
        let mut train = task.read_split(&config.data, Split::Train)?;
        if train.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: the train split is empty",
                config.data.display()
            )));
        }
        let dev = match config.dev_from_train {
            Some(fraction) => {
                let (rest, dev) = hold_out(train, fraction, config.seed);
                train = rest;
                Some(dev)
            }
            None => {
                let path = task.split_path(&config.data, Split::Dev);
                if path.exists() {
                    let dev = task.read(&path)?;
                    dev.iter().all(|e| e.label.is_some()).then_some(dev)
                } else {
                    None
                }
            }
        };
        let dev = match dev {
            Some(d) => {
                let f = featurize(tokenizer, &d, config.max_seq_len)?;
                Some((d, f))
            }
            None => None,
        };
        Ok(SequenceData {
            train: featurize(tokenizer, &train, config.max_seq_len)?,
            task,
            dev,
            pad_id: tokenizer.pad_id(),
            max_seq_len: config.max_seq_len,
        })
    }
}

impl TaskData for SequenceData {
    fn task_name(&self) -> &str {
        self.task.name()
    }

    fn head(&self) -> HeadSpec {
        match self.task.kind() {
            TaskKind::Classification => HeadSpec {
                kind: HeadKind::Classification,
                outputs: self.task.label_names().len(),
                label_names: self.task.label_names(),
            },
            TaskKind::MultipleChoice { .. } => HeadSpec {
                kind: HeadKind::MultipleChoice,
                outputs: 1,
                label_names: Vec::new(),
            },
            TaskKind::Regression => HeadSpec {
                kind: HeadKind::Regression,
                outputs: 1,
                label_names: Vec::new(),
            },
        }
    }

    fn main_metric(&self) -> &str {
        self.task.main_metric()
    }

    fn train_len(&self) -> usize {
        self.train.features.len()
    }

    fn train_batch(&self, indices: &[usize]) -> Result<(Batch, TrainTargets)> {
        let refs: Vec<&Feature> = indices.iter().map(|&i| &self.train.features[i]).collect();
        let (batch, targets) = collate(&refs, self.pad_id)?;
        let targets = match (self.task.kind(), targets) {
            (_, None) => {
                return Err(Error::InvalidArgument(format!(
                    "{}: the train split has unlabelled examples",
                    self.task.name()
                )))
            }
            (TaskKind::MultipleChoice { choices }, Some(BatchTargets::Classes(labels))) => {
                TrainTargets::Choices { choices, labels }
            }
            (_, Some(BatchTargets::Classes(labels))) => TrainTargets::Classes(labels),
            (_, Some(BatchTargets::Scores(values))) => TrainTargets::Scores(values),
        };
        Ok((batch, targets))
    }

    fn has_dev(&self) -> bool {
        self.dev.is_some()
    }

    fn evaluate_dev(
        &self,
        model: &PromptModel,
        batch_size: usize,
    ) -> Result<BTreeMap<String, f64>> {
        let (examples, features) = self
            .dev
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("no dev split to evaluate".into()))?;
        evaluate(
            model,
            self.task.as_ref(),
            examples,
            &features.features,
            batch_size,
            self.pad_id,
        )
    }

    fn describe(&self) -> String {
        let dev = match &self.dev {
            Some((d, f)) => format!("{} dev examples ({} truncated)", d.len(), f.truncated),
            None => "no labelled dev split: keeping last/ only".into(),
        };
        format!(
            "{}: {} train examples ({} truncated to {} tokens), {dev}",
            self.task.name(),
            self.train.features.len(),
            self.train.truncated,
            self.max_seq_len
        )
    }

    fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "train_examples": self.train.features.len(),
            "train_truncated": self.train.truncated,
            "dev_examples": self.dev.as_ref().map(|(d, _)| d.len()),
        })
    }
}
