//! config.json of an HF encoder (BERT, RoBERTa, XLM-RoBERTa).
//!
//! The file is read into a `serde_json::Value` rather than derived into a struct
//! so that every error can name the file *and* the field, and so that absent
//! optional fields get the same defaults as the `transformers` config classes.
//! Options that would change the math of the frozen encoder (activation,
//! position embedding type) are validated here: the engine implements exactly
//! one variant of each, and silently running another would give wrong outputs.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelType {
    Bert,
    Roberta,
    XlmRoberta,
}

impl ModelType {
    /// The `model_type` string of config.json.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::Bert => "bert",
            ModelType::Roberta => "roberta",
            ModelType::XlmRoberta => "xlm-roberta",
        }
    }

    /// Parses the `model_type` string of config.json.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "bert" => Some(ModelType::Bert),
            "roberta" => Some(ModelType::Roberta),
            "xlm-roberta" => Some(ModelType::XlmRoberta),
            _ => None,
        }
    }

    /// Prefix that task-model checkpoints (`BertForSequenceClassification`,
    /// `RobertaForMaskedLM`, ...) put before the encoder's tensor names.
    pub fn checkpoint_prefix(self) -> &'static str {
        match self {
            ModelType::Bert => "bert.",
            ModelType::Roberta | ModelType::XlmRoberta => "roberta.",
        }
    }
}

