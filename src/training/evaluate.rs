//! Inference over a set of examples: predictions, scores and task metrics.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::model::prompt_model::PromptModel;
use crate::tasks::features::{collate, Feature};
use crate::tasks::{Example, Prediction, Task, TaskKind};

/// One example's prediction and the scores it came from: class probabilities
/// (classification), choice probabilities (multiple choice) or the value
/// (regression).
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    pub prediction: Prediction,
    pub scores: Vec<f32>,
}

/// Probabilities of a row of logits.
pub fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = row.iter().map(|x| (x - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

/// Index of the largest logit (the first on ties).
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// Predicts every feature, `batch_size` examples at a time, without dropout.
pub fn predict(
    model: &PromptModel,
    kind: TaskKind,
    features: &[Feature],
    batch_size: usize,
    pad_id: u32,
) -> Result<Vec<Scored>> {
    let mut out = Vec::with_capacity(features.len());
    let past = model.prefix.table();
    for chunk in features.chunks(batch_size.max(1)) {
        let refs: Vec<&Feature> = chunk.iter().collect();
        let (batch, _) = collate(&refs, pad_id)?;
        let logits = model.predict_with_table(&batch, &past)?;
        // [B, C] for classification, [B·N, 1] = [B, N] for choices, [B, 1] for regression.
        let width = logits.len() / chunk.len();
        for row in logits.chunks(width) {
            out.push(match kind {
                TaskKind::Regression => Scored {
                    prediction: Prediction::Score(row[0]),
                    scores: row.to_vec(),
                },
                TaskKind::Classification | TaskKind::MultipleChoice { .. } => Scored {
                    prediction: Prediction::Class(argmax(row)),
                    scores: softmax(row),
                },
            });
        }
    }
    Ok(out)
}

/// Predicts and scores against the gold labels with the task's metrics.
pub fn evaluate(
    model: &PromptModel,
    task: &dyn Task,
    examples: &[Example],
    features: &[Feature],
    batch_size: usize,
    pad_id: u32,
) -> Result<BTreeMap<String, f64>> {
    let scored = predict(model, task.kind(), features, batch_size, pad_id)?;
    let predictions: Vec<Prediction> = scored.iter().map(|s| s.prediction).collect();
    task.metrics(examples, &predictions)
}
