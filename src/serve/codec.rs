//! A request's inputs into model sequences, and the model's logits back into
//! answers, by the adapter's head:
//!
//! | head | one input | sequences | answer |
//! | --- | --- | --- | --- |
//! | classification, regression | a text or a `[text, text]` pair | 1 | label and scores, or a value |
//! | multiple choice | an array of choices (texts or pairs) | 1 per choice | the best choice and scores |
//! | token classification | a text | 1 per window of whole words | entity spans with char offsets, a tag per word |
//! | question answering | `{"question", "context"}` or `[question, context]` | 1 per context window | the best span over all windows, with char offsets |
//!
//! Texts are cut into words and windows exactly as `ptuning predict` and the
//! trainer do ([`split_words`], [`TaggingTokenizer`], [`QaFeaturizer`]), so a
//! served adapter answers as the CLI does. A sentence or a context longer
//! than the adapter's length is windowed, never refused; a classification
//! text over the length is refused unless `"truncate": true`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use serde_json::{json, Value};

use crate::model::heads::HeadKind;
use crate::model::tokenizer::Tokenizer;
use crate::serve::batcher::Sequence;
use crate::serve::http::ApiError;
use crate::serve::registry::ServedAdapter;
use crate::tasks::formats::type_name;
use crate::tasks::squad::{
    raw_tokenizer, ContextOffsets, PostprocessOptions, Postprocessor, QaFeaturizer, SquadExample,
};
use crate::tasks::tagging::{
    entity_spans, split_words, word_predictions, TaggedSentence, TaggingTokenizer, TokenFeature,
    Word,
};
use crate::training::evaluate::{argmax, softmax};

/// The tokenizers a server prepares once for every request: the backbone's,
/// its word-level setup for taggers, and its copy without post-processor for
/// QA windows (each would otherwise be cloned per request).
pub struct TextTools {
    pub tokenizer: Tokenizer,
    /// Why not, when this tokenizer cannot encode pre-split words.
    tagging: std::result::Result<TaggingTokenizer, String>,
    qa_raw: tokenizers::Tokenizer,
}

impl TextTools {
    pub fn new(tokenizer: Tokenizer) -> Self {
        let tagging = TaggingTokenizer::new(&tokenizer).map_err(|e| e.to_string());
        let qa_raw = raw_tokenizer(&tokenizer);
        TextTools {
            tokenizer,
            tagging,
            qa_raw,
        }
    }
}

/// One text input, or a text pair.
type Text = (String, Option<String>);

/// A request's sequences and what is needed to read their logits back.
pub struct Encoded {
    /// Token ids and type ids per sequence, in order.
    pub sequences: Vec<Sequence>,
    pub reader: Reader,
}

/// What [`decode`] needs: how sequences map back to inputs.
pub struct Reader {
    plan: Plan,
    /// Sequences (logit rows) expected.
    count: usize,
}

impl Encoded {
    fn new(sequences: Vec<Sequence>, plan: Plan) -> Self {
        let count = sequences.len();
        Encoded {
            sequences,
            reader: Reader { plan, count },
        }
    }
}

enum Plan {
    /// Classification, regression and multiple choice: sequences per input.
    Texts(Vec<usize>),
    /// Per input: the text and its words with char offsets; the windows.
    Tagging {
        texts: Vec<(String, Vec<Word>)>,
        features: Vec<TokenFeature>,
    },
    /// One example per input (id = its index); per window: its input and
    /// context offsets.
    Qa {
        examples: Vec<SquadExample>,
        windows: Vec<(usize, ContextOffsets)>,
        opts: PostprocessOptions,
    },
}

fn parse_text(v: &Value, at: &str) -> Result<Text, ApiError> {
    match v {
        Value::String(s) => Ok((s.clone(), None)),
        Value::Array(items) => match items.as_slice() {
            [Value::String(a), Value::String(b)] => Ok((a.clone(), Some(b.clone()))),
            _ => Err(ApiError::bad_request(format!(
                "{at} must be a text or a pair [text, text], found an array of {} item(s)",
                items.len()
            ))),
        },
        other => Err(ApiError::bad_request(format!(
            "{at} must be a text or a pair [text, text], found {}",
            type_name(other)
        ))),
    }
}

