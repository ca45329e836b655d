//! Question + context windows, as the official `prepare_train_dataset` /
//! `prepare_eval_dataset` (THUDM/P-tuning-v2 `tasks/qa/dataset.py`) build
//! them with HF's fast tokenizer:
//!
//! ```python
//! tokenizer(question.lstrip(), context, truncation="only_second",
//!           max_length=384, stride=128, return_overflowing_tokens=True,
//!           return_offsets_mapping=True, padding="max_length")
//! ```
//!
//! Windows are built here one at a time from a single tokenization of the
//! question and of the context, instead of asking `tokenizers` for all
//! overflowing encodings at once: a long document then costs one context
//! encoding plus one window, never all of its windows, and a question too
//! long for `max_len` is an error instead of the panic `tokenizers` raises
//! (its `stride < max_len` assertion). The windows are the ones
//! `tokenizers`' `truncate_encodings` (`OnlySecond`, direction right) cuts:
//! the context budget is `max_len - special tokens - question tokens`,
//! consecutive windows start `budget - stride` tokens apart (so they overlap
//! by `stride` tokens) and the last one ends at the end of the context. Each
//! window goes through the tokenizer's own post-processor (`[CLS] q [SEP] c
//! [SEP]` with type ids 0/1 for BERT, `<s> q </s></s> c </s>` for RoBERTa),
//! exactly as `tokenizers` post-processes its overflowing parts: that
//! includes RoBERTa's offset trimming, which treats the first token of every
//! window as a sequence start, so the raw encodings are taken from a copy of
//! the tokenizer without post-processor (trimming twice would shift
//! offsets).
//!
//! Why not `Tokenizer::encode` with truncation and stride: in `tokenizers`
//! 0.23.2 (the version this crate builds with) `encode` stops tokenizing a
//! sequence after `max_length` tokens once truncation is set, ignoring the
//! stride, so the overflowing windows silently lose the rest of a long
//! context (Python's `tokenizers` 0.23.3 does not; see the
//! `windows_match_tokenizers_overflow_on_dev` test).
//!
//! Padding (`padding="max_length"`) is left to the batcher: features hold the
//! real tokens only.

use std::borrow::Cow;

use tokenizers::{Encoding, Token};

use crate::model::tokenizer::Tokenizer;
use crate::{Error, Result};

use super::read::SquadExample;

/// The official `max_seq_length` for SQuAD (fixed to 384 in `dataset.py`).
pub const MAX_SEQ_LEN: usize = 384;
/// The official doc stride (`stride=128`).
pub const DOC_STRIDE: usize = 128;

/// One window of one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QaFeature {
    /// Token ids with special tokens, at most `max_len` of them, unpadded.
    pub ids: Vec<u32>,
    /// Segment ids (0 for the question part, 1 for the context part in BERT;
    /// all 0 in RoBERTa), as the tokenizer's post-processor sets them.
    pub type_ids: Vec<u32>,
    /// Index of the question in the slice given to [`qa_features`].
    pub example_index: usize,
    /// Per token: the char span `(start, end)` in the context for context
    /// tokens, `None` for the question and special tokens (the official
    /// `prepare_eval_dataset` sets those offsets to `None`). Char offsets as
    /// Python counts them, so `context[start..end]` in chars is the token's
    /// text.
    pub context_offsets: Vec<Option<(usize, usize)>>,
    /// Training target: token index of the answer's first token; 0 (the
    /// `[CLS]` / `<s>` position) when the first gold answer is not entirely
    /// inside this window or the question has no answer.
    pub start: usize,
    /// Training target: token index of the answer's last token (inclusive);
    /// 0 with `start`.
    pub end: usize,
}

impl QaFeature {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the feature has no tokens (never the case for a built one).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether the training target is the null answer (`[CLS]`).
    pub fn is_null_target(&self) -> bool {
        self.start == 0 && self.end == 0
    }
}

/// The windows of every question of `examples`, example by example and
/// window by window: each question is tokenized when the iterator reaches
/// it, and each window is built when it is asked for, so memory stays at one
/// context's tokens however long the documents and however many questions
/// there are. An error (a question too long to leave room for the context,
/// a tokenizer failure) is yielded in place of that question's windows; the
/// iterator then goes on with the next question.
///
/// `max_len`: [`MAX_SEQ_LEN`] (384) officially; `stride`: [`DOC_STRIDE`]
/// (128), the tokens shared by consecutive windows.
pub fn qa_features<'a>(
    tokenizer: &'a Tokenizer,
    examples: &'a [SquadExample],
    max_len: usize,
    stride: usize,
) -> QaFeatures<'a> {
    QaFeatures {
        featurizer: QaFeaturizer::new(tokenizer, max_len, stride),
        examples,
        next_example: 0,
        current: None,
    }
}

