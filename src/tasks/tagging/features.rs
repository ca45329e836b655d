//! Features of tagged sentences as the official `tokenize_and_align_labels`
//! makes them (the first sub-token of each word carries its tag), long
//! sentences cut into windows of whole words, and the way back from token
//! predictions to one tag per word.

use std::collections::HashMap;

use rayon::prelude::*;
use tokenizers::{PreTokenizerWrapper, Token};

use super::TaggedSentence;
use crate::model::tokenizer::Tokenizer;
use crate::tasks::list;
use crate::{Error, Result};

/// One window of one sentence, ready for the encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFeature {
    /// Token ids with the model's special tokens, e.g. BERT
    /// `[CLS] w… [SEP]`, SRL `[CLS] w… [SEP] predicate… [SEP]`; length
    /// ≤ `max_len`, unpadded.
    pub ids: Vec<u32>,
    /// Segment ids, same length (all 0: one sequence, as the official code).
    pub type_ids: Vec<u32>,
    /// Per token: the tag index on the first sub-token of each word this
    /// window labels; -100 (ignored by the loss) on special tokens, later
    /// sub-tokens, the SRL predicate segment, and everywhere when the
    /// sentence is unlabeled.
    pub labels: Vec<i64>,
    /// Per token: `Some(word index in the sentence)` on the first sub-token
    /// of each word this window labels, `None` elsewhere. Set for unlabeled
    /// sentences too, to read predictions back ([`word_predictions`]).
    pub word_of_token: Vec<Option<usize>>,
    /// Index of the sentence in the featurized slice.
    pub sentence: usize,
}

/// The features of a list of sentences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggingFeatures {
    /// One or more windows per non-empty sentence, in sentence order.
    pub features: Vec<TokenFeature>,
    /// Sentences cut into more than one window.
    pub windows_split: usize,
    /// Gold tags not in the tag set: counted and trained as "O".
    pub unknown_tags: usize,
    /// Words the tokenizer turned into no token at all (e.g. a lone
    /// zero-width space under BERT's normalizer), encoded as the unknown
    /// token instead so that they are labeled too.
    pub empty_words: usize,
    /// Single words longer than a whole window, whose sub-tokens were cut
    /// to fit (the word keeps its label on its first sub-token).
    pub truncated_words: usize,
}

/// The tokenizer as the official code configures it for pre-split words,
/// and facts about it. Built once ([`TaggingTokenizer::new`] clones the
/// tokenizer) and reused for any number of sentences: the server keeps one.
pub struct TaggingTokenizer {
    tok: tokenizers::Tokenizer,
    /// Special tokens before the first word (`[CLS]`, `<s>`: 1).
    leading: usize,
    /// Special tokens added to one sequence in all.
    specials: usize,
    /// The unknown token, for words that give no token.
    unk: Option<Token>,
    /// The separator token (SRL predicate segment).
    sep: Option<Token>,
}

