//! The trained prompt: P trainable key and value vectors for each prefixed
//! layer (P-Tuning v2), or P embeddings in front of the input (prompt tuning,
//! the shallow baseline).
//!
//! The prefix encoder yields the table `past` [P, Ls*2*H] (Ls = prefixed layers),
//! laid out as the official code's `view(B, P, 2L, NH, HD)`: for the k-th
//! prefixed layer, columns [2kH, 2kH+H) are keys and [2kH+H, 2kH+2H) values.
//! Prompt tuning's table is [P, H]: row i is the input embedding of virtual
//! token i. Either the table is the parameter itself, or it is
//! reparameterized as Embedding(P, H) → Linear(H, h) → tanh → Linear(h, width),
//! which folds back into a plain table for export.

use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::engine::cpu::dropout::Dropout;
use crate::engine::cpu::gemm::{linear_backward_input, linear_backward_params, linear_forward};
use crate::error::{Error, Result};
use crate::model::param::Param;
use crate::model::tokenizer::Tokenizer;
use crate::rng::Rng;

/// Standard deviation of the initial prefix parameters. The official code builds
/// the prefix encoder inside a model loaded with HF's from_pretrained, which
/// initialises every missing weight as `_init_weights` does: N(0, 0.02) for
/// embeddings and linear weights, zero biases.
pub const INIT_STD: f64 = 0.02;

/// Dropout stream of the prefix (layers use 0..3L+1; see encoder.rs).
pub const PREFIX_DROPOUT_STREAM: u64 = 1 << 32;

/// Where the trained prompt enters the frozen encoder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PromptMethod {
    /// P-Tuning v2 (deep prompts): P keys and values in front of the
    /// attention of every selected layer.
    #[default]
    #[serde(rename = "p-tuning-v2")]
    PTuningV2,
    /// Prompt tuning (Lester et al. 2021; PEFT's PROMPT_TUNING), the shallow
    /// baseline: P embeddings in front of the input's, which then pass
    /// through every layer as tokens do.
    #[serde(rename = "prompt-tuning")]
    PromptTuning,
}

impl PromptMethod {
    pub fn name(self) -> &'static str {
        match self {
            PromptMethod::PTuningV2 => "p-tuning-v2",
            PromptMethod::PromptTuning => "prompt-tuning",
        }
    }

    /// Columns of one block of the prompt table, what one consumer reads
    /// per virtual token: a layer's keys and values (2H), or an input
    /// embedding (H).
    pub fn block(self, hidden: usize) -> usize {
        match self {
            PromptMethod::PTuningV2 => 2 * hidden,
            PromptMethod::PromptTuning => hidden,
        }
    }

    /// Rows the layers see in front of each sequence for a prompt of `len`
    /// virtual tokens: prompt tuning's `len`, none for a deep prompt.
    pub fn rows_in_front(self, len: usize) -> usize {
        match self {
            PromptMethod::PTuningV2 => 0,
            PromptMethod::PromptTuning => len,
        }
    }
}

impl FromStr for PromptMethod {
    /// What was expected (clap puts the flag and the value in front).
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "p-tuning-v2" => Ok(PromptMethod::PTuningV2),
            "prompt-tuning" => Ok(PromptMethod::PromptTuning),
            _ => {
                Err("expected p-tuning-v2 (deep prompts) or prompt-tuning (the input only)".into())
            }
        }
    }
}

/// Where prompt tuning's P embeddings start (PEFT's `PromptTuningInit`);
/// `--prompt-init vocab|random|text:TEXT`. A deep prompt's keys and values
/// start from N(0, INIT_STD²) (the official code's), whatever this says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PromptInit {
    /// The word embeddings of P tokens drawn from the vocabulary (PEFT's
    /// SAMPLE_VOCAB; Lester et al.'s better start than random vectors).
    #[default]
    Vocab,
    /// N(0, 1), as torch.nn.Embedding starts (PEFT's RANDOM).
    Random,
    /// The word embeddings of a text's tokens, special tokens included,
    /// repeated or cut to P (PEFT's TEXT): "Is the hypothesis entailed?".
    Text(String),
}

