//! The entry points of kernels.cu: their names, the dynamic shared memory
//! of each launch, the head sizes they are built for, and the formats of
//! the tensor-core attention kernels.

use crate::engine::cuda::device::Precision;
use crate::engine::cuda::tf32x3::Fp32Gemm;

/// Threads per block of the row kernels (LayerNorm, the losses and the
/// grid-stride element-wise kernels): 8 warps, so `block_sum` in
/// kernels/common.cuh meets 8 partial sums. The emulated device runs the
/// same blocks.
pub const ROW_BLOCK: u32 = 256;

/// Elements of an operand row per thread of attention_operands
/// (OPS_PER_THREAD in kernels/attention.cuh): 8 where the head size is a
/// multiple of 8, else 4.
pub fn operands_per_thread(head_dim: usize) -> usize {
    if head_dim.is_multiple_of(8) {
        8
    } else {
        4
    }
}

/// The kernels of kernels.cu.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    DropoutApply,
    DropoutCopy,
    EmbedLayernorm,
    BiasDropoutResidualLayernorm,
    ResidualLayernorm,
    Residual16Layernorm,
    Residual16LayernormF32,
    LayernormBackward,
    BiasGelu,
    BiasGeluBf16,
    GeluBackward,
    BiasTanh,
    TanhBackward,
    CrossEntropy,
    SquaredError,
    AttentionOperands,
    AttentionForward,
    AttentionDelta,
    AttentionBackwardDq,
    AttentionBackwardDkv,
    MmaSelfTestTf32,
    AttentionForwardTf32,
    AttentionBackwardDqTf32,
    AttentionBackwardDkvTf32,
    MmaSelfTestTf32x3,
    AttentionForwardTf32x3,
    AttentionBackwardDqTf32x3,
    AttentionBackwardDkvTf32x3,
    MmaSelfTestBf16,
    AttentionForwardBf16,
    AttentionBackwardDqBf16,
    AttentionBackwardDkvBf16,
    AttentionForwardQkvBf16,
    ExpandPrefix,
    ReducePrefix,
    GatherRows,
    ScatterRows,
    BroadcastRows,
    AdamwStep,
    Scale,
    SumSquares,
    SplitTf32,
}

impl Kernel {
    /// Dynamic shared memory of a launch, in bytes: the attention kernels'
    /// tiles (TILE = 32 rows of HD + 4 floats, and [32, 36] score tiles, as
    /// kernels/attention.cuh carves them); none for the others.
    pub fn shared_bytes(self, head_dim: usize) -> u32 {
        let (row, score) = (32 * (head_dim + 4), 32 * 36);
        // Tensor-core kernels: (tiles [64, HD + pad], f32 [64] rows of
        // statistics: the key bias of the forwards and dQ, lse and delta of
        // dK/dV), as attention_mma.cuh carves them; bf16 (2 bytes, pad 8),
        // tf32 and tf32x3 (4 bytes, pad 4; tf32x3 splits the f32 values as
        // it reads them). The self-test takes tiles of 16 and 64 rows
        // (mma_self_test's a and b).
        let row_bytes = |format: MmaFormat| match format {
            MmaFormat::Bf16 => 2 * (head_dim + 8),
            MmaFormat::Tf32 | MmaFormat::Tf32x3 => 4 * (head_dim + 4),
        };
        let tensor_cores = |format: MmaFormat, tiles: usize, stats: usize| {
            (tiles * 64 * row_bytes(format) + 4 * stats * 64) as u32
        };
        match self {
            Kernel::MmaSelfTestBf16 => ((16 + 64) * row_bytes(MmaFormat::Bf16)) as u32,
            Kernel::MmaSelfTestTf32 | Kernel::MmaSelfTestTf32x3 => {
                ((16 + 64) * row_bytes(MmaFormat::Tf32)) as u32
            }
            Kernel::AttentionForwardBf16 | Kernel::AttentionForwardQkvBf16 => {
                tensor_cores(MmaFormat::Bf16, 3, 1)
            }
            Kernel::AttentionBackwardDqBf16 => tensor_cores(MmaFormat::Bf16, 4, 1),
            Kernel::AttentionBackwardDkvBf16 => tensor_cores(MmaFormat::Bf16, 4, 2),
            Kernel::AttentionForwardTf32 | Kernel::AttentionForwardTf32x3 => {
                tensor_cores(MmaFormat::Tf32, 3, 1)
            }
            Kernel::AttentionBackwardDqTf32 | Kernel::AttentionBackwardDqTf32x3 => {
                tensor_cores(MmaFormat::Tf32, 4, 1)
            }
            Kernel::AttentionBackwardDkvTf32 | Kernel::AttentionBackwardDkvTf32x3 => {
                tensor_cores(MmaFormat::Tf32, 4, 2)
            }
            Kernel::AttentionForward => (4 * (3 * row + score)) as u32,
            Kernel::AttentionBackwardDq => (4 * (4 * row + score)) as u32,
            Kernel::AttentionBackwardDkv => (4 * (4 * row + 2 * score + 2 * 32)) as u32,
            _ => 0,
        }
    }

