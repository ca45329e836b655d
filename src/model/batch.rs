//! A batch of token sequences, padded on the right to its own longest sequence.

use std::borrow::Cow;

use crate::error::{Error, Result};
use crate::model::config::BertConfig;
use crate::model::prefix::PromptMethod;

/// Token ids of B sequences padded to T = the longest of them. Row-major [B, T].
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub batch: usize,
    pub seq: usize,
    /// [B, T]
    pub input_ids: Vec<u32>,
    /// [B, T]
    pub token_type_ids: Vec<u32>,
    /// [B, T]: 1.0 for a real token, 0.0 for padding.
    pub attention_mask: Vec<f32>,
}

impl Batch {
    /// Pads `(ids, type_ids)` pairs with `pad_id` to the longest sequence of this
    /// batch, never to a global maximum: short batches cost less.
    pub fn pad(sequences: &[(Vec<u32>, Vec<u32>)], pad_id: u32) -> Result<Self> {
        let batch = sequences.len();
        if batch == 0 {
            return Err(Error::InvalidArgument(
                "a batch needs at least one sequence".into(),
            ));
        }
        let seq = sequences
            .iter()
            .map(|(ids, _)| ids.len())
            .max()
            .unwrap_or(0);
        if seq == 0 {
            return Err(Error::InvalidArgument("a batch of empty sequences".into()));
        }
        let mut input_ids = vec![pad_id; batch * seq];
        let mut token_type_ids = vec![0; batch * seq];
        let mut attention_mask = vec![0.0; batch * seq];
        for (b, (ids, types)) in sequences.iter().enumerate() {
            if ids.len() != types.len() {
                return Err(Error::InvalidArgument(format!(
                    "sequence {b}: {} token ids but {} token type ids",
                    ids.len(),
                    types.len()
                )));
            }
            let row = b * seq;
            input_ids[row..row + ids.len()].copy_from_slice(ids);
            token_type_ids[row..row + ids.len()].copy_from_slice(types);
            attention_mask[row..row + ids.len()].fill(1.0);
        }
        Ok(Batch {
            batch,
            seq,
            input_ids,
            token_type_ids,
            attention_mask,
        })
    }

    /// Rows of the [B*T, H] activations.
    pub fn rows(&self) -> usize {
        self.batch * self.seq
    }

    /// Checks ids against the model's tables and that T + P positions fit, so
    /// the kernels can index without checks.
    pub fn validate(&self, config: &BertConfig, prefix_len: usize) -> Result<()> {
        let n = self.rows();
        if self.input_ids.len() != n
            || self.token_type_ids.len() != n
            || self.attention_mask.len() != n
        {
            return Err(Error::InvalidArgument(format!(
                "batch buffers must hold B*T = {n} entries each"
            )));
        }
        if let Some(id) = self
            .input_ids
            .iter()
            .find(|&&id| id as usize >= config.vocab_size)
        {
            return Err(Error::InvalidArgument(format!(
                "token id {id} is outside the vocabulary of {} tokens",
                config.vocab_size
            )));
        }
        if let Some(t) = self
            .token_type_ids
            .iter()
            .find(|&&t| t as usize >= config.type_vocab_size)
        {
            return Err(Error::InvalidArgument(format!(
                "token type id {t} is outside the {} token types of this model",
                config.type_vocab_size
            )));
        }
        let last_position = config.position_offset() + prefix_len + self.seq;
        if last_position > config.max_position_embeddings {
            return Err(Error::InvalidArgument(format!(
                "{} tokens after a prefix of {prefix_len} need {last_position} positions, but the model has {} (max_position_embeddings); lower --max-seq-len or --prefix-len",
                self.seq, config.max_position_embeddings
            )));
        }
        Ok(())
    }

    /// The batch the layers see: this one, or under prompt tuning (`p` > 0
    /// rows in front) [B, P+T], the prompt's rows always attended (mask 1),
    /// token type 0, and `pad_id` as their ids (never gathered: the
    /// prompt's embeddings take their place).
    pub fn with_prompt_rows(&self, p: usize, pad_id: u32) -> Cow<'_, Batch> {
        if p == 0 {
            return Cow::Borrowed(self);
        }
        let seq = p + self.seq;
        let mut out = Batch {
            batch: self.batch,
            seq,
            input_ids: vec![pad_id; self.batch * seq],
            token_type_ids: vec![0; self.batch * seq],
            attention_mask: vec![1.0; self.batch * seq],
        };
        for b in 0..self.batch {
            let (from, to) = (b * self.seq..(b + 1) * self.seq, b * seq + p..(b + 1) * seq);
            out.input_ids[to.clone()].copy_from_slice(&self.input_ids[from.clone()]);
            out.token_type_ids[to.clone()].copy_from_slice(&self.token_type_ids[from.clone()]);
            out.attention_mask[to].copy_from_slice(&self.attention_mask[from]);
        }
        Cow::Owned(out)
    }

    /// Position ids of the rows the layers see for a prompt of `p` tokens
    /// of `method`: [B, T] with the prefix shift ([`Batch::position_ids`]),
    /// or under prompt tuning [B, P+T] for [`Batch::with_prompt_rows`] of
    /// this batch: every row numbered in order from the model's first
    /// position, padding included, as HF numbers the inputs_embeds PEFT
    /// passes. Real tokens get the same positions either way.
    pub fn layer_position_ids(
        &self,
        config: &BertConfig,
        method: PromptMethod,
        p: usize,
    ) -> Vec<u32> {
        match method {
            PromptMethod::PTuningV2 => self.position_ids(config, p),
            PromptMethod::PromptTuning => {
                let offset = config.position_offset();
                (0..self.batch)
                    .flat_map(|_| (0..p + self.seq).map(move |s| (offset + s) as u32))
                    .collect()
            }
        }
    }

    /// Position ids [B, T] with the prefix shift: as HF computes them with
    /// past_key_values of length P. BERT: P + t. RoBERTa: pad + P + (1-based
    /// index among non-pad tokens) for real tokens, pad for padding.
    pub fn position_ids(&self, config: &BertConfig, prefix_len: usize) -> Vec<u32> {
        use crate::model::config::ModelType;
        let mut positions = vec![0u32; self.rows()];
        for (b, row) in positions.chunks_mut(self.seq).enumerate() {
            match config.model_type {
                ModelType::Bert => {
                    for (t, p) in row.iter_mut().enumerate() {
                        *p = (prefix_len + t) as u32;
                    }
                }
                ModelType::Roberta | ModelType::XlmRoberta => {
                    let pad = config.pad_token_id as u32;
                    let mut seen = 0u32;
                    for (t, p) in row.iter_mut().enumerate() {
                        if self.input_ids[b * self.seq + t] == pad {
                            *p = pad;
                        } else {
                            seen += 1;
                            *p = pad + prefix_len as u32 + seen;
                        }
                    }
                }
            }
        }
        positions
    }
}