/// All windows of all questions in one vector (see [`qa_features`]; stops
/// at the first error).
pub fn qa_features_vec(
    tokenizer: &Tokenizer,
    examples: &[SquadExample],
    max_len: usize,
    stride: usize,
) -> Result<Vec<QaFeature>> {
    qa_features(tokenizer, examples, max_len, stride).collect()
}

/// The iterator [`qa_features`] returns.
pub struct QaFeatures<'a> {
    featurizer: QaFeaturizer<'a>,
    examples: &'a [SquadExample],
    next_example: usize,
    current: Option<ExampleWindows<'a>>,
}

impl Iterator for QaFeatures<'_> {
    type Item = Result<QaFeature>;

    fn next(&mut self) -> Option<Result<QaFeature>> {
        loop {
            if let Some(windows) = self.current.as_mut() {
                if let Some(f) = windows.next() {
                    return Some(f);
                }
                self.current = None;
            }
            let index = self.next_example;
            let example = self.examples.get(index)?;
            self.next_example += 1;
            match self.featurizer.windows(example, index) {
                Ok(w) => self.current = Some(w),
                Err(e) => return Some(Err(e)),
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        // At least one window per remaining question, plus what is left of
        // the current one; the total depends on the tokenization ahead.
        let here = self.current.as_ref().map_or(0, |w| w.len());
        (here + self.examples.len() - self.next_example, None)
    }
}

/// A copy of `tokenizer` without its post-processor, which
/// [`QaFeaturizer`] encodes the question and the context with.
pub fn raw_tokenizer(tokenizer: &Tokenizer) -> tokenizers::Tokenizer {
    let mut raw = tokenizer.inner().clone();
    raw.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
    raw
}

/// Turns questions into windows one question at a time (what
/// [`qa_features`] uses; handy to window a single question).
pub struct QaFeaturizer<'a> {
    tokenizer: &'a tokenizers::Tokenizer,
    /// The same tokenizer without post-processor: raw, untrimmed encodings
    /// ([`raw_tokenizer`]); borrowed when the caller keeps one.
    raw: Cow<'a, tokenizers::Tokenizer>,
    max_len: usize,
    stride: usize,
}

impl<'a> QaFeaturizer<'a> {
    /// `max_len`: [`MAX_SEQ_LEN`] (384) officially; `stride`: [`DOC_STRIDE`]
    /// (128), the tokens shared by consecutive windows.
    pub fn new(tokenizer: &'a Tokenizer, max_len: usize, stride: usize) -> Self {
        QaFeaturizer {
            tokenizer: tokenizer.inner(),
            raw: Cow::Owned(raw_tokenizer(tokenizer)),
            max_len,
            stride,
        }
    }

    /// [`QaFeaturizer::new`] with `raw` = [`raw_tokenizer`]`(tokenizer)`
    /// made once by the caller: building a featurizer then copies nothing
    /// (a server windows every request's question this way).
    pub fn with_raw(
        tokenizer: &'a Tokenizer,
        raw: &'a tokenizers::Tokenizer,
        max_len: usize,
        stride: usize,
    ) -> Self {
        QaFeaturizer {
            tokenizer: tokenizer.inner(),
            raw: Cow::Borrowed(raw),
            max_len,
            stride,
        }
    }

    /// The windows of one question, built lazily. `example_index` is copied
    /// into each [`QaFeature`]. Errors when the question leaves no room for
    /// the context or the stride is not smaller than the context budget.
    pub fn windows(
        &self,
        example: &SquadExample,
        example_index: usize,
    ) -> Result<ExampleWindows<'a>> {
        let (max_len, stride) = (self.max_len, self.stride);
        let tok_err = |e: tokenizers::Error| {
            Error::InvalidArgument(format!("question {}: tokenizer: {e}", example.id))
        };
        // The official code strips the question's leading whitespace ("some
        // questions have lots of whitespace on the left, which is not useful
        // and will make the truncation of the context fail").
        let question = example.question.trim_start_matches(is_py_space);
        let q = self
            .raw
            .encode_char_offsets(question, false)
            .map_err(tok_err)?;
        let c = self
            .raw
            .encode_char_offsets(example.context.as_str(), false)
            .map_err(tok_err)?;
        let added = self
            .tokenizer
            .get_post_processor()
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, true));

        let (q_len, c_len) = (q.len(), c.len());
        let (budget, step) = if q_len + c_len + added <= max_len {
            // Fits: one window with the whole context (no truncation at all).
            (c_len.max(1), c_len.max(1))
        } else {
            let budget = max_len.saturating_sub(added + q_len);
            if budget == 0 {
                return Err(Error::InvalidArgument(format!(
                    "question {}: the question has {q_len} tokens, which with {added} special \
                     tokens leaves no room for the context in max_len {max_len}",
                    example.id
                )));
            }
            if stride >= budget {
                return Err(Error::InvalidArgument(format!(
                    "question {}: doc stride {stride} must be smaller than the {budget} context \
                     tokens a window holds (max_len {max_len} - {added} special tokens - {q_len} \
                     question tokens)",
                    example.id
                )));
            }
            (budget, budget - stride)
        };

        let answer = if example.is_impossible {
            None
        } else {
            example
                .answers
                .first()
                .map(|a| (a.start, a.start + a.text.chars().count()))
        };
        Ok(ExampleWindows {
            tokenizer: self.tokenizer,
            example_index,
            question: q,
            context: c,
            budget,
            step,
            next_start: Some(0),
            answer,
        })
    }
}

