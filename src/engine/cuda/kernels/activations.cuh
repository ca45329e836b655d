// ---------------------------------------------------------------------------
// GELU (exact, erf), fused with the bias.

// Column of element i of a [*, width] matrix of n elements: a 32-bit
// remainder where n allows (a 64-bit one is a long emulated sequence).
__device__ __forceinline__ int column(u64 i, u64 n, int width) {
    return n <= 0xffffffffull ? (int)((u32)i % (u32)width) : (int)(i % (u64)width);
}

// The GEMM's output z [rows, I]: f32 in pre, or bf16 in pre16 when that is
// not null (the bf16 GEMMs). act = gelu(z + bias), into act16 in bf16
// instead when it is not null (act only feeds the next GEMM). z + bias also
// into `saved` when not null: the f32 backward reads it there (`pre` itself;
// inference and layers below the prompt skip that write; in bf16 the
// backward reads pre16 and adds the bias again).
extern "C" __global__ void bias_gelu(const float* pre, const u16* pre16, const float* bias, float* saved,
                                     float* act, u64 n, int width, u16* act16) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        float v = (pre16 != 0 ? bf16_float(pre16[i]) : pre[i]) + bias[column(i, n, width)];
        if (saved != 0) saved[i] = v;
        float g = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
        if (act16 != 0) {
            act16[i] = bf16_bits(g);
        } else {
            act[i] = g;
        }
    }
}

// d *= gelu'(x), gelu'(x) = Φ(x) + x·φ(x), at x = pre (bias_gelu's `saved`)
// or, when pre16 is not null, at x = pre16 + bias (the bf16 GEMM's output).
// The incoming d is read from d, or from dy16 in bf16 (a bf16 GEMM's
// output) when that is not null; the result goes into d16 in bf16 instead
// of d when d16 is not null.
extern "C" __global__ void gelu_backward(const float* pre, const u16* pre16, const float* bias, float* d,
                                         const u16* dy16, u64 n, int width, u16* d16) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        float x = pre16 != 0 ? bf16_float(pre16[i]) + bias[column(i, n, width)] : pre[i];
        float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
        float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
        float v = (dy16 != 0 ? bf16_float(dy16[i]) : d[i]) * (cdf + x * pdf);
        if (d16 != 0) {
            d16[i] = bf16_bits(v);
        } else {
            d[i] = v;
        }
    }
}

// The pooler's tanh, fused with its bias: y = tanh(y + bias) [rows, width]
// (model::heads: tanh(W·h_cls + b)).
extern "C" __global__ void bias_tanh(float* y, const float* bias, u64 n, int width) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        y[i] = tanhf(y[i] + bias[i % width]);
}

// d *= 1 - y², tanh's derivative from its output y.
extern "C" __global__ void tanh_backward(const float* y, float* d, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        d[i] *= 1.0f - y[i] * y[i];
}
