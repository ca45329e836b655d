//! From start/end logits to answer strings: the official
//! `postprocess_qa_predictions` (THUDM/P-tuning-v2 `tasks/qa/utils_qa.py`,
//! identical to HF's `examples/pytorch/question-answering/utils_qa.py`).
//!
//! Per question, over all its windows: the `n_best` highest start logits ×
//! the `n_best` highest end logits of each window give candidate spans; spans
//! that leave the context, end before they start or are longer than
//! `max_answer_len` tokens are dropped; the rest are ranked by
//! `start_logit + end_logit` (float32, as numpy adds the model's float32
//! logits) and the best one's text is `context[start_char..end_char]`. With
//! SQuAD 2.0 the null answer scores `start_logits[0] + end_logits[0]` of the
//! window where that sum is smallest ("all windows must agree they want the
//! null answer"), and "" is predicted when `null_score - best non-null
//! score > null_score_diff_threshold`.
//!
//! Details kept from the official code: the n-best indices are taken over
//! the whole logit vectors given (the official model output covers the
//! padded length, so top-20 positions in the padding use up candidates);
//! ties in the final ranking keep insertion order (Python's stable
//! `sorted`); when no span survives, the prediction is the literal string
//! "empty". The ranking is pruned to the best `n_best` after every window,
//! which keeps memory per question bounded and gives the same top `n_best`
//! as ranking everything at the end (the sort is stable).
//!
//! Two points the official code leaves open: equal logits in the n-best
//! selection (numpy's unstable argsort) go to the higher token index, as a
//! stable ascending argsort reversed would; NaN logits rank lowest.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::{Error, Result};

use super::features::QaFeature;
use super::read::SquadExample;

/// Per-token context char spans of one window (`None` outside the
/// context), as in [`QaFeature::context_offsets`].
pub type ContextOffsets = Vec<Option<(usize, usize)>>;

/// Post-processing settings (defaults: the official ones, SQuAD 1.1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PostprocessOptions {
    /// Start and end positions considered per window (official 20).
    pub n_best: usize,
    /// Longest answer in tokens (official 30).
    pub max_answer_len: usize,
    /// SQuAD 2.0: the null answer "" can be predicted.
    pub version_2: bool,
    /// SQuAD 2.0: predict "" when null score − best span score exceeds this
    /// (official default 0.0).
    pub null_score_diff_threshold: f32,
}

impl Default for PostprocessOptions {
    fn default() -> Self {
        PostprocessOptions {
            n_best: 20,
            max_answer_len: 30,
            version_2: false,
            null_score_diff_threshold: 0.0,
        }
    }
}

/// Post-processes every window at once: `features[i]` is (example index into
/// `examples`, per-token context offsets, as in [`QaFeature`]) and
/// `start_logits[i]` / `end_logits[i]` its model outputs (any length; longer
/// than the offsets when padded). Returns question id → answer text for
/// every question that has at least one window. Errors on mismatched
/// lengths or an example index out of range.
pub fn postprocess(
    examples: &[SquadExample],
    features: &[(usize, ContextOffsets)],
    start_logits: &[Vec<f32>],
    end_logits: &[Vec<f32>],
    opts: &PostprocessOptions,
) -> Result<BTreeMap<String, String>> {
    if features.len() != start_logits.len() || features.len() != end_logits.len() {
        return Err(Error::InvalidArgument(format!(
            "postprocess: {} features but {} start and {} end logit vectors",
            features.len(),
            start_logits.len(),
            end_logits.len()
        )));
    }
    let mut post = Postprocessor::new(examples, *opts);
    for (i, ((example_index, offsets), (s, e))) in features
        .iter()
        .zip(start_logits.iter().zip(end_logits))
        .enumerate()
    {
        post.push(*example_index, offsets, s, e)
            .map_err(|err| Error::InvalidArgument(format!("feature {i}: {err}")))?;
    }
    Ok(post.finish())
}

