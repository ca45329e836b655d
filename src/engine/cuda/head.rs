//! The task head on the GPU: `model::heads::ClassificationHead` on the
//! device, forward and backward, reading the encoder's last hidden state where
//! it lies and writing its gradient there.
//!
//! ```text
//! pooled heads:    cls = x[b, 0]  [B, H]  (gather_rows)
//!                  pooled = tanh(cls·Wpᵀ + bp)          (GEMM, bias_tanh; the frozen pooler)
//! per-token heads: pooled = x     [B·T, H]
//! input = dropout(pooled) ; logits = input·Wᵀ + b      [R, C]
//! ```
//!
//! The losses run here too (kernels cross_entropy and squared_error, the
//! CPU's losses of src/engine/cpu/loss.rs): the logits' gradient is born and
//! dies on the device, and only per-row loss terms come down, which the host
//! sums in f64 as the CPU functions do.
//!
//! Only small things cross the bus: the classifier's weight and bias go up
//! at each forward (the optimizer changes them on the host), the targets go
//! up, the per-row loss terms and the logits [R, C] come down, and so do the
//! classifier's gradients [C, H] and [C]. Neither the hidden states [B·T, H]
//! nor their gradient cross. All of it is f32 whatever the precision, as the
//! head is on the CPU.

use crate::engine::cpu::dropout::Dropout;
use crate::engine::cuda::device::{dropout_site, CudaDevice, GemmOut, Precision};
use crate::engine::cuda::kernels::Kernel;
use crate::engine::cuda::memory::DevBuf;
use crate::error::{Error, Result};
use crate::model::bert::BertPooler;
use crate::model::heads::ClassificationHead;

/// The head's device buffers, reused from call to call.
#[derive(Default)]
pub struct CudaHead {
    /// The backbone's frozen pooler, weight [H, H] and bias [H], if it has one.
    pooler: Option<(DevBuf<f32>, DevBuf<f32>)>,
    /// classifier.weight [C, H] and bias [C], as of the last forward.
    weight: DevBuf<f32>,
    bias: DevBuf<f32>,
    /// [B, H]: the pooled rows (after tanh), kept for tanh's backward.
    pooled: DevBuf<f32>,
    /// [R, H]: the classifier's input after dropout (when there is dropout),
    /// and scratch.
    input: DevBuf<f32>,
    /// [R, C]: the logits and their gradient.
    logits: DevBuf<f32>,
    d_logits: DevBuf<f32>,
    /// A loss's targets and per-row terms.
    labels: DevBuf<i32>,
    values: DevBuf<f32>,
    row_loss: DevBuf<f32>,
    /// [R] ones: the bias gradient is d_logitsᵀ · 1.
    ones: DevBuf<f32>,
    /// [B, H]: the gradients of the pooled rows and of the [CLS] rows.
    d_pooled: DevBuf<f32>,
    d_cls: DevBuf<f32>,
    /// [C, H] and [C]
    d_weight: DevBuf<f32>,
    d_bias: DevBuf<f32>,
    step: Option<HeadStep>,
}

/// What the backward needs to know about the last forward.
struct HeadStep {
    batch: usize,
    seq: usize,
    rows: usize,
    classes: usize,
    per_token: bool,
    dropout: Option<Dropout>,
    /// The classifier's input [R, H] (`input`, the pooled rows or the
    /// encoder's hidden state), for the weight gradient.
    input: u64,
}

/// One softmax cross-entropy over rows of the logits (the `cross_entropy`
/// kernel): row r's `classes` values at offset + r·row_stride +
/// c·col_stride, against labels[r] (negative: the row is ignored). Its
/// gradient is (softmax − onehot)·weight.
pub struct CrossEntropy<'a> {
    pub labels: &'a [i32],
    pub classes: usize,
    pub offset: usize,
    pub row_stride: usize,
    pub col_stride: usize,
    pub weight: f32,
}

impl<'a> CrossEntropy<'a> {
    /// Over consecutive rows of `classes` logits ([R, C]).
    pub fn rows(labels: &'a [i32], classes: usize, weight: f32) -> Self {
        CrossEntropy {
            labels,
            classes,
            offset: 0,
            row_stride: classes,
            col_stride: 1,
            weight,
        }
    }
}

impl CudaHead {
    /// Uploads the backbone's pooler (once per encoder).
    pub fn new(dev: &CudaDevice, pooler: Option<&BertPooler>) -> Result<Self> {
        let pooler = match pooler {
            Some(p) => {
                let (mut w, mut b) = (DevBuf::default(), DevBuf::default());
                w.upload(dev, &p.dense.weight)?;
                b.upload(dev, &p.dense.bias)?;
                Some((w, b))
            }
            None => None,
        };
        Ok(CudaHead {
            pooler,
            ..Default::default()
        })
    }

