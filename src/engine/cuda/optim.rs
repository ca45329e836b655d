//! The prompt of a training run on a GPU, kept there with its gradients and
//! AdamW moments: a plain table [P, Ls·2H], or the reparameterization's
//! parameters (embedding [P, H], W1 [h, H], b1 [h], W2 [Ls·2H, h], b2
//! [Ls·2H]) and the table they give, computed here at each step
//! (model/prefix.rs's forward and backward, step for step). A step uploads
//! only the batch, and the update runs on the device (adamw_step, bit for
//! bit the host's AdamW). The host copies come back with
//! [`ResidentPrefix::download`] before evaluation and checkpoints.

use crate::engine::cuda::device::{CudaDevice, GemmOut, Precision};
use crate::engine::cuda::kernels::{Kernel, ROW_BLOCK};
use crate::engine::cuda::memory::DevBuf;
use crate::error::Result;
use crate::model::prefix::PrefixEncoder;
use crate::training::adamw::{Moments, StepScalars};

/// Blocks of sum_squares (each writes one f64 partial).
const NORM_BLOCKS: usize = 64;

/// One trainable tensor on the device, its gradient and AdamW moments.
pub struct DeviceParam {
    pub value: DevBuf<f32>,
    pub grad: DevBuf<f32>,
    m: DevBuf<f32>,
    v: DevBuf<f32>,
    /// Whether m and v are on the device (uploaded or zeroed at the first
    /// update); until then the host's moments are the current ones.
    moments: bool,
    pub len: usize,
}

impl DeviceParam {
    fn new(dev: &CudaDevice, value: &[f32]) -> Result<Self> {
        let mut p = DeviceParam {
            value: DevBuf::default(),
            grad: DevBuf::default(),
            m: DevBuf::default(),
            v: DevBuf::default(),
            moments: false,
            len: value.len(),
        };
        p.value.upload(dev, value)?;
        p.grad.ensure(dev, value.len())?;
        Ok(p)
    }

    /// ‖grad‖², summed in f64 through `partials`.
    fn grad_sum_squares(&self, dev: &CudaDevice, partials: &mut DevBuf<f64>) -> Result<f64> {
        partials.ensure(dev, NORM_BLOCKS)?;
        dev.launch(
            Kernel::SumSquares,
            (NORM_BLOCKS as u32, 1, 1),
            ROW_BLOCK,
            &[&self.grad.ptr, &(self.len as u64), &partials.ptr],
        )?;
        Ok(partials.download(dev, NORM_BLOCKS)?.iter().sum())
    }

    /// grad *= s.
    fn scale_grad(&self, dev: &CudaDevice, s: f32) -> Result<()> {
        dev.launch_1d(
            Kernel::Scale,
            self.len,
            &[&self.grad.ptr, &(self.len as u64), &s],
        )
    }

    /// One AdamW update from the gradient; `host` holds the moments to
    /// start from at the first update (empty: zeros).
    fn adamw(
        &mut self,
        dev: &CudaDevice,
        s: &StepScalars,
        decay: f32,
        host: &Moments,
    ) -> Result<()> {
        if !self.moments {
            if host.m.len() == self.len {
                self.m.upload(dev, &host.m)?;
                self.v.upload(dev, &host.v)?;
            } else {
                self.m.ensure(dev, self.len)?;
                self.v.ensure(dev, self.len)?;
                self.m.zero(dev)?;
                self.v.zero(dev)?;
            }
            self.moments = true;
        }
        dev.launch_1d(
            Kernel::AdamwStep,
            self.len,
            &[
                &self.value.ptr,
                &self.grad.ptr,
                &self.m.ptr,
                &self.v.ptr,
                &(self.len as u64),
                &decay,
                &s.b1,
                &(1.0 - s.b1),
                &s.b2,
                &(1.0 - s.b2),
                &s.step_size,
                &s.bc2_sqrt,
                &s.eps,
            ],
        )
    }

    /// The value, and the moments when the device has them.
    fn download(&self, dev: &CudaDevice) -> Result<(Vec<f32>, Option<Moments>)> {
        let value = self.value.download(dev, self.len)?;
        let moments = if self.moments {
            Some(Moments {
                m: self.m.download(dev, self.len)?,
                v: self.v.download(dev, self.len)?,
            })
        } else {
            None
        };
        Ok((value, moments))
    }
}

