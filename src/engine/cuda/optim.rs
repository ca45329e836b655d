//! The prefix table of a training run on a GPU, kept there with its
//! gradient and AdamW moments: a step uploads only the batch and downloads
//! only the head's rows, and the update runs on the device (adamw_step,
//! bit for bit the host's AdamW). The host copy is brought back with
//! [`ResidentPrefix::download`] before evaluation and checkpoints.

use crate::engine::cuda::device::{CudaDevice, DevBuf, Kernel};
use crate::error::Result;
use crate::training::adamw::{Moments, StepScalars};

/// Blocks of sum_squares (each writes one f64 partial).
const NORM_BLOCKS: usize = 64;

/// The table [P, Ls·2H], its gradient and moments on the device.
pub struct ResidentPrefix {
    pub table: DevBuf<f32>,
    pub grad: DevBuf<f32>,
    m: DevBuf<f32>,
    v: DevBuf<f32>,
    partials: DevBuf<f64>,
    /// Whether m and v are on the device (uploaded or zeroed at the first
    /// update); until then the host's moments are the current ones.
    moments: bool,
    pub len: usize,
    /// Set by zero_grad: the next backward writes the gradient instead of
    /// adding to it (the host's zero-then-accumulate, without a launch).
    pub grad_fresh: bool,
}

impl ResidentPrefix {
    /// Uploads `table`; the gradient and moments come later.
    pub fn new(dev: &CudaDevice, table: &[f32]) -> Result<Self> {
        let mut out = ResidentPrefix {
            table: DevBuf::default(),
            grad: DevBuf::default(),
            m: DevBuf::default(),
            v: DevBuf::default(),
            partials: DevBuf::default(),
            moments: false,
            len: table.len(),
            grad_fresh: true,
        };
        out.table.upload(dev, table)?;
        out.grad.ensure(dev, table.len())?;
        Ok(out)
    }

    /// ‖grad‖², summed in f64.
    pub fn grad_sum_squares(&mut self, dev: &CudaDevice) -> Result<f64> {
        self.partials.ensure(dev, NORM_BLOCKS)?;
        dev.launch(
            Kernel::SumSquares,
            (NORM_BLOCKS as u32, 1, 1),
            dev.row_block(),
            &[&self.grad.ptr, &(self.len as u64), &self.partials.ptr],
        )?;
        Ok(self.partials.download(dev, NORM_BLOCKS)?.iter().sum())
    }

    /// grad *= s.
    pub fn scale_grad(&self, dev: &CudaDevice, s: f32) -> Result<()> {
        dev.launch_1d(
            Kernel::Scale,
            self.len,
            &[&self.grad.ptr, &(self.len as u64), &s],
        )
    }

    /// One AdamW update of the table from its gradient; `host` holds the
    /// moments to start from at the first update (empty: zeros).
    pub fn adamw(
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
                &self.table.ptr,
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

    /// The table, and the moments when the device has them.
    pub fn download(&self, dev: &CudaDevice) -> Result<(Vec<f32>, Option<Moments>)> {
        let table = self.table.download(dev, self.len)?;
        let moments = if self.moments {
            Some(Moments {
                m: self.m.download(dev, self.len)?,
                v: self.v.download(dev, self.len)?,
            })
        } else {
            None
        };
        Ok((table, moments))
    }
}
