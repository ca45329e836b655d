//! The encoder's forward and backward with a deep prompt.
//!
//! Forward of one layer (rows = B*T, H hidden, I intermediate, P prefix):
//!
//! ```text
//! x [rows,H] ─ qkv = x·Wqkvᵀ+b [rows,3H] ─ attention(qkv, prefix_kv[B,P,2H], mask) → ctx [rows,H]
//!   ln1_in = dropout(ctx·Woᵀ + bo) + x          x1 = LN1(ln1_in)
//!   inter_pre = x1·W1ᵀ + b1 [rows,I]            inter = gelu(inter_pre)
//!   ln2_in = dropout(inter·W2ᵀ + b2) + x1       x  = LN2(ln2_in)   (next layer's input)
//! ```
//!
//! Training keeps, per layer from the lowest prefixed one up, exactly what the
//! activation-gradient backward reads: qkv, probs, ln1_in and its stats,
//! inter_pre, ln2_in and its stats. Nothing is kept for weight gradients: the
//! backbone is frozen. Layers below the lowest prefix run the inference path.
//! The backward stops at the lowest prefixed layer, where it has the prefix
//! gradients and nothing below needs any.
//!
//! Prompt tuning (the shallow baseline) has no prefix in any layer: its P
//! embeddings take the place of word embeddings in P rows in front of each
//! sequence, so the layers see B sequences of P+T rows ([`BertModel::layer_batch`])
//! and the backward runs through every layer and the embeddings' LayerNorm
//! down to those rows.

use std::borrow::Cow;

use crate::engine::cpu::attention::{attention_backward, attention_forward, AttentionShape};
use crate::engine::cpu::dropout::Dropout;
use crate::engine::cpu::embedding::embedding_forward;
use crate::engine::cpu::gelu::{bias_gelu_forward, gelu_backward};
use crate::engine::cpu::gemm::{linear_backward_input, linear_forward};
use crate::engine::cpu::layernorm::{bias_dropout_residual, layernorm_backward, layernorm_forward};
use crate::error::Result;
use crate::model::batch::Batch;
use crate::model::bert::{BertLayer, BertModel};
use crate::model::prefix::BatchPrompt;

/// Dropout probabilities and the seed of this step. Streams: embeddings 0,
/// layer l's attention probabilities 3l+1, attention output 3l+2, FFN output 3l+3.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutConfig {
    pub hidden: f32,
    pub attention: f32,
    pub seed: u64,
}

impl DropoutConfig {
    pub const OFF: DropoutConfig = DropoutConfig {
        hidden: 0.0,
        attention: 0.0,
        seed: 0,
    };

    /// The site's dropout, or None when its probability is 0.
    pub fn site(&self, p: f32, stream: u64) -> Option<Dropout> {
        (p > 0.0).then_some(Dropout {
            p,
            seed: self.seed,
            stream,
        })
    }

    pub fn embeddings(&self) -> Option<Dropout> {
        self.site(self.hidden, 0)
    }

    pub fn attention_probs(&self, layer: usize) -> Option<Dropout> {
        self.site(self.attention, 3 * layer as u64 + 1)
    }

    pub fn attention_output(&self, layer: usize) -> Option<Dropout> {
        self.site(self.hidden, 3 * layer as u64 + 2)
    }

    pub fn ffn_output(&self, layer: usize) -> Option<Dropout> {
        self.site(self.hidden, 3 * layer as u64 + 3)
    }
}

/// What one layer's backward reads, saved by the training forward.
#[derive(Default, Debug)]
struct SavedLayer {
    /// [rows, 3H]
    qkv: Vec<f32>,
    /// [B, NH, T, P+T], before attention dropout
    probs: Vec<f32>,
    /// [rows, H] and per-row (mean, rstd) [rows, 2]
    ln1_in: Vec<f32>,
    ln1_stats: Vec<f32>,
    /// [rows, I], pre-GELU
    inter_pre: Vec<f32>,
    /// [rows, H] and [rows, 2]
    ln2_in: Vec<f32>,
    ln2_stats: Vec<f32>,
}

