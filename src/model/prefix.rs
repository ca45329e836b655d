//! The deep prompt: P trainable key and value vectors for each prefixed layer.
//!
//! The prefix encoder yields the table `past` [P, Ls*2*H] (Ls = prefixed layers),
//! laid out as the official code's `view(B, P, 2L, NH, HD)`: for the k-th
//! prefixed layer, columns [2kH, 2kH+H) are keys and [2kH+H, 2kH+2H) values.
//! Either the table is the parameter itself, or it is reparameterized as
//! Embedding(P, H) → Linear(H, h) → tanh → Linear(h, Ls*2*H), which folds back
//! into a plain table for export.

use std::borrow::Cow;

use crate::engine::cpu::dropout::Dropout;
use crate::engine::cpu::gemm::{linear_backward_input, linear_backward_params, linear_forward};
use crate::error::{Error, Result};
use crate::model::param::Param;
use crate::rng::Rng;

/// Standard deviation of the initial prefix parameters. The official code builds
/// the prefix encoder inside a model loaded with HF's from_pretrained, which
/// initialises every missing weight as `_init_weights` does: N(0, 0.02) for
/// embeddings and linear weights, zero biases.
pub const INIT_STD: f64 = 0.02;

/// Dropout stream of the prefix (layers use 0..3L+1; see encoder.rs).
pub const PREFIX_DROPOUT_STREAM: u64 = 1 << 32;

#[derive(Clone, Debug, PartialEq)]
pub struct PrefixConfig {
    /// P, the number of virtual tokens.
    pub len: usize,
    /// Reparameterize through an MLP (official `--prefix_projection`).
    pub projection: bool,
    /// h, the MLP's hidden width.
    pub hidden_size: usize,
    /// Layers that get a prefix, ascending.
    pub layers: Vec<usize>,
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
                return Err(bad(format!("layer {hi} does not exist")));
            }
            layers.extend(lo..=hi);
        }
        layers.sort_unstable();
        layers.dedup();
    }
    Ok(layers)
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

/// The per-batch prefix keys and values the encoder consumes: for each prefixed
/// layer a [B, P, 2H] buffer (keys cols [0,H), values [H,2H)). They differ per
/// batch row only by the prefix dropout.
#[derive(Clone, Debug)]
pub struct DeepPrompt {
    pub len: usize,
    pub layers: Vec<usize>,
    pub kv: Vec<Vec<f32>>,
}

impl DeepPrompt {
    /// Prefix keys and values of layer `layer`, if it has a prefix.
    pub fn layer(&self, layer: usize) -> Option<&[f32]> {
        self.layers
            .iter()
            .position(|&l| l == layer)
            .map(|k| self.kv[k].as_slice())
    }

    pub fn lowest_layer(&self) -> Option<usize> {
        self.layers.first().copied()
    }
}

impl PrefixEncoder {
    /// A freshly initialised encoder: weights ~ N(0, INIT_STD²), biases 0.
    pub fn new(config: PrefixConfig, hidden: usize, num_layers: usize, seed: u64) -> Result<Self> {
        if config.len == 0 {
            return Err(Error::InvalidArgument(
                "--prefix-len must be at least 1".into(),
            ));
        }
        if config.layers.is_empty() {
            return Err(Error::InvalidArgument(
                "the prefix needs at least one layer".into(),
            ));
        }
        if let Some(&l) = config.layers.iter().find(|&&l| l >= num_layers) {
            return Err(Error::InvalidArgument(format!(
                "prefix layer {l} does not exist in a model of {num_layers} layers"
            )));
        }
        if config.projection && config.hidden_size == 0 {
            return Err(Error::InvalidArgument(
                "--prefix-hidden-size must be at least 1".into(),
            ));
        }
        let mut rng = Rng::new(seed);
        let width = config.layers.len() * 2 * hidden;
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

    /// Ls*2*H: the width of the table.
    pub fn width(&self) -> usize {
        self.config.layers.len() * 2 * self.hidden
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

    /// The table [P, Ls*2*H] for inference: a plain table itself, without
    /// a copy, or the MLP's output.
    pub fn table(&self) -> Cow<'_, [f32]> {
        match self.trans {
            None => Cow::Borrowed(&self.embedding.value),
            Some(_) => Cow::Owned(self.forward().past),
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

    /// Splits `past` per layer and repeats it over the batch, with the prefix
    /// dropout (index = flat position in [B, P, Ls*2H]) in training.
    pub fn expand(&self, past: &[f32], batch: usize, dropout: Option<&Dropout>) -> DeepPrompt {
        let p = self.config.len;
        let width = self.width();
        let two_h = 2 * self.hidden;
        let kv = (0..self.config.layers.len())
            .map(|k| {
                let mut buf = vec![0.0; batch * p * two_h];
                for (b, rows) in buf.chunks_mut(p * two_h).enumerate() {
                    for (i, row) in rows.chunks_mut(two_h).enumerate() {
                        row.copy_from_slice(&past[i * width + k * two_h..][..two_h]);
                        if let Some(d) = dropout {
                            d.apply(row, ((b * p + i) * width + k * two_h) as u64);
                        }
                    }
                }
                buf
            })
            .collect();
        DeepPrompt {
            len: p,
            layers: self.config.layers.clone(),
            kv,
        }
    }

    /// The backward of `expand`: sums the per-row gradients [B, P, 2H] of each
    /// layer into d_past [P, Ls*2H], through the same dropout mask.
    pub fn reduce(
        &self,
        d_kv: &mut [Vec<f32>],
        batch: usize,
        dropout: Option<&Dropout>,
    ) -> Vec<f32> {
        let p = self.config.len;
        let width = self.width();
        let two_h = 2 * self.hidden;
        let mut d_past = vec![0.0; p * width];
        for (k, d) in d_kv.iter_mut().enumerate() {
            for (b, rows) in d.chunks_mut(p * two_h).enumerate().take(batch) {
                for (i, row) in rows.chunks_mut(two_h).enumerate() {
                    if let Some(drop) = dropout {
                        drop.apply(row, ((b * p + i) * width + k * two_h) as u64);
                    }
                    for (acc, g) in d_past[i * width + k * two_h..][..two_h]
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
    fn layer_selections() {
        assert_eq!(parse_layers("all", 4).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_layers("1-2", 4).unwrap(), vec![1, 2]);
        assert_eq!(parse_layers("3,0-1", 4).unwrap(), vec![0, 1, 3]);
        assert_eq!(parse_layers("top:2", 6).unwrap(), vec![4, 5]);
        assert_eq!(parse_layers("top3", 6).unwrap(), vec![3, 4, 5]);
        for (spec, msg) in [
            ("6", "layer 6 does not exist"),
            ("3-1", "reversed"),
            ("top:0", "not between 1 and 6"),
            ("x", "not a layer number"),
        ] {
            let err = parse_layers(spec, 6).unwrap_err().to_string();
            assert!(err.contains(msg), "{spec}: {err}");
        }
    }
}