    /// Whether kernels.cu builds this kernel for `head_dim`: the
    /// tensor-core ones need its multiple of their format's k step.
    pub fn built_for(self, head_dim: usize) -> bool {
        MmaFormat::ALL
            .iter()
            .find(|f| f.kernels().contains(&self) || f.forward_from_qkv() == Some(self))
            .is_none_or(|f| head_dim.is_multiple_of(f.head_dim_multiple()))
    }

    pub const ALL: [Kernel; 42] = [
        Kernel::DropoutApply,
        Kernel::DropoutCopy,
        Kernel::EmbedLayernorm,
        Kernel::BiasDropoutResidualLayernorm,
        Kernel::ResidualLayernorm,
        Kernel::Residual16Layernorm,
        Kernel::Residual16LayernormF32,
        Kernel::LayernormBackward,
        Kernel::BiasGelu,
        Kernel::BiasGeluBf16,
        Kernel::GeluBackward,
        Kernel::BiasTanh,
        Kernel::TanhBackward,
        Kernel::CrossEntropy,
        Kernel::SquaredError,
        Kernel::AttentionOperands,
        Kernel::AttentionForward,
        Kernel::AttentionDelta,
        Kernel::AttentionBackwardDq,
        Kernel::AttentionBackwardDkv,
        Kernel::MmaSelfTestTf32,
        Kernel::AttentionForwardTf32,
        Kernel::AttentionBackwardDqTf32,
        Kernel::AttentionBackwardDkvTf32,
        Kernel::MmaSelfTestTf32x3,
        Kernel::AttentionForwardTf32x3,
        Kernel::AttentionBackwardDqTf32x3,
        Kernel::AttentionBackwardDkvTf32x3,
        Kernel::MmaSelfTestBf16,
        Kernel::AttentionForwardBf16,
        Kernel::AttentionBackwardDqBf16,
        Kernel::AttentionBackwardDkvBf16,
        Kernel::AttentionForwardQkvBf16,
        Kernel::ExpandPrefix,
        Kernel::ReducePrefix,
        Kernel::GatherRows,
        Kernel::ScatterRows,
        Kernel::BroadcastRows,
        Kernel::AdamwStep,
        Kernel::Scale,
        Kernel::SumSquares,
        Kernel::SplitTf32,
    ];

    /// Its name in kernels.cu.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::DropoutApply => "dropout_apply",
            Kernel::DropoutCopy => "dropout_copy",
            Kernel::EmbedLayernorm => "embed_layernorm",
            Kernel::BiasDropoutResidualLayernorm => "bias_dropout_residual_layernorm",
            Kernel::ResidualLayernorm => "residual_layernorm",
            Kernel::Residual16Layernorm => "residual16_layernorm",
            Kernel::Residual16LayernormF32 => "residual16_layernorm_f32",
            Kernel::LayernormBackward => "layernorm_backward",
            Kernel::BiasGelu => "bias_gelu",
            Kernel::BiasGeluBf16 => "bias_gelu_bf16",
            Kernel::GeluBackward => "gelu_backward",
            Kernel::BiasTanh => "bias_tanh",
            Kernel::TanhBackward => "tanh_backward",
            Kernel::CrossEntropy => "cross_entropy",
            Kernel::SquaredError => "squared_error",
            Kernel::AttentionOperands => "attention_operands",
            Kernel::AttentionForward => "attention_forward",
            Kernel::AttentionDelta => "attention_delta",
            Kernel::AttentionBackwardDq => "attention_backward_dq",
            Kernel::AttentionBackwardDkv => "attention_backward_dkv",
            Kernel::MmaSelfTestTf32 => "mma_self_test_tf32",
            Kernel::AttentionForwardTf32 => "attention_forward_tf32",
            Kernel::AttentionBackwardDqTf32 => "attention_backward_dq_tf32",
            Kernel::AttentionBackwardDkvTf32 => "attention_backward_dkv_tf32",
            Kernel::MmaSelfTestTf32x3 => "mma_self_test_tf32x3",
            Kernel::AttentionForwardTf32x3 => "attention_forward_tf32x3",
            Kernel::AttentionBackwardDqTf32x3 => "attention_backward_dq_tf32x3",
            Kernel::AttentionBackwardDkvTf32x3 => "attention_backward_dkv_tf32x3",
            Kernel::MmaSelfTestBf16 => "mma_self_test_bf16",
            Kernel::AttentionForwardBf16 => "attention_forward_bf16",
            Kernel::AttentionBackwardDqBf16 => "attention_backward_dq_bf16",
            Kernel::AttentionBackwardDkvBf16 => "attention_backward_dkv_bf16",
            Kernel::AttentionForwardQkvBf16 => "attention_forward_qkv_bf16",
            Kernel::ExpandPrefix => "expand_prefix",
            Kernel::ReducePrefix => "reduce_prefix",
            Kernel::GatherRows => "gather_rows",
            Kernel::ScatterRows => "scatter_rows",
            Kernel::BroadcastRows => "broadcast_rows",
            Kernel::AdamwStep => "adamw_step",
            Kernel::Scale => "scale",
            Kernel::SumSquares => "sum_squares",
            Kernel::SplitTf32 => "split_tf32",
        }
    }
}