/// Buffers of a forward pass that are not saved: reused layer after layer.
#[derive(Default, Debug)]
struct Scratch {
    /// [rows, H]
    x1: Vec<f32>,
    ctx: Vec<f32>,
    /// [rows, I]
    inter: Vec<f32>,
    /// Layer buffers for layers that save nothing (inference, or below the prefix).
    layer: SavedLayer,
}

/// Gradient buffers of the backward, reused from step to step.
#[derive(Default, Debug)]
struct GradBuffers {
    /// [rows, H]
    d_h: Vec<f32>,
    tmp: Vec<f32>,
    d_ctx: Vec<f32>,
    /// [rows, I]
    d_inter: Vec<f32>,
    /// [rows, 3H]
    d_qkv: Vec<f32>,
}

/// Everything a training step allocates, kept between steps so that a step
/// allocates nothing once shapes have been seen.
#[derive(Default, Debug)]
pub struct Activations {
    saved: Vec<SavedLayer>,
    scratch: Scratch,
    grads: GradBuffers,
    positions: Vec<u32>,
    /// Prompt tuning: the embeddings' LayerNorm input [rows, H] and its
    /// per-row (mean, rstd) [rows, 2], which the backward reaches.
    embed_in: Vec<f32>,
    embed_stats: Vec<f32>,
    /// [rows, H]: the encoder's output, the head's input.
    pub hidden: Vec<f32>,
}

/// Resizes without keeping contents (every kernel overwrites its output).
fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.resize(n, 0.0);
    &mut v[..n]
}

/// Sizes the buffers of `layer` for this batch (probs only when saved).
fn size_layer(layer: &mut SavedLayer, rows: usize, h: usize, i: usize, probs: usize) {
    sized(&mut layer.qkv, rows * 3 * h);
    sized(&mut layer.probs, probs);
    sized(&mut layer.ln1_in, rows * h);
    sized(&mut layer.ln1_stats, rows * 2);
    sized(&mut layer.inter_pre, rows * i);
    sized(&mut layer.ln2_in, rows * h);
    sized(&mut layer.ln2_stats, rows * 2);
}

impl BertModel {
    fn attention_shape(&self, batch: &Batch, prefix: usize) -> AttentionShape {
        AttentionShape {
            batch: batch.batch,
            seq: batch.seq,
            prefix,
            heads: self.config.num_attention_heads,
            head_dim: self.config.head_dim(),
        }
    }