/// Incremental [`postprocess`]: feed windows as the model scores them (in
/// the order [`super::qa_features`] yields them, or any order: each
/// question's windows are combined in the order they are pushed), then
/// [`Postprocessor::finish`]. Keeps at most `n_best + 1` candidates per
/// question, never the logits.
#[derive(Debug)]
pub struct Postprocessor<'a> {
    examples: &'a [SquadExample],
    opts: PostprocessOptions,
    states: BTreeMap<usize, State>,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    /// Char span in the context.
    offsets: (usize, usize),
    score: f32,
    start_logit: f32,
    end_logit: f32,
}

#[derive(Debug, Default)]
struct State {
    /// The first window's null candidate with the smallest score.
    min_null: Option<Candidate>,
    /// The best `n_best` spans so far, best first, ties in insertion order.
    best: Vec<Candidate>,
}

impl<'a> Postprocessor<'a> {
    pub fn new(examples: &'a [SquadExample], opts: PostprocessOptions) -> Self {
        Postprocessor {
            examples,
            opts,
            states: BTreeMap::new(),
        }
    }

    /// Adds one window of question `example_index`: its per-token context
    /// offsets and its start/end logits (equal lengths, at least 1).
    pub fn push(
        &mut self,
        example_index: usize,
        offsets: &[Option<(usize, usize)>],
        start_logits: &[f32],
        end_logits: &[f32],
    ) -> Result<()> {
        if example_index >= self.examples.len() {
            return Err(Error::InvalidArgument(format!(
                "example index {example_index} is out of range ({} examples)",
                self.examples.len()
            )));
        }
        if start_logits.len() != end_logits.len() || start_logits.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "question {}: {} start logits and {} end logits (expected the same, non-zero, number)",
                self.examples[example_index].id,
                start_logits.len(),
                end_logits.len()
            )));
        }
        let opts = self.opts;
        let state = self.states.entry(example_index).or_default();

        let null = Candidate {
            offsets: (0, 0),
            score: start_logits[0] + end_logits[0],
            start_logit: start_logits[0],
            end_logit: end_logits[0],
        };
        if state.min_null.is_none_or(|m| m.score > null.score) {
            state.min_null = Some(null);
        }

        let starts = top_indices(start_logits, opts.n_best);
        let ends = top_indices(end_logits, opts.n_best);
        for &s in &starts {
            for &e in &ends {
                let (Some(Some(so)), Some(Some(eo))) = (offsets.get(s), offsets.get(e)) else {
                    continue;
                };
                if e < s || e - s + 1 > opts.max_answer_len {
                    continue;
                }
                state.best.push(Candidate {
                    offsets: (so.0, eo.1),
                    score: start_logits[s] + end_logits[e],
                    start_logit: start_logits[s],
                    end_logit: end_logits[e],
                });
            }
        }
        state.best.sort_by(by_score_desc);
        state.best.truncate(opts.n_best);
        Ok(())
    }

    /// [`Postprocessor::push`] with a feature's example index and offsets.
    pub fn push_feature(
        &mut self,
        feature: &QaFeature,
        start_logits: &[f32],
        end_logits: &[f32],
    ) -> Result<()> {
        self.push(
            feature.example_index,
            &feature.context_offsets,
            start_logits,
            end_logits,
        )
    }

    /// Question id → answer text, for every question that got a window.
    pub fn finish(self) -> BTreeMap<String, String> {
        self.finish_spans()
            .into_iter()
            .map(|(id, span)| (id, span.text))
            .collect()
    }

    /// Question id → the answer with its place in the context and its
    /// score, for every question that got a window (what a server returns).
    pub fn finish_spans(self) -> BTreeMap<String, AnswerSpan> {
        let opts = self.opts;
        self.states
            .into_iter()
            .map(|(index, state)| {
                let example = &self.examples[index];
                (example.id.clone(), answer(example, state, &opts))
            })
            .collect()
    }
}