/// The reparameterization's activations: [P, h] before and after tanh's
/// backward, the table [P, W] and its gradient, and ones [P] for the bias
/// gradients (column sums as GEMMs).
struct Mlp {
    p: usize,
    /// H (the embedding's width), h (the MLP's), W = Ls·2H (the table's).
    sizes: (usize, usize, usize),
    hidden: DevBuf<f32>,
    d_hidden: DevBuf<f32>,
    table: DevBuf<f32>,
    d_table: DevBuf<f32>,
    ones: DevBuf<f32>,
}

/// A training run's prompt on the device.
pub struct ResidentPrefix {
    /// PrefixEncoder::params_mut's order: the embedding, then with the
    /// reparameterization W1, b1, W2, b2.
    pub params: Vec<DeviceParam>,
    mlp: Option<Mlp>,
    partials: DevBuf<f64>,
    /// The table's size, P·W.
    pub len: usize,
    /// Set by zero_grad: the next backward writes the gradients instead of
    /// adding to them (the host's zero-then-accumulate, without a launch).
    pub grad_fresh: bool,
}

impl ResidentPrefix {
    /// Uploads `prefix`'s parameters; gradients and moments come later.
    pub fn new(dev: &CudaDevice, prefix: &PrefixEncoder) -> Result<Self> {
        let (p, width) = (prefix.config.len, prefix.width());
        let mut params = vec![DeviceParam::new(dev, &prefix.embedding.value)?];
        let mlp = match &prefix.trans {
            None => None,
            Some((t0, t2)) => {
                for t in [&t0.weight, &t0.bias, &t2.weight, &t2.bias] {
                    params.push(DeviceParam::new(dev, &t.value)?);
                }
                let h = t0.bias.value.len();
                let mut mlp = Mlp {
                    p,
                    sizes: (prefix.hidden, h, width),
                    hidden: DevBuf::default(),
                    d_hidden: DevBuf::default(),
                    table: DevBuf::default(),
                    d_table: DevBuf::default(),
                    ones: DevBuf::default(),
                };
                mlp.hidden.ensure(dev, p * h)?;
                mlp.d_hidden.ensure(dev, p * h)?;
                mlp.table.ensure(dev, p * width)?;
                mlp.d_table.ensure(dev, p * width)?;
                mlp.ones.upload(dev, &vec![1.0; p])?;
                Some(mlp)
            }
        };
        Ok(ResidentPrefix {
            params,
            mlp,
            partials: DevBuf::default(),
            len: p * width,
            grad_fresh: true,
        })
    }

    /// The table [P, W] the encoder reads: the plain table, or the MLP's
    /// output, computed now: tanh(E·W1ᵀ + b1)·W2ᵀ + b2.
    pub fn table(&mut self, dev: &CudaDevice) -> Result<u64> {
        let Some(mlp) = &mut self.mlp else {
            return Ok(self.params[0].value.ptr);
        };
        let [e, w1, b1, w2, b2] = [0, 1, 2, 3, 4].map(|i| self.params[i].value.ptr);
        let (p, (hs, h, width)) = (mlp.p, mlp.sizes);
        dev.linear(
            Precision::Fp32,
            e,
            w1,
            p,
            h,
            hs,
            GemmOut::F32(mlp.hidden.ptr),
            false,
        )?;
        dev.launch_1d(
            Kernel::BiasTanh,
            p * h,
            &[&mlp.hidden.ptr, &b1, &((p * h) as u64), &(h as i32)],
        )?;
        dev.launch_1d(
            Kernel::BroadcastRows,
            p * width,
            &[&b2, &mlp.table.ptr, &(p as i32), &(width as i32)],
        )?;
        dev.linear(
            Precision::Fp32,
            mlp.hidden.ptr,
            w2,
            p,
            width,
            h,
            GemmOut::F32(mlp.table.ptr),
            true,
        )?;
        Ok(mlp.table.ptr)
    }

