//! Sequence labelling (NER, SRL): word tags, first sub-token labelled,
//! windows for long sentences, seqeval metrics.

use std::collections::BTreeMap;

use crate::engine::cpu::loss::IGNORE;
use crate::error::{Error, Result};
use crate::model::batch::Batch;
use crate::model::heads::HeadKind;
use crate::model::prompt_model::PromptModel;
use crate::model::tokenizer::Tokenizer;
use crate::tasks::seqeval::{self, Mode};
use crate::tasks::tagging::{
    entity_spans, featurize_tagging, read_tagging_input, tagging_task_by_name, word_predictions,
    RawLine, TaggedSentence, TaggingFeatures, TaggingOptions, TaggingTask, TokenFeature,
};
use crate::tasks::Split;
use crate::training::evaluate::argmax;
use crate::training::trainer::TrainConfig;

use super::{hold_out, DevSource, HeadSpec, Predictions, TaskData, TrainTargets};

/// Sentences with their windows, and for raw text the words' char offsets.
struct Tagged {
    sentences: Vec<TaggedSentence>,
    features: TaggingFeatures,
    /// Raw-text input (`predict --input x.txt`): each line and its words' offsets.
    raw: Option<Vec<RawLine>>,
    /// How a `.txt` input was read: raw text or columns, which its name
    /// leaves open (`predict` says so).
    read_as: Option<String>,
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
        read_as: None,
    })
}