/// The input format of the tensor-core attention kernels
/// (kernels/attention_mma.cuh):
/// bf16 (mma m16n8k16) for `Precision::Bf16`, tf32 (m16n8k8) for
/// `Precision::Tf32`, and tf32x3 (three m16n8k8 of split operands, f32
/// accuracy) for `Precision::Fp32` when its GEMMs run by 3xTF32; fp32 by
/// SGEMM keeps the f32 kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmaFormat {
    Bf16,
    Tf32,
    Tf32x3,
}

impl MmaFormat {
    pub const ALL: [MmaFormat; 3] = [MmaFormat::Bf16, MmaFormat::Tf32, MmaFormat::Tf32x3];

    /// The format of `precision`'s attention on the tensor cores, if any:
    /// fp32 follows its GEMMs (`fp32_gemm`), so that one switch gives f32
    /// products on the CUDA cores throughout.
    pub fn of(precision: Precision, fp32_gemm: Fp32Gemm) -> Option<Self> {
        match precision {
            Precision::Bf16 => Some(MmaFormat::Bf16),
            Precision::Tf32 => Some(MmaFormat::Tf32),
            Precision::Fp32 => match fp32_gemm {
                Fp32Gemm::Tf32x3 => Some(MmaFormat::Tf32x3),
                Fp32Gemm::Sgemm => None,
            },
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MmaFormat::Bf16 => "bf16",
            MmaFormat::Tf32 => "tf32",
            MmaFormat::Tf32x3 => "tf32x3",
        }
    }

    /// The k of one mma instruction: the head size must be a multiple.
    pub fn head_dim_multiple(self) -> usize {
        match self {
            MmaFormat::Bf16 => 16,
            MmaFormat::Tf32 | MmaFormat::Tf32x3 => 8,
        }
    }

    /// The forward that reads q, k and v from the QKV GEMM's output, for
    /// layers whose operands no backward reads (attention_mma.cuh's
    /// QkvSource): bf16's.
    pub fn forward_from_qkv(self) -> Option<Kernel> {
        match self {
            MmaFormat::Bf16 => Some(Kernel::AttentionForwardQkvBf16),
            MmaFormat::Tf32 | MmaFormat::Tf32x3 => None,
        }
    }

    /// [self-test, forward, dQ, dK/dV].
    pub fn kernels(self) -> [Kernel; 4] {
        match self {
            MmaFormat::Bf16 => [
                Kernel::MmaSelfTestBf16,
                Kernel::AttentionForwardBf16,
                Kernel::AttentionBackwardDqBf16,
                Kernel::AttentionBackwardDkvBf16,
            ],
            MmaFormat::Tf32 => [
                Kernel::MmaSelfTestTf32,
                Kernel::AttentionForwardTf32,
                Kernel::AttentionBackwardDqTf32,
                Kernel::AttentionBackwardDkvTf32,
            ],
            MmaFormat::Tf32x3 => [
                Kernel::MmaSelfTestTf32x3,
                Kernel::AttentionForwardTf32x3,
                Kernel::AttentionBackwardDqTf32x3,
                Kernel::AttentionBackwardDkvTf32x3,
            ],
        }
    }
}