impl TaggingTokenizer {
    pub fn new(tokenizer: &Tokenizer) -> Result<Self> {
        let mut tok = tokenizer.inner().clone();
        // The official code loads RoBERTa-style tokenizers with
        // `add_prefix_space=True` (tasks/utils.py ADD_PREFIX_SPACE), required
        // for `is_split_into_words`: every word is then encoded as if it
        // followed a space, as inside a sentence. tokenizer.json files
        // usually store `false`; switch it on in our copy.
        let fixed = match tok.get_pre_tokenizer() {
            Some(PreTokenizerWrapper::ByteLevel(bl)) if !bl.add_prefix_space => {
                Some(PreTokenizerWrapper::ByteLevel(bl.add_prefix_space(true)))
            }
            Some(PreTokenizerWrapper::Sequence(seq)) => {
                let mut seq = seq.clone();
                let mut changed = false;
                for p in seq.as_mut() {
                    if let PreTokenizerWrapper::ByteLevel(bl) = p {
                        if !bl.add_prefix_space {
                            *bl = bl.add_prefix_space(true);
                            changed = true;
                        }
                    }
                }
                changed.then_some(PreTokenizerWrapper::Sequence(seq))
            }
            _ => None,
        };
        if let Some(p) = fixed {
            tok.with_pre_tokenizer(Some(p));
        }
        let probe = tok.encode(vec!["a"], true).map_err(tok_err)?;
        let leading = probe
            .get_word_ids()
            .iter()
            .position(Option::is_some)
            .ok_or_else(|| {
                Error::InvalidArgument("tokenizer: the word \"a\" gives no token".to_string())
            })?;
        let specials = tok
            .get_post_processor()
            .map(|p| tokenizers::PostProcessor::added_tokens(p, false))
            .unwrap_or(0);
        let find = |names: &[&str]| {
            names.iter().find_map(|n| {
                tok.token_to_id(n)
                    .map(|id| Token::new(id, n.to_string(), (0, 0)))
            })
        };
        let unk = find(&["[UNK]", "<unk>"]);
        let sep = find(&["[SEP]", "</s>"]);
        Ok(TaggingTokenizer {
            tok,
            leading,
            specials,
            unk,
            sep,
        })
    }
}

/// Tokenizes sentences for token classification (see the module docs).
///
/// `tags` is the tag set ([`TaggingTask::tag_names`]). Each sentence gives
/// one window, or — when its tokens and the special tokens exceed `max_len`
/// — consecutive windows of whole words, each at most `max_len` tokens, each
/// word labeled in exactly one window. SRL sentences (with a predicate) get
/// `[SEP] predicate` after their words in every window, as the official
/// `tasks/srl/dataset.py` appends `["[SEP]", tokens[index]]` to the words:
/// one sequence, so type ids stay 0 (BERT: `[CLS] w… [SEP] pred… [SEP]`);
/// only the sentence's words are labeled. Tokenizers without `[SEP]`
/// (RoBERTa) get their own `</s>` there, where the official code would pass
/// the literal text "[SEP]" and have it split into pieces. Empty sentences
/// give no feature.
///
/// Long lists of sentences are tokenized in parallel (rayon); the order is kept.
///
/// Errors: a sentence whose tag count differs from its word count, a
/// predicate index out of range, an unknown tag when the tag set has no
/// "O", `max_len` leaving no room for a word, tokenizer failures.
pub fn featurize_tagging(
    tokenizer: &Tokenizer,
    sentences: &[TaggedSentence],
    tags: &[String],
    max_len: usize,
) -> Result<TaggingFeatures> {
    TaggingTokenizer::new(tokenizer)?.featurize(sentences, tags, max_len)
}

/// Below this many sentences, tokenizing in parallel costs more than it
/// saves (and a server's request threads should not wait on rayon's pool
/// while the model uses it).
const PARALLEL_SENTENCES: usize = 64;

impl TaggingTokenizer {
    /// [`featurize_tagging`] with this tokenizer.
    pub fn featurize(
        &self,
        sentences: &[TaggedSentence],
        tags: &[String],
        max_len: usize,
    ) -> Result<TaggingFeatures> {
        let ctx = Context {
            enc: self,
            tags,
            tag_index: tags
                .iter()
                .enumerate()
                .map(|(i, t)| (t.as_str(), i as i64))
                .collect(),
            max_len,
        };
        // Sentences are independent; `collect` keeps their order.
        let per_sentence: Vec<SentenceFeatures> = if sentences.len() >= PARALLEL_SENTENCES {
            sentences
                .par_iter()
                .enumerate()
                .map(|(si, s)| ctx.sentence(si, s))
                .collect::<Result<_>>()?
        } else {
            sentences
                .iter()
                .enumerate()
                .map(|(si, s)| ctx.sentence(si, s))
                .collect::<Result<_>>()?
        };
        let mut out = TaggingFeatures {
            features: Vec::new(),
            windows_split: 0,
            unknown_tags: 0,
            empty_words: 0,
            truncated_words: 0,
        };
        for s in per_sentence {
            out.windows_split += usize::from(s.features.len() > 1);
            out.unknown_tags += s.unknown_tags;
            out.empty_words += s.empty_words;
            out.truncated_words += s.truncated_words;
            out.features.extend(s.features);
        }
        Ok(out)
    }
}

