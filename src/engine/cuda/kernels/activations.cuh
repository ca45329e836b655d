// ---------------------------------------------------------------------------
// GELU (exact, erf), fused with the bias.

// Column of element i of a [*, width] matrix of n elements: a 32-bit
// remainder where n allows (a 64-bit one is a long emulated sequence).
__device__ __forceinline__ int column(u64 i, u64 n, int width) {
    return n <= 0xffffffffull ? (int)((u32)i % (u32)width) : (int)(i % (u64)width);
}

// op.at<V>(i, col) for elements i .. i + V - 1 (column col ..) of a
// [*, width] matrix of n elements, over the grid: V = 4 (one access per
// array) where rows are a multiple of 4 wide and `aligned` (every array the
// kernel touches starts on 16 bytes), else 1. Scalar 2-byte accesses
// bounded the bf16 element-wise kernels. (An operation struct, not a
// generic lambda: NVRTC 13.0 takes those for host functions.)
template <typename Op>
__device__ __forceinline__ void for_each_vec(u64 n, int width, bool aligned, const Op& op) {
    u64 start = blockIdx.x * (u64)blockDim.x + threadIdx.x, stride = (u64)gridDim.x * blockDim.x;
    if (aligned && width % 4 == 0) {
        for (u64 q = start; q < n / 4; q += stride) op.template at<4>(4 * q, column(4 * q, n, width));
    } else {
        for (u64 i = start; i < n; i += stride) op.template at<1>(i, column(i, n, width));
    }
}

// for_each_vec with the operation Op<true>{fields...} where `bf16_out`, else
// Op<false>: an instance for each output format, so that neither tests its
// pointer per element.
template <template <bool> class Op, typename... F>
__device__ __forceinline__ void for_each_vec_by_format(bool bf16_out, u64 n, int width, bool aligned, F... fields) {
    if (bf16_out) {
        for_each_vec(n, width, aligned, Op<true>{fields...});
    } else {
        for_each_vec(n, width, aligned, Op<false>{fields...});
    }
}

// GELU by erff, and its derivative Φ(x) + x·φ(x), for f32 outputs.
__device__ __forceinline__ float gelu(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }
__device__ __forceinline__ float gelu_grad(float x) {
    float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
    float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
    return cdf + x * pdf;
}

// Φ(x), the standard normal CDF, for the GELU of an output rounded to
// bf16: Φ(-u) = 2^q(u), u = |x| clamped to 6 (Φ(-6) = 1e-9), q of degree 7
// fitted to log2 Φ(-u) on [0, 6] (tools/gelu_fit.py). Φ(-u) is within
// 9.1e-6 of its value, relative (f32 evaluation included; ex2.approx adds
// about 2^-22): 400 times under bf16's rounding (2^-8). About 12
// instructions where erff's two polynomials, selected per element, took
// 25; the tail itself, where 1 + erf(x/√2) cancels in f32. The f32 kernels
// keep erff.
__device__ __forceinline__ float normal_cdf_bf16(float x) {
    float u = fminf(fabsf(x), 6.0f);
    float q = -1.944835731e-06f;
    q = fmaf(q, u, 6.385870802e-05f);
    q = fmaf(q, u, -9.488553624e-04f);
    q = fmaf(q, u, 8.582305163e-03f);
    q = fmaf(q, u, -5.411815643e-02f);
    q = fmaf(q, u, -4.582976401e-01f);
    q = fmaf(q, u, -1.151324511e+00f);
    q = fmaf(q, u, -9.999869466e-01f);
    float tail = exp2_approx(q);  // Φ(-|x|)
    return x >= 0.0f ? 1.0f - tail : tail;
}

// GELU and its derivative Φ(x) + x·φ(x) by it, for bf16 outputs.
__device__ __forceinline__ float gelu_bf16(float x) { return x * normal_cdf_bf16(x); }
__device__ __forceinline__ float gelu_grad_bf16(float x) {
    // φ(x) = e^(-x²/2) / √(2π) = 2^(-x² log2(e) / 2) / √(2π)
    float pdf = 0.39894228040143268f * exp2_approx(-0.72134752044448170f * x * x);
    return normal_cdf_bf16(x) + x * pdf;
}

