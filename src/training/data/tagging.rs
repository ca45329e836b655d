//! Sequence labelling (NER, SRL): word tags, first sub-token labelled,
//! windows for long sentences, seqeval metrics.

use std::collections::BTreeMap;
use std::path::Path;

use crate::engine::cpu::loss::IGNORE;
use crate::error::{Error, Result};
use crate::model::batch::Batch;
use crate::model::heads::HeadKind;
use crate::model::prompt_model::PromptModel;
use crate::model::tokenizer::Tokenizer;
use crate::tasks::seqeval::{self, Mode};
use crate::tasks::tagging::{
    entity_spans, featurize_tagging, split_words, tagging_task_by_name, word_predictions,
    TaggedSentence, TaggingFeatures, TaggingOptions, TaggingTask, TokenFeature, Word,
};
use crate::tasks::Split;
use crate::training::evaluate::argmax;
use crate::training::trainer::TrainConfig;

use super::{hold_out, DevSource, HeadSpec, Predictions, TaskData, TrainTargets};

/// A raw text line and its words with char offsets (start, end exclusive).
type RawLine = (String, Vec<Word>);

/// Sentences with their windows, and for raw text the words' char offsets.
struct Tagged {
    sentences: Vec<TaggedSentence>,
    features: TaggingFeatures,
    /// Raw-text input (`predict --input x.txt`): each line and its words' offsets.
    raw: Option<Vec<RawLine>>,
}

pub struct TaggingData {
    task: Box<dyn TaggingTask>,
    tags: Vec<String>,
    train: Tagged,
    dev: Option<Tagged>,
    pad_id: u32,
    max_seq_len: usize,
}

fn featurized(
    tokenizer: &Tokenizer,
    sentences: Vec<TaggedSentence>,
    tags: &[String],
    max_len: usize,
) -> Result<Tagged> {
    let features = featurize_tagging(tokenizer, &sentences, tags, max_len)?;
    Ok(Tagged {
        sentences,
        features,
        raw: None,
    })
}

/// One text per line, split into words with char offsets.
fn read_raw_text(path: &Path) -> Result<Vec<RawLine>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let lines: Vec<_> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| (l.to_string(), split_words(l)))
        .collect();
    if lines.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{}: no text to tag",
            path.display()
        )));
    }
    Ok(lines)
}

/// The tagging task of a config (custom/conll needs its columns).
pub(super) fn task(config: &TrainConfig) -> Result<Box<dyn TaggingTask>> {
    tagging_task_by_name(
        &config.task,
        &TaggingOptions {
            token_col: config.token_col,
            tag_col: config.tag_col,
        },
    )
}

impl TaggingData {
    /// "N sentences (K split into windows of L tokens, U unknown tags)".
    fn sentences(&self, t: &Tagged) -> String {
        format!(
            "{} sentences ({} split into windows of {} tokens, {} unknown tags)",
            t.sentences.len(),
            t.features.windows_split,
            self.max_seq_len,
            t.features.unknown_tags
        )
    }

    pub fn load(
        config: &TrainConfig,
        tokenizer: &Tokenizer,
        tags: Option<Vec<String>>,
        source: DevSource<'_>,
    ) -> Result<Self> {
        let task = task(config)?;
        let max_len = config.max_seq_len();
        let raw_text =
            matches!(source, DevSource::Input(p) if p.extension().is_some_and(|e| e == "txt"));
        let (train, dev, tags) = match source.file() {
            Some(path) => {
                let tags = tags
                    .ok_or_else(|| Error::InvalidArgument("the adapter has no tag set".into()))?;
                let dev = if raw_text {
                    let raw = read_raw_text(path)?;
                    let sentences = raw
                        .iter()
                        .map(|(_, words)| TaggedSentence::unlabeled(words))
                        .collect();
                    Tagged {
                        raw: Some(raw),
                        ..featurized(tokenizer, sentences, &tags, max_len)?
                    }
                } else {
                    featurized(tokenizer, task.read(path)?, &tags, max_len)?
                };
                (Vec::new(), Some(dev), tags)
            }
            None => {
                let mut train = task.read_split(&config.data, Split::Train)?;
                let tags = tags.unwrap_or_else(|| task.tag_names(&train));
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
                            dev.iter().all(|s| s.tags.is_some()).then_some(dev)
                        } else {
                            None
                        }
                    }
                };
                let dev = dev
                    .map(|d| featurized(tokenizer, d, &tags, max_len))
                    .transpose()?;
                (train, dev, tags)
            }
        };
        Ok(TaggingData {
            train: featurized(tokenizer, train, &tags, max_len)?,
            task,
            tags,
            dev,
            pad_id: tokenizer.pad_id(),
            max_seq_len: max_len,
        })
    }

    fn dev(&self) -> Result<&Tagged> {
        self.dev
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("no dev split to evaluate".into()))
    }

    /// Predicted tag names per word of every dev sentence.
    fn predict_words(&self, model: &PromptModel, batch_size: usize) -> Result<Vec<Vec<String>>> {
        let dev = self.dev()?;
        let c = self.tags.len();
        let mut token_argmax: Vec<Vec<usize>> = Vec::with_capacity(dev.features.features.len());
        let past = model.prefix.table();
        for chunk in dev.features.features.chunks(batch_size.max(1)) {
            let (batch, _) = collate(chunk, self.pad_id)?;
            let logits = model.predict_with_table(&batch, &past)?;
            // [B*T, C] → per feature, per token, the arg-max tag.
            for row in logits.chunks(batch.seq * c) {
                token_argmax.push(row.chunks(c).map(argmax).collect());
            }
        }
        let lengths: Vec<usize> = dev.sentences.iter().map(|s| s.words.len()).collect();
        let words = word_predictions(&dev.features.features, &token_argmax, &lengths);
        Ok(words
            .into_iter()
            .map(|w| w.into_iter().map(|t| self.tags[t].clone()).collect())
            .collect())
    }
}