/// What [`featurize_tagging`] needs for every sentence.
struct Context<'a> {
    enc: &'a TaggingTokenizer,
    tags: &'a [String],
    tag_index: HashMap<&'a str, i64>,
    max_len: usize,
}

/// The windows of one sentence and its counts.
struct SentenceFeatures {
    features: Vec<TokenFeature>,
    unknown_tags: usize,
    empty_words: usize,
    truncated_words: usize,
}

fn tok_err(e: tokenizers::Error) -> Error {
    Error::InvalidArgument(format!("tokenizer: {e}"))
}

impl Context<'_> {
    /// Featurizes sentence `si`.
    fn sentence(&self, si: usize, sentence: &TaggedSentence) -> Result<SentenceFeatures> {
        let enc = self.enc;
        let n = sentence.words.len();
        let mut out = SentenceFeatures {
            features: Vec::new(),
            unknown_tags: 0,
            empty_words: 0,
            truncated_words: 0,
        };
        if n == 0 {
            return Ok(out);
        }
        // Label ids per word (or none for unlabeled text).
        let labels: Option<Vec<i64>> = match &sentence.tags {
            None => None,
            Some(t) if t.len() != n => {
                return Err(Error::InvalidArgument(format!(
                    "sentence {si}: {} tags for {n} words",
                    t.len()
                )))
            }
            Some(t) => {
                let mut ids = Vec::with_capacity(n);
                for tag in t {
                    match self.tag_index.get(tag.as_str()) {
                        Some(&i) => ids.push(i),
                        None => {
                            let o = self.tag_index.get("O").copied().ok_or_else(|| {
                                Error::InvalidArgument(format!(
                                    "sentence {si}: tag {tag:?} is not in the tag set ({}) and the tag set has no \"O\" to map it to",
                                    list(self.tags)
                                ))
                            })?;
                            out.unknown_tags += 1;
                            ids.push(o);
                        }
                    }
                }
                Some(ids)
            }
        };

        // Sub-tokens per word. Pre-tokenized words are normalized and
        // split one by one, so a word's pieces do not depend on its
        // neighbours and any run of words can be cut out as a window.
        let whole = enc
            .tok
            .encode(sentence.words.as_slice(), false)
            .map_err(tok_err)?;
        let mut pieces: Vec<Vec<Token>> = vec![Vec::new(); n];
        for (i, w) in whole.get_word_ids().iter().enumerate() {
            if let Some(w) = w {
                pieces[*w as usize].push(Token::new(
                    whole.get_ids()[i],
                    whole.get_tokens()[i].clone(),
                    whole.get_offsets()[i],
                ));
            }
        }
        for (wi, p) in pieces.iter_mut().enumerate() {
            if p.is_empty() {
                // The official code leaves such a word unlabeled (and drops
                // it from evaluation); we keep it, as the unknown token.
                let unk = enc.unk.clone().ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "sentence {si}: word {wi} ({:?}) gives no token and the tokenizer has no unknown token",
                        sentence.words[wi]
                    ))
                })?;
                p.push(unk);
                out.empty_words += 1;
            }
        }

        // SRL: `[SEP] predicate` after the words of every window.
        let tail: Vec<Token> = match sentence.predicate {
            None => Vec::new(),
            Some(p) if p >= n => {
                return Err(Error::InvalidArgument(format!(
                    "sentence {si}: predicate index {p} is out of range ({n} words)"
                )))
            }
            Some(p) => {
                let sep = enc.sep.clone().ok_or_else(|| {
                    Error::InvalidArgument(
                        "tokenizer: no [SEP] or </s> token to put before the predicate".to_string(),
                    )
                })?;
                std::iter::once(sep)
                    .chain(pieces[p].iter().cloned())
                    .collect()
            }
        };
        let max_len = self.max_len;
        let budget = max_len
            .checked_sub(enc.specials + tail.len())
            .filter(|b| *b > 0)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "sentence {si}: max_len {max_len} leaves no room for a word next to the {} special tokens{}",
                    enc.specials,
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!(" and the {}-token predicate segment", tail.len())
                    }
                ))
            })?;

        // Greedy windows of whole words: [a, b) holds as many words as fit.
        let mut windows = Vec::new();
        let mut a = 0;
        while a < n {
            let (mut b, mut used) = (a, 0);
            while b < n && used + pieces[b].len() <= budget {
                used += pieces[b].len();
                b += 1;
            }
            if b == a {
                // One word longer than a window: it goes alone, cut.
                b = a + 1;
                out.truncated_words += 1;
            }
            windows.push((a, b));
            a = b;
        }

        for (a, b) in windows {
            // Content tokens and, per word, the position of its first piece.
            let mut content: Vec<Token> = Vec::new();
            let mut firsts: Vec<(usize, usize)> = Vec::with_capacity(b - a);
            for (w, p) in pieces.iter().enumerate().take(b).skip(a) {
                firsts.push((w, content.len()));
                content.extend(p.iter().cloned());
            }
            content.truncate(budget);
            content.extend(tail.iter().cloned());
            // The model's special tokens around the window, by the
            // tokenizer's own post-processor.
            let encoding = enc
                .tok
                .post_process(tokenizers::Encoding::from_tokens(content, 0), None, true)
                .map_err(tok_err)?;
            let len = encoding.len();
            let mut labels_out = vec![-100i64; len];
            let mut word_of_token = vec![None; len];
            for (w, pos) in firsts {
                let t = enc.leading + pos;
                word_of_token[t] = Some(w);
                if let Some(l) = &labels {
                    labels_out[t] = l[w];
                }
            }
            out.features.push(TokenFeature {
                ids: encoding.get_ids().to_vec(),
                type_ids: encoding.get_type_ids().to_vec(),
                labels: labels_out,
                word_of_token,
                sentence: si,
            });
        }
        Ok(out)
    }
}