/// Checks that a request makes at most `limit` sequences.
fn check_count(count: usize, what: &str, limit: usize) -> Result<(), ApiError> {
    if count > limit {
        return Err(ApiError::bad_request(format!(
            "too many inputs: {count} {what} in all, the limit is {limit} sequences per request (--max-inputs); split the request"
        )));
    }
    Ok(())
}

/// Turns the request's `inputs` (non-empty, already counted against
/// `limit`) into sequences for `adapter`, with at most `limit` sequences in
/// all. Every problem is a 400 naming the input.
pub fn encode(
    tools: &TextTools,
    adapter: &ServedAdapter,
    inputs: &[Value],
    truncate: bool,
    limit: usize,
) -> Result<Encoded, ApiError> {
    match adapter.kind() {
        HeadKind::Classification | HeadKind::Regression => {
            let texts = inputs
                .iter()
                .enumerate()
                .map(|(i, v)| Ok(vec![parse_text(v, &format!("inputs[{i}]"))?]))
                .collect::<Result<Vec<_>, ApiError>>()?;
            encode_texts(tools, adapter, &texts, truncate, false)
        }
        HeadKind::MultipleChoice => {
            let texts = inputs
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Array(choices) if !choices.is_empty() => choices
                        .iter()
                        .enumerate()
                        .map(|(j, c)| parse_text(c, &format!("inputs[{i}][{j}]")))
                        .collect(),
                    other => Err(ApiError::bad_request(format!(
                        "inputs[{i}] must be a non-empty array of choices (each a text or a [text, text] pair) for a multiple-choice adapter, found {}",
                        match other { Value::Array(_) => "an empty array", o => type_name(o) }
                    ))),
                })
                .collect::<Result<Vec<Vec<Text>>, ApiError>>()?;
            check_count(texts.iter().map(Vec::len).sum(), "choices", limit)?;
            encode_texts(tools, adapter, &texts, truncate, true)
        }
        HeadKind::TokenClassification => encode_tagging(tools, adapter, inputs, limit),
        HeadKind::QuestionAnswering => encode_qa(tools, adapter, inputs, limit),
    }
}

/// Tokenizes every text with the adapter's limit; an over-long text is an
/// error naming its index unless `truncate`.
fn encode_texts(
    tools: &TextTools,
    adapter: &ServedAdapter,
    texts: &[Vec<Text>],
    truncate: bool,
    multiple: bool,
) -> Result<Encoded, ApiError> {
    let tokenizer = &tools.tokenizer;
    let max_len = adapter.max_len;
    let mut sequences = Vec::with_capacity(texts.len());
    for (i, choices) in texts.iter().enumerate() {
        for (j, (text, pair)) in choices.iter().enumerate() {
            let at = if multiple {
                format!("inputs[{i}][{j}]")
            } else {
                format!("inputs[{i}]")
            };
            let encode = |max: usize| {
                catch_unwind(AssertUnwindSafe(|| {
                    tokenizer.encode(text, pair.as_deref(), max)
                }))
                .map_err(|_| ApiError::bad_request(format!("{at} cannot be tokenized")))?
                .map_err(|e| ApiError::bad_request(format!("{at} cannot be tokenized: {e}")))
            };
            let full = encode(usize::MAX)?;
            let enc = if full.ids.len() <= max_len {
                full
            } else if truncate {
                encode(max_len)?
            } else {
                return Err(ApiError::bad_request(format!(
                    "{at} is too long: {} tokens (special tokens included), the adapter's maximum is {max_len}; shorten it or send \"truncate\": true",
                    full.ids.len()
                )));
            };
            sequences.push((enc.ids, enc.type_ids));
        }
    }
    Ok(Encoded::new(
        sequences,
        Plan::Texts(texts.iter().map(Vec::len).collect()),
    ))
}

