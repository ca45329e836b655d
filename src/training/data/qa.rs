//! Extractive QA (SQuAD v1.1 and v2): question + context windows, start/end
//! targets, the official post-processing and EM/F1. Dev windows are streamed
//! batch by batch, so long documents never sit in memory as features.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::model::batch::Batch;
use crate::model::heads::HeadKind;
use crate::model::prompt_model::PromptModel;
use crate::model::tokenizer::Tokenizer;
use crate::tasks::squad::{
    qa_features, read_squad, squad_metrics, PostprocessOptions, Postprocessor, QaFeature,
    SquadExample, QA_TASKS,
};
use crate::training::trainer::TrainConfig;

use super::{hold_out, DevSource, HeadSpec, Predictions, TaskData, TrainTargets};

pub struct QaData {
    name: String,
    version_2: bool,
    train: Vec<QaFeature>,
    train_questions: usize,
    skipped: usize,
    dev: Option<Vec<SquadExample>>,
    tokenizer: Tokenizer,
    max_len: usize,
    stride: usize,
    null_threshold: f32,
}

/// Whether the QA task `name` is SQuAD v2.0 (unanswerable questions); an
/// error for a name that is no QA task.
pub(super) fn is_squad_v2(name: &str) -> Result<bool> {
    let [v1, v2] = QA_TASKS;
    match name.trim().to_ascii_lowercase().as_str() {
        name if name == v1 => Ok(false),
        name if name == v2 => Ok(true),
        other => Err(Error::InvalidArgument(format!(
            "unknown QA task {other:?}; known: {}",
            QA_TASKS.join(", ")
        ))),
    }
}

impl QaData {
    pub fn load(
        config: &TrainConfig,
        tokenizer: &Tokenizer,
        source: DevSource<'_>,
    ) -> Result<Self> {
        let version_2 = is_squad_v2(&config.task)?;
        let read = |path: &Path| read_squad(path, version_2);
        let (train, dev, skipped) = match source.file() {
            Some(path) => {
                let r = read(path)?;
                (Vec::new(), Some(r.examples), r.skipped_misaligned)
            }
            None => {
                let r = read(&config.data.join("train.json"))?;
                let skipped = r.skipped_misaligned;
                match config.dev_from_train {
                    Some(fraction) => {
                        let (rest, dev) = hold_out(r.examples, fraction, config.seed);
                        (rest, Some(dev), skipped)
                    }
                    None => {
                        let path = config.data.join("dev.json");
                        let dev = if path.exists() {
                            Some(read(&path)?.examples)
                        } else {
                            None
                        };
                        (r.examples, dev, skipped)
                    }
                }
            }
        };
        let max_len = config.max_seq_len();
        // Training reads ids, types and targets only: each window drops its
        // char offsets (24 bytes a token) as it is built.
        let train_windows = qa_features(tokenizer, &train, max_len, config.doc_stride)
            .map(|w| {
                w.map(|mut w| {
                    w.context_offsets = Vec::new();
                    w
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(QaData {
            train: train_windows,
            train_questions: train.len(),
            skipped,
            name: config.task.trim().to_ascii_lowercase(),
            version_2,
            dev,
            tokenizer: tokenizer.clone(),
            max_len,
            stride: config.doc_stride,
            null_threshold: config.null_score_diff_threshold,
        })
    }

    /// Question id → predicted answer over the dev questions, windows streamed.
    fn answers(
        &self,
        model: &PromptModel,
        batch_size: usize,
    ) -> Result<(&[SquadExample], BTreeMap<String, String>)> {
        let examples = self
            .dev
            .as_deref()
            .ok_or_else(|| Error::InvalidArgument("no dev split to evaluate".into()))?;
        let mut post = Postprocessor::new(
            examples,
            PostprocessOptions {
                version_2: self.version_2,
                null_score_diff_threshold: self.null_threshold,
                ..PostprocessOptions::default()
            },
        );
        let mut windows = qa_features(&self.tokenizer, examples, self.max_len, self.stride);
        let past = model.prefix.table();
        loop {
            let chunk: Vec<QaFeature> = windows
                .by_ref()
                .take(batch_size.max(1))
                .collect::<Result<_>>()?;
            if chunk.is_empty() {
                break;
            }
            let (batch, _) = collate(&chunk, self.tokenizer.pad_id())?;
            let logits = model.predict_with_table(&batch, &past)?;
            // [B*T, 2] → per window, start and end logits over its T positions.
            for (feature, rows) in chunk.iter().zip(logits.chunks(batch.seq * 2)) {
                let start: Vec<f32> = rows.iter().step_by(2).copied().collect();
                let end: Vec<f32> = rows.iter().skip(1).step_by(2).copied().collect();
                post.push_feature(feature, &start, &end)?;
            }
        }
        Ok((examples, post.finish()))
    }
}

/// A padded batch of windows with their start and end targets.
fn collate(features: &[QaFeature], pad_id: u32) -> Result<(Batch, TrainTargets)> {
    let sequences: Vec<(Vec<u32>, Vec<u32>)> = features
        .iter()
        .map(|f| (f.ids.clone(), f.type_ids.clone()))
        .collect();
    let targets = TrainTargets::Spans {
        start: features.iter().map(|f| f.start).collect(),
        end: features.iter().map(|f| f.end).collect(),
    };
    Ok((Batch::pad(&sequences, pad_id)?, targets))
}

impl TaskData for QaData {
    fn task_name(&self) -> &str {
        &self.name
    }

    fn head(&self) -> HeadSpec {
        HeadSpec {
            kind: HeadKind::QuestionAnswering,
            outputs: 2,
            label_names: Vec::new(),
        }
    }

    fn main_metric(&self) -> &str {
        "f1"
    }

    fn train_len(&self) -> usize {
        self.train.len()
    }

    fn train_batch(&self, indices: &[usize]) -> Result<(Batch, TrainTargets)> {
        let features: Vec<QaFeature> = indices.iter().map(|&i| self.train[i].clone()).collect();
        collate(&features, self.tokenizer.pad_id())
    }

    fn has_dev(&self) -> bool {
        self.dev.is_some()
    }

    fn evaluate_dev(
        &self,
        model: &PromptModel,
        batch_size: usize,
    ) -> Result<BTreeMap<String, f64>> {
        let (examples, answers) = self.answers(model, batch_size)?;
        squad_metrics(examples, &answers)
    }

    /// The official predictions.json: question id → answer text.
    fn predict_dev(&self, model: &PromptModel, batch_size: usize) -> Result<Predictions> {
        let (_, answers) = self.answers(model, batch_size)?;
        Ok(Predictions::Document(
            serde_json::to_value(answers).expect("answers serialize"),
        ))
    }

    fn describe(&self) -> String {
        format!(
            "{}: {} train questions in {} windows of {} tokens (stride {}), {} skipped for a misaligned answer; {}",
            self.name,
            self.train_questions,
            self.train.len(),
            self.max_len,
            self.stride,
            self.skipped,
            self.dev.as_ref().map_or("no dev split".to_string(), |_| format!("dev {}", self.describe_dev()))
        )
    }

    fn describe_dev(&self) -> String {
        format!("{} questions", self.dev.as_ref().map_or(0, Vec::len))
    }

    fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "train_examples": self.train_questions,
            "train_windows": self.train.len(),
            "train_skipped_misaligned": self.skipped,
            "dev_examples": self.dev.as_ref().map(Vec::len),
        })
    }
}