    /// Logits [R, C] of `head` on `hidden` [B·T, H] (R = B for pooled heads,
    /// B·T per token), with the classifier's input dropout when training;
    /// they stay here ([`CudaHead::logits`], the losses).
    pub fn forward(
        &mut self,
        dev: &CudaDevice,
        head: &ClassificationHead,
        hidden: u64,
        (batch, seq, h): (usize, usize, usize),
        dropout: Option<Dropout>,
    ) -> Result<()> {
        let classes = head.num_labels();
        if head.weight.shape != [classes, h] {
            return Err(Error::InvalidArgument(format!(
                "the classifier's weight is {:?}, the encoder gives rows of {h}",
                head.weight.shape
            )));
        }
        self.weight.upload(dev, &head.weight.value)?;
        self.bias.upload(dev, &head.bias.value)?;
        let rows = if head.per_token { batch * seq } else { batch };
        self.logits.ensure(dev, rows * classes)?;
        // A loss writes its part of the gradient (QA: one column each).
        self.d_logits.ensure(dev, rows * classes)?;
        self.d_logits.zero(dev)?;
        // The classifier's input before dropout: the hidden rows themselves,
        // or the pooled [CLS] rows.
        let pooled = if head.per_token {
            hidden
        } else {
            self.pooled.ensure(dev, batch * h)?;
            dev.launch_1d(
                Kernel::GatherRows,
                batch * h,
                &[
                    &hidden,
                    &self.pooled.ptr,
                    &(batch as i32),
                    &(h as i32),
                    &((seq * h) as u64),
                ],
            )?;
            if let Some((w, b)) = &self.pooler {
                // pooled = tanh(cls·Wpᵀ + bp), into `input`, then the two swap.
                self.input.ensure(dev, batch * h)?;
                dev.linear(
                    Precision::Fp32,
                    self.pooled.ptr,
                    w.ptr,
                    batch,
                    h,
                    h,
                    GemmOut::F32(self.input.ptr),
                    false,
                )?;
                dev.launch_1d(
                    Kernel::BiasTanh,
                    batch * h,
                    &[&self.input.ptr, &b.ptr, &((batch * h) as u64), &(h as i32)],
                )?;
                std::mem::swap(&mut self.pooled, &mut self.input);
            }
            self.pooled.ptr
        };
        let input = match &dropout {
            Some(d) => {
                let (key, thr, scale, on) = dropout_site(Some(*d));
                self.input.ensure(dev, rows * h)?;
                dev.launch_1d(
                    Kernel::DropoutCopy,
                    rows * h,
                    &[
                        &pooled,
                        &self.input.ptr,
                        &((rows * h) as u64),
                        &key,
                        &thr,
                        &scale,
                        &on,
                        &0u64,
                    ],
                )?;
                self.input.ptr
            }
            None => pooled,
        };
        // logits = input·Wᵀ + b: the bias rows first, then β = 1.
        dev.launch_1d(
            Kernel::BroadcastRows,
            rows * classes,
            &[
                &self.bias.ptr,
                &self.logits.ptr,
                &(rows as i32),
                &(classes as i32),
            ],
        )?;
        dev.linear(
            Precision::Fp32,
            input,
            self.weight.ptr,
            rows,
            classes,
            h,
            GemmOut::F32(self.logits.ptr),
            true,
        )?;
        self.step = Some(HeadStep {
            batch,
            seq,
            rows,
            classes,
            per_token: head.per_token,
            dropout,
            input,
        });
        Ok(())
    }

    /// The last forward's logits [R, C].
    pub fn logits(&self, dev: &CudaDevice) -> Result<Vec<f32>> {
        let step = self.last_step()?;
        self.logits.download(dev, step.rows * step.classes)
    }