/// NER: each text split into words with char offsets, then into windows of
/// whole words as in training.
fn encode_tagging(
    tools: &TextTools,
    adapter: &ServedAdapter,
    inputs: &[Value],
    limit: usize,
) -> Result<Encoded, ApiError> {
    let tagger = tools.tagging.as_ref().map_err(|e| {
        ApiError::bad_request(format!(
            "adapter {:?} tags words, which this backbone's tokenizer cannot do: {e}",
            adapter.name
        ))
    })?;
    let texts = inputs
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok((s.clone(), split_words(s))),
            other => Err(ApiError::bad_request(format!(
                "inputs[{i}] must be a text for a token-classification adapter, found {}",
                type_name(other)
            ))),
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let sentences: Vec<TaggedSentence> = texts
        .iter()
        .map(|(_, words)| TaggedSentence::unlabeled(words))
        .collect();
    let featurized = catch_unwind(AssertUnwindSafe(|| {
        tagger.featurize(&sentences, &adapter.info.label_names, adapter.max_len)
    }))
    .map_err(|_| ApiError::bad_request("the inputs cannot be tokenized"))?
    .map_err(|e| ApiError::bad_request(format!("the inputs cannot be tokenized: {e}")))?;
    check_count(featurized.features.len(), "windows", limit)?;
    let sequences = featurized
        .features
        .iter()
        .map(|f| (f.ids.clone(), f.type_ids.clone()))
        .collect();
    Ok(Encoded::new(
        sequences,
        Plan::Tagging {
            texts,
            features: featurized.features,
        },
    ))
}

fn parse_qa(v: &Value, at: &str) -> Result<(String, String), ApiError> {
    let text = |v: Option<&Value>, what: &str| match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(ApiError::bad_request(format!(
            "{at}.{what} must be a text, found {}",
            type_name(other)
        ))),
        None => Err(ApiError::bad_request(format!(
            "{at} has no \"{what}\": send {{\"question\": \"...\", \"context\": \"...\"}}"
        ))),
    };
    match v {
        Value::Object(map) => {
            if let Some(k) = map.keys().find(|k| !matches!(k.as_str(), "question" | "context")) {
                return Err(ApiError::bad_request(format!(
                    "{at}: unknown field {k:?}; expected question, context"
                )));
            }
            Ok((
                text(map.get("question"), "question")?,
                text(map.get("context"), "context")?,
            ))
        }
        Value::Array(items) => match items.as_slice() {
            [Value::String(q), Value::String(c)] => Ok((q.clone(), c.clone())),
            _ => Err(ApiError::bad_request(format!(
                "{at} must be {{\"question\": ..., \"context\": ...}} or [question, context], found an array of {} item(s)",
                items.len()
            ))),
        },
        other => Err(ApiError::bad_request(format!(
            "{at} must be {{\"question\": ..., \"context\": ...}} or [question, context], found {}",
            type_name(other)
        ))),
    }
}

/// The QA settings the adapter was trained with: doc stride and the SQuAD
/// 2.0 null threshold (the trainer's defaults when absent).
fn qa_settings(adapter: &ServedAdapter) -> (usize, PostprocessOptions) {
    let h = &adapter.info.hyperparameters;
    let stride = h
        .get("doc_stride")
        .and_then(Value::as_u64)
        .map_or(crate::tasks::squad::DOC_STRIDE, |s| s as usize);
    let threshold = h
        .get("null_score_diff_threshold")
        .and_then(Value::as_f64)
        .unwrap_or(0.0) as f32;
    let opts = PostprocessOptions {
        version_2: adapter.info.task == "qa/squad_v2",
        null_score_diff_threshold: threshold,
        ..PostprocessOptions::default()
    };
    (stride, opts)
}

