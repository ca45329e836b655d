//! Task heads on top of the encoder, as the official P-Tuning v2 models have
//! them: one trainable linear layer after dropout, on
//! - the backbone's frozen pooler on [CLS] (tanh(W·h + b)) for sequence tasks
//!   (a model without a pooler feeds the [CLS] hidden state directly), or
//! - every token's hidden state for sequence labelling (C tags) and extractive
//!   QA (2 outputs: start and end).

use serde::{Deserialize, Serialize};

use crate::engine::cpu::dropout::Dropout;
use crate::engine::cpu::gemm::{linear_backward_input, linear_backward_params, linear_forward};
use crate::model::bert::BertPooler;
use crate::model::param::Param;
use crate::rng::Rng;

/// How the head's outputs are read: this decides the loss and the prediction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    /// C logits, softmax over `label_names`.
    Classification,
    /// One score per choice, softmax over the choices.
    MultipleChoice,
    /// One real value.
    Regression,
    /// C logits per token (NER, SRL); the first sub-token of a word is labelled.
    TokenClassification,
    /// Start and end logits per token (extractive QA).
    QuestionAnswering,
}

impl HeadKind {
    /// Whether the head reads every token rather than the pooled [CLS].
    pub fn per_token(self) -> bool {
        matches!(
            self,
            HeadKind::TokenClassification | HeadKind::QuestionAnswering
        )
    }
}

/// Dropout stream of the pooled output.
pub const POOLED_DROPOUT_STREAM: u64 = (1 << 32) + 1;

#[derive(Clone, Debug)]
pub struct ClassificationHead {
    /// classifier.weight [C, H]
    pub weight: Param,
    /// classifier.bias [C]
    pub bias: Param,
    /// Reads every token's hidden state instead of the pooled [CLS].
    pub per_token: bool,
}

/// What the head's backward needs from its forward.
#[derive(Clone, Debug, Default)]
pub struct HeadForward {
    /// [R, H]: R = B pooled [CLS] rows (after tanh), or R = B·T token rows;
    /// before dropout.
    pub pooled: Vec<f32>,
    /// [R, H] after dropout: the classifier's input.
    pub pooled_dropped: Vec<f32>,
    /// [R, C]
    pub logits: Vec<f32>,
}

impl ClassificationHead {
    /// A head of `kind` with `outputs` outputs (classes, tags; 1 for choices and
    /// regression, 2 for QA). HF's init: weight ~ N(0, 0.02²), bias 0.
    pub fn for_kind(kind: HeadKind, hidden: usize, outputs: usize, seed: u64) -> Self {
        ClassificationHead {
            per_token: kind.per_token(),
            ..Self::new(hidden, outputs, seed)
        }
    }

    /// A pooled-[CLS] head with `num_labels` outputs.
    pub fn new(hidden: usize, num_labels: usize, seed: u64) -> Self {
        let mut w = vec![0.0; num_labels * hidden];
        Rng::new(seed).fill_normal(&mut w, 0.02);
        ClassificationHead {
            weight: Param::new("classifier.weight", &[num_labels, hidden], w, true),
            bias: Param::new(
                "classifier.bias",
                &[num_labels],
                vec![0.0; num_labels],
                false,
            ),
            per_token: false,
        }
    }

    pub fn num_labels(&self) -> usize {
        self.bias.value.len()
    }

    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        vec![&mut self.weight, &mut self.bias]
    }

    /// hidden [B*T, H] → logits [R, C], R = B (pooled) or B·T (per token).
    pub fn forward(
        &self,
        pooler: Option<&BertPooler>,
        hidden: &[f32],
        batch: usize,
        seq: usize,
        dropout: Option<&Dropout>,
    ) -> HeadForward {
        let h = self.weight.shape[1];
        let c = self.num_labels();
        let (rows, pooled) = if self.per_token {
            (batch * seq, hidden.to_vec())
        } else {
            (batch, pool(pooler, hidden, batch, seq, h))
        };
        let mut pooled_dropped = pooled.clone();
        if let Some(d) = dropout {
            d.apply(&mut pooled_dropped, 0);
        }
        let mut logits = vec![0.0; rows * c];
        linear_forward(
            &pooled_dropped,
            &self.weight.value,
            Some(&self.bias.value),
            rows,
            c,
            h,
            &mut logits,
        );
        HeadForward {
            pooled,
            pooled_dropped,
            logits,
        }
    }

    /// Accumulates the classifier's gradients and writes d_hidden [B*T, H]
    /// (overwritten; for a pooled head zero except the [CLS] rows).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        pooler: Option<&BertPooler>,
        forward: &HeadForward,
        d_logits: &[f32],
        batch: usize,
        seq: usize,
        dropout: Option<&Dropout>,
        d_hidden: &mut [f32],
    ) {
        let h = self.weight.shape[1];
        let c = self.num_labels();
        let rows = forward.pooled.len() / h;
        linear_backward_params(
            &forward.pooled_dropped,
            d_logits,
            rows,
            c,
            h,
            &mut self.weight.grad,
            Some(&mut self.bias.grad),
        );
        if self.per_token {
            linear_backward_input(d_logits, &self.weight.value, rows, c, h, d_hidden, false);
            if let Some(d) = dropout {
                d.apply(d_hidden, 0);
            }
            return;
        }
        let mut d_pooled = vec![0.0; rows * h];
        linear_backward_input(
            d_logits,
            &self.weight.value,
            rows,
            c,
            h,
            &mut d_pooled,
            false,
        );
        if let Some(d) = dropout {
            d.apply(&mut d_pooled, 0);
        }
        let d_cls = match pooler {
            Some(p) => {
                // tanh' = 1 - tanh²
                for (d, y) in d_pooled.iter_mut().zip(&forward.pooled) {
                    *d *= 1.0 - y * y;
                }
                let mut d_cls = vec![0.0; batch * h];
                linear_backward_input(&d_pooled, &p.dense.weight, batch, h, h, &mut d_cls, false);
                d_cls
            }
            None => d_pooled,
        };
        d_hidden.fill(0.0);
        for (b, row) in d_cls.chunks(h).enumerate() {
            d_hidden[b * seq * h..][..h].copy_from_slice(row);
        }
    }
}

/// The pooled [CLS] rows [B, H]: tanh(pooler(h_cls)), or h_cls without a pooler.
fn pool(
    pooler: Option<&BertPooler>,
    hidden: &[f32],
    batch: usize,
    seq: usize,
    h: usize,
) -> Vec<f32> {
    let mut cls = vec![0.0; batch * h];
    for (b, row) in cls.chunks_mut(h).enumerate() {
        row.copy_from_slice(&hidden[b * seq * h..][..h]);
    }
    match pooler {
        Some(p) => {
            let mut out = vec![0.0; batch * h];
            linear_forward(
                &cls,
                &p.dense.weight,
                Some(&p.dense.bias),
                batch,
                h,
                h,
                &mut out,
            );
            out.iter_mut().for_each(|x| *x = x.tanh());
            out
        }
        None => cls,
    }
}
