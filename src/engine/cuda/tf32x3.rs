//! fp32 GEMMs on the tf32 tensor cores ("3xTF32", as CUTLASS's fast fp32
//! GEMMs). SGEMM runs on the CUDA cores (about 67 TFLOP/s on an H100 or
//! H200); the tf32 tensor cores do about 7 times that, but keep 10 mantissa
//! bits of each input. Split every f32 operand into two tf32 values,
//! x = hi + lo (kernels/tf32x3.cuh), and x·w is hi·hi' + hi·lo' + lo·hi':
//! three tf32 GEMMs accumulating in f32, whose error (about 2^-22 of each
//! product, from lo·lo' and lo's rounding) is near SGEMM's own (2^-24 per
//! product, plus its sums' rounding).
//!
//! The frozen weights are split once, on the device, as they are uploaded
//! ([`SplitWeight`]); given one ([`Operand::Split`]), `CudaDevice::linear`
//! and `linear_backward_input` split the activation on the device into
//! [`CudaDevice::scratch`] and run the three GEMMs. The three products run
//! smallest first, so the largest is added to the sum of the others.
//!
//! Attention in fp32 follows the same choice: with 3xTF32 its products run
//! on the tensor cores as three tf32 mma of split operands (the tf32x3
//! format of kernels/attention_mma.cuh), with SGEMM on the f32 kernels.

use crate::engine::cuda::device::{CudaDevice, Operand, Precision};
use crate::engine::cuda::kernels::Kernel;
use crate::engine::cuda::memory::DevBuf;
use crate::error::{Error, Result};

/// How `--precision fp32` runs its GEMMs, and with them its attention, on a
/// device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp32Gemm {
    /// cuBLAS SGEMM (CUBLAS_COMPUTE_32F) on the CUDA cores.
    Sgemm,
    /// Three tf32 tensor-core GEMMs of split operands.
    Tf32x3,
}

impl Fp32Gemm {
    /// The environment variable that chooses: `sgemm` or `3xtf32`.
    pub const ENV: &'static str = "PTUNING_FP32_GEMM";

    /// 3xTF32 where the device has tf32 tensor cores (`tensor_cores`:
    /// compute capability 8.0 or newer), else SGEMM; `PTUNING_FP32_GEMM`
    /// overrides.
    pub fn choose(tensor_cores: bool) -> Result<Self> {
        Self::parse(std::env::var(Self::ENV).ok().as_deref(), tensor_cores)
    }

    /// [`Fp32Gemm::choose`] with the variable's value (None: unset); an
    /// unknown value, or 3xtf32 without tensor cores, is an error.
    pub fn parse(value: Option<&str>, tensor_cores: bool) -> Result<Self> {
        match value.unwrap_or("") {
            "" if tensor_cores => Ok(Fp32Gemm::Tf32x3),
            "" | "sgemm" => Ok(Fp32Gemm::Sgemm),
            "3xtf32" if tensor_cores => Ok(Fp32Gemm::Tf32x3),
            "3xtf32" => Err(Error::InvalidArgument(format!(
                "{}=3xtf32: this GPU has no tf32 tensor cores (compute capability 8.0 or newer); use sgemm",
                Self::ENV
            ))),
            other => Err(Error::InvalidArgument(format!(
                "{}={other:?}: expected sgemm or 3xtf32",
                Self::ENV
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Fp32Gemm::Sgemm => "SGEMM",
            Fp32Gemm::Tf32x3 => "3xTF32",
        }
    }
}

/// `x` rounded to tf32 (10 mantissa bits; to nearest, ties away from zero,
/// as cvt.rna.tf32.f32 and kernels/common.cuh's tf32_round; NaN kept).
pub fn tf32_round(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    f32::from_bits((x.to_bits() + 0x1000) & 0xffff_e000)
}

/// A frozen weight [out, in] as its two tf32 parts on the device.
pub struct SplitWeight {
    hi: DevBuf<f32>,
    lo: DevBuf<f32>,
}

impl SplitWeight {
    /// As a GEMM's weight operand.
    pub fn operand(&self) -> Operand {
        Operand::Split {
            hi: self.hi.ptr,
            lo: self.lo.ptr,
        }
    }

    /// Uploads `w` and splits it there, in place (hi over w), with the
    /// kernel that splits activations: no host copies of the weights.
    pub fn upload(dev: &CudaDevice, w: &[f32]) -> Result<Self> {
        let mut out = SplitWeight {
            hi: DevBuf::default(),
            lo: DevBuf::default(),
        };
        out.hi.upload(dev, w)?;
        out.lo.ensure(dev, w.len())?;
        let (hi, lo, n) = (out.hi.ptr, out.lo.ptr, w.len());
        dev.launch_1d(Kernel::SplitTf32, n, &[&hi, &hi, &lo, &(n as u64)])?;
        Ok(out)
    }
}

impl CudaDevice {
    /// `gemm(precision, activation, weight, accumulate)`, one GEMM of the
    /// activation `act` (its address and n values) with the weight `w`:
    /// once for a plain weight; for a split one (fp32 only), the activation
    /// is split into the scratch buffer and `gemm` runs in tf32 for lo·hi',
    /// hi·lo' and hi·hi'.
    pub(super) fn products(
        &self,
        precision: Precision,
        (act, n): (u64, usize),
        w: Operand,
        accumulate: bool,
        gemm: impl Fn(Precision, u64, u64, bool) -> Result<()>,
    ) -> Result<()> {
        let (w_hi, w_lo) = match w {
            Operand::Plain(w) => return gemm(precision, act, w, accumulate),
            Operand::Split { hi, lo } if precision == Precision::Fp32 => (hi, lo),
            Operand::Split { .. } => {
                return Err(Error::Cuda(format!(
                    "a split (3xTF32) weight is for fp32 GEMMs, not {}",
                    precision.as_str()
                )))
            }
        };
        let hi = self.scratch(2 * n)?;
        let lo = hi + 4 * n as u64;
        self.launch_1d(Kernel::SplitTf32, n, &[&act, &hi, &lo, &(n as u64)])?;
        let tf32 = Precision::Tf32;
        gemm(tf32, lo, w_hi, accumulate)?;
        gemm(tf32, hi, w_lo, true)?;
        gemm(tf32, hi, w_hi, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_chooses_or_is_refused() {
        let cases: [(Option<&str>, bool, std::result::Result<Fp32Gemm, &str>); 7] = [
            (None, true, Ok(Fp32Gemm::Tf32x3)),
            (None, false, Ok(Fp32Gemm::Sgemm)),
            (Some(""), true, Ok(Fp32Gemm::Tf32x3)),
            (Some("sgemm"), true, Ok(Fp32Gemm::Sgemm)),
            (Some("3xtf32"), true, Ok(Fp32Gemm::Tf32x3)),
            (Some("3xtf32"), false, Err("no tf32 tensor cores")),
            (Some("fast"), true, Err("expected sgemm or 3xtf32")),
        ];
        for (value, tensor_cores, want) in cases {
            let got = Fp32Gemm::parse(value, tensor_cores);
            match want {
                Ok(mode) => assert_eq!(got.unwrap(), mode, "{value:?}"),
                Err(text) => {
                    let e = got.unwrap_err().to_string();
                    assert!(e.contains(text) && e.contains(Fp32Gemm::ENV), "{e}");
                }
            }
        }
    }
}
