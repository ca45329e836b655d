// The CUDA engine's kernels, compiled at run time with NVRTC (no CUDA
// headers needed). HEAD_DIM is defined by the loader (`-DHEAD_DIM=64`), so
// the attention kernels keep a query row, its output and the running softmax
// state in registers. Every kernel is the CUDA twin of a CPU kernel in
// src/engine/cpu/ and follows its semantics exactly: the same dropout mask
// function and element numbering, HF's LayerNorm, exact erf GELU, masked keys
// with probability exactly 0.
//
// Shapes: rows = B*T, H hidden, I intermediate, NH heads, HD = HEAD_DIM,
// P prefix length, N = P + T keys. Activations are row-major, f32 but for
// the GEMMs' inputs and the forward GEMMs' outputs in bf16 (common.cuh).
//
// This file is the one translation unit: NVRTC gets it with each part
// pasted where it is included (engine/cuda/kernels/mod.rs), g++ (the
// emulator) includes the parts from this folder. Each part has one family
// of kernels, forward beside backward, as engine/cpu/ has one per file.

#ifndef HEAD_DIM
#error "compile with -DHEAD_DIM=<head dim>"
#endif

#include "common.cuh"         // types, bf16 rounding, block reductions
#include "dropout.cuh"        // the counter-based dropout masks
#include "layernorm.cuh"      // embeddings + LayerNorm, residual LayerNorm, backward
#include "activations.cuh"    // GELU and the pooler's tanh, with their bias
#include "loss.cuh"           // cross-entropy and squared error of the heads
#include "attention.cuh"      // flash attention with the prefix, f32, forward and backward
#include "attention_mma.cuh"  // the same on the tensor cores, bf16 and tf32
#include "optim.cuh"          // AdamW, scaling and norms of a resident prompt
#include "glue.cuh"           // prefix expand/reduce, row gather/scatter/broadcast
#include "tf32x3.cuh"         // the split of an fp32 GEMM input for 3xTF32
