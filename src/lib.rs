//! ptuning: P-Tuning v2 (deep prompt tuning) for frozen transformer encoders.
//!
//! - [`engine`]: fused CPU kernels, forward and activation-gradient backward.
//! - [`model`]: config, frozen weights, encoder, prefix and heads.
//! - [`training`]: optimizer and the training step.
//! - [`cli`]: the `ptuning` command line; `main.rs` only calls [`cli::main`].

pub mod atomic_file;
pub mod cli;
pub mod engine;
pub mod error;
pub mod model;
pub mod rng;
pub mod serve;
pub mod tasks;
pub mod training;

pub use error::{Error, Result};
