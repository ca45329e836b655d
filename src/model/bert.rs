//! The frozen backbone's weights, one struct per HF module and named as HF names
//! them, so that tensors map by name. Query, key and value are fused into one
//! [3H, H] matrix at load time: one GEMM instead of three.

use std::path::Path;

use crate::error::Result;
use crate::model::config::BertConfig;

/// A dense layer, weight row-major [out_features, in_features] as in HF.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub out_features: usize,
    pub in_features: usize,
}

#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub eps: f32,
}

#[derive(Clone, Debug)]
pub struct BertEmbeddings {
    /// [vocab_size, H]
    pub word_embeddings: Vec<f32>,
    /// [max_position_embeddings, H]
    pub position_embeddings: Vec<f32>,
    /// [type_vocab_size, H]
    pub token_type_embeddings: Vec<f32>,
    pub layer_norm: LayerNorm,
}

#[derive(Clone, Debug)]
pub struct BertSelfAttention {
    /// query, key and value stacked: weight [3H, H], bias [3H].
    pub qkv: Linear,
}

#[derive(Clone, Debug)]
pub struct BertSelfOutput {
    pub dense: Linear,
    pub layer_norm: LayerNorm,
}

#[derive(Clone, Debug)]
pub struct BertAttention {
    pub self_attention: BertSelfAttention,
    pub output: BertSelfOutput,
}

#[derive(Clone, Debug)]
pub struct BertIntermediate {
    pub dense: Linear,
}

#[derive(Clone, Debug)]
pub struct BertOutput {
    pub dense: Linear,
    pub layer_norm: LayerNorm,
}

#[derive(Clone, Debug)]
pub struct BertLayer {
    pub attention: BertAttention,
    pub intermediate: BertIntermediate,
    pub output: BertOutput,
}

#[derive(Clone, Debug)]
pub struct BertPooler {
    pub dense: Linear,
}

#[derive(Clone, Debug)]
pub struct BertModel {
    pub config: BertConfig,
    pub embeddings: BertEmbeddings,
    pub layers: Vec<BertLayer>,
    pub pooler: Option<BertPooler>,
}

impl BertModel {
    /// Loads config.json and model.safetensors from an HF model folder.
    pub fn load(dir: &Path) -> Result<Self> {
        todo!()
    }
}
