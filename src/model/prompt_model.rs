//! A frozen backbone with a deep prompt and a classification head: the model
//! P-Tuning v2 trains. The backbone sits behind an Arc so that many prompts can
//! share one copy of it.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use crate::engine::cpu::dropout::Dropout;
use crate::engine::cpu::loss::{cross_entropy, cross_entropy_masked, mse, span_loss, IGNORE};
use crate::engine::cuda::encoder::{Prompt, PromptSource};
use crate::engine::cuda::head::CrossEntropy;
use crate::engine::cuda::optim::ResidentPrefix;
use crate::engine::cuda::{CudaDevice, CudaEncoder};
use crate::engine::device::Compute;
use crate::error::{Error, Result};
use crate::model::batch::Batch;
use crate::model::bert::BertModel;
use crate::model::encoder::{Activations, DropoutConfig};
use crate::model::heads::{ClassificationHead, POOLED_DROPOUT_STREAM};
use crate::model::param::Param;
use crate::model::prefix::{PrefixEncoder, PromptMethod, PREFIX_DROPOUT_STREAM};
use crate::training::adamw::AdamW;
use crate::training::clip::{clip_coef, clip_grad_norm, grad_sum_squares, scale_grads};

pub struct PromptModel {
    pub backbone: Arc<BertModel>,
    pub prefix: PrefixEncoder,
    pub head: ClassificationHead,
    /// The backbone's copy on a GPU, when it runs there
    /// ([`PromptModel::use_compute`]): `predict` and `forward_backward` then
    /// run the encoder, the head and its loss on it, and while training the
    /// prompt lives there too; the classifier's optimizer stays here.
    pub gpu: Option<Arc<Mutex<CudaEncoder>>>,
}