    /// Where the encoder's backward puts the table's gradient, and whether
    /// it adds to what is there: the plain table's gradient (added to unless
    /// fresh), or the MLP's scratch, which [`ResidentPrefix::backward`]
    /// then takes through the MLP.
    pub fn table_grad(&mut self) -> (u64, bool) {
        match &self.mlp {
            None => {
                let add = !self.grad_fresh;
                self.grad_fresh = false;
                (self.params[0].grad.ptr, add)
            }
            Some(mlp) => (mlp.d_table.ptr, false),
        }
    }

    /// The MLP's backward from the table's gradient into its parameters'
    /// gradients (added to unless fresh), as PrefixEncoder::backward: W2
    /// and b2, tanh, W1 and b1, the embedding. Nothing for a plain table.
    pub fn backward(&mut self, dev: &CudaDevice) -> Result<()> {
        let Some(mlp) = &self.mlp else {
            return Ok(());
        };
        let add = !self.grad_fresh;
        self.grad_fresh = false;
        let (p, (hs, h, width)) = (mlp.p, mlp.sizes);
        let value = |i: usize| self.params[i].value.ptr;
        let grad = |i: usize| self.params[i].grad.ptr;
        // W2 [W, h] and b2: d_tableᵀ·hidden and d_tableᵀ·1.
        dev.linear_backward_weight(mlp.d_table.ptr, mlp.hidden.ptr, p, width, h, grad(3), add)?;
        dev.linear_backward_weight(mlp.d_table.ptr, mlp.ones.ptr, p, width, 1, grad(4), add)?;
        // d_hidden = d_table·W2, times tanh' = 1 - hidden².
        dev.linear_backward_input(
            Precision::Fp32,
            mlp.d_table.ptr,
            value(3),
            p,
            width,
            h,
            GemmOut::F32(mlp.d_hidden.ptr),
            false,
        )?;
        dev.launch_1d(
            Kernel::TanhBackward,
            p * h,
            &[&mlp.hidden.ptr, &mlp.d_hidden.ptr, &((p * h) as u64)],
        )?;
        // W1 [h, H] and b1, then the embedding: d_hidden·W1.
        dev.linear_backward_weight(mlp.d_hidden.ptr, value(0), p, h, hs, grad(1), add)?;
        dev.linear_backward_weight(mlp.d_hidden.ptr, mlp.ones.ptr, p, h, 1, grad(2), add)?;
        dev.linear_backward_input(
            Precision::Fp32,
            mlp.d_hidden.ptr,
            value(1),
            p,
            h,
            hs,
            GemmOut::F32(grad(0)),
            add,
        )
    }

    /// ‖grad‖² over every parameter, summed in f64.
    pub fn grad_sum_squares(&mut self, dev: &CudaDevice) -> Result<f64> {
        let mut total = 0.0;
        for p in &self.params {
            total += p.grad_sum_squares(dev, &mut self.partials)?;
        }
        Ok(total)
    }

    /// Every gradient *= s.
    pub fn scale_grads(&self, dev: &CudaDevice, s: f32) -> Result<()> {
        self.params.iter().try_for_each(|p| p.scale_grad(dev, s))
    }

    /// One AdamW update of every parameter: `decays` and the `host`
    /// moments (to start from at the first update) in the same order.
    pub fn adamw(
        &mut self,
        dev: &CudaDevice,
        s: &StepScalars,
        decays: &[f32],
        host: &[Moments],
    ) -> Result<()> {
        for ((p, &decay), m) in self.params.iter_mut().zip(decays).zip(host) {
            p.adamw(dev, s, decay, m)?;
        }
        Ok(())
    }

    /// Every parameter's value, with its moments when the device has them.
    pub fn download(&self, dev: &CudaDevice) -> Result<Vec<(Vec<f32>, Option<Moments>)>> {
        self.params.iter().map(|p| p.download(dev)).collect()
    }

    /// Every parameter's gradient (zeros when fresh).
    pub fn grads(&self, dev: &CudaDevice) -> Result<Vec<Vec<f32>>> {
        self.params
            .iter()
            .map(|p| {
                if self.grad_fresh {
                    Ok(vec![0.0; p.len])
                } else {
                    p.grad.download(dev, p.len)
                }
            })
            .collect()
    }
}