impl PromptInit {
    /// The token ids a text start reads, as PEFT takes them: the
    /// tokenizer's, special tokens included, untruncated; none otherwise.
    /// Every id must have a row in the model's `vocab_size` embeddings.
    pub fn text_ids(&self, tokenizer: &Tokenizer, vocab_size: usize) -> Result<Vec<u32>> {
        let PromptInit::Text(text) = self else {
            return Ok(Vec::new());
        };
        let ids = tokenizer.encode(text, None, usize::MAX / 2)?.ids;
        if ids.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "--prompt-init text:{text}: the tokenizer gives no tokens for it"
            )));
        }
        if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(Error::InvalidArgument(format!(
                "--prompt-init text:{text}: token {id} has no embedding in the model's {vocab_size}"
            )));
        }
        Ok(ids)
    }

    /// PEFT's name for it, as adapter_config.json's `prompt_tuning_init`.
    pub fn peft_name(&self) -> &'static str {
        match self {
            PromptInit::Vocab => "SAMPLE_VOCAB",
            PromptInit::Random => "RANDOM",
            PromptInit::Text(_) => "TEXT",
        }
    }

    /// The start a PEFT config names (`prompt_tuning_init` and, for TEXT,
    /// `prompt_tuning_init_text`); `None` for a name it does not know.
    pub fn from_peft(name: &str, text: Option<&str>) -> Option<Self> {
        match name {
            "SAMPLE_VOCAB" => Some(PromptInit::Vocab),
            "RANDOM" => Some(PromptInit::Random),
            "TEXT" => text.map(|t| PromptInit::Text(t.to_string())),
            _ => None,
        }
    }
}

impl FromStr for PromptInit {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "vocab" => Ok(PromptInit::Vocab),
            "random" => Ok(PromptInit::Random),
            _ => match s.strip_prefix("text:") {
                Some(text) if !text.trim().is_empty() => Ok(PromptInit::Text(text.to_string())),
                Some(_) => {
                    Err("text: needs the text to start from, e.g. text:Is it entailed?".into())
                }
                None => Err("expected vocab, random or text:TEXT".into()),
            },
        }
    }
}

impl std::fmt::Display for PromptInit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PromptInit::Vocab => f.write_str("vocab"),
            PromptInit::Random => f.write_str("random"),
            PromptInit::Text(text) => write!(f, "text:{text}"),
        }
    }
}

// As the flag writes it, in run.toml and ptuning.json too.
impl Serialize for PromptInit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PromptInit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PrefixConfig {
    pub method: PromptMethod,
    /// P, the number of virtual tokens.
    pub len: usize,
    /// Reparameterize through an MLP (official `--prefix_projection`).
    pub projection: bool,
    /// h, the MLP's hidden width.
    pub hidden_size: usize,
    /// Layers that get a prefix, ascending (P-Tuning v2); empty for prompt
    /// tuning, whose prompt is in front of the input.
    pub layers: Vec<usize>,
}

impl PrefixConfig {
    /// Columns of the prompt table: Ls·2·H keys and values, or H for the
    /// input embeddings of prompt tuning.
    pub fn width(&self, hidden: usize) -> usize {
        match self.method {
            PromptMethod::PTuningV2 => self.layers.len() * 2 * hidden,
            PromptMethod::PromptTuning => hidden,
        }
    }