/// QA: question first, then context windows with the training stride.
fn encode_qa(
    tools: &TextTools,
    adapter: &ServedAdapter,
    inputs: &[Value],
    limit: usize,
) -> Result<Encoded, ApiError> {
    let examples = inputs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let (question, context) = parse_qa(v, &format!("inputs[{i}]"))?;
            Ok(SquadExample {
                id: i.to_string(),
                question,
                context,
                answers: Vec::new(),
                is_impossible: false,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let (stride, opts) = qa_settings(adapter);
    let featurizer =
        QaFeaturizer::with_raw(&tools.tokenizer, &tools.qa_raw, adapter.max_len, stride);
    let mut sequences = Vec::new();
    let mut windows = Vec::new();
    for (i, example) in examples.iter().enumerate() {
        let bad =
            |e: crate::Error| ApiError::bad_request(format!("inputs[{i}] cannot be windowed: {e}"));
        let built = catch_unwind(AssertUnwindSafe(|| {
            featurizer
                .windows(example, i)
                .and_then(|w| w.collect::<crate::Result<Vec<_>>>())
        }))
        .map_err(|_| ApiError::bad_request(format!("inputs[{i}] cannot be tokenized")))?
        .map_err(bad)?;
        for f in built {
            check_count(windows.len() + 1, "context windows", limit)?;
            sequences.push((f.ids, f.type_ids));
            windows.push((i, f.context_offsets));
        }
    }
    Ok(Encoded::new(
        sequences,
        Plan::Qa {
            examples,
            windows,
            opts,
        },
    ))
}

fn label_of(adapter: &ServedAdapter, index: usize) -> String {
    adapter
        .info
        .label_names
        .get(index)
        .cloned()
        .unwrap_or_else(|| index.to_string())
}

/// The answers, one per input, from the logits of the encoded sequences:
/// `[C]` per sequence for pooled heads, `[T, C]` (the sequence's own tokens)
/// for per-token heads.
pub fn decode(
    adapter: &ServedAdapter,
    reader: Reader,
    logits: &[Vec<f32>],
) -> Result<Vec<Value>, ApiError> {
    let internal = |why: String| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the model's outputs: {why}"),
        )
    };
    if logits.len() != reader.count {
        return Err(internal(format!(
            "{} outputs for {} sequences",
            logits.len(),
            reader.count
        )));
    }
    let c = adapter.head.num_labels();
    match reader.plan {
        Plan::Texts(per_input) => Ok(match adapter.kind() {
            HeadKind::Regression => logits
                .iter()
                .map(|l| json!({"value": l.first().copied().unwrap_or(f32::NAN)}))
                .collect(),
            HeadKind::MultipleChoice => {
                let mut rows = logits.iter();
                per_input
                    .iter()
                    .map(|&n| {
                        let scores: Vec<f32> = rows
                            .by_ref()
                            .take(n)
                            .map(|l| l.first().copied().unwrap_or(f32::NAN))
                            .collect();
                        let best = argmax(&scores);
                        json!({"label": label_of(adapter, best), "choice": best, "scores": softmax(&scores)})
                    })
                    .collect()
            }
            _ => logits
                .iter()
                .map(|l| json!({"label": label_of(adapter, argmax(l)), "scores": softmax(l)}))
                .collect(),
        }),
        Plan::Tagging { texts, features } => {
            let token_argmax: Vec<Vec<usize>> = features
                .iter()
                .zip(logits)
                .map(|(f, l)| {
                    if l.len() != f.ids.len() * c {
                        return Err(internal(format!(
                            "{} logits for {} tokens of {c} tags",
                            l.len(),
                            f.ids.len()
                        )));
                    }
                    Ok(l.chunks(c).map(argmax).collect())
                })
                .collect::<Result<_, ApiError>>()?;
            let lengths: Vec<usize> = texts.iter().map(|(_, w)| w.len()).collect();
            let predicted = word_predictions(&features, &token_argmax, &lengths);
            Ok(texts
                .iter()
                .zip(predicted)
                .map(|((text, words), tags)| {
                    let tags: Vec<String> = tags.into_iter().map(|t| label_of(adapter, t)).collect();
                    let entities: Vec<Value> = entity_spans(words, &tags, text)
                        .into_iter()
                        .map(|e| json!({"label": e.label, "start": e.start, "end": e.end, "text": e.text}))
                        .collect();
                    let words: Vec<&str> = words.iter().map(|w| w.0.as_str()).collect();
                    json!({"entities": entities, "words": words, "tags": tags})
                })
                .collect())
        }
        Plan::Qa {
            examples,
            windows,
            opts,
        } => {
            let mut post = Postprocessor::new(&examples, opts);
            for ((example, offsets), l) in windows.iter().zip(logits) {
                if c != 2 || l.len() != offsets.len() * 2 {
                    return Err(internal(format!(
                        "{} logits for a window of {} tokens (expected start and end per token)",
                        l.len(),
                        offsets.len()
                    )));
                }
                let start: Vec<f32> = l.iter().step_by(2).copied().collect();
                let end: Vec<f32> = l.iter().skip(1).step_by(2).copied().collect();
                post.push(*example, offsets, &start, &end)
                    .map_err(|e| internal(e.to_string()))?;
            }
            let mut spans = post.finish_spans();
            (0..examples.len())
                .map(|i| {
                    let a = spans
                        .remove(&i.to_string())
                        .ok_or_else(|| internal(format!("input {i} got no window")))?;
                    Ok(json!({"answer": a.text, "start": a.start, "end": a.end, "score": a.score}))
                })
                .collect()
        }
    }
}