/// A padded batch of token features and its per-token labels [B*T]
/// (IGNORE on padding).
fn collate(features: &[TokenFeature], pad_id: u32) -> Result<(Batch, Vec<i64>)> {
    let sequences: Vec<(Vec<u32>, Vec<u32>)> = features
        .iter()
        .map(|f| (f.ids.clone(), f.type_ids.clone()))
        .collect();
    let batch = Batch::pad(&sequences, pad_id)?;
    let mut labels = vec![IGNORE; batch.rows()];
    for (row, f) in labels.chunks_mut(batch.seq).zip(features) {
        row[..f.labels.len()].copy_from_slice(&f.labels);
    }
    Ok((batch, labels))
}

impl TaskData for TaggingData {
    fn task_name(&self) -> &str {
        self.task.name()
    }

    fn head(&self) -> HeadSpec {
        HeadSpec {
            kind: HeadKind::TokenClassification,
            outputs: self.tags.len(),
            label_names: self.tags.clone(),
        }
    }

    fn main_metric(&self) -> &str {
        "f1"
    }

    fn train_len(&self) -> usize {
        self.train.features.features.len()
    }

    fn train_batch(&self, indices: &[usize]) -> Result<(Batch, TrainTargets)> {
        let features: Vec<TokenFeature> = indices
            .iter()
            .map(|&i| self.train.features.features[i].clone())
            .collect();
        let (batch, labels) = collate(&features, self.pad_id)?;
        Ok((batch, TrainTargets::Tokens(labels)))
    }

    fn has_dev(&self) -> bool {
        self.dev.is_some()
    }

    /// Entity-level micro precision, recall and F1 as seqeval computes them,
    /// in the default (conlleval-like) mode and in strict IOB2 mode, F1 per
    /// entity type, and token accuracy. Gold tags the tag set lacks count as O.
    fn evaluate_dev(
        &self,
        model: &PromptModel,
        batch_size: usize,
    ) -> Result<BTreeMap<String, f64>> {
        let dev = self.dev()?;
        let predicted = self.predict_words(model, batch_size)?;
        let gold: Vec<Vec<String>> = dev
            .sentences
            .iter()
            .map(|s| {
                let tags = s.tags.as_ref().ok_or_else(|| {
                    Error::InvalidArgument("the dev sentences have no tags".into())
                })?;
                Ok(tags
                    .iter()
                    .map(|t| {
                        if self.tags.contains(t) {
                            t.clone()
                        } else {
                            "O".to_string()
                        }
                    })
                    .collect())
            })
            .collect::<Result<_>>()?;
        let default = seqeval::evaluate(&gold, &predicted, Mode::Default)?;
        let strict = seqeval::evaluate(&gold, &predicted, Mode::Strict)?;
        let mut m = BTreeMap::from([
            ("precision".to_string(), default.precision),
            ("recall".to_string(), default.recall),
            ("f1".to_string(), default.f1),
            ("accuracy".to_string(), default.accuracy),
            ("strict_precision".to_string(), strict.precision),
            ("strict_recall".to_string(), strict.recall),
            ("strict_f1".to_string(), strict.f1),
            ("unknown_tags".to_string(), dev.features.unknown_tags as f64),
        ]);
        for (kind, scores) in &default.per_type {
            m.insert(format!("f1_{kind}"), scores.f1);
        }
        Ok(m)
    }

    fn predict_dev(&self, model: &PromptModel, batch_size: usize) -> Result<Predictions> {
        let dev = self.dev()?;
        let predicted = self.predict_words(model, batch_size)?;
        let lines = dev
            .sentences
            .iter()
            .zip(&predicted)
            .enumerate()
            .map(|(i, (sentence, tags))| {
                // Entity spans with char offsets: in the raw line, or in the
                // words joined by single spaces.
                let (text, words) = match &dev.raw {
                    Some(raw) => raw[i].clone(),
                    None => {
                        let mut text = String::new();
                        let mut words = Vec::new();
                        for w in &sentence.words {
                            if !text.is_empty() {
                                text.push(' ');
                            }
                            let start = text.chars().count();
                            text.push_str(w);
                            words.push((w.clone(), start, start + w.chars().count()));
                        }
                        (text, words)
                    }
                };
                let entities: Vec<serde_json::Value> = entity_spans(&words, tags, &text)
                    .into_iter()
                    .map(|e| serde_json::json!({"label": e.label, "start": e.start, "end": e.end, "text": e.text}))
                    .collect();
                serde_json::json!({"text": text, "words": sentence.words, "tags": tags, "entities": entities})
            })
            .collect();
        Ok(Predictions::Lines(lines))
    }

    fn describe(&self) -> String {
        let dev = self.dev.as_ref().map_or(
            "no labelled dev split: keeping last/ only".to_string(),
            |_| format!("dev {}", self.describe_dev()),
        );
        format!(
            "{}: {} tags; train {}, {dev}",
            self.task.name(),
            self.tags.len(),
            self.sentences(&self.train)
        )
    }

    fn describe_dev(&self) -> String {
        self.dev
            .as_ref()
            .map_or("no sentences".to_string(), |d| self.sentences(d))
    }

    fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "train_examples": self.train.sentences.len(),
            "train_windows": self.train.features.features.len(),
            "train_split_into_windows": self.train.features.windows_split,
            "dev_examples": self.dev.as_ref().map(|d| d.sentences.len()),
        })
    }
}
