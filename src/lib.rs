//! ptuning: P-Tuning v2 (deep prompt tuning) for frozen transformer encoders.
//!
//! - [`engine`]: the kernels, forward and activation-gradient backward, on
//!   the CPU (fused loops, `gemm`) and on CUDA (NVRTC kernels, cuBLAS).
//! - [`model`]: config, frozen weights, encoder, prefix and heads.
//! - [`tasks`]: dataset readers, features and metrics.
//! - [`training`]: optimizer, schedule, the training loop, checkpoints and
//!   the PEFT interchange.
//! - [`serve`]: the HTTP server, batching requests of many adapters.
//! - [`cli`]: the `ptuning` command line; `main.rs` only calls [`cli::main`].
//!
//! Comments write shapes as `[B, T, H]` and special tokens as `[CLS]`,
//! which rustdoc would take for links.
#![allow(rustdoc::broken_intra_doc_links)]

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
