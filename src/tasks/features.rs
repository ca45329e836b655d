//! From examples to model inputs: tokenization (once, before training) and
//! collation into batches padded to their own longest sequence.

use crate::error::{Error, Result};
use crate::model::batch::Batch;
use crate::model::tokenizer::Tokenizer;
use crate::tasks::{Example, Label};

/// One tokenized example: a (token ids, token type ids) pair per choice.
#[derive(Clone, Debug, PartialEq)]
pub struct Feature {
    pub sequences: Vec<(Vec<u32>, Vec<u32>)>,
    pub label: Option<Label>,
}

/// Tokenized examples and how many of them had to be truncated.
#[derive(Clone, Debug, Default)]
pub struct Features {
    pub features: Vec<Feature>,
    pub truncated: usize,
}

/// Tokenizes every example with truncation to `max_len` (longest first).
pub fn featurize(tokenizer: &Tokenizer, examples: &[Example], max_len: usize) -> Result<Features> {
    let mut out = Features::default();
    for example in examples {
        let mut truncated = false;
        let mut sequences = Vec::with_capacity(example.inputs.len());
        for (text, pair) in &example.inputs {
            let enc = tokenizer.encode(text, pair.as_deref(), max_len)?;
            truncated |= enc.truncated;
            sequences.push((enc.ids, enc.type_ids));
        }
        out.truncated += usize::from(truncated);
        out.features.push(Feature {
            sequences,
            label: example.label,
        });
    }
    Ok(out)
}

/// The targets of a batch, owned (see `prompt_model::Targets` for the borrowed view).
#[derive(Clone, Debug, PartialEq)]
pub enum BatchTargets {
    Classes(Vec<usize>),
    Scores(Vec<f32>),
}

/// Collates features into one batch: every choice of every example becomes a
/// row, in order, so a multiple-choice batch holds B·N sequences. Targets are
/// None when any feature is unlabeled.
pub fn collate(features: &[&Feature], pad_id: u32) -> Result<(Batch, Option<BatchTargets>)> {
    let sequences: Vec<(Vec<u32>, Vec<u32>)> = features
        .iter()
        .flat_map(|f| f.sequences.iter().cloned())
        .collect();
    let batch = Batch::pad(&sequences, pad_id)?;
    let targets = match features.first().and_then(|f| f.label) {
        None => None,
        Some(Label::Class(_)) => features
            .iter()
            .map(|f| match f.label {
                Some(Label::Class(c)) => Some(c),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(BatchTargets::Classes),
        Some(Label::Score(_)) => features
            .iter()
            .map(|f| match f.label {
                Some(Label::Score(s)) => Some(s),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(BatchTargets::Scores),
    };
    if features
        .iter()
        .any(|f| f.sequences.len() != features[0].sequences.len())
    {
        return Err(Error::InvalidArgument(
            "examples of one batch have different numbers of choices".into(),
        ));
    }
    Ok((batch, targets))
}