/// What the loss compares the head's outputs with.
#[derive(Clone, Copy, Debug)]
pub enum Targets<'a> {
    /// A class per sequence; logits [B, C].
    Classes(&'a [usize]),
    /// The batch holds `choices` consecutive sequences per example, one score
    /// each; `labels` has the right choice per example.
    Choices { choices: usize, labels: &'a [usize] },
    /// A real value per sequence (regression, C = 1).
    Scores(&'a [f32]),
    /// A tag per token [B·T] (per-token head), `loss::IGNORE` where unlabelled.
    Tokens(&'a [i64]),
    /// Start and end token of the answer per sequence (QA head, 2 outputs).
    Spans {
        start: &'a [usize],
        end: &'a [usize],
    },
}

impl Targets<'_> {
    /// Checks counts and ranges against a batch of `rows` sequences of `seq`
    /// tokens and a head of `outputs` outputs, so the losses can index freely.
    fn validate(&self, rows: usize, seq: usize, outputs: usize) -> Result<()> {
        let (count, expected, classes) = match *self {
            Targets::Tokens(tags) => {
                if let Some(&bad) = tags
                    .iter()
                    .find(|&&t| t != IGNORE && !(0..outputs as i64).contains(&t))
                {
                    return Err(Error::InvalidArgument(format!(
                        "tag {bad} is outside the {outputs} tags"
                    )));
                }
                (tags.len(), rows * seq, None)
            }
            Targets::Spans { start, end } => {
                if outputs != 2 {
                    return Err(Error::InvalidArgument(format!(
                        "QA needs a 2-output head, not {outputs}"
                    )));
                }
                if let Some(&bad) = start.iter().chain(end).find(|&&p| p >= seq) {
                    return Err(Error::InvalidArgument(format!(
                        "answer position {bad} is outside the {seq} tokens"
                    )));
                }
                if start.len() != end.len() {
                    return Err(Error::InvalidArgument(
                        "as many answer starts as ends are needed".into(),
                    ));
                }
                (start.len(), rows, None)
            }
            Targets::Classes(l) => (l.len(), rows, Some((l, outputs))),
            Targets::Choices { choices, labels } => {
                if outputs != 1 || choices == 0 || !rows.is_multiple_of(choices) {
                    return Err(Error::InvalidArgument(format!(
                        "multiple choice needs a 1-output head and a batch of whole examples ({rows} sequences, {choices} choices)"
                    )));
                }
                (labels.len(), rows / choices, Some((labels, choices)))
            }
            Targets::Scores(s) => {
                if outputs != 1 {
                    return Err(Error::InvalidArgument(format!(
                        "regression needs a 1-output head, not {outputs}"
                    )));
                }
                (s.len(), rows, None)
            }
        };
        if count != expected {
            return Err(Error::InvalidArgument(format!(
                "{count} targets for {expected} examples"
            )));
        }
        if let Some((labels, classes)) = classes {
            if let Some(&bad) = labels.iter().find(|&&l| l >= classes) {
                return Err(Error::InvalidArgument(format!(
                    "label {bad} is outside the {classes} classes"
                )));
            }
        }
        Ok(())
    }
}

/// The GPU encoder, even if a thread panicked while holding it (its buffers
/// are rewritten by every pass).
fn lock(gpu: &Mutex<CudaEncoder>) -> std::sync::MutexGuard<'_, CudaEncoder> {
    gpu.lock().unwrap_or_else(|e| e.into_inner())
}

/// The dropout of the prefix encoder's output and of the head's input.
/// HF's *ForQuestionAnswering feeds the token states to qa_outputs without
/// dropout; every other head drops its input (pooled [CLS] or tokens).
/// Prompt tuning's prompt has no dropout of its own (PEFT's has none): the
/// embeddings' dropout covers its rows.
fn dropout_sites(
    dropout: &DropoutConfig,
    method: PromptMethod,
    targets: Targets<'_>,
) -> (Option<Dropout>, Option<Dropout>) {
    let prefix = match method {
        PromptMethod::PTuningV2 => dropout.site(dropout.hidden, PREFIX_DROPOUT_STREAM),
        PromptMethod::PromptTuning => None,
    };
    let head = match targets {
        Targets::Spans { .. } => None,
        _ => dropout.site(dropout.hidden, POOLED_DROPOUT_STREAM),
    };
    (prefix, head)
}

/// How the encoder's output of a batch is laid out for the head: `seq` rows
/// a sequence, of which the first `skip` are prompt tuning's prompt (0 for
/// a deep prompt). A pooled head reads row 0 of each sequence ([CLS], or
/// the first virtual token, as PEFT's models pool); a per-token head reads
/// the tokens only.
#[derive(Clone, Copy, Debug)]
struct HiddenLayout {
    batch: usize,
    seq: usize,
    skip: usize,
}

impl HiddenLayout {
    /// The head's input and its rows per sequence: the tokens' rows of a
    /// per-token head under prompt tuning, else `hidden` itself.
    fn head_input<'a>(&self, hidden: &'a [f32], per_token: bool) -> (Cow<'a, [f32]>, usize) {
        if !per_token || self.skip == 0 {
            return (Cow::Borrowed(hidden), self.seq);
        }
        let h = hidden.len() / (self.batch * self.seq);
        let tokens = self.seq - self.skip;
        let mut out = Vec::with_capacity(self.batch * tokens * h);
        for b in 0..self.batch {
            out.extend_from_slice(&hidden[(b * self.seq + self.skip) * h..][..tokens * h]);
        }
        (Cow::Owned(out), tokens)
    }

    /// The backward of [`HiddenLayout::head_input`]: d(head input) into
    /// d(hidden), zeros in the prompt's rows.
    fn scatter(&self, d_input: Vec<f32>, per_token: bool) -> Vec<f32> {
        if !per_token || self.skip == 0 {
            return d_input;
        }
        let tokens = self.seq - self.skip;
        let h = d_input.len() / (self.batch * tokens);
        let mut out = vec![0.0; self.batch * self.seq * h];
        for (b, rows) in d_input.chunks(tokens * h).enumerate() {
            out[(b * self.seq + self.skip) * h..][..tokens * h].copy_from_slice(rows);
        }
        out
    }
}

