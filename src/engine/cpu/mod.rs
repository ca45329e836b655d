//! CPU kernels. GEMMs go through the `gemm` crate (AVX-512 with `x86-v4`);
//! everything else is a fused loop over rows, parallel with rayon.

pub mod attention;
pub mod dropout;
pub mod embedding;
pub mod gelu;
pub mod gemm;
pub mod layernorm;
pub mod loss;
