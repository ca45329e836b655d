//! The frozen backbone's weights, one struct per HF module and named as HF names
//! them, so that tensors map by name. Query, key and value are fused into one
//! [3H, H] matrix at load time: one GEMM instead of three.

use std::path::Path;

use crate::error::{Error, Result};
use crate::model::config::BertConfig;
use crate::model::weights::WeightFile;

/// A dense layer, weight row-major [out_features, in_features] as in HF.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub out_features: usize,
    pub in_features: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LayerNorm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub eps: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BertEmbeddings {
    /// [vocab_size, H]
    pub word_embeddings: Vec<f32>,
    /// [max_position_embeddings, H]
    pub position_embeddings: Vec<f32>,
    /// [type_vocab_size, H]
    pub token_type_embeddings: Vec<f32>,
    pub layer_norm: LayerNorm,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BertSelfAttention {
    /// query, key and value stacked: weight [3H, H], bias [3H].
    pub qkv: Linear,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BertSelfOutput {
    pub dense: Linear,
    pub layer_norm: LayerNorm,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BertAttention {
    pub self_attention: BertSelfAttention,
    pub output: BertSelfOutput,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BertIntermediate {
    pub dense: Linear,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BertOutput {
    pub dense: Linear,
    pub layer_norm: LayerNorm,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BertLayer {
    pub attention: BertAttention,
    pub intermediate: BertIntermediate,
    pub output: BertOutput,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BertPooler {
    pub dense: Linear,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BertModel {
    pub config: BertConfig,
    pub embeddings: BertEmbeddings,
    pub layers: Vec<BertLayer>,
    pub pooler: Option<BertPooler>,
}

impl BertModel {
    /// Loads config.json and model.safetensors from an HF model folder.
    ///
    /// Tensor names are HF's, bare or with a `bert.` / `roberta.` prefix;
    /// LayerNorm parameters may use the legacy `gamma` / `beta` names. Query,
    /// key and value are fused into [`BertSelfAttention::qkv`]. The pooler is
    /// optional (sentence-transformers checkpoints often omit it).
    pub fn load(dir: &Path) -> Result<Self> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let weights_path = dir.join("model.safetensors");
        if !weights_path.is_file() {
            return Err(missing_weights(dir, &weights_path));
        }
        let weights = WeightFile::open(&weights_path)?;
        Self::from_weights(config, &weights)
    }

    /// Builds the model from an already opened weight file, checking every
    /// shape against `config`.
    pub fn from_weights(config: BertConfig, w: &WeightFile) -> Result<Self> {
        let h = config.hidden_size;
        let eps = config.layer_norm_eps;
        let embeddings = BertEmbeddings {
            word_embeddings: w
                .tensor("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            position_embeddings: w.tensor(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, h],
            )?,
            token_type_embeddings: w.tensor(
                "embeddings.token_type_embeddings.weight",
                &[config.type_vocab_size, h],
            )?,
            layer_norm: load_layer_norm(w, "embeddings.LayerNorm", h, eps)?,
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| load_layer(w, &format!("encoder.layer.{i}"), &config))
            .collect::<Result<Vec<_>>>()?;
        let pooler = if w.has("pooler.dense.weight") {
            Some(BertPooler {
                dense: load_linear(w, "pooler.dense", h, h)?,
            })
        } else {
            None
        };
        Ok(BertModel {
            config,
            embeddings,
            layers,
            pooler,
        })
    }

    /// The number of (frozen) parameters, as PyTorch counts the module's.
    pub fn num_parameters(&self) -> usize {
        let linear = |l: &Linear| l.weight.len() + l.bias.len();
        let norm = |n: &LayerNorm| n.weight.len() + n.bias.len();
        let e = &self.embeddings;
        let embeddings = e.word_embeddings.len()
            + e.position_embeddings.len()
            + e.token_type_embeddings.len()
            + norm(&e.layer_norm);
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                linear(&l.attention.self_attention.qkv)
                    + linear(&l.attention.output.dense)
                    + norm(&l.attention.output.layer_norm)
                    + linear(&l.intermediate.dense)
                    + linear(&l.output.dense)
                    + norm(&l.output.layer_norm)
            })
            .sum();
        embeddings + layers + self.pooler.as_ref().map_or(0, |p| linear(&p.dense))
    }
}

/// The error for a folder without model.safetensors, saying what is there
/// instead when that explains it.
fn missing_weights(dir: &Path, weights_path: &Path) -> Error {
    let message = if dir.join("model.safetensors.index.json").is_file() {
        "model.safetensors not found; this folder holds a sharded checkpoint \
         (model.safetensors.index.json), which is not supported: merge the shards into one \
         model.safetensors"
            .to_string()
    } else if dir.join("pytorch_model.bin").is_file() {
        "model.safetensors not found; this folder has only pytorch_model.bin, which is not \
         supported (it is a pickle): convert it to model.safetensors, e.g. with \
         transformers' save_pretrained(..., safe_serialization=True)"
            .to_string()
    } else {
        "model.safetensors not found; a model folder needs config.json, model.safetensors \
         and tokenizer.json"
            .to_string()
    };
    Error::MissingFile {
        path: weights_path.to_path_buf(),
        message,
    }
}

/// `{prefix}.weight` [out, in] and `{prefix}.bias` [out].
fn load_linear(
    w: &WeightFile,
    prefix: &str,
    out_features: usize,
    in_features: usize,
) -> Result<Linear> {
    Ok(Linear {
        weight: w.tensor(&format!("{prefix}.weight"), &[out_features, in_features])?,
        bias: w.tensor(&format!("{prefix}.bias"), &[out_features])?,
        out_features,
        in_features,
    })
}

/// `{prefix}.weight`/`.bias` [H], or the TF-era `{prefix}.gamma`/`.beta`.
fn load_layer_norm(w: &WeightFile, prefix: &str, h: usize, eps: f32) -> Result<LayerNorm> {
    Ok(LayerNorm {
        weight: w.tensor_any(
            &[&format!("{prefix}.weight"), &format!("{prefix}.gamma")],
            &[h],
        )?,
        bias: w.tensor_any(
            &[&format!("{prefix}.bias"), &format!("{prefix}.beta")],
            &[h],
        )?,
        eps,
    })
}

/// One encoder layer under `prefix` = `encoder.layer.{i}`.
fn load_layer(w: &WeightFile, prefix: &str, config: &BertConfig) -> Result<BertLayer> {
    let h = config.hidden_size;
    let ff = config.intermediate_size;
    let eps = config.layer_norm_eps;

    // Fused QKV: weight rows [q; k; v] -> [3H, H], bias [q; k; v] -> [3H],
    // converted straight into the final buffers.
    let mut weight = Vec::with_capacity(3 * h * h);
    let mut bias = Vec::with_capacity(3 * h);
    for part in ["query", "key", "value"] {
        let p = format!("{prefix}.attention.self.{part}");
        w.tensor_into(&format!("{p}.weight"), &[h, h], &mut weight)?;
        w.tensor_into(&format!("{p}.bias"), &[h], &mut bias)?;
    }
    let qkv = Linear {
        weight,
        bias,
        out_features: 3 * h,
        in_features: h,
    };

    Ok(BertLayer {
        attention: BertAttention {
            self_attention: BertSelfAttention { qkv },
            output: BertSelfOutput {
                dense: load_linear(w, &format!("{prefix}.attention.output.dense"), h, h)?,
                layer_norm: load_layer_norm(
                    w,
                    &format!("{prefix}.attention.output.LayerNorm"),
                    h,
                    eps,
                )?,
            },
        },
        intermediate: BertIntermediate {
            dense: load_linear(w, &format!("{prefix}.intermediate.dense"), ff, h)?,
        },
        output: BertOutput {
            dense: load_linear(w, &format!("{prefix}.output.dense"), h, ff)?,
            layer_norm: load_layer_norm(w, &format!("{prefix}.output.LayerNorm"), h, eps)?,
        },
    })
}
