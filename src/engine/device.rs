//! Where the encoder runs: `--device auto|cpu|cuda[:N]`.

use crate::engine::cuda::{missing_libraries, Precision};
use crate::error::{Error, Result};

/// Where the encoder runs and, on a GPU, the GEMMs' precision (the global
/// `--device` and `--precision` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compute {
    pub device: Device,
    pub precision: Precision,
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

    /// `Auto` becomes `Cuda(0)` when the CUDA libraries load (the device
    /// itself is opened, and its errors reported, by whoever uses it), else
    /// `Cpu`; the others stay as they are.
    pub fn resolve(self) -> Result<Self> {
        Ok(match self {
            Device::Auto if missing_libraries().is_empty() => Device::Cuda(0),
            Device::Auto => Device::Cpu,
            other => other,
        })
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