/// A predicted answer.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerSpan {
    /// The answer text: `context[start..end]` in chars; "" for the SQuAD 2.0
    /// null answer; the official fallback "empty" when no span survived.
    pub text: String,
    /// Char offset of the answer in the context (0 with `end` when the text
    /// is not a span of the context: null answer or fallback).
    pub start: usize,
    /// Char offset one past the answer's end.
    pub end: usize,
    /// `start_logit + end_logit` of the chosen span (the null score for the
    /// null answer, 0 for the fallback).
    pub score: f32,
}

fn answer(example: &SquadExample, state: State, opts: &PostprocessOptions) -> AnswerSpan {
    let mut ranked = state.best;
    if opts.version_2 {
        if let Some(null) = state.min_null {
            ranked.push(null);
            ranked.sort_by(by_score_desc);
            ranked.truncate(opts.n_best);
            // Added back when it fell out of the n-best.
            if ranked.iter().all(|c| c.offsets != (0, 0)) {
                ranked.push(null);
            }
        }
    }
    let span = |c: &Candidate| AnswerSpan {
        text: char_slice(&example.context, c.offsets.0, c.offsets.1).to_string(),
        start: c.offsets.0,
        end: c.offsets.1,
        score: c.score,
    };
    let fallback = || AnswerSpan {
        text: "empty".to_string(),
        start: 0,
        end: 0,
        score: 0.0,
    };
    // (answer, start logit, end logit), best first.
    let mut preds: Vec<(AnswerSpan, f32, f32)> = ranked
        .iter()
        .map(|c| (span(c), c.start_logit, c.end_logit))
        .collect();
    // The official fallback when there is no non-null candidate at all.
    if preds.is_empty() || (preds.len() == 1 && preds[0].0.text.is_empty()) {
        preds.insert(0, (fallback(), 0.0, 0.0));
    }
    if !opts.version_2 {
        return preds.swap_remove(0).0;
    }
    let null_score = state.min_null.map_or(0.0, |n| n.score);
    // The best candidate with a non-empty text. (The official loop would
    // run off the list if every candidate's text were empty, possible only
    // with empty-offset tokens; "empty" with zero logits stands in then.)
    let (best, start_logit, end_logit) = match preds.iter().position(|p| !p.0.text.is_empty()) {
        Some(i) => preds.swap_remove(i),
        None => (fallback(), 0.0, 0.0),
    };
    // `null_score - start_logit - end_logit`, in float32 and in that order.
    let score_diff = null_score - start_logit - end_logit;
    if score_diff > opts.null_score_diff_threshold {
        AnswerSpan {
            text: String::new(),
            start: 0,
            end: 0,
            score: null_score,
        }
    } else {
        best
    }
}

fn by_score_desc(a: &Candidate, b: &Candidate) -> Ordering {
    key(b.score).total_cmp(&key(a.score))
}

/// NaN ranks below every number.
fn key(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        x
    }
}

/// `np.argsort(logits)[-1 : -n - 1 : -1]`: the `n` largest, largest first;
/// equal values: higher index first.
fn top_indices(logits: &[f32], n: usize) -> Vec<usize> {
    let order = |&a: &usize, &b: &usize| {
        key(logits[b])
            .total_cmp(&key(logits[a]))
            .then_with(|| b.cmp(&a))
    };
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    if n == 0 {
        return Vec::new();
    }
    if idx.len() > n {
        idx.select_nth_unstable_by(n - 1, order);
        idx.truncate(n);
    }
    idx.sort_unstable_by(order);
    idx
}

/// `s[start:end]` with Python's char indices and clamping.
fn char_slice(s: &str, start: usize, end: usize) -> &str {
    if start >= end {
        return "";
    }
    let byte = |i: usize| s.char_indices().nth(i).map_or(s.len(), |(b, _)| b);
    let b0 = byte(start);
    let b1 = s[b0..]
        .char_indices()
        .nth(end - start)
        .map_or(s.len(), |(b, _)| b0 + b);
    &s[b0..b1]
}