// The GEMM's output z [rows, I]: f32 in pre, or bf16 in pre16 when that is
// not null (the bf16 GEMMs). act = gelu(z + bias), into act16 in bf16
// instead when it is not null (act only feeds the next GEMM; by gelu_bf16,
// as bias_gelu_bf16 computes it). z + bias also
// into `saved` when not null: the f32 backward reads it there (`pre` itself;
// inference and layers below the prompt skip that write; in bf16 the
// backward reads pre16 and adds the bias again).
template <bool ACT16>
struct BiasGelu {
    const float* pre;
    const u16* pre16;
    const float* bias;
    float* saved;
    float* act;
    u16* act16;
    template <int V>
    __device__ __forceinline__ void at(u64 i, int col) const {
        float v[V], b[V];
        load_either<V>(pre, pre16, i, v);
        load_v<V>(bias + col, b);
        for (int k = 0; k < V; k++) v[k] += b[k];
        if (saved != 0) store_v<V>(saved + i, v);
        for (int k = 0; k < V; k++) v[k] = ACT16 ? gelu_bf16(v[k]) : gelu(v[k]);
        store_either<V>(act, act16, i, v);
    }
};
extern "C" __global__ void bias_gelu(const float* pre, const u16* pre16, const float* bias, float* saved,
                                     float* act, u64 n, int width, u16* act16) {
    for_each_vec_by_format<BiasGelu>(act16 != 0, n, width, aligned16(pre, pre16, bias, saved, act, act16), pre, pre16,
                                     bias, saved, act, act16);
}

// bias_gelu in bf16 with nothing saved (the bf16 forward, training's too:
// its backward reads pre16 and adds the bias again), 8 elements a thread:
// a 16-byte access of pre16 and act16 each, two of the bias. The loader
// runs it where rows are a multiple of 8 wide, every array is on 16 bytes
// and n fits in 32 bits (so do the element indices q * 8), else bias_gelu.
// The column advances by the grid's stride instead of being a remainder of
// each index, and no null pointer is tested per element: about 31
// instructions an element of the loop in SASS (sm_90) against bias_gelu's
// 44, whose erf is most of it.
extern "C" __global__ void bias_gelu_bf16(const u16* pre16, const float* bias, u16* act16, u64 n, int width) {
    u32 vectors = (u32)(n / 8), stride = gridDim.x * blockDim.x;
    u32 q = blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= vectors) return;
    u32 col = q * 8 % (u32)width, step = stride * 8 % (u32)width;
    for (; q < vectors; q += stride) {
        uint4 in = *reinterpret_cast<const uint4*>(pre16 + (u64)q * 8);
        u32 pairs[4] = {in.x, in.y, in.z, in.w};
        float v[8], b[8];
        for (int k = 0; k < 4; k++) {
            v[2 * k] = bf16_float((u16)pairs[k]);
            v[2 * k + 1] = bf16_float((u16)(pairs[k] >> 16));
        }
        ld4(bias + col, b);
        ld4(bias + col + 4, b + 4);
        for (int k = 0; k < 8; k++) v[k] = gelu_bf16(v[k] + b[k]);
        uint4 out;
        out.x = bf16x2_bits(v[0], v[1]);
        out.y = bf16x2_bits(v[2], v[3]);
        out.z = bf16x2_bits(v[4], v[5]);
        out.w = bf16x2_bits(v[6], v[7]);
        *reinterpret_cast<uint4*>(act16 + (u64)q * 8) = out;
        col += step;
        if (col >= (u32)width) col -= (u32)width;
    }
}

// d *= gelu'(x), gelu'(x) = Φ(x) + x·φ(x), at x = pre (bias_gelu's `saved`)
// or, when pre16 is not null, at x = pre16 + bias (the bf16 GEMM's output).
// The incoming d is read from d, or from dy16 in bf16 (a bf16 GEMM's
// output) when that is not null; the result goes into d16 in bf16 instead
// of d when d16 is not null (D16; by gelu_grad_bf16 then).
template <bool D16>
struct GeluBackward {
    const float* pre;
    const u16* pre16;
    const float* bias;
    float* d;
    const u16* dy16;
    u16* d16;
    template <int V>
    __device__ __forceinline__ void at(u64 i, int col) const {
        float x[V], g[V];
        load_either<V>(pre, pre16, i, x);
        if (pre16 != 0) {
            float b[V];
            load_v<V>(bias + col, b);
            for (int k = 0; k < V; k++) x[k] += b[k];
        }
        load_either<V>(d, dy16, i, g);
        for (int k = 0; k < V; k++) g[k] *= D16 ? gelu_grad_bf16(x[k]) : gelu_grad(x[k]);
        store_either<V>(d, d16, i, g);
    }
};
extern "C" __global__ void gelu_backward(const float* pre, const u16* pre16, const float* bias, float* d,
                                         const u16* dy16, u64 n, int width, u16* d16) {
    for_each_vec_by_format<GeluBackward>(d16 != 0, n, width, aligned16(pre, pre16, bias, d, dy16, d16), pre, pre16,
                                         bias, d, dy16, d16);
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