impl std::fmt::Display for ModelType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The hyper-parameters of the frozen encoder. H = `hidden_size`,
/// heads × head_dim = H, the FFN is H → `intermediate_size` → H.
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
    ///
    /// Required: `model_type` (bert, roberta or xlm-roberta), `vocab_size`,
    /// `hidden_size`, `num_hidden_layers`, `num_attention_heads`,
    /// `intermediate_size`, `max_position_embeddings`. Defaults as in
    /// `transformers`: `layer_norm_eps` 1e-12, dropouts 0.1, `type_vocab_size` 2,
    /// `pad_token_id` 0 (bert) or 1 (roberta, xlm-roberta), `hidden_act` "gelu".
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses the text of a config.json; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            // serde_json's message already ends with "at line L column C".
            message: e.to_string(),
        })?;
        let Value::Object(map) = value else {
            return Err(Error::Json {
                path: path.to_path_buf(),
                message: format!(
                    "expected a JSON object at the top level, found {}",
                    kind(&value)
                ),
            });
        };
        let f = Fields { map: &map, path };

        let model_type_str = f
            .string("model_type")?
            .ok_or_else(|| f.missing("model_type"))?;
        let model_type =
            ModelType::parse(model_type_str).ok_or_else(|| Error::UnknownModelType {
                path: path.to_path_buf(),
                found: model_type_str.to_string(),
            })?;

        if let Some(act) = f.string("hidden_act")? {
            if act != "gelu" {
                return Err(f.err(format!(
                    "hidden_act is {act:?}, but only \"gelu\" (the exact erf form) is supported; \
                     tanh approximations such as \"gelu_new\" or \"gelu_pytorch_tanh\" and other \
                     activations are not"
                )));
            }
        }
        if let Some(pet) = f.string("position_embedding_type")? {
            if pet != "absolute" {
                return Err(f.err(format!(
                    "position_embedding_type is {pet:?}, but only \"absolute\" is supported"
                )));
            }
        }
        if f.bool("is_decoder")? == Some(true) {
            return Err(f.err(
                "is_decoder is true, but only bidirectional encoders are supported".to_string(),
            ));
        }

        let default_pad = match model_type {
            ModelType::Bert => 0,
            ModelType::Roberta | ModelType::XlmRoberta => 1,
        };
        let config = BertConfig {
            model_type,
            vocab_size: f.required_usize("vocab_size")?,
            hidden_size: f.required_usize("hidden_size")?,
            num_hidden_layers: f.required_usize("num_hidden_layers")?,
            num_attention_heads: f.required_usize("num_attention_heads")?,
            intermediate_size: f.required_usize("intermediate_size")?,
            max_position_embeddings: f.required_usize("max_position_embeddings")?,
            type_vocab_size: f.usize("type_vocab_size")?.unwrap_or(2),
            layer_norm_eps: f.f32("layer_norm_eps")?.unwrap_or(1e-12),
            hidden_dropout_prob: f.f32("hidden_dropout_prob")?.unwrap_or(0.1),
            attention_probs_dropout_prob: f.f32("attention_probs_dropout_prob")?.unwrap_or(0.1),
            pad_token_id: f.usize("pad_token_id")?.unwrap_or(default_pad),
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Checks the relations between fields that the forward pass relies on.
    fn validate(&self, path: &Path) -> Result<()> {
        let err = |message: String| Error::Config {
            path: path.to_path_buf(),
            message,
        };
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v == 0 {
                return Err(err(format!("{name} must be positive, found 0")));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(err(format!(
                "hidden_size ({}) must be divisible by num_attention_heads ({})",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(err(format!(
                "layer_norm_eps must be a positive number, found {}",
                self.layer_norm_eps
            )));
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(err(format!("{name} must be in [0, 1), found {p}")));
            }
        }
        if self.pad_token_id >= self.vocab_size {
            return Err(err(format!(
                "pad_token_id ({}) must be smaller than vocab_size ({})",
                self.pad_token_id, self.vocab_size
            )));
        }
        if self.position_offset() >= self.max_position_embeddings {
            return Err(err(format!(
                "max_position_embeddings ({}) leaves no position for tokens after the offset {} \
                 of model_type {}",
                self.max_position_embeddings,
                self.position_offset(),
                self.model_type
            )));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Floating-point operations (2 per multiply-add) of the matrix
    /// products of one encoder forward over `batch` × `seq` tokens with
    /// `prefix` keys and values at `prefixed_layers` of its layers: per
    /// layer the four GEMMs, 2·rows·(4H² + 2HI), and attention's two
    /// products, 4·B·T·(T + P)·H. What a speed is set against the card's
    /// peak with; the element-wise work is not counted.
    pub fn forward_flop(
        &self,
        batch: usize,
        seq: usize,
        prefix: usize,
        prefixed_layers: usize,
    ) -> f64 {
        let (h, i) = (self.hidden_size as f64, self.intermediate_size as f64);
        let (b, t, p) = (batch as f64, seq as f64, prefix as f64);
        let layers = self.num_hidden_layers as f64;
        let gemms = 2.0 * b * t * (4.0 * h * h + 2.0 * h * i) * layers;
        let attention = |keys: f64| 4.0 * b * t * keys * h;
        let prefixed = prefixed_layers.min(self.num_hidden_layers) as f64;
        gemms + attention(t + p) * prefixed + attention(t) * (layers - prefixed)
    }

    /// The most tokens a sequence may have after a prompt of `p`: the
    /// positions the model has left once the prompt's P (and RoBERTa's
    /// padding offset) are taken.
    pub fn tokens_after_prompt(&self, p: usize) -> usize {
        self.max_position_embeddings
            .saturating_sub(self.position_offset() + p)
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

/// Typed access to the top-level fields, with errors naming file and field.
/// A JSON `null` counts as absent, as `transformers` treats it.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: &'a Path,
}

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn err(&self, message: String) -> Error {
        Error::Config {
            path: PathBuf::from(self.path),
            message,
        }
    }

    fn missing(&self, name: &str) -> Error {
        self.err(format!("missing required field {name:?}"))
    }

    fn wrong_type(&self, name: &str, expected: &str, v: &Value) -> Error {
        self.err(format!(
            "field {name:?} must be {expected}, found {} {v}",
            kind(v)
        ))
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong_type(name, "a string", v)),
        }
    }

    fn bool(&self, name: &str) -> Result<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(name, "a boolean", v)),
        }
    }

    fn usize(&self, name: &str) -> Result<Option<usize>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.wrong_type(name, "a non-negative integer", v)),
        }
    }

    fn required_usize(&self, name: &str) -> Result<usize> {
        self.usize(name)?.ok_or_else(|| self.missing(name))
    }

    fn f32(&self, name: &str) -> Result<Option<f32>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| self.wrong_type(name, "a number", v)),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