/// Lazy iterator over one question's windows (see [`QaFeaturizer::windows`]).
pub struct ExampleWindows<'a> {
    tokenizer: &'a tokenizers::Tokenizer,
    example_index: usize,
    question: Encoding,
    context: Encoding,
    budget: usize,
    step: usize,
    /// Context token where the next window starts; `None` when done.
    next_start: Option<usize>,
    /// First gold answer as a char span `[start, end)` in the context.
    answer: Option<(usize, usize)>,
}

impl ExampleWindows<'_> {
    /// Windows not yet produced.
    pub fn len(&self) -> usize {
        match self.next_start {
            None => 0,
            Some(start) => {
                let c_len = self.context.len();
                if start + self.budget >= c_len {
                    1
                } else {
                    1 + (c_len - start - self.budget).div_ceil(self.step)
                }
            }
        }
    }

    /// Whether every window has been produced.
    pub fn is_empty(&self) -> bool {
        self.next_start.is_none()
    }

    fn build(&self, start: usize, stop: usize) -> Result<QaFeature> {
        let ids = &self.context.get_ids()[start..stop];
        let tokens = &self.context.get_tokens()[start..stop];
        let offsets = &self.context.get_offsets()[start..stop];
        let window = Encoding::from_tokens(
            ids.iter()
                .zip(tokens)
                .zip(offsets)
                .map(|((&id, t), &o)| Token::new(id, t.clone(), o))
                .collect(),
            1,
        );
        let enc = self
            .tokenizer
            .post_process(self.question.clone(), Some(window), true)
            .map_err(|e| Error::InvalidArgument(format!("tokenizer post-processing: {e}")))?;
        let context_offsets: Vec<Option<(usize, usize)>> = enc
            .get_sequence_ids()
            .into_iter()
            .zip(enc.get_offsets())
            .map(|(s, &o)| (s == Some(1)).then_some(o))
            .collect();
        let (start_tok, end_tok) = targets(&context_offsets, self.answer);
        Ok(QaFeature {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
            example_index: self.example_index,
            context_offsets,
            start: start_tok,
            end: end_tok,
        })
    }
}

impl Iterator for ExampleWindows<'_> {
    type Item = Result<QaFeature>;

    fn next(&mut self) -> Option<Result<QaFeature>> {
        let start = self.next_start?;
        let c_len = self.context.len();
        let stop = (start + self.budget).min(c_len);
        self.next_start = (stop < c_len).then_some(start + self.step);
        Some(self.build(start, stop))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.len();
        (n, Some(n))
    }
}

/// The official training targets (`prepare_train_dataset`): the answer's
/// first and last token when the whole first answer lies inside the
/// window's context, else the `[CLS]` index 0.
///
/// One deliberate difference: the official start loop
/// `while offsets[i][0] <= start_char: i += 1` walks past the last context
/// token into `[SEP]` and the padding (offsets `(0, 0)`) when the answer
/// starts inside the window's last context token, labelling the start with
/// the last padding position (`max_len - 1`). Here the loop stops at the
/// context's end, giving that last context token. Every other case is
/// identical (checked against the official logic on HF's tokenizer in
/// `tests/fixtures/squad/features.json`, which records the edge cases).
fn targets(offsets: &[Option<(usize, usize)>], answer: Option<(usize, usize)>) -> (usize, usize) {
    let Some((start_char, end_char)) = answer else {
        return (0, 0);
    };
    let Some(first) = offsets.iter().position(Option::is_some) else {
        return (0, 0);
    };
    let last = offsets.iter().rposition(Option::is_some).unwrap_or(first);
    let at = |i: usize| offsets[i].unwrap_or((0, 0));
    if at(first).0 > start_char || at(last).1 < end_char {
        return (0, 0);
    }
    let mut s = first;
    while s <= last && at(s).0 <= start_char {
        s += 1;
    }
    // `e` may step one before `first` (the official loop stops on the
    // `[SEP]` before the context), hence the signed index.
    let mut e = last as isize;
    while e >= first as isize && at(e as usize).1 >= end_char {
        e -= 1;
    }
    (s - 1, (e + 1) as usize)
}

/// Python's `str.isspace()` (what `lstrip()` strips): Unicode White_Space
/// plus the information separators U+001C..U+001F.
pub(super) fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}
