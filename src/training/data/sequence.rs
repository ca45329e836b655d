//! Sequence tasks: classification, multiple choice and regression.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::model::batch::Batch;
use crate::model::heads::HeadKind;
use crate::model::prompt_model::PromptModel;
use crate::model::tokenizer::Tokenizer;
use crate::tasks::features::{collate, featurize, BatchTargets, Feature, Features};
use crate::tasks::{Example, Label, Prediction, Split, Task, TaskKind};
use crate::training::evaluate::{evaluate, predict};
use crate::training::trainer::TrainConfig;

use super::{hold_out, task_for, DevSource, HeadSpec, Predictions, TaskData, TrainTargets};

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
        source: DevSource<'_>,
    ) -> Result<Self> {
        // Custom tasks take their label set from train; reading dev with the
        // same task object then rejects labels train never had.
        let task = task_for(config, labels)?;
        let max_len = config.max_seq_len();
        let (train, dev) = match source.file() {
            Some(path) => (Vec::new(), Some(task.read(path)?)),
            None => {
                let train = task.read_split(&config.data, Split::Train)?;
                if train.is_empty() {
                    return Err(Error::InvalidArgument(format!(
                        "{}: the train split is empty",
                        config.data.display()
                    )));
                }
                if train.iter().any(|e| e.label.is_none()) {
                    return Err(Error::InvalidArgument(format!(
                        "{}: the training file has no labels{}",
                        task.split_path(&config.data, Split::Train).display(),
                        label_hint(config)
                    )));
                }
                let classes: std::collections::BTreeSet<_> = train
                    .iter()
                    .filter_map(|e| match e.label {
                        Some(Label::Class(c)) => Some(c),
                        _ => None,
                    })
                    .collect();
                if task.kind() == TaskKind::Classification && classes.len() == 1 {
                    tracing::warn!(
                        "{}: every training example has the same label: the head can only \
                         learn to predict it",
                        task.split_path(&config.data, Split::Train).display()
                    );
                }
                match config.dev_from_train {
                    Some(fraction) => {
                        let (rest, dev) = hold_out(train, fraction, config.seed);
                        (rest, Some(dev))
                    }
                    None => {
                        let path = task.split_path(&config.data, Split::Dev);
                        let dev = if path.exists() {
                            let dev = task.read(&path)?;
                            let labeled = dev.iter().all(|e| e.label.is_some());
                            if !labeled {
                                tracing::warn!(
                                    "{} has no labels{}: training without a dev evaluation",
                                    path.display(),
                                    label_hint(config)
                                );
                            }
                            labeled.then_some(dev)
                        } else {
                            None
                        };
                        (train, dev)
                    }
                }
            }
        };
        let dev = match dev {
            Some(d) => {
                let f = featurize(tokenizer, &d, max_len)?;
                Some((d, f))
            }
            None => None,
        };
        Ok(SequenceData {
            train: featurize(tokenizer, &train, max_len)?,
            task,
            dev,
            pad_id: tokenizer.pad_id(),
            max_seq_len: max_len,
        })
    }

    fn dev(&self) -> Result<&(Vec<Example>, Features)> {
        self.dev
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("no dev split to evaluate".into()))
    }
}

/// Where a custom task looks for labels, for a file that has none.
fn label_hint(config: &TrainConfig) -> String {
    match config.task.trim().to_ascii_lowercase().as_str() {
        crate::tasks::custom::NAME => format!(
            " (no column or key \"{}\"; --label-field names it)",
            config.label_field.as_deref().unwrap_or("label")
        ),
        _ => String::new(),
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
        let (examples, features) = self.dev()?;
        evaluate(
            model,
            self.task.as_ref(),
            examples,
            &features.features,
            batch_size,
            self.pad_id,
        )
    }

    fn predict_dev(&self, model: &PromptModel, batch_size: usize) -> Result<Predictions> {
        let (examples, features) = self.dev()?;
        let scored = predict(
            model,
            self.task.kind(),
            &features.features,
            batch_size,
            self.pad_id,
        )?;
        let names = self.task.label_names();
        let lines = examples
            .iter()
            .zip(&scored)
            .map(|(example, s)| {
                let label = match s.prediction {
                    Prediction::Class(c) => match names.get(c) {
                        Some(name) if self.task.kind() == TaskKind::Classification => {
                            serde_json::json!(name)
                        }
                        _ => serde_json::json!(c),
                    },
                    Prediction::Score(v) => serde_json::json!(v),
                };
                serde_json::json!({"guid": example.guid, "label": label, "scores": s.scores})
            })
            .collect();
        Ok(Predictions::Lines(lines))
    }

    fn describe(&self) -> String {
        let dev = match &self.dev {
            Some(_) => format!("dev {}", self.describe_dev()),
            None => "no labelled dev split: keeping last/ only".into(),
        };
        format!(
            "{}: train {}, {dev}",
            self.task.name(),
            examples(
                self.train.features.len(),
                self.train.truncated,
                self.max_seq_len
            )
        )
    }

    fn describe_dev(&self) -> String {
        match &self.dev {
            Some((d, f)) => examples(d.len(), f.truncated, self.max_seq_len),
            None => "no examples".into(),
        }
    }

    fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "train_examples": self.train.features.len(),
            "train_truncated": self.train.truncated,
            "dev_examples": self.dev.as_ref().map(|(d, _)| d.len()),
        })
    }
}

/// "N examples (K truncated to L tokens)".
fn examples(n: usize, truncated: usize, max_seq_len: usize) -> String {
    let noun = if n == 1 { "example" } else { "examples" };
    format!("{n} {noun} ({truncated} truncated to {max_seq_len} tokens)")
}