/// "1 sentence", "2 sentences".
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
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
    /// "N sentences (how the file was read; K split into windows of L
    /// tokens; U gold tags `outside`)", the parts in parentheses when they
    /// apply. `outside` says what becomes of gold tags the tag set lacks.
    fn sentences(&self, t: &Tagged, outside: &str) -> String {
        let unit = if t.raw.is_some() { "text" } else { "sentence" };
        let mut notes: Vec<String> = t.read_as.iter().cloned().collect();
        notes.push(format!(
            "{} split into windows of {} tokens",
            t.features.windows_split, self.max_seq_len
        ));
        if t.features.unknown_tags > 0 {
            notes.push(format!(
                "{} {outside}",
                count(t.features.unknown_tags, "gold tag")
            ));
        }
        format!("{} ({})", count(t.sentences.len(), unit), notes.join("; "))
    }

    pub fn load(
        config: &TrainConfig,
        tokenizer: &Tokenizer,
        tags: Option<Vec<String>>,
        source: DevSource<'_>,
    ) -> Result<Self> {
        let task = task(config)?;
        let max_len = config.max_seq_len();
        let (train, dev, tags) = match source {
            DevSource::File(path) | DevSource::Input(path) => {
                let tags = tags
                    .ok_or_else(|| Error::InvalidArgument("the adapter has no tag set".into()))?;
                let dev = if let DevSource::Input(_) = source {
                    let input = read_tagging_input(task.as_ref(), path)?;
                    Tagged {
                        raw: input.raw,
                        read_as: input.read_as,
                        ..featurized(tokenizer, input.sentences, &tags, max_len)?
                    }
                } else {
                    featurized(tokenizer, task.read(path)?, &tags, max_len)?
                };
                (Vec::new(), Some(dev), tags)
            }
            DevSource::Training => {
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

/// Entity-level micro precision, recall and F1 as seqeval computes them,
/// in the default (conlleval-like) mode and in strict IOB2 mode, F1 per
/// entity type, and token accuracy, of `predicted` against `gold` (the tags
/// as read). A gold tag the tag set lacks is kept, not made O: as in
/// seqeval, its entity is one the model missed (it cannot predict that
/// type). `outside`, the count of such gold tags, is reported as
/// `gold_tags_outside_tag_set`. The strict scores are left out unless every
/// tag is IOB2: seqeval's strict IOB2 mode raises on others, such as the
/// `E-` and `S-` tags of IOBES files, which the default mode reads.
fn dev_metrics(
    gold: &[Vec<String>],
    predicted: &[Vec<String>],
    outside: usize,
) -> Result<BTreeMap<String, f64>> {
    let default = seqeval::evaluate(gold, predicted, Mode::Default)?;
    let mut m = BTreeMap::from([
        ("precision".to_string(), default.precision),
        ("recall".to_string(), default.recall),
        ("f1".to_string(), default.f1),
        ("accuracy".to_string(), default.accuracy),
        ("gold_tags_outside_tag_set".to_string(), outside as f64),
    ]);
    for (kind, scores) in &default.per_type {
        m.insert(format!("f1_{kind}"), scores.f1);
    }
    let iob2 = gold
        .iter()
        .chain(predicted)
        .flatten()
        .all(|t| t == "O" || t.starts_with("B-") || t.starts_with("I-"));
    if iob2 {
        let strict = seqeval::evaluate(gold, predicted, Mode::Strict)?;
        m.extend([
            ("strict_precision".to_string(), strict.precision),
            ("strict_recall".to_string(), strict.recall),
            ("strict_f1".to_string(), strict.f1),
        ]);
    }
    Ok(m)
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

    /// [`dev_metrics`] of the dev split.
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
                s.tags
                    .clone()
                    .ok_or_else(|| Error::InvalidArgument("the dev sentences have no tags".into()))
            })
            .collect::<Result<_>>()?;
        dev_metrics(&gold, &predicted, dev.features.unknown_tags)
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
            "{}: {}; train {}, {dev}",
            self.task.name(),
            count(self.tags.len(), "tag"),
            self.sentences(&self.train, "outside the tag set, trained as O")
        )
    }

    fn describe_dev(&self) -> String {
        self.dev.as_ref().map_or("no sentences".to_string(), |d| {
            self.sentences(d, "outside the tag set, which the adapter cannot predict")
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn a_gold_type_missing_from_the_tag_set_counts_as_missed() {
        // The adapter's tags are O, B/I-PER and B/I-LOC (train had no MISC);
        // dev has a B-MISC entity it cannot predict. By hand: gold entities
        // PER, MISC, LOC (3); predicted PER, LOC (2), both right. P = 2/2,
        // R = 2/3, F1 = 2PR/(P+R) = 0.8; tokens equal 5 of 6. (Mapping the
        // MISC tag to O, as before, gave R = 1 and F1 = 1.)
        let gold = vec![tags("B-PER I-PER O B-MISC"), tags("B-LOC O")];
        let predicted = vec![tags("B-PER I-PER O O"), tags("B-LOC O")];
        let m = dev_metrics(&gold, &predicted, 1).unwrap();
        let r = 2.0 / 3.0;
        let want = [
            ("precision", 1.0),
            ("recall", r),
            ("f1", 2.0 * r / (1.0 + r)),
            ("accuracy", 5.0 / 6.0),
            ("strict_precision", 1.0),
            ("strict_recall", r),
            ("strict_f1", 2.0 * r / (1.0 + r)),
            ("gold_tags_outside_tag_set", 1.0),
            ("f1_LOC", 1.0),
            ("f1_MISC", 0.0),
            ("f1_PER", 1.0),
        ];
        assert_eq!(m.len(), want.len(), "{m:?}");
        for (k, v) in want {
            assert_eq!(m[k], v, "{k}");
        }
        assert!((m["f1"] - 0.8).abs() < 1e-12);
    }

    #[test]
    fn iobes_tags_get_no_strict_iob2_scores() {
        // seqeval's strict IOB2 mode raises on E- and S-; the default mode
        // reads IOBES: S-LOC and B-PER E-PER are two entities, both found.
        let gold = vec![tags("B-PER E-PER O S-LOC")];
        let m = dev_metrics(&gold, &gold, 0).unwrap();
        assert_eq!((m["precision"], m["recall"], m["f1"]), (1.0, 1.0, 1.0));
        assert!(!m.contains_key("strict_f1"), "{m:?}");
    }
}