/// Gathers token-level predictions back into one tag index per word.
///
/// `token_argmax[i]` is the arg-max tag index per token of `features[i]`
/// (it may be longer, e.g. padded to the batch). `sentence_lengths[s]` is
/// the word count of sentence `s`. Each word takes the prediction on its
/// first sub-token in the window that labels it; a word no feature labels
/// (only in an empty sentence, or with features not made by
/// [`featurize_tagging`]) stays 0.
///
/// # Panics
/// When `token_argmax` and `features` differ in length, a row is shorter
/// than its feature, or a feature points outside `sentence_lengths`.
pub fn word_predictions(
    features: &[TokenFeature],
    token_argmax: &[Vec<usize>],
    sentence_lengths: &[usize],
) -> Vec<Vec<usize>> {
    assert_eq!(
        features.len(),
        token_argmax.len(),
        "one row of token predictions per feature"
    );
    let mut out: Vec<Vec<usize>> = sentence_lengths.iter().map(|&n| vec![0; n]).collect();
    for (f, row) in features.iter().zip(token_argmax) {
        assert!(
            row.len() >= f.word_of_token.len(),
            "{} token predictions for a feature of {} tokens",
            row.len(),
            f.word_of_token.len()
        );
        for (t, w) in f.word_of_token.iter().enumerate() {
            if let Some(w) = w {
                out[f.sentence][*w] = row[t];
            }
        }
    }
    out
}
