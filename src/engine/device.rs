//! Where the encoder runs: `--device auto|cpu|cuda[:N]`.

use crate::engine::cuda::{emulator_requested, missing_libraries, CudaEncoder, Precision};
use crate::error::{Error, Result};
use crate::model::bert::BertModel;

/// Where the encoder runs and, on a GPU, the GEMMs' precision (the global
/// `--device` and `--precision` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compute {
    pub device: Device,
    pub precision: Precision,
}

impl Compute {
    /// The encoder on the GPU that `device` names, or None for the CPU.
    /// `cuda[:N]` reports why that GPU cannot run `model`; `auto` takes
    /// GPU 0 when it can (the CUDA libraries load, the device opens, the
    /// kernels build for the model's head size), else the CPU, and says why
    /// when the libraries loaded but the GPU still could not
    /// (`PTUNING_CUDA_EMULATOR=1`: GPU 0 is the CPU emulation of the kernels).
    /// On the CPU, a precision other than fp32 is noted and ignored: the
    /// CPU engine computes in f32.
    pub fn open_encoder(&self, model: &BertModel) -> Result<Option<CudaEncoder>> {
        let encoder = match self.device {
            Device::Cpu => None,
            Device::Cuda(n) => Some(CudaEncoder::new(model, n, self.precision)?),
            Device::Auto if !emulator_requested() && !missing_libraries().is_empty() => {
                tracing::warn!(
                    "--device auto: no usable GPU here ({} not found); running on the CPU",
                    missing_libraries().join(", ")
                );
                None
            }
            Device::Auto => match CudaEncoder::new(model, 0, self.precision) {
                Ok(encoder) => Some(encoder),
                Err(e) => {
                    tracing::warn!(
                        "--device auto: GPU 0 cannot run this model ({e}); running on the CPU"
                    );
                    None
                }
            },
        };
        if encoder.is_none() && self.precision != Precision::Fp32 {
            tracing::warn!(
                "--precision {} applies on a GPU; the CPU engine computes in fp32",
                self.precision.as_str()
            );
        }
        Ok(encoder)
    }
}

impl Default for Compute {
    /// The CPU engine (its results are the ones CI checks).
    fn default() -> Self {
        Compute {
            device: Device::Cpu,
            precision: Precision::Fp32,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The GPU 0 when CUDA is usable here, else the CPU.
    Auto,
    Cpu,
    /// GPU N.
    Cuda(usize),
}

impl Device {
    /// Parses `auto`, `cpu`, `cuda` (GPU 0) or `cuda:N`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            Error::InvalidArgument(format!(
                "unknown device {s:?}; expected auto, cpu, cuda or cuda:N"
            ))
        };
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(bad)?;
                n.parse().map(Device::Cuda).map_err(|_| bad())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Device;

    #[test]
    fn parses_devices() {
        assert_eq!(Device::parse("auto").unwrap(), Device::Auto);
        assert_eq!(Device::parse("cpu").unwrap(), Device::Cpu);
        assert_eq!(Device::parse("cuda").unwrap(), Device::Cuda(0));
        assert_eq!(Device::parse("cuda:3").unwrap(), Device::Cuda(3));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", ""] {
            let e = Device::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("expected auto, cpu, cuda or cuda:N"),
                "{bad}: {e}"
            );
        }
    }
}
