//! config.json of an HF encoder (BERT, RoBERTa, XLM-RoBERTa).

use std::path::Path;

use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelType {
    Bert,
    Roberta,
    XlmRoberta,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    pub model_type: ModelType,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f32,
    pub hidden_dropout_prob: f32,
    pub attention_probs_dropout_prob: f32,
    pub pad_token_id: usize,
}

impl BertConfig {
    /// Reads and validates config.json. Errors name the file and the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        todo!()
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// First position id of a real token without a prefix: 0 for BERT,
    /// pad_token_id + 1 for RoBERTa-style models.
    pub fn position_offset(&self) -> usize {
        match self.model_type {
            ModelType::Bert => 0,
            ModelType::Roberta | ModelType::XlmRoberta => self.pad_token_id + 1,
        }
    }
}
