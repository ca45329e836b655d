//! Learning-rate schedules. Classification uses the official recipe's linear
//! decay to 0, stepped every optimizer step, with optional linear warmup;
//! sequence labelling uses ExponentialLR (×gamma once per epoch).

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// lr·s/w during warmup, then lr·(total − s)/(total − w), reaching 0 at total.
    Linear {
        warmup_steps: u64,
        total_steps: u64,
    },
    /// lr·gammaᵉ in epoch e (0-based).
    Exponential {
        gamma: f32,
    },
    Constant,
}

impl Schedule {
    /// Parses `--scheduler linear|exp|constant`.
    pub fn parse(name: &str, warmup_steps: u64, total_steps: u64, gamma: f32) -> Result<Self> {
        match name {
            "linear" => Ok(Schedule::Linear {
                warmup_steps,
                total_steps,
            }),
            "exp" | "exponential" => Ok(Schedule::Exponential { gamma }),
            "constant" => Ok(Schedule::Constant),
            other => Err(Error::InvalidArgument(format!(
                "--scheduler {other:?}: expected linear, exp or constant"
            ))),
        }
    }

    /// The learning rate of optimizer step `step` (0-based) in epoch `epoch` (0-based).
    pub fn lr(&self, base: f32, step: u64, epoch: usize) -> f32 {
        match *self {
            Schedule::Linear {
                warmup_steps,
                total_steps,
            } => {
                if step < warmup_steps {
                    base * step as f32 / warmup_steps.max(1) as f32
                } else {
                    let left = total_steps.saturating_sub(step) as f32;
                    base * left / total_steps.saturating_sub(warmup_steps).max(1) as f32
                }
            }
            Schedule::Exponential { gamma } => base * gamma.powi(epoch as i32),
            Schedule::Constant => base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_decay_matches_hf_get_linear_schedule_with_warmup() {
        let s = Schedule::Linear {
            warmup_steps: 2,
            total_steps: 10,
        };
        let lrs: Vec<f32> = (0..11).map(|i| s.lr(1.0, i, 0)).collect();
        let expected = [
            0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0,
        ];
        for (a, b) in lrs.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{lrs:?}");
        }
        let no_warmup = Schedule::Linear {
            warmup_steps: 0,
            total_steps: 4,
        };
        assert_eq!(no_warmup.lr(2.0, 0, 0), 2.0);
        assert_eq!(no_warmup.lr(2.0, 3, 0), 0.5);
    }

    #[test]
    fn exponential_decays_per_epoch() {
        let s = Schedule::parse("exp", 0, 0, 0.95).unwrap();
        assert_eq!(s.lr(1.0, 123, 0), 1.0);
        assert!((s.lr(1.0, 0, 2) - 0.9025).abs() < 1e-6);
        assert!(Schedule::parse("cosine", 0, 0, 0.9)
            .unwrap_err()
            .to_string()
            .contains("expected linear, exp or constant"));
    }
}