/// The result of one forward and backward: gradients are in the parameters.
#[derive(Clone, Debug)]
pub struct StepOutput {
    pub loss: f32,
    /// [B, C]
    pub logits: Vec<f32>,
}

impl PromptModel {
    /// The layout of the encoder's output for `batch`.
    fn layout(&self, batch: &Batch) -> HiddenLayout {
        let skip = self
            .prefix
            .config
            .method
            .rows_in_front(self.prefix.config.len);
        HiddenLayout {
            batch: batch.batch,
            seq: batch.seq + skip,
            skip,
        }
    }

    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut params = self.prefix.params_mut();
        params.extend(self.head.params_mut());
        params
    }

    /// Zeroes every gradient, a prefix table's kept on a GPU included.
    /// The gradients of a prompt kept on a GPU are there (`grad_fresh`
    /// starts them over); their host copies are written only by
    /// [`PromptModel::grads_to_host`], so they are left alone: for an MLP
    /// prefix on bert-large, zeroing them was a 100 MB memset per step (on
    /// the H200, a bf16 step with the MLP took 30.8 ms, 19.8 without).
    pub fn zero_grad(&mut self) {
        let on_device = self.gpu.as_ref().is_some_and(|gpu| {
            lock(gpu)
                .resident
                .as_mut()
                .map(|r| r.grad_fresh = true)
                .is_some()
        });
        if !on_device {
            self.prefix
                .params_mut()
                .into_iter()
                .for_each(Param::zero_grad);
        }
        self.head
            .params_mut()
            .into_iter()
            .for_each(Param::zero_grad);
    }

    /// Copies the gradients of a prompt kept on a GPU into its parameters
    /// (training itself never needs them there: the update runs on the
    /// device). Nothing to do otherwise.
    pub fn grads_to_host(&mut self) -> Result<()> {
        if let Some(gpu) = self.gpu.clone() {
            let enc = lock(&gpu);
            if let Some(r) = &enc.resident {
                for (p, g) in self.prefix.params_mut().into_iter().zip(r.grads(&enc.dev)?) {
                    p.grad = g;
                }
            }
        }
        Ok(())
    }

    /// Logits [B, C] in inference mode: no dropout, nothing kept.
    pub fn predict(&self, batch: &Batch) -> Result<Vec<f32>> {
        self.predict_with_table(batch, &self.prefix.table())
    }

    /// [`PromptModel::predict`] with the prefix table `past` [P, Ls·2H]
    /// already folded (`self.prefix.table()`): a loop over batches folds a
    /// reparameterized prefix once, not once a batch (its MLP is about
    /// P·h·Ls·2H multiply-adds on the host: 10 ms a batch on bert-large),
    /// and a GPU receives the table once.
    pub fn predict_with_table(&self, batch: &Batch, past: &Arc<[f32]>) -> Result<Vec<f32>> {
        if let Some(gpu) = &self.gpu {
            return self.predict_cuda(&mut lock(gpu), batch, past);
        }
        let prompt = self.prefix.expand(past, batch.batch, None);
        let hidden = self.backbone.forward(batch, Some(&prompt))?;
        let (input, seq) = self.layout(batch).head_input(&hidden, self.head.per_token);
        let head = self.head.forward(
            self.backbone.pooler.as_ref(),
            &input,
            batch.batch,
            seq,
            None,
        );
        Ok(head.logits)
    }

    /// Forward, loss and backward: the gradients of the prefix and of the head
    /// are accumulated into their parameters; on a GPU, a plain prefix
    /// table's gradient is accumulated on the device (see
    /// [`PromptModel::grads_to_host`] and [`PromptModel::optimizer_step`]).
    pub fn forward_backward(
        &mut self,
        batch: &Batch,
        targets: Targets<'_>,
        dropout: &DropoutConfig,
        acts: &mut Activations,
    ) -> Result<StepOutput> {
        if let Some(gpu) = self.gpu.clone() {
            return self.forward_backward_cuda(&mut lock(&gpu), batch, targets, dropout);
        }
        targets.validate(batch.batch, batch.seq, self.head.num_labels())?;
        let (prefix_dropout, pooled_dropout) =
            dropout_sites(dropout, self.prefix.config.method, targets);

        let prefix = self.prefix.forward();
        let prompt = self
            .prefix
            .expand(&prefix.past, batch.batch, prefix_dropout.as_ref());
        let backbone = Arc::clone(&self.backbone);
        backbone.forward_train(batch, &prompt, dropout, acts)?;
        let layout = self.layout(batch);
        let per_token = self.head.per_token;
        let (input, seq) = layout.head_input(&acts.hidden, per_token);
        let (loss, logits, d_input) =
            self.head_step(&input, batch.batch, seq, targets, pooled_dropout.as_ref());
        let mut d_hidden = layout.scatter(d_input, per_token);
        let mut d_kv = backbone.backward(batch, &prompt, dropout, acts, &mut d_hidden);
        let d_past = self
            .prefix
            .reduce(&mut d_kv, batch.batch, prefix_dropout.as_ref());
        self.prefix.backward(&prefix, &d_past);
        Ok(StepOutput { loss, logits })
    }

    /// The head, its loss and its backward on the encoder's output `hidden`
    /// ([B·seq, H]): (loss, logits, d hidden).
    fn head_step(
        &mut self,
        hidden: &[f32],
        batch: usize,
        seq: usize,
        targets: Targets<'_>,
        pooled_dropout: Option<&Dropout>,
    ) -> (f32, Vec<f32>, Vec<f32>) {
        let pooler = self.backbone.pooler.as_ref();
        let head = self
            .head
            .forward(pooler, hidden, batch, seq, pooled_dropout);
        let (loss, d_logits) = self.loss(&head.logits, seq, targets);
        let mut d_hidden = vec![0.0; hidden.len()];
        self.head.backward(
            pooler,
            &head,
            &d_logits,
            batch,
            seq,
            pooled_dropout,
            &mut d_hidden,
        );
        (loss, head.logits, d_hidden)
    }

    /// The loss of the head's `logits` against `targets` (sequences of
    /// `seq` tokens) and its gradient.
    fn loss(&self, logits: &[f32], seq: usize, targets: Targets<'_>) -> (f32, Vec<f32>) {
        let mut d_logits = vec![0.0; logits.len()];
        let loss = match targets {
            Targets::Classes(labels) => {
                cross_entropy(logits, labels, self.head.num_labels(), &mut d_logits)
            }
            // [B*N, 1] scores are [B, N] logits over the choices.
            Targets::Choices { choices, labels } => {
                cross_entropy(logits, labels, choices, &mut d_logits)
            }
            Targets::Scores(values) => mse(logits, values, &mut d_logits),
            Targets::Tokens(tags) => {
                cross_entropy_masked(logits, tags, self.head.num_labels(), &mut d_logits)
            }
            Targets::Spans { start, end } => span_loss(logits, seq, start, end, &mut d_logits),
        };
        (loss, d_logits)
    }

    /// [`PromptModel::loss`] on the logits a GPU holds: the same losses as
    /// kernels (cross_entropy, squared_error) that leave the logits'
    /// gradient there for the head's backward; the host sums the per-row
    /// terms in f64, as the CPU functions do.
    fn device_loss(
        &self,
        encoder: &mut CudaEncoder,
        seq: usize,
        targets: Targets<'_>,
    ) -> Result<f32> {
        let (dev, head) = encoder.head();
        // The mean of per-row terms over n rows (0 without rows).
        let mean = |terms: &[f32], n: usize| {
            if n == 0 {
                0.0
            } else {
                (terms.iter().map(|&x| x as f64).sum::<f64>() / n as f64) as f32
            }
        };
        let ids = |labels: &[usize]| labels.iter().map(|&y| y as i32).collect::<Vec<_>>();
        // The mean cross-entropy of consecutive rows of `classes` logits
        // over the n rows that have a label.
        let mut rows = |labels: &[i32], classes: usize, n: usize| -> Result<f32> {
            let ce = CrossEntropy::rows(labels, classes, 1.0 / n.max(1) as f32);
            Ok(mean(&head.cross_entropy(dev, &ce)?, n))
        };
        let classes = self.head.num_labels();
        Ok(match targets {
            Targets::Classes(labels) => rows(&ids(labels), classes, labels.len())?,
            // [B*N, 1] scores are [B, N] logits over the choices.
            Targets::Choices { choices, labels } => rows(&ids(labels), choices, labels.len())?,
            Targets::Tokens(tags) => {
                let labels: Vec<i32> = tags.iter().map(|&t| t as i32).collect();
                let n = tags.iter().filter(|&&t| t != IGNORE).count();
                rows(&labels, classes, n)?
            }
            Targets::Scores(values) => {
                let n = values.len();
                let diffs = head.squared_error(dev, values, 1.0 / n as f32)?;
                let squares: f64 = diffs.iter().map(|&d| d as f64 * d as f64).sum();
                (squares / n.max(1) as f64) as f32
            }
            // [B·T, 2]: the start column, then the end column, each a softmax
            // over a sequence's T positions; the loss is their mean.
            Targets::Spans { start, end } => {
                let n = start.len();
                let mut loss = 0.0;
                for (column, positions) in [(0, start), (1, end)] {
                    let labels = ids(positions);
                    let ce = CrossEntropy {
                        labels: &labels,
                        classes: seq,
                        offset: column,
                        row_stride: 2 * seq,
                        col_stride: 2,
                        weight: 0.5 / n as f32,
                    };
                    loss += 0.5 * mean(&head.cross_entropy(dev, &ce)?, n);
                }
                loss
            }
        })
    }

    /// Runs the encoder where `compute` says: on the CPU (drops any GPU copy)
    /// or on GPU N, whose copy of the backbone is made here.
    pub fn use_compute(&mut self, compute: Compute) -> Result<()> {
        self.gpu = compute
            .open_encoder(&self.backbone)?
            .map(|encoder| Arc::new(Mutex::new(encoder)));
        Ok(())
    }

    /// [`PromptModel::forward_backward`] with the encoder, the head and the
    /// loss on a GPU: the same dropout masks, the same losses. The prompt
    /// (a plain table, or the MLP and its parameters) stays on the device
    /// with its gradients (see [`PromptModel::optimizer_step`]); the
    /// classifier's gradients come down to its parameters here.
    fn forward_backward_cuda(
        &mut self,
        encoder: &mut CudaEncoder,
        batch: &Batch,
        targets: Targets<'_>,
        dropout: &DropoutConfig,
    ) -> Result<StepOutput> {
        targets.validate(batch.batch, batch.seq, self.head.num_labels())?;
        let (prefix_dropout, pooled_dropout) =
            dropout_sites(dropout, self.prefix.config.method, targets);
        if encoder.resident.is_none() {
            encoder.resident = Some(ResidentPrefix::new(&encoder.dev, &self.prefix)?);
        }
        encoder.forward_train(
            batch,
            Prompt {
                method: self.prefix.config.method,
                len: self.prefix.config.len,
                layers: &self.prefix.config.layers,
                source: PromptSource::Resident,
            },
            dropout,
            prefix_dropout,
        )?;
        encoder.head_forward(&self.head, pooled_dropout)?;
        let loss = self.device_loss(encoder, batch.seq, targets)?;
        let logits = {
            let (dev, head) = encoder.head();
            head.logits(dev)?
        };
        let (d_weight, d_bias) = encoder.head_backward()?;
        for (g, d) in self.head.weight.grad.iter_mut().zip(&d_weight) {
            *g += d;
        }
        for (g, d) in self.head.bias.grad.iter_mut().zip(&d_bias) {
            *g += d;
        }
        // The prompt's gradients stay on the device with it.
        encoder.backward()?;
        Ok(StepOutput { loss, logits })
    }

    /// Clips the gradients to `max_grad_norm` (0: no clipping) and takes
    /// one AdamW step, as the trainer does after each batch: on the host, or
    /// on the GPU for a prompt kept there (bit for bit the same update; the
    /// global norm adds the device's and the host's squares in f64).
    pub fn optimizer_step(&mut self, opt: &mut AdamW, lr: f32, max_grad_norm: f32) -> Result<()> {
        if let Some(gpu) = self.gpu.clone() {
            let mut guard = lock(&gpu);
            let enc = &mut *guard;
            if let Some(resident) = enc.resident.as_mut() {
                return self.device_step(&enc.dev, resident, opt, lr, max_grad_norm);
            }
        }
        if max_grad_norm > 0.0 {
            clip_grad_norm(&mut self.params_mut(), max_grad_norm);
        }
        opt.step(&mut self.params_mut(), lr);
        Ok(())
    }

    /// [`PromptModel::optimizer_step`] with the prompt's parameters (the
    /// first of [`PromptModel::params_mut`]) on the device.
    fn device_step(
        &mut self,
        dev: &CudaDevice,
        resident: &mut ResidentPrefix,
        opt: &mut AdamW,
        lr: f32,
        max_grad_norm: f32,
    ) -> Result<()> {
        let n = resident.params.len();
        let mut params = self.params_mut();
        if max_grad_norm > 0.0 {
            let host = grad_sum_squares(&params[n..]);
            let norm = (resident.grad_sum_squares(dev)? + host).sqrt() as f32;
            if let Some(coef) = clip_coef(norm, max_grad_norm) {
                resident.scale_grads(dev, coef)?;
                scale_grads(&mut params[n..], coef);
            }
        }
        opt.ensure_moments(&params);
        let s = opt.begin_step(lr);
        let (prefix_moments, head_moments) = opt.moments.split_at_mut(n);
        let decays: Vec<f32> = params[..n].iter().map(|p| s.decay(p)).collect();
        resident.adamw(dev, &s, &decays, prefix_moments)?;
        for (p, m) in params[n..].iter_mut().zip(head_moments) {
            s.update(p, m);
        }
        Ok(())
    }

    /// Waits for the GPU's queued work (nothing on the CPU): for timing.
    pub fn synchronize(&self) -> Result<()> {
        match &self.gpu {
            Some(gpu) => lock(gpu).dev.sync(),
            None => Ok(()),
        }
    }

    /// Brings a prompt kept on the GPU back to the host, with its AdamW
    /// moments into `opt`: before evaluating, checkpointing or exporting.
    /// Nothing to do on the CPU.
    pub fn sync_host(&mut self, opt: &mut AdamW) -> Result<()> {
        let Some(gpu) = self.gpu.clone() else {
            return Ok(());
        };
        let enc = lock(&gpu);
        let Some(resident) = &enc.resident else {
            return Ok(());
        };
        let values = resident.download(&enc.dev)?;
        if values.iter().any(|(_, m)| m.is_some()) {
            opt.ensure_moments(&self.params_mut());
        }
        for (i, (p, (value, moments))) in
            self.prefix.params_mut().into_iter().zip(values).enumerate()
        {
            p.value = value;
            if let Some(m) = moments {
                opt.moments[i] = m;
            }
        }
        Ok(())
    }

    /// [`PromptModel::predict`] with the encoder and the head on a GPU.
    fn predict_cuda(
        &self,
        encoder: &mut CudaEncoder,
        batch: &Batch,
        past: &Arc<[f32]>,
    ) -> Result<Vec<f32>> {
        encoder.encode(
            batch,
            Some(Prompt {
                method: self.prefix.config.method,
                len: self.prefix.config.len,
                layers: &self.prefix.config.layers,
                source: PromptSource::Shared(past),
            }),
        )?;
        encoder.head_forward(&self.head, None)?;
        let (dev, head) = encoder.head();
        head.logits(dev)
    }
}
