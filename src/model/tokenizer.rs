//! The HF tokenizer of a model folder.
//!
//! Wraps `tokenizers::Tokenizer` loaded from `tokenizer.json`. The file's own
//! truncation and padding settings are switched off: sentence-transformers
//! files, for instance, pad everything to 128, while we batch and pad
//! ourselves and truncate to a per-call `max_len`, reporting whether we did.

use std::path::{Path, PathBuf};

use tokenizers::utils::truncation::{
    truncate_encodings, TruncationDirection, TruncationParams, TruncationStrategy,
};
use tokenizers::PostProcessor;

use crate::error::{Error, Result};

/// One tokenized example, special tokens included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids, e.g. `[CLS] a… [SEP] b… [SEP]`; length ≤ `max_len`.
    pub ids: Vec<u32>,
    /// Segment ids, same length as `ids` (0 for the first text, 1 for the
    /// pair in BERT; all 0 in RoBERTa).
    pub type_ids: Vec<u32>,
    /// Whether tokens of the input were dropped to fit `max_len`.
    pub truncated: bool,
}

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    pad_id: u32,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json`. The pad id falls back to `pad_token_id` of
    /// `dir/config.json` (or 0) when the tokenizer names no pad token.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let fallback = config_pad_token_id(&dir.join("config.json")).unwrap_or(0);
        Self::from_file(&dir.join("tokenizer.json"), fallback)
    }

    /// Same as [`Self::from_dir`].
    pub fn load(dir: &Path) -> Result<Self> {
        Self::from_dir(dir)
    }

    /// Loads a tokenizer.json; `fallback_pad_id` is used when the file has
    /// neither padding settings nor a `[PAD]` / `<pad>` token.
    pub fn from_file(path: &Path, fallback_pad_id: u32) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::Tokenizer {
                path: path.to_path_buf(),
                message: "file not found; tokenizer.json (the HF fast-tokenizer file) is \
                          required, vocab.txt / sentencepiece files alone are not supported"
                    .to_string(),
            });
        }
        let mut inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Tokenizer {
            path: path.to_path_buf(),
            message: format!("cannot parse tokenizer.json: {e}"),
        })?;
        let pad_id = inner
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| inner.token_to_id("[PAD]"))
            .or_else(|| inner.token_to_id("<pad>"))
            .unwrap_or(fallback_pad_id);
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| Error::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Tokenizer {
            inner,
            path: path.to_path_buf(),
            pad_id,
        })
    }

    /// Tokenizes `text` (and `pair`, for two-sentence tasks), adds the model's
    /// special tokens and truncates to at most `max_len` tokens in total,
    /// longest sequence first, as HF's `truncation="longest_first"`.
    pub fn encode(&self, text: &str, pair: Option<&str>, max_len: usize) -> Result<Encoded> {
        let added = self
            .inner
            .get_post_processor()
            .map(|p| p.added_tokens(pair.is_some()))
            .unwrap_or(0);
        if max_len <= added {
            return Err(Error::InvalidArgument(format!(
                "max_len {max_len} leaves no room for text next to the {added} special tokens"
            )));
        }
        let first = self.raw(text)?;
        let second = match pair {
            Some(p) => {
                let mut e = self.raw(p)?;
                e.set_type_ids(vec![1; e.len()]);
                Some(e)
            }
            None => None,
        };
        let budget = max_len - added;
        let total = first.len() + second.as_ref().map_or(0, |e| e.len());
        let truncated = total > budget;
        let (first, second) = if truncated {
            let params = TruncationParams {
                direction: TruncationDirection::Right,
                max_length: budget,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            };
            truncate_encodings(first, second, &params).map_err(|e| self.err(e))?
        } else {
            (first, second)
        };
        let enc = self
            .inner
            .post_process(first, second, true)
            .map_err(|e| self.err(e))?;
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
            truncated,
        })
    }

    /// The id to pad batches with: from the tokenizer's padding settings or
    /// its `[PAD]` / `<pad>` token, else the fallback given at load.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of a token such as `[CLS]` or `<mask>`, if it exists.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The wrapped HF tokenizer (padding and truncation disabled).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// One sequence without special tokens or truncation.
    fn raw(&self, text: &str) -> Result<tokenizers::Encoding> {
        self.inner.encode(text, false).map_err(|e| self.err(e))
    }

    fn err(&self, e: tokenizers::Error) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

/// `pad_token_id` of a config.json, read leniently: the tokenizer must not
/// fail because of a config problem that model loading reports better.
fn config_pad_token_id(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("pad_token_id")?
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
}