    /// Checks the shape against a model of `num_layers` layers.
    pub fn validate(&self, num_layers: usize) -> Result<()> {
        if self.len == 0 {
            return Err(Error::InvalidArgument(
                "--prefix-len must be at least 1".into(),
            ));
        }
        match self.method {
            PromptMethod::PTuningV2 if self.layers.is_empty() => {
                return Err(Error::InvalidArgument(
                    "the prefix needs at least one layer".into(),
                ))
            }
            PromptMethod::PromptTuning if !self.layers.is_empty() => {
                return Err(Error::InvalidArgument(
                    "prompt tuning puts its prompt in front of the input: --prefix-layers does not apply to it".into(),
                ))
            }
            _ => {}
        }
        if let Some(&l) = self.layers.iter().find(|&&l| l >= num_layers) {
            return Err(Error::InvalidArgument(format!(
                "prefix layer {l} does not exist in a model of {num_layers} layers"
            )));
        }
        if self.projection && self.hidden_size == 0 {
            return Err(Error::InvalidArgument(
                "--prefix-hidden-size must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Parses a layer selection: `all`, a range `2-5`, a list `0,3,5` (ranges may
/// be mixed in), or the top k layers as `top4` / `top:4`.
pub fn parse_layers(spec: &str, num_layers: usize) -> Result<Vec<usize>> {
    let bad = |why: String| {
        Error::InvalidArgument(format!(
            "--prefix-layers {spec:?}: {why}; expected all, a range like 0-5, a list like 0,3,5, or top:k (the model has {num_layers} layers)"
        ))
    };
    let spec = spec.trim();
    let mut layers = Vec::new();
    if spec.eq_ignore_ascii_case("all") {
        layers.extend(0..num_layers);
    } else if let Some(k) = spec.strip_prefix("top") {
        let k: usize = k
            .trim_start_matches(':')
            .parse()
            .map_err(|_| bad("the count after top is not a number".into()))?;
        if k == 0 || k > num_layers {
            return Err(bad(format!("top {k} is not between 1 and {num_layers}")));
        }
        layers.extend(num_layers - k..num_layers);
    } else {
        for part in spec.split(',') {
            let part = part.trim();
            let number = |s: &str| -> Result<usize> {
                s.trim()
                    .parse()
                    .map_err(|_| bad(format!("{s:?} is not a layer number")))
            };
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None => (number(part)?, number(part)?),
            };
            if lo > hi {
                return Err(bad(format!("range {part} is reversed")));
            }
            if hi >= num_layers {
                // The first missing one: in 6-7 of a 6-layer model, layer 6.
                let missing = lo.max(num_layers);
                return Err(bad(format!("layer {missing} does not exist")));
            }
            layers.extend(lo..=hi);
        }
        layers.sort_unstable();
        layers.dedup();
    }
    Ok(layers)
}

/// The layers of `method`'s prompt for `--prefix-layers spec`: parsed for
/// P-Tuning v2; none for prompt tuning, whose prompt is in front of the
/// input (any spec but the default `all` is an error there).
pub fn method_layers(method: PromptMethod, spec: &str, num_layers: usize) -> Result<Vec<usize>> {
    match method {
        PromptMethod::PTuningV2 => parse_layers(spec, num_layers),
        PromptMethod::PromptTuning if spec.trim().eq_ignore_ascii_case("all") => Ok(Vec::new()),
        PromptMethod::PromptTuning => Err(Error::InvalidArgument(format!(
            "--prefix-layers {spec} does not apply to --method prompt-tuning: its prompt is in front of the input"
        ))),
    }
}

/// Linear(h_in → h_out) of the reparameterization, trainable.
#[derive(Clone, Debug)]
pub struct PrefixLinear {
    /// [out, in]
    pub weight: Param,
    /// [out]
    pub bias: Param,
}

impl PrefixLinear {
    fn new(name: &str, in_features: usize, out_features: usize, rng: &mut Rng) -> Self {
        let mut w = vec![0.0; out_features * in_features];
        rng.fill_normal(&mut w, INIT_STD);
        PrefixLinear {
            weight: Param::new(
                format!("{name}.weight"),
                &[out_features, in_features],
                w,
                true,
            ),
            bias: Param::new(
                format!("{name}.bias"),
                &[out_features],
                vec![0.0; out_features],
                false,
            ),
        }
    }

    fn out_features(&self) -> usize {
        self.weight.shape[0]
    }

    fn in_features(&self) -> usize {
        self.weight.shape[1]
    }
}

#[derive(Clone, Debug)]
pub struct PrefixEncoder {
    pub config: PrefixConfig,
    /// H of the backbone.
    pub hidden: usize,
    /// [P, Ls*2*H] for the plain table, [P, H] when reparameterized.
    pub embedding: Param,
    /// (trans.0, trans.2) of the reparameterization.
    pub trans: Option<(PrefixLinear, PrefixLinear)>,
}

/// What the backward of the reparameterization needs from its forward.
#[derive(Clone, Debug, Default)]
pub struct PrefixForward {
    /// [P, Ls*2*H]
    pub past: Vec<f32>,
    /// [P, h]: tanh(trans.0(embedding)), empty for the plain table.
    hidden_act: Vec<f32>,
}

/// The per-batch prompt the encoder consumes. P-Tuning v2: for each prefixed
/// layer a [B, P, 2H] buffer of keys (cols [0,H)) and values ([H,2H)).
/// Prompt tuning: one [B, P, H] buffer of input embeddings, `layers` empty.
/// Rows differ only by the prefix dropout (or, when serving, by adapter).
#[derive(Clone, Debug)]
pub struct BatchPrompt {
    pub method: PromptMethod,
    pub len: usize,
    pub layers: Vec<usize>,
    pub kv: Vec<Vec<f32>>,
}

impl BatchPrompt {
    /// Prefix keys and values of layer `layer`, if it has a prefix.
    pub fn layer(&self, layer: usize) -> Option<&[f32]> {
        self.layers
            .iter()
            .position(|&l| l == layer)
            .map(|k| self.kv[k].as_slice())
    }

    /// The lowest layer the backward must reach: prompt tuning's gradient
    /// flows down through every layer to the embeddings.
    pub fn lowest_layer(&self) -> Option<usize> {
        match self.method {
            PromptMethod::PTuningV2 => self.layers.first().copied(),
            PromptMethod::PromptTuning => Some(0),
        }
    }

    /// Prompt tuning's input embeddings [B, P, H], None for a deep prompt.
    pub fn input(&self) -> Option<&[f32]> {
        match self.method {
            PromptMethod::PTuningV2 => None,
            PromptMethod::PromptTuning => self.kv.first().map(Vec::as_slice),
        }
    }
}

impl PrefixEncoder {
    /// A freshly initialised encoder: weights ~ N(0, INIT_STD²), biases 0.
    pub fn new(config: PrefixConfig, hidden: usize, num_layers: usize, seed: u64) -> Result<Self> {
        config.validate(num_layers)?;
        let mut rng = Rng::new(seed);
        let width = config.width(hidden);
        let p = config.len;
        let (embedding, trans) = if config.projection {
            let mut e = vec![0.0; p * hidden];
            rng.fill_normal(&mut e, INIT_STD);
            let t0 = PrefixLinear::new("prefix.trans.0", hidden, config.hidden_size, &mut rng);
            let t2 = PrefixLinear::new("prefix.trans.2", config.hidden_size, width, &mut rng);
            (
                Param::new("prefix.embedding", &[p, hidden], e, true),
                Some((t0, t2)),
            )
        } else {
            let mut e = vec![0.0; p * width];
            rng.fill_normal(&mut e, INIT_STD);
            (Param::new("prefix.embedding", &[p, width], e, true), None)
        };
        Ok(PrefixEncoder {
            config,
            hidden,
            embedding,
            trans,
        })
    }

    /// Sets prompt tuning's plain table [P, H] as `init` says, from the
    /// word embeddings `word` [V, H]; `text_ids` are the tokens of a text
    /// start (the tokenizer's, special tokens included). A deep or
    /// reparameterized prompt keeps its N(0, INIT_STD²) start.
    pub fn init_prompt(&mut self, init: &PromptInit, word: &[f32], text_ids: &[u32], seed: u64) {
        if self.config.method != PromptMethod::PromptTuning || self.trans.is_some() {
            return;
        }
        let h = self.hidden;
        let mut rng = Rng::new(seed);
        let rows = self.embedding.value.chunks_mut(h);
        match init {
            PromptInit::Vocab => {
                let vocab = word.len() / h;
                for row in rows {
                    row.copy_from_slice(&word[rng.below(vocab) * h..][..h]);
                }
            }
            PromptInit::Random => rng.fill_normal(&mut self.embedding.value, 1.0),
            // PEFT: ids cut to P, or repeated whole until they cover P, then cut.
            PromptInit::Text(_) => {
                for (row, &id) in rows.zip(text_ids.iter().cycle()) {
                    row.copy_from_slice(&word[id as usize * h..][..h]);
                }
            }
        }
    }

    /// The width of the table: Ls*2*H, or H for prompt tuning.
    pub fn width(&self) -> usize {
        self.config.width(self.hidden)
    }

    pub fn params(&self) -> Vec<&Param> {
        let mut out = vec![&self.embedding];
        if let Some((t0, t2)) = &self.trans {
            out.extend([&t0.weight, &t0.bias, &t2.weight, &t2.bias]);
        }
        out
    }

    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut out = vec![&mut self.embedding];
        if let Some((t0, t2)) = &mut self.trans {
            out.extend([&mut t0.weight, &mut t0.bias, &mut t2.weight, &mut t2.bias]);
        }
        out
    }

    /// The table [P, Ls*2*H] for inference: a copy of a plain table, or the
    /// MLP's output. Shared and immutable, so that a GPU that holds a copy
    /// knows the table again by its `Arc` alone (an evaluation sends its
    /// table once, not once a batch, and never compares its values).
    pub fn table(&self) -> Arc<[f32]> {
        match self.trans {
            None => Arc::from(self.embedding.value.as_slice()),
            Some(_) => Arc::from(self.forward().past),
        }
    }

    /// The table `past` [P, Ls*2*H].
    pub fn forward(&self) -> PrefixForward {
        let p = self.config.len;
        match &self.trans {
            None => PrefixForward {
                past: self.embedding.value.clone(),
                hidden_act: Vec::new(),
            },
            Some((t0, t2)) => {
                // [P, H] → [P, h] → tanh → [P, Ls*2H]
                let h = t0.out_features();
                let mut hidden_act = vec![0.0; p * h];
                linear_forward(
                    &self.embedding.value,
                    &t0.weight.value,
                    Some(&t0.bias.value),
                    p,
                    h,
                    t0.in_features(),
                    &mut hidden_act,
                );
                hidden_act.iter_mut().for_each(|x| *x = x.tanh());
                let mut past = vec![0.0; p * self.width()];
                linear_forward(
                    &hidden_act,
                    &t2.weight.value,
                    Some(&t2.bias.value),
                    p,
                    t2.out_features(),
                    h,
                    &mut past,
                );
                PrefixForward { past, hidden_act }
            }
        }
    }

    /// Accumulates parameter gradients from d_past [P, Ls*2*H].
    pub fn backward(&mut self, forward: &PrefixForward, d_past: &[f32]) {
        let p = self.config.len;
        let width = self.width();
        match &mut self.trans {
            None => {
                for (g, d) in self.embedding.grad.iter_mut().zip(d_past) {
                    *g += d;
                }
            }
            Some((t0, t2)) => {
                let h = t0.out_features();
                linear_backward_params(
                    &forward.hidden_act,
                    d_past,
                    p,
                    width,
                    h,
                    &mut t2.weight.grad,
                    Some(&mut t2.bias.grad),
                );
                let mut d_hidden = vec![0.0; p * h];
                linear_backward_input(d_past, &t2.weight.value, p, width, h, &mut d_hidden, false);
                // tanh' = 1 - tanh²
                for (d, a) in d_hidden.iter_mut().zip(&forward.hidden_act) {
                    *d *= 1.0 - a * a;
                }
                linear_backward_params(
                    &self.embedding.value,
                    &d_hidden,
                    p,
                    h,
                    self.hidden,
                    &mut t0.weight.grad,
                    Some(&mut t0.bias.grad),
                );
                linear_backward_input(
                    &d_hidden,
                    &t0.weight.value,
                    p,
                    h,
                    self.hidden,
                    &mut self.embedding.grad,
                    true,
                );
            }
        }
    }

    /// The reparameterization folded into a plain table: same past, no MLP.
    pub fn fold(&self) -> PrefixEncoder {
        let past = self.forward().past;
        PrefixEncoder {
            config: PrefixConfig {
                projection: false,
                ..self.config.clone()
            },
            hidden: self.hidden,
            embedding: Param::new(
                "prefix.embedding",
                &[self.config.len, self.width()],
                past,
                true,
            ),
            trans: None,
        }
    }

    /// Splits `past` into blocks (a layer's keys and values, or prompt
    /// tuning's input embeddings) and repeats it over the batch, with the
    /// prefix dropout (index = flat position in [B, P, width]) in training.
    pub fn expand(&self, past: &[f32], batch: usize, dropout: Option<&Dropout>) -> BatchPrompt {
        let p = self.config.len;
        let width = self.width();
        let block = self.config.method.block(self.hidden);
        let kv = (0..width / block)
            .map(|k| {
                let mut buf = vec![0.0; batch * p * block];
                for (b, rows) in buf.chunks_mut(p * block).enumerate() {
                    for (i, row) in rows.chunks_mut(block).enumerate() {
                        row.copy_from_slice(&past[i * width + k * block..][..block]);
                        if let Some(d) = dropout {
                            d.apply(row, ((b * p + i) * width + k * block) as u64);
                        }
                    }
                }
                buf
            })
            .collect();
        BatchPrompt {
            method: self.config.method,
            len: p,
            layers: self.config.layers.clone(),
            kv,
        }
    }

    /// The backward of `expand`: sums the per-row gradients [B, P, block] of
    /// each block into d_past [P, width], through the same dropout mask.
    pub fn reduce(
        &self,
        d_kv: &mut [Vec<f32>],
        batch: usize,
        dropout: Option<&Dropout>,
    ) -> Vec<f32> {
        let p = self.config.len;
        let width = self.width();
        let block = self.config.method.block(self.hidden);
        let mut d_past = vec![0.0; p * width];
        for (k, d) in d_kv.iter_mut().enumerate() {
            for (b, rows) in d.chunks_mut(p * block).enumerate().take(batch) {
                for (i, row) in rows.chunks_mut(block).enumerate() {
                    if let Some(drop) = dropout {
                        drop.apply(row, ((b * p + i) * width + k * block) as u64);
                    }
                    for (acc, g) in d_past[i * width + k * block..][..block]
                        .iter_mut()
                        .zip(row.iter())
                    {
                        *acc += g;
                    }
                }
            }
        }
        d_past
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_init_reads_as_it_writes() {
        for text in ["vocab", "random", "text:Is it entailed? yes: no"] {
            let init: PromptInit = text.parse().unwrap();
            assert_eq!(init.to_string(), text);
            let json = serde_json::to_value(&init).unwrap();
            assert_eq!(json, serde_json::json!(text));
            assert_eq!(serde_json::from_value::<PromptInit>(json).unwrap(), init);
            let text = match &init {
                PromptInit::Text(t) => Some(t.as_str()),
                _ => None,
            };
            assert_eq!(
                PromptInit::from_peft(init.peft_name(), text),
                Some(init.clone())
            );
        }
        assert_eq!(PromptInit::from_peft("TEXT", None), None);
        assert_eq!(
            "text:a b".parse::<PromptInit>().unwrap(),
            PromptInit::Text("a b".into())
        );
        assert!("text: "
            .parse::<PromptInit>()
            .unwrap_err()
            .contains("needs the text"));
        assert!("zeros"
            .parse::<PromptInit>()
            .unwrap_err()
            .contains("vocab, random or text:TEXT"));
    }

    #[test]
    fn a_text_start_repeats_or_cuts_its_tokens() {
        let config = PrefixConfig {
            method: PromptMethod::PromptTuning,
            len: 5,
            projection: false,
            hidden_size: 8,
            layers: Vec::new(),
        };
        // Word i's embedding is [i, i].
        let word: Vec<f32> = (0..10).flat_map(|i| [i as f32; 2]).collect();
        let mut prefix = PrefixEncoder::new(config, 2, 1, 1).unwrap();
        let text = PromptInit::Text("x".into());
        prefix.init_prompt(&text, &word, &[3, 7], 1);
        assert_eq!(
            prefix.embedding.value,
            [3., 3., 7., 7., 3., 3., 7., 7., 3., 3.]
        );
        prefix.init_prompt(&text, &word, &[1, 2, 3, 4, 5, 6, 7], 1);
        assert_eq!(
            prefix.embedding.value,
            [1., 1., 2., 2., 3., 3., 4., 4., 5., 5.]
        );
        // N(0, 1), not the deep prompt's N(0, 0.02²).
        prefix.init_prompt(&PromptInit::Random, &word, &[], 1);
        let var = prefix.embedding.value.iter().map(|x| x * x).sum::<f32>() / 10.0;
        assert!(var > 0.1, "{var}");
    }

    #[test]
    fn layer_selections() {
        assert_eq!(parse_layers("all", 4).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_layers("1-2", 4).unwrap(), vec![1, 2]);
        assert_eq!(parse_layers("3,0-1", 4).unwrap(), vec![0, 1, 3]);
        assert_eq!(parse_layers("top:2", 6).unwrap(), vec![4, 5]);
        assert_eq!(parse_layers("top3", 6).unwrap(), vec![3, 4, 5]);
        for (spec, msg) in [
            ("6", "layer 6 does not exist"),
            ("6-7", "layer 6 does not exist"),
            ("4-9", "layer 6 does not exist"),
            ("3-1", "reversed"),
            ("top:0", "not between 1 and 6"),
            ("x", "not a layer number"),
        ] {
            let err = parse_layers(spec, 6).unwrap_err().to_string();
            assert!(err.contains(msg), "{spec}: {err}");
        }
    }
}