    fn last_step(&self) -> Result<&HeadStep> {
        self.step
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("CUDA head: no forward yet".into()))
    }

    /// A cross-entropy of the last forward's logits: writes its part of
    /// their gradient and returns the per-row terms lse − z_label (0 for
    /// ignored rows).
    pub fn cross_entropy(&mut self, dev: &CudaDevice, ce: &CrossEntropy<'_>) -> Result<Vec<f32>> {
        let len = {
            let step = self.last_step()?;
            step.rows * step.classes
        };
        let rows = ce.labels.len();
        let reach = ce.offset
            + rows.saturating_sub(1) * ce.row_stride
            + ce.classes.saturating_sub(1) * ce.col_stride;
        if ce.classes == 0 || (rows > 0 && reach >= len) {
            return Err(Error::InvalidArgument(format!(
                "a cross-entropy over {rows} rows of {} classes reaches past the {len} logits",
                ce.classes
            )));
        }
        if let Some(&bad) = ce.labels.iter().find(|&&y| y >= ce.classes as i32) {
            return Err(Error::InvalidArgument(format!(
                "label {bad} is out of range for {} classes",
                ce.classes
            )));
        }
        self.labels.upload(dev, ce.labels)?;
        self.row_loss.ensure(dev, rows)?;
        let (z, dz) = (
            self.logits.ptr + 4 * ce.offset as u64,
            self.d_logits.ptr + 4 * ce.offset as u64,
        );
        dev.launch_1d(
            Kernel::CrossEntropy,
            rows,
            &[
                &z,
                &dz,
                &self.labels.ptr,
                &self.row_loss.ptr,
                &(rows as i32),
                &(ce.classes as i32),
                &(ce.row_stride as i32),
                &(ce.col_stride as i32),
                &ce.weight,
            ],
        )?;
        self.row_loss.download(dev, rows)
    }

    /// The squared error of the last forward's logits (one per row) against
    /// `targets`: writes their gradient 2·(x − t)·weight and returns x − t.
    pub fn squared_error(
        &mut self,
        dev: &CudaDevice,
        targets: &[f32],
        weight: f32,
    ) -> Result<Vec<f32>> {
        let len = {
            let step = self.last_step()?;
            step.rows * step.classes
        };
        if targets.len() != len {
            return Err(Error::InvalidArgument(format!(
                "{} regression targets for {len} outputs",
                targets.len()
            )));
        }
        self.values.upload(dev, targets)?;
        self.row_loss.ensure(dev, len)?;
        dev.launch_1d(
            Kernel::SquaredError,
            len,
            &[
                &self.logits.ptr,
                &self.values.ptr,
                &self.d_logits.ptr,
                &self.row_loss.ptr,
                &(len as i32),
                &weight,
            ],
        )?;
        self.row_loss.download(dev, len)
    }

    /// Backward of the last forward from the gradient its losses left:
    /// writes the gradient of the hidden state into `d_hidden` [B·T, H]
    /// (zero but the [CLS] rows for pooled heads) and returns the
    /// classifier's gradients, weight [C, H] and bias [C].
    pub fn backward(
        &mut self,
        dev: &CudaDevice,
        d_hidden: &mut DevBuf<f32>,
        h: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let step = self
            .step
            .take()
            .ok_or_else(|| Error::InvalidArgument("CUDA head backward without a forward".into()))?;
        let (rows, classes) = (step.rows, step.classes);
        self.d_weight.ensure(dev, classes * h)?;
        dev.linear_backward_weight(
            self.d_logits.ptr,
            step.input,
            rows,
            classes,
            h,
            self.d_weight.ptr,
            false,
        )?;
        if self.ones.len < rows {
            self.ones.upload(dev, &vec![1.0; rows])?;
        }
        self.d_bias.ensure(dev, classes)?;
        dev.linear_backward_weight(
            self.d_logits.ptr,
            self.ones.ptr,
            rows,
            classes,
            1,
            self.d_bias.ptr,
            false,
        )?;
        d_hidden.ensure(dev, step.batch * step.seq * h)?;
        // d(input) = d_logits · W, through the dropout: into d_hidden for a
        // per-token head, else into d_pooled.
        let d_input = if step.per_token {
            d_hidden.ptr
        } else {
            self.d_pooled.ensure(dev, step.batch * h)?;
            self.d_pooled.ptr
        };
        dev.linear_backward_input(
            Precision::Fp32,
            self.d_logits.ptr,
            self.weight.ptr,
            rows,
            classes,
            h,
            GemmOut::F32(d_input),
            false,
        )?;
        if let Some(d) = &step.dropout {
            let (key, thr, scale, _) = dropout_site(Some(*d));
            dev.launch_1d(
                Kernel::DropoutApply,
                rows * h,
                &[&d_input, &((rows * h) as u64), &key, &thr, &scale],
            )?;
        }
        if !step.per_token {
            // Through the pooler (tanh, then its frozen weight) to the [CLS]
            // rows, then into an otherwise zero d_hidden.
            let d_cls = match &self.pooler {
                Some((w, _)) => {
                    dev.launch_1d(
                        Kernel::TanhBackward,
                        step.batch * h,
                        &[
                            &self.pooled.ptr,
                            &self.d_pooled.ptr,
                            &((step.batch * h) as u64),
                        ],
                    )?;
                    self.d_cls.ensure(dev, step.batch * h)?;
                    dev.linear_backward_input(
                        Precision::Fp32,
                        self.d_pooled.ptr,
                        w.ptr,
                        step.batch,
                        h,
                        h,
                        GemmOut::F32(self.d_cls.ptr),
                        false,
                    )?;
                    self.d_cls.ptr
                }
                None => self.d_pooled.ptr,
            };
            d_hidden.zero(dev)?;
            dev.launch_1d(
                Kernel::ScatterRows,
                step.batch * h,
                &[
                    &d_cls,
                    &d_hidden.ptr,
                    &(step.batch as i32),
                    &(h as i32),
                    &((step.seq * h) as u64),
                ],
            )?;
        }
        Ok((
            self.d_weight.download(dev, classes * h)?,
            self.d_bias.download(dev, classes)?,
        ))
    }
}