    /// The batch the layers see: `batch` itself, or under prompt tuning its
    /// sequences with the prompt's P rows in front ([B, P+T]).
    pub fn layer_batch<'a>(
        &self,
        batch: &'a Batch,
        prompt: Option<&BatchPrompt>,
    ) -> Cow<'a, Batch> {
        let rows = prompt.map_or(0, |p| p.method.rows_in_front(p.len));
        batch.with_prompt_rows(rows, self.config.pad_token_id as u32)
    }

    /// Position ids of the layer batch's rows: real tokens shifted by P (as
    /// HF does with past_key_values), under prompt tuning every row in order.
    fn positions(&self, batch: &Batch, prompt: Option<&BatchPrompt>) -> Vec<u32> {
        match prompt {
            Some(p) => batch.layer_position_ids(&self.config, p.method, p.len),
            None => batch.position_ids(&self.config, 0),
        }
    }

    /// Embeddings into `x` [rows, H]: gather, LayerNorm, dropout. Under
    /// prompt tuning, `input` [B, P, H] is summed with position and token
    /// type 0 in the first P rows of each sequence, in place of a word's
    /// embedding. `sum` gets the LayerNorm's input and `stats` its per-row
    /// (mean, rstd) when given (the backward to the prompt reads both).
    #[allow(clippy::too_many_arguments)]
    fn embed(
        &self,
        batch: &Batch,
        positions: &[u32],
        input: Option<&[f32]>,
        dropout: &DropoutConfig,
        sum: &mut Vec<f32>,
        x: &mut [f32],
        stats: Option<&mut [f32]>,
    ) {
        let e = &self.embeddings;
        let h = self.config.hidden_size;
        let sum = sized(sum, x.len());
        embedding_forward(
            &batch.input_ids,
            positions,
            &batch.token_type_ids,
            &e.word_embeddings,
            &e.position_embeddings,
            &e.token_type_embeddings,
            sum,
        );
        if let Some(input) = input {
            let p = input.len() / (batch.batch * h);
            for (b, prompt) in input.chunks(p * h).enumerate() {
                for (i, prompt) in prompt.chunks(h).enumerate() {
                    let r = b * batch.seq + i;
                    let position = &e.position_embeddings[positions[r] as usize * h..][..h];
                    let token_type = &e.token_type_embeddings[..h];
                    for (((o, w), p), t) in sum[r * h..][..h]
                        .iter_mut()
                        .zip(prompt)
                        .zip(position)
                        .zip(token_type)
                    {
                        *o = w + p + t;
                    }
                }
            }
        }
        layernorm_forward(
            sum,
            &e.layer_norm.weight,
            &e.layer_norm.bias,
            e.layer_norm.eps,
            x,
            stats,
        );
        if let Some(d) = dropout.embeddings() {
            d.apply(x, 0);
        }
    }

    /// One layer, `x` [rows, H] in and out. Saves into `saved` what the
    /// backward reads when `train` (probs and LayerNorm stats included).
    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        index: usize,
        layer: &BertLayer,
        batch: &Batch,
        prompt: Option<&BatchPrompt>,
        dropout: &DropoutConfig,
        x: &mut [f32],
        saved: &mut SavedLayer,
        scratch: &mut Scratch,
        train: bool,
    ) {
        let rows = batch.rows();
        let h = self.config.hidden_size;
        let inter = self.config.intermediate_size;
        let prefix_kv = prompt.and_then(|p| p.layer(index)).unwrap_or(&[]);
        let p = if prefix_kv.is_empty() {
            0
        } else {
            prompt.map_or(0, |p| p.len)
        };
        let shape = self.attention_shape(batch, p);
        let probs_len = if train {
            batch.batch * shape.heads * batch.seq * (p + batch.seq)
        } else {
            0
        };
        size_layer(saved, rows, h, inter, probs_len);
        let x1 = sized(&mut scratch.x1, rows * h);
        let ctx = sized(&mut scratch.ctx, rows * h);
        let act = sized(&mut scratch.inter, rows * inter);

        let att = &layer.attention;
        linear_forward(
            x,
            &att.self_attention.qkv.weight,
            Some(&att.self_attention.qkv.bias),
            rows,
            3 * h,
            h,
            &mut saved.qkv,
        );
        let probs = train.then_some(&mut saved.probs[..]);
        attention_forward(
            shape,
            &saved.qkv,
            prefix_kv,
            &batch.attention_mask,
            dropout.attention_probs(index).as_ref(),
            probs,
            ctx,
        );

        linear_forward(
            ctx,
            &att.output.dense.weight,
            None,
            rows,
            h,
            h,
            &mut saved.ln1_in,
        );
        bias_dropout_residual(
            &mut saved.ln1_in,
            &att.output.dense.bias,
            dropout.attention_output(index).as_ref(),
            x,
        );
        let ln = &att.output.layer_norm;
        layernorm_forward(
            &saved.ln1_in,
            &ln.weight,
            &ln.bias,
            ln.eps,
            x1,
            train.then_some(&mut saved.ln1_stats[..]),
        );

        let dense = &layer.intermediate.dense;
        linear_forward(
            x1,
            &dense.weight,
            None,
            rows,
            inter,
            h,
            &mut saved.inter_pre,
        );
        bias_gelu_forward(&mut saved.inter_pre, &dense.bias, act);

        let out = &layer.output;
        linear_forward(
            act,
            &out.dense.weight,
            None,
            rows,
            h,
            inter,
            &mut saved.ln2_in,
        );
        bias_dropout_residual(
            &mut saved.ln2_in,
            &out.dense.bias,
            dropout.ffn_output(index).as_ref(),
            x1,
        );
        layernorm_forward(
            &saved.ln2_in,
            &out.layer_norm.weight,
            &out.layer_norm.bias,
            out.layer_norm.eps,
            x,
            train.then_some(&mut saved.ln2_stats[..]),
        );
    }

    /// Inference: the hidden states after the embeddings (index 0) and after each
    /// layer (index l+1) are passed to `observe`; nothing is kept. Returns the
    /// last hidden state [rows, H] of the layer batch (under prompt tuning
    /// [B·(P+T), H], the prompt's rows first).
    pub fn forward_observed(
        &self,
        batch: &Batch,
        prompt: Option<&BatchPrompt>,
        mut observe: impl FnMut(usize, &[f32]),
    ) -> Result<Vec<f32>> {
        let prefix_len = prompt.map_or(0, |p| p.len);
        batch.validate(&self.config, prefix_len)?;
        let positions = self.positions(batch, prompt);
        let batch = self.layer_batch(batch, prompt);
        let mut x = vec![0.0; batch.rows() * self.config.hidden_size];
        let mut scratch = Scratch::default();
        let mut sum = Vec::new();
        let input = prompt.and_then(BatchPrompt::input);
        self.embed(
            &batch,
            &positions,
            input,
            &DropoutConfig::OFF,
            &mut sum,
            &mut x,
            None,
        );
        observe(0, &x);
        let mut layer_buffers = SavedLayer::default();
        for (l, layer) in self.layers.iter().enumerate() {
            self.layer_forward(
                l,
                layer,
                &batch,
                prompt,
                &DropoutConfig::OFF,
                &mut x,
                &mut layer_buffers,
                &mut scratch,
                false,
            );
            observe(l + 1, &x);
        }
        Ok(x)
    }

    /// Inference forward: the last hidden state [rows, H] (see
    /// [`BertModel::forward_observed`]).
    pub fn forward(&self, batch: &Batch, prompt: Option<&BatchPrompt>) -> Result<Vec<f32>> {
        self.forward_observed(batch, prompt, |_, _| {})
    }

    /// Training forward: `acts.hidden` [rows, H] gets the output (rows of the
    /// layer batch), and `acts` keeps what `backward` needs for every layer
    /// from the lowest prefixed one (under prompt tuning, from the embeddings).
    pub fn forward_train(
        &self,
        batch: &Batch,
        prompt: &BatchPrompt,
        dropout: &DropoutConfig,
        acts: &mut Activations,
    ) -> Result<()> {
        batch.validate(&self.config, prompt.len)?;
        let lowest = prompt.lowest_layer().unwrap_or(self.layers.len());
        acts.positions = self.positions(batch, Some(prompt));
        let batch = self.layer_batch(batch, Some(prompt));
        let rows = batch.rows();
        let h = self.config.hidden_size;
        acts.saved
            .resize_with(self.layers.len() - lowest, SavedLayer::default);
        let Activations {
            saved,
            scratch,
            grads,
            positions,
            embed_in,
            embed_stats,
            hidden,
        } = acts;
        let x = sized(hidden, rows * h);
        match prompt.input() {
            Some(input) => {
                let stats = sized(embed_stats, rows * 2);
                self.embed(
                    &batch,
                    positions,
                    Some(input),
                    dropout,
                    embed_in,
                    x,
                    Some(stats),
                );
            }
            None => self.embed(&batch, positions, None, dropout, &mut grads.tmp, x, None),
        }
        for (l, layer) in self.layers.iter().enumerate() {
            if l < lowest {
                // Below every prefix: no gradient flows here, keep nothing.
                let mut buffers = std::mem::take(&mut scratch.layer);
                self.layer_forward(
                    l,
                    layer,
                    &batch,
                    Some(prompt),
                    dropout,
                    x,
                    &mut buffers,
                    scratch,
                    false,
                );
                scratch.layer = buffers;
            } else {
                self.layer_forward(
                    l,
                    layer,
                    &batch,
                    Some(prompt),
                    dropout,
                    x,
                    &mut saved[l - lowest],
                    scratch,
                    true,
                );
            }
        }
        Ok(())
    }

    /// Backward from d_hidden [rows, H] (consumed; rows of the layer batch)
    /// down to the lowest prefixed layer. Returns, per prefixed layer,
    /// d(prefix_kv) [B, P, 2H]; under prompt tuning, d(input) [B, P, H]
    /// alone, from the embeddings' LayerNorm.
    pub fn backward(
        &self,
        batch: &Batch,
        prompt: &BatchPrompt,
        dropout: &DropoutConfig,
        acts: &mut Activations,
        d_hidden: &mut [f32],
    ) -> Vec<Vec<f32>> {
        let lowest = prompt.lowest_layer().unwrap_or(self.layers.len());
        let batch = self.layer_batch(batch, Some(prompt));
        let rows = batch.rows();
        let h = self.config.hidden_size;
        let inter = self.config.intermediate_size;
        let mut d_prompt: Vec<Vec<f32>> = prompt.kv.iter().map(|kv| vec![0.0; kv.len()]).collect();
        let g = &mut acts.grads;
        let d_h = sized(&mut g.d_h, rows * h);
        let tmp = sized(&mut g.tmp, rows * h);
        let d_ctx = sized(&mut g.d_ctx, rows * h);
        let d_inter = sized(&mut g.d_inter, rows * inter);
        let d_qkv = sized(&mut g.d_qkv, rows * 3 * h);
        // `grad` holds d(layer output) on the way down.
        let grad: &mut [f32] = d_hidden;

        for l in (lowest..self.layers.len()).rev() {
            let layer = &self.layers[l];
            let saved = &acts.saved[l - lowest];
            let prefix_kv = prompt.layer(l).unwrap_or(&[]);
            let p = if prefix_kv.is_empty() { 0 } else { prompt.len };

            // x = LN2(ln2_in), ln2_in = dropout(inter·W2ᵀ + b2) + x1
            let out = &layer.output;
            layernorm_backward(
                grad,
                &saved.ln2_in,
                &out.layer_norm.weight,
                &saved.ln2_stats,
                d_h,
            );
            tmp.copy_from_slice(d_h);
            if let Some(d) = dropout.ffn_output(l) {
                d.apply(tmp, 0);
            }
            linear_backward_input(tmp, &out.dense.weight, rows, h, inter, d_inter, false);
            gelu_backward(&saved.inter_pre, d_inter);
            // d x1 = residual + through W1
            linear_backward_input(
                d_inter,
                &layer.intermediate.dense.weight,
                rows,
                inter,
                h,
                d_h,
                true,
            );

            // x1 = LN1(ln1_in), ln1_in = dropout(ctx·Woᵀ + bo) + x
            let att = &layer.attention;
            layernorm_backward(
                d_h,
                &saved.ln1_in,
                &att.output.layer_norm.weight,
                &saved.ln1_stats,
                grad,
            );
            tmp.copy_from_slice(grad);
            if let Some(d) = dropout.attention_output(l) {
                d.apply(tmp, 0);
            }
            linear_backward_input(tmp, &att.output.dense.weight, rows, h, h, d_ctx, false);

            let shape = self.attention_shape(&batch, p);
            let d_prefix: &mut [f32] = match prompt.layers.iter().position(|&x| x == l) {
                Some(k) => &mut d_prompt[k],
                None => &mut [],
            };
            let need_below = l > lowest || prompt.input().is_some();
            attention_backward(
                shape,
                &saved.qkv,
                prefix_kv,
                &batch.attention_mask,
                dropout.attention_probs(l).as_ref(),
                &saved.probs,
                d_ctx,
                need_below.then_some(&mut d_qkv[..]),
                d_prefix,
            );
            if need_below {
                // d x = residual (already in grad) + through Wqkv
                linear_backward_input(
                    d_qkv,
                    &att.self_attention.qkv.weight,
                    rows,
                    3 * h,
                    h,
                    grad,
                    true,
                );
            }
        }
        if prompt.input().is_some() {
            // grad = d(embedding output): back through the embeddings'
            // dropout and LayerNorm; the prompt's rows of d(sum) are d(input).
            if let Some(d) = dropout.embeddings() {
                d.apply(grad, 0);
            }
            let e = &self.embeddings;
            layernorm_backward(
                grad,
                &acts.embed_in,
                &e.layer_norm.weight,
                &acts.embed_stats,
                d_h,
            );
            let p = prompt.len;
            for (b, d_rows) in d_prompt[0].chunks_mut(p * h).enumerate() {
                d_rows.copy_from_slice(&d_h[b * batch.seq * h..][..p * h]);
            }
        }
        d_prompt
    }
}
