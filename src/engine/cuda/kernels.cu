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
// the GEMMs' inputs and the forward GEMMs' outputs in bf16 (below).

#ifndef HEAD_DIM
#error "compile with -DHEAD_DIM=<head dim>"
#endif

typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;

// In bf16, every GEMM input is written in bf16 by the kernel that produces
// it (a `u16*` argument, null in fp32/tf32): an activation that is needed
// later in f32 too gets both copies, one that only feeds the GEMM gets the
// bf16 copy alone. The forward's GEMMs write their outputs in bf16 too,
// which the kernel after each reads (a `const u16*` argument) with the bias
// added in f32. Round to nearest even, NaN kept quiet: what the bf16 GEMMs
// read.
__device__ __forceinline__ u16 bf16_bits(float v) {
    u32 bits = __float_as_uint(v);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (u16)((bits >> 16) | 0x40u);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (u16)(bits >> 16);
}

// A bf16 value (its bits) as f32, exactly.
__device__ __forceinline__ float bf16_float(u16 bits) { return __uint_as_float((u32)bits << 16); }

#define NEG_INF __int_as_float(0xff800000)  // -inf: masked scores, the max of nothing

// ---------------------------------------------------------------------------
// Dropout: src/engine/cpu/dropout.rs, bit for bit.
//   key = seed ^ (stream * 0x9E3779B97F4A7C15)
//   z = key + index * 0xD1B54A32D192ED03, splitmix64 finalizer, keep iff
//   (u >> 40) >= threshold, threshold = ceil(p * 2^24); kept * scale.

__device__ __forceinline__ u64 mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// The factor of element `index` at a site: scale if kept, 0 if dropped.
// `key` = seed ^ (stream * 0x9E3779B97F4A7C15), computed on the host.
__device__ __forceinline__ float drop_factor(u64 key, u64 threshold, float scale, u64 index) {
    u64 z = key + index * 0xD1B54A32D192ED03ULL;
    return (mix64(z) >> 40) >= threshold ? scale : 0.0f;
}

// x[i] = x[i] * factor(offset + i); threshold > 2^24 never keeps.
extern "C" __global__ void dropout_apply(float* x, u64 n, u64 key, u64 threshold, float scale) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        float f = drop_factor(key, threshold, scale, i);
        x[i] = f == 0.0f ? 0.0f : x[i] * f;
    }
}

// Element i of dst = dropout(v) when `enabled` (else v), into dst16 in
// bf16 instead when it is not null (a gradient that feeds a bf16 GEMM and
// nothing else).
__device__ __forceinline__ void store_dropped(float v, u64 i, u64 key, u64 threshold, float scale, int enabled,
                                              float* dst, u16* dst16) {
    if (enabled) {
        float f = drop_factor(key, threshold, scale, i);
        v = f == 0.0f ? 0.0f : v * f;
    }
    if (dst16 != 0) {
        dst16[i] = bf16_bits(v);
    } else {
        dst[i] = v;
    }
}

// dst = dropout(src) (the backward of dropout on a gradient, keeping src),
// as store_dropped writes it.
extern "C" __global__ void dropout_copy(const float* src, float* dst, u64 n, u64 key, u64 threshold,
                                        float scale, int enabled, u16* dst16) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        store_dropped(src[i], i, key, threshold, scale, enabled, dst, dst16);
}

// ---------------------------------------------------------------------------
// Block reductions (blockDim.x a multiple of 32, at most 1024).

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// The sum over the block, returned to every thread. `shared` holds 32 floats.
__device__ float block_sum(float v, float* shared) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    int warps = (blockDim.x + 31) >> 5;
    v = threadIdx.x < warps ? shared[threadIdx.x] : 0.0f;
    if (warp == 0) v = warp_sum(v);
    if (threadIdx.x == 0) shared[0] = v;
    __syncthreads();
    float total = shared[0];
    __syncthreads();
    return total;
}

// The LayerNorm kernels keep a row in registers: thread t holds elements
// t + k·blockDim (k < LN_PER_THREAD), so rows of up to LN_PER_THREAD ×
// blockDim (4096 with 256 threads; the loader checks) are read from global
// memory once.
#define LN_PER_THREAD 16
#define FOR_ROW_ELEMENTS(k, j, h) \
    _Pragma("unroll") for (int k = 0, j = threadIdx.x; k < LN_PER_THREAD; k++, j += blockDim.x) if (j < h)

// LayerNorm of this thread's elements `v` of a row of h, in place: two
// passes (mean, then the mean squared deviation) in the CPU kernel's order;
// (mean, rstd) into stats when not null.
__device__ void layernorm_regs(float v[LN_PER_THREAD], const float* gamma, const float* beta, float eps,
                               float* stats, int h, float* shared) {
    float s = 0.0f;
    FOR_ROW_ELEMENTS(k, j, h) s += v[k];
    float mean = block_sum(s, shared) / h;
    float var = 0.0f;
    FOR_ROW_ELEMENTS(k, j, h) {
        float d = v[k] - mean;
        var += d * d;
    }
    var = block_sum(var, shared) / h;
    float rstd = 1.0f / sqrtf(var + eps);
    FOR_ROW_ELEMENTS(k, j, h) v[k] = (v[k] - mean) * rstd * gamma[j] + beta[j];
    if (stats != 0 && threadIdx.x == 0) {
        stats[0] = mean;
        stats[1] = rstd;
    }
}

// ---------------------------------------------------------------------------
// Embeddings: x = LN(word[ids[r]] + position[pos[r]] + type[types[r]]), then
// dropout (element index r*H + j), and x in bf16 into x16 when not null. One
// block per row.
extern "C" __global__ void embed_layernorm(const u32* ids, const u32* pos, const u32* types,
                                           const float* word, const float* position, const float* type,
                                           const float* gamma, const float* beta, float eps, float* x, int h,
                                           u64 key, u64 threshold, float scale, int dropout, u16* x16) {
    __shared__ float shared[32];
    u64 r = blockIdx.x;
    const float* w = word + (u64)ids[r] * h;
    const float* p = position + (u64)pos[r] * h;
    const float* t = type + (u64)types[r] * h;
    float v[LN_PER_THREAD];
    FOR_ROW_ELEMENTS(k, j, h) v[k] = w[j] + p[j] + t[j];
    layernorm_regs(v, gamma, beta, eps, 0, h, shared);
    FOR_ROW_ELEMENTS(k, j, h) {
        float o = v[k];
        if (dropout) {
            float f = drop_factor(key, threshold, scale, r * h + j);
            o = f == 0.0f ? 0.0f : o * f;
        }
        x[r * h + j] = o;
        if (x16 != 0) x16[r * h + j] = bf16_bits(o);
    }
}

// ln_in = dropout(y + bias) + residual, then x_out = LN(ln_in), y the
// GEMM's output: f32, or bf16 in y16 when that is not null (the bf16
// GEMMs). Where the backward reads them (stats not null), ln_in goes into y
// (the saved LayerNorm input) and (mean, rstd) into stats. The dropout
// counter of (r, j) is r*H + j. One block per row. x_out may alias residual
// (each thread reads its elements before it writes them). x_out in bf16
// into x16 too when not null.
extern "C" __global__ void bias_dropout_residual_layernorm(float* y, const u16* y16, const float* bias,
                                                           const float* residual, const float* gamma,
                                                           const float* beta, float eps, float* x_out, float* stats,
                                                           int h, u64 key, u64 threshold, float scale, int dropout,
                                                           u16* x16) {
    __shared__ float shared[32];
    u64 r = blockIdx.x;
    const float* res = residual + r * h;
    float v[LN_PER_THREAD];
    FOR_ROW_ELEMENTS(k, j, h) {
        u64 at = r * h + j;
        float a = (y16 != 0 ? bf16_float(y16[at]) : y[at]) + bias[j];
        if (dropout) {
            float f = drop_factor(key, threshold, scale, at);
            a = f == 0.0f ? 0.0f : a * f;
        }
        v[k] = a + res[j];
        if (stats != 0) y[at] = v[k];
    }
    layernorm_regs(v, gamma, beta, eps, stats == 0 ? 0 : stats + 2 * r, h, shared);
    FOR_ROW_ELEMENTS(k, j, h) {
        x_out[r * h + j] = v[k];
        if (x16 != 0) x16[r * h + j] = bf16_bits(v[k]);
    }
}

// dx = dLN/dx · dy from the saved input and (mean, rstd); no dgamma/dbeta
// (frozen). One block per row. Fused with the next step of the backward,
// the dropout site before the LayerNorm's input (the residual branch's
// output): dropout(dx) into `dropped`, or into dropped16 in bf16 instead
// when that is not null (the input of the branch's bf16 GEMM), with the
// dropout counter of (r, j) at r*H + j; dx itself stays, for the residual.
extern "C" __global__ void layernorm_backward(const float* dy, const float* x, const float* gamma,
                                              const float* stats, float* dx, int h, u64 key, u64 threshold,
                                              float scale, int dropout, float* dropped, u16* dropped16) {
    __shared__ float shared[32];
    u64 r = blockIdx.x;
    const float* d = dy + r * h;
    const float* xr = x + r * h;
    float mean = stats[2 * r], rstd = stats[2 * r + 1];
    float a = 0.0f, b = 0.0f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        float g = d[j] * gamma[j];
        a += g;
        b += g * (xr[j] - mean);
    }
    float mean_g = block_sum(a, shared) / h;
    float mean_gx = block_sum(b, shared) * rstd / h;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        u64 at = r * h + j;
        float xhat = (xr[j] - mean) * rstd;
        float v = rstd * (d[j] * gamma[j] - mean_g - xhat * mean_gx);
        dx[at] = v;
        store_dropped(v, at, key, threshold, scale, dropout, dropped, dropped16);
    }
}

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

// ---------------------------------------------------------------------------
// Losses of the heads, src/engine/cpu/loss.rs on the device. The host sums
// the per-row terms they leave in f64, as the CPU functions do.
//
// Softmax cross-entropy of row r (of `rows`): its `classes` logits at
// z[r * row_stride + c * col_stride] (col_stride 2 reads one column of the
// QA head's [B·T, 2]), against labels[r], a row with a negative label being
// ignored (zero gradient and term). Into dz, at the same places,
// (softmax - onehot) * weight; into row_loss[r], lse - z[label]. One thread
// per row: C is a few classes, or T positions for QA spans.
extern "C" __global__ void cross_entropy(const float* z, float* dz, const int* labels, float* row_loss, int rows,
                                         int classes, int row_stride, int col_stride, float weight) {
    for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += gridDim.x * blockDim.x) {
        const float* zr = z + (u64)r * row_stride;
        float* dr = dz + (u64)r * row_stride;
        int y = labels[r];
        if (y < 0) {
            for (int c = 0; c < classes; c++) dr[c * col_stride] = 0.0f;
            row_loss[r] = 0.0f;
            continue;
        }
        float m = NEG_INF;
        for (int c = 0; c < classes; c++) m = fmaxf(m, zr[c * col_stride]);
        float s = 0.0f;
        for (int c = 0; c < classes; c++) {
            float e = expf(zr[c * col_stride] - m);
            dr[c * col_stride] = e;
            s += e;
        }
        float inv_s = 1.0f / s;
        for (int c = 0; c < classes; c++) dr[c * col_stride] *= inv_s * weight;
        dr[y * col_stride] -= weight;
        row_loss[r] = m + logf(s) - zr[y * col_stride];
    }
}

// Squared error of x [n] against t [n]: diff[i] = x - t (the host sums its
// squares), dx = 2 * diff * weight.
extern "C" __global__ void squared_error(const float* x, const float* t, float* dx, float* diff, int n, float weight) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        float d = x[i] - t[i];
        diff[i] = d;
        dx[i] = 2.0f * d * weight;
    }
}

// ---------------------------------------------------------------------------
// Attention with a deep prompt, flash-style: a block of 64 threads takes a
// tile of 32 queries (or, for dK/dV, 32 keys) of one (batch row, head) and
// streams the other side through shared memory in tiles of 32, so the
// T x N score matrix never reaches global memory. Scores and products are
// small register-tiled matrix products in shared memory: thread (ti, tj) =
// (tid / 8, tid % 8) owns tile rows ti + 8r and tile columns tj + 8c
// (r, c < 4) of a score tile, and the same rows by head dims c*32 + 4tj .. +3
// of an output tile, so the softmax state of its rows is in its own
// registers (the 8 threads of a row meet by warp shuffles). Rows 8 apart
// and a row stride of HD + 4 floats put the 8 rows that a quarter-warp
// reads as 16-byte vectors on 8 distinct groups of banks.
//
// qkv [rows, 3H] (q | k | v, head h at h*HD) without its bias, qkv_bias [3H]
// (added as rows are read; null: none); prefix [B, P, 2H] (keys | values;
// this layer's slice of expand_prefix's output) with `prefix_row_stride` =
// P*2H; mask [B, T] (1 real, 0 padding). Key j < P is
// prefix key j, key P + t is token t. Masked keys get probability exactly 0,
// as HF's f32::MIN bias gives (a row with no visible key at all, P = 0 and
// only padding, is uniform over its T keys, as in HF).
//
// Dropout on the probabilities numbers element (b, h, i, j) by its flat index
// in [B, NH, T, N]; the softmax denominator is computed before dropout.
// ctx [rows, H] and its bf16 copy ctx16, each when not null (bf16 inference
// needs only the copy, the next GEMM's input); lse [B, NH, T]
// (log-sum-exp of the scaled scores, for the backward) when not null.

#if HEAD_DIM % 4 != 0
#error "HEAD_DIM must be a multiple of 4"
#endif
#define TILE 32                       // queries and keys per tile
#define ROW (HEAD_DIM + 4)            // shared row stride: 16-byte rows, rows on distinct banks
#define PROW (TILE + 4)               // the same for a [TILE, TILE] tile
#define CHUNKS ((HEAD_DIM + 31) / 32)  // 4-wide column groups of a thread in an output tile

// The attention kernels' tiles live in dynamic shared memory, sized at
// launch by Kernel::shared_bytes (device.rs), which follows the carving
// below (over 48 KB for large heads, so the loader raises the limit).
#ifndef ATTENTION_SHARED
#define ATTENTION_SHARED extern __shared__ __align__(16) float smem[]
#endif

__device__ __forceinline__ void ld4(const float* p, float* out) {
    float4 v = *reinterpret_cast<const float4*>(p);
    out[0] = v.x;
    out[1] = v.y;
    out[2] = v.z;
    out[3] = v.w;
}

__device__ __forceinline__ void st4(float* p, const float* v) {
    float4 x;
    x.x = v[0];
    x.y = v[1];
    x.z = v[2];
    x.w = v[3];
    *reinterpret_cast<float4*>(p) = x;
}

// c[i][j] += sum_k a[i*lda + k] * b[j*ldb + k] (i, j < 4; kn a multiple of 4).
__device__ __forceinline__ void mm_nt(const float* a, int lda, const float* b, int ldb, int kn, float c[4][4]) {
    for (int k = 0; k < kn; k += 4) {
        float x[4][4], y[4][4];
#pragma unroll
        for (int r = 0; r < 4; r++) {
            ld4(a + r * lda + k, x[r]);
            ld4(b + r * ldb + k, y[r]);
        }
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++)
                c[i][j] += x[i][0] * y[j][0] + x[i][1] * y[j][1] + x[i][2] * y[j][2] + x[i][3] * y[j][3];
    }
}

// c[i][j] += sum_k a[i*lda + k] * b[k*ldb + j].
__device__ __forceinline__ void mm_nn(const float* a, int lda, const float* b, int ldb, int kn, float c[4][4]) {
    for (int k = 0; k < kn; k += 4) {
        float x[4][4], y[4][4];
#pragma unroll
        for (int r = 0; r < 4; r++) {
            ld4(a + r * lda + k, x[r]);
            ld4(b + (k + r) * ldb, y[r]);
        }
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++)
                c[i][j] += x[i][0] * y[0][j] + x[i][1] * y[1][j] + x[i][2] * y[2][j] + x[i][3] * y[3][j];
    }
}

// c[i][j] += sum_k a[k*lda + i*astep] * b[k*ldb + j].
__device__ __forceinline__ void mm_tn(const float* a, int astep, int lda, const float* b, int ldb, int kn,
                                      float c[4][4]) {
    for (int k = 0; k < kn; k++) {
        float x[4], y[4];
#pragma unroll
        for (int i = 0; i < 4; i++) x[i] = a[k * lda + i * astep];
        ld4(b + k * ldb, y);
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) c[i][j] += x[i] * y[j];
    }
}

// The max and the sum over the 8 threads of a tile row (lanes 8r .. 8r+7).
__device__ __forceinline__ float row_max(float v) {
    for (int o = 1; o < 8; o <<= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float row_sum(float v) {
    for (int o = 1; o < 8; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// A row of HEAD_DIM values to load, f32 at `at` or bf16 at `at16` (the one
// not null), and the bias to add to it (null: none).
struct RowRef {
    const float* at;
    const u16* at16;
    const float* bias;
    // The row `n` elements further (the same source).
    __device__ RowRef offset(int n) const {
        return {at != 0 ? at + n : 0, at16 != 0 ? at16 + n : 0, bias != 0 ? bias + n : 0};
    }
    // Element d, its bias added.
    __device__ float operator[](int d) const {
        float v = at16 != 0 ? bf16_float(at16[d]) : at[d];
        return bias != 0 ? v + bias[d] : v;
    }
};

// Where the attention of batch row b, head hh reads queries, keys and
// values: qkv [rows, 3H] as the GEMM wrote it (f32, or bf16 in qkv16 when
// that is not null: the bf16 GEMMs' output), without its bias, which is
// added as the rows are read (qkv_bias [3H]; null in the kernel checks),
// instead of a pass over qkv per layer; and this layer's prefix keys and
// values [B, P, 2H] (keys | values, batch rows `prefix_row_stride` apart),
// which have none. Key j < P is prefix key j, key P + t is token t.
struct QkvRows {
    const float* qkv;
    const u16* qkv16;
    const float *bias, *prefix;
    u64 prefix_row_stride;
    int b, hh, t, p, h;
    // Token row i of qkv from column `col` on, with the bias from `col`.
    __device__ RowRef token(int i, int col) const {
        u64 at = ((u64)b * t + i) * 3 * h + col;
        return {qkv16 != 0 ? 0 : qkv + at, qkv16 != 0 ? qkv16 + at : 0, bias != 0 ? bias + col : 0};
    }
    __device__ RowRef q(int i) const { return token(i, hh * HEAD_DIM); }
    __device__ RowRef k(int j) const {
        if (j < p) return {prefix + b * prefix_row_stride + (u64)j * 2 * h + hh * HEAD_DIM, 0, 0};
        return token(j - p, h + hh * HEAD_DIM);
    }
    // H columns past the key, in qkv and in the prefix alike.
    __device__ RowRef v(int j) const { return k(j).offset(h); }
};

// Row i of a [rows, H] gradient (dO) for batch row b, head hh: f32 in d,
// or bf16 in d16 when that is not null (the bf16 GEMM's output).
__device__ __forceinline__ RowRef grad_row(const float* d, const u16* d16, int b, int hh, int i, int t, int h) {
    u64 at = ((u64)b * t + i) * h + hh * HEAD_DIM;
    return {d16 != 0 ? 0 : d + at, d16 != 0 ? d16 + at : 0, 0};
}

// Whether key j takes part: j < n and (visible, or none is: a uniform row).
__device__ __forceinline__ bool key_used(const float* mask, int b, int j, int t, int p, int any) {
    return j < p + t && (!any || j < p || mask[(u64)b * t + (j - p)] != 0.0f);
}

// Whether batch row b has any visible key (a prefix, or a real token).
__device__ int any_visible(const float* mask, int b, int t, int p) {
    int any = p > 0;
    for (int j = 0; j < t && !any; j++) any = mask[(u64)b * t + j] != 0.0f;
    return any;
}

// Elements d .. d + 3 of `row`, its bias added, times `scale` (one 16-byte
// load each, 8 bytes from bf16).
__device__ __forceinline__ void row_values(RowRef row, int d, float scale, float v[4]) {
    if (row.at16 != 0) {
        u64 bits = *reinterpret_cast<const u64*>(row.at16 + d);
#pragma unroll
        for (int c = 0; c < 4; c++) v[c] = bf16_float((u16)(bits >> (16 * c)));
    } else {
        ld4(row.at + d, v);
    }
    if (row.bias != 0) {
        float bias[4];
        ld4(row.bias + d, bias);
#pragma unroll
        for (int c = 0; c < 4; c++) v[c] += bias[c];
    }
#pragma unroll
    for (int c = 0; c < 4; c++) v[c] *= scale;
}

// Rows r0 .. r0 + TILE of a [*, HD] strided source into a [TILE, ROW] shared
// tile, plus their bias, times `scale`; rows at or past `count` are zeros.
// `src(r)` is row r's RowRef. Called by every thread of the block.
template <typename Src>
__device__ __forceinline__ void load_tile(float* dst, int r0, int count, float scale, Src src) {
    for (int e = threadIdx.x; e < TILE * (HEAD_DIM / 4); e += blockDim.x) {
        int r = e / (HEAD_DIM / 4), d = (e % (HEAD_DIM / 4)) * 4;
        float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (r0 + r < count) row_values(src(r0 + r), d, scale, v);
        st4(dst + r * ROW + d, v);
    }
}

// The key and value tiles j0 .. j0 + TILE (zeros past the last key).
__device__ __forceinline__ void load_kv_tiles(float* ks, float* vs, const QkvRows& src, int j0, int n_keys) {
    load_tile(ks, j0, n_keys, 1.0f, [&](int j) { return src.k(j); });
    load_tile(vs, j0, n_keys, 1.0f, [&](int j) { return src.v(j); });
}

// Four gradients at element `at` of d(qkv): f32, or bf16 when dqkv16 is set.
__device__ __forceinline__ void store_grad(float* dqkv, u16* dqkv16, u64 at, const float* v) {
    if (dqkv16 != 0) {
#pragma unroll
        for (int d = 0; d < 4; d++) dqkv16[at + d] = bf16_bits(v[d]);
    } else {
        st4(dqkv + at, v);
    }
}

// Output tile columns of thread tj: c*32 + 4tj, when inside the head.
__device__ __forceinline__ bool chunk_in(int c, int tj) { return c * 32 + 4 * tj < HEAD_DIM; }

extern "C" __global__ void attention_forward(const float* qkv, const u16* qkv16, const float* qkv_bias, const float* prefix,
                                             u64 prefix_row_stride, const float* mask, float* ctx, float* lse, int t, int p, int nh,
                                             float scale, u64 key, u64 threshold, float dscale, int dropout,
                                             u16* ctx16) {
    ATTENTION_SHARED;  // 3 [TILE, ROW] + 1 [TILE, PROW]
    float *qs = smem, *ks = qs + TILE * ROW, *vs = ks + TILE * ROW, *ps = vs + TILE * ROW;
    int b = blockIdx.z, hh = blockIdx.y, i0 = blockIdx.x * TILE;
    int ti = threadIdx.x >> 3, tj = threadIdx.x & 7;
    int h = nh * HEAD_DIM, n = p + t;
    int any = any_visible(mask, b, t, p);
    const QkvRows src{qkv, qkv16, qkv_bias, prefix, prefix_row_stride, b, hh, t, p, h};
    load_tile(qs, i0, t, scale, [&](int i) { return src.q(i); });

    float o[CHUNKS][4][4] = {}, m[4] = {NEG_INF, NEG_INF, NEG_INF, NEG_INF}, l[4] = {};
    for (int j0 = 0; j0 < n; j0 += TILE) {
        __syncthreads();
        load_kv_tiles(ks, vs, src, j0, n);
        __syncthreads();
        float s[4][4] = {};
        mm_nt(qs + ti * ROW, 8 * ROW, ks + tj * ROW, 8 * ROW, HEAD_DIM, s);
        bool used[4];
#pragma unroll
        for (int c = 0; c < 4; c++) used[c] = key_used(mask, b, j0 + tj + 8 * c, t, p, any);
#pragma unroll
        for (int r = 0; r < 4; r++) {
            float mx = NEG_INF;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                // No visible key: every score is f32::MIN in HF, a uniform row.
                s[r][c] = used[c] ? (any ? s[r][c] : 0.0f) : NEG_INF;
                mx = fmaxf(mx, s[r][c]);
            }
            float m_new = fmaxf(m[r], row_max(mx));
            float base = m_new == NEG_INF ? 0.0f : m_new;
            float corr = expf(m[r] - base), sum = 0.0f, w[4];
            int i = i0 + ti + 8 * r;
            u64 drop_base = (((u64)b * nh + hh) * t + min(i, t - 1)) * n + j0 + tj;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                float e = expf(s[r][c] - base);
                sum += e;
                w[c] = dropout && e != 0.0f ? e * drop_factor(key, threshold, dscale, drop_base + 8 * c) : e;
            }
#pragma unroll
            for (int c = 0; c < 4; c++) ps[(ti + 8 * r) * PROW + tj + 8 * c] = w[c];
            l[r] = l[r] * corr + row_sum(sum);
            m[r] = m_new;
#pragma unroll
            for (int c = 0; c < CHUNKS; c++)
#pragma unroll
                for (int d = 0; d < 4; d++) o[c][r][d] *= corr;
        }
        __syncthreads();
#pragma unroll
        for (int c = 0; c < CHUNKS; c++)
            if (chunk_in(c, tj)) mm_nn(ps + ti * PROW, 8 * PROW, vs + c * 32 + 4 * tj, ROW, TILE, o[c]);
    }
#pragma unroll
    for (int r = 0; r < 4; r++) {
        int i = i0 + ti + 8 * r;
        if (i >= t) continue;
        float inv = 1.0f / l[r];
        u64 row_at = ((u64)b * t + i) * h + hh * HEAD_DIM;
#pragma unroll
        for (int c = 0; c < CHUNKS; c++) {
            if (!chunk_in(c, tj)) continue;
            float v[4];
#pragma unroll
            for (int d = 0; d < 4; d++) v[d] = o[c][r][d] * inv;
            u64 at = row_at + c * 32 + 4 * tj;
            if (ctx != 0) st4(ctx + at, v);
            if (ctx16 != 0) {
#pragma unroll
                for (int d = 0; d < 4; d++) ctx16[at + d] = bf16_bits(v[d]);
            }
        }
        if (lse != 0 && tj == 0) lse[((u64)b * nh + hh) * t + i] = m[r] + logf(l[r]);
    }
}

// ---------------------------------------------------------------------------
// Attention on the tensor cores (mma.sync, f32 accumulation), forward and
// backward, in two input formats: bf16 (m16n8k16) for --precision bf16 and
// tf32 (m16n8k8) for --precision tf32. The functions of the f32 kernels
// above, with q, k, v, dO, the probabilities and dS rounded to the format
// where they enter a product, as the GEMMs of that precision round their
// inputs. The three kernels of a format round alike, so the backward
// recomputes exactly the forward's scores. The loader uses them when the
// head size allows (bf16: a multiple of 16, tf32: of 8; other sizes do not
// build them), the format's self-test passed on the device and their shared
// memory fits in a block.
//
// A block of 4 warps takes 64 queries (dK/dV: 64 keys), 16 per warp; the
// other side streams through shared memory 64 at a time. Fragments (PTX ISA,
// mma.sync.aligned; g = lane / 4, t = lane % 4):
//   C (16 x 8, f32, both formats): c0, c1 = (row g, cols 2t, 2t + 1);
//     c2, c3 = the same columns of row g + 8.
//   bf16, m16n8k16, two k in a register (the lower k in the lower half):
//     A (16 x 16): a0 = (row g, k 2t..2t+1), a1 = (g + 8, 2t..),
//       a2 = (g, 2t + 8..), a3 = (g + 8, 2t + 8..);
//     B (16 x 8): b0 = (k 2t..2t+1, col g), b1 = (k 2t + 8.., col g).
//   tf32, m16n8k8, one k in a register:
//     A (16 x 8): a0 = (row g, k t), a1 = (g + 8, t), a2 = (g, t + 4),
//       a3 = (g + 8, t + 4);
//     B (8 x 8): b0 = (k t, col g), b1 = (k t + 4, col g).
// In both, a product over the head takes, at k offset kk, the registers at
// kk + PER_REG*t and kk + PER_REG*t + K/2 of rows g and g + 8 of A and of
// row g of B: one loop serves both (mma_rows_by_rows).
// Scores turn into probabilities (and dS) in registers and feed the next
// product as its A operand (mma_tiles_by_cols). In bf16 two neighbouring C
// tiles are exactly an A fragment. In tf32 a C tile holds columns 2t and
// 2t + 1 where A wants t and t + 4; the product sums over those columns, so
// A's column t is taken to be the tile's column 2t and t + 4 to be 2t + 1,
// and B's rows are read in that same order.

#define MMA_ROWS 64          // queries (keys) per block and per streamed tile
#define KT (MMA_ROWS / 8)    // C tiles across 64 columns
#define DT (HEAD_DIM / 8)    // C tiles across the head
#define VROW (MMA_ROWS + 8)  // bf16 row stride of transposed [HD, 64] tiles

#if HEAD_DIM % 8 == 0
#ifndef MMA_EMULATED
// d = a · b + c for one warp with the mma.sync `instr`. It needs sm_80; the
// loader enables these kernels from compute capability 8.0 only, and before
// it they give NaN, which the self-test rejects.
#if __CUDA_ARCH__ >= 800
#define MMA_SYNC(instr, d, a, b, c)                                                                              \
    asm volatile(instr " {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"                         \
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])                                              \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),     \
                   "f"(c[2]), "f"(c[3]))
#else
#define MMA_SYNC(instr, d, a, b, c) \
    for (int e = 0; e < 4; e++) d[e] = __int_as_float(0x7fc00000)
#endif
__device__ __forceinline__ void mma_bf16_16816(float d[4], const u32 a[4], const u32 b[2], const float c[4]) {
    MMA_SYNC("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", d, a, b, c);
}
__device__ __forceinline__ void mma_tf32_1688(float d[4], const u32 a[4], const u32 b[2], const float c[4]) {
    MMA_SYNC("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32", d, a, b, c);
}
#endif

// bf16: two k in a register. The B operand of a product with C tiles needs
// two neighbouring rows of M in one register, so such tiles also get a
// transposed copy [HD, VROW].
struct Bf16Format {
    typedef u16 T;
    static constexpr int K = 16, PER_REG = 2, STRIDE = HEAD_DIM + 8;  // STRIDE: of [64, HD] tiles
    static constexpr bool TRANSPOSED = true;
    __device__ static T round(float v) { return bf16_bits(v); }
    // v rounded to 4 consecutive elements at p (8-byte aligned).
    __device__ static void store4(T* p, const float v[4]) {
        *reinterpret_cast<u64*>(p) = (u64)pack(v[0], v[1]) | ((u64)pack(v[2], v[3]) << 32);
    }
    __device__ static u32 reg(const T* p) { return *reinterpret_cast<const u32*>(p); }
    __device__ static u32 pack(float lo, float hi) { return (u32)bf16_bits(lo) | ((u32)bf16_bits(hi) << 16); }
    __device__ static void mma(float d[4], const u32 a[4], const u32 b[2], const float c[4]) {
        mma_bf16_16816(d, a, b, c);
    }
    // A from C tiles nt and nt + 1 (16 rows, 16 columns).
    __device__ static void a_from_tiles(const float w[KT][4], int nt, u32 x[4]) {
        x[0] = pack(w[nt][0], w[nt][1]);
        x[1] = pack(w[nt][2], w[nt][3]);
        x[2] = pack(w[nt + 1][0], w[nt + 1][1]);
        x[3] = pack(w[nt + 1][2], w[nt + 1][3]);
    }
    // B: rows nt*8 .. nt*8 + 16 of M, column col, from M transposed (`m`).
    __device__ static void b_from_cols(const T* m, int nt, int col, int tq, u32 y[2]) {
        const T* p = m + col * VROW + nt * 8 + 2 * tq;
        y[0] = reg(p);
        y[1] = reg(p + 8);
    }
};

// tf32: one k in a register, the f32 rounded to tf32 as cvt.rna.tf32.f32
// does (to nearest, ties away from zero; the low 13 bits zero; NaN kept).
// B of a product with C tiles is read from the row-major tile itself: rows
// 2t and 2t + 1 of a tile with a stride of 4 (mod 32) floats sit on
// distinct banks.
struct Tf32Format {
    typedef float T;
    static constexpr int K = 8, PER_REG = 1, STRIDE = HEAD_DIM + 4;
    static constexpr bool TRANSPOSED = false;
    __device__ static T round(float v) {
        u32 bits = __float_as_uint(v);
        if ((bits & 0x7fffffffu) > 0x7f800000u) return v;
        return __uint_as_float((bits + 0x1000u) & 0xffffe000u);
    }
    __device__ static u32 reg(const T* p) { return __float_as_uint(*p); }
    // v rounded to 4 consecutive elements at p (16-byte aligned).
    __device__ static void store4(T* p, const float v[4]) {
        float x[4] = {round(v[0]), round(v[1]), round(v[2]), round(v[3])};
        st4(p, x);
    }
    __device__ static u32 pack(float lo, float) { return __float_as_uint(round(lo)); }
    __device__ static void mma(float d[4], const u32 a[4], const u32 b[2], const float c[4]) {
        mma_tf32_1688(d, a, b, c);
    }
    // A from C tile nt: A's column t is the tile's column 2t, t + 4 is 2t + 1.
    __device__ static void a_from_tiles(const float w[KT][4], int nt, u32 x[4]) {
        x[0] = pack(w[nt][0], 0.0f);
        x[1] = pack(w[nt][2], 0.0f);
        x[2] = pack(w[nt][1], 0.0f);
        x[3] = pack(w[nt][3], 0.0f);
    }
    // B: rows nt*8 + 2t and nt*8 + 2t + 1 of M (in A's column order), column
    // col, from the row-major tile `m` [64, STRIDE].
    __device__ static void b_from_cols(const T* m, int nt, int col, int tq, u32 y[2]) {
        const T* p = m + (nt * 8 + 2 * tq) * STRIDE + col;
        y[0] = reg(p);
        y[1] = reg(p + STRIDE);
    }
};

// c[nt] += A (16 rows of `a`) · B[nt]ᵀ over the head, for the KT tiles of 8
// rows of `b` (both [*, STRIDE] tiles of format F): scores (or dP) of 16
// rows against 64 columns.
template <typename F>
__device__ __forceinline__ void mma_rows_by_rows(const typename F::T* a, const typename F::T* b, float c[KT][4], int g,
                                                 int tq) {
#pragma unroll
    for (int kk = 0; kk < HEAD_DIM; kk += F::K) {
        const typename F::T* ar = a + g * F::STRIDE + kk + F::PER_REG * tq;
        u32 x[4] = {F::reg(ar), F::reg(ar + 8 * F::STRIDE), F::reg(ar + F::K / 2),
                    F::reg(ar + 8 * F::STRIDE + F::K / 2)};
#pragma unroll
        for (int nt = 0; nt < KT; nt++) {
            const typename F::T* br = b + (nt * 8 + g) * F::STRIDE + kk + F::PER_REG * tq;
            u32 y[2] = {F::reg(br), F::reg(br + F::K / 2)};
            F::mma(c[nt], x, y, c[nt]);
        }
    }
}

// o[dn] += W (16 x 64, the C tiles w) · M (64 x HD), M as cols_tile stores
// it: probabilities times values, dS times keys or queries.
template <typename F>
__device__ __forceinline__ void mma_tiles_by_cols(const float w[KT][4], const typename F::T* m, float o[DT][4], int g,
                                                  int tq) {
#pragma unroll
    for (int nt = 0; nt < KT; nt += F::K / 8) {
        u32 x[4];
        F::a_from_tiles(w, nt, x);
#pragma unroll
        for (int dn = 0; dn < DT; dn++) {
            u32 y[2];
            F::b_from_cols(m, nt, dn * 8 + g, tq, y);
            F::mma(o[dn], x, y, o[dn]);
        }
    }
}

// Where mma_tiles_by_cols reads a tile that is read as rows too: in bf16 a
// transposed copy carved at `next` (which then moves past it), in tf32 the
// rows themselves.
template <typename F>
__device__ __forceinline__ typename F::T* cols_tile(typename F::T* rows, typename F::T*& next) {
    if (!F::TRANSPOSED) return rows;
    typename F::T* c = next;
    next += HEAD_DIM * VROW;
    return c;
}

// Shared memory from its start as [64, STRIDE] tiles of format F, one per
// entry of `tiles`; returns where the rest starts.
template <typename F, int N>
__device__ __forceinline__ typename F::T* carve_tiles(float* smem, typename F::T* (&tiles)[N]) {
    typename F::T* at = reinterpret_cast<typename F::T*>(smem);
    for (int i = 0; i < N; i++) {
        tiles[i] = at;
        at += MMA_ROWS * F::STRIDE;
    }
    return at;
}

// Rows r0 .. r0 + 64 of a strided [*, HD] f32 source, times `scale`, rounded
// to format F, into `rows` [64, STRIDE] and into `cols` (transposed,
// [HD, VROW]) when it is another tile; either may be null. Zeros from row
// `count` on. Every thread calls it.
template <typename F, typename Src>
__device__ __forceinline__ void load_mma_tile(typename F::T* rows, typename F::T* cols, int r0, int count, float scale,
                                              Src src) {
    if (cols != 0 && cols != rows) {
        // One element per thread: consecutive threads then write their
        // transposed elements on 8 banks, where 4-wide groups would put them
        // on 2.
        for (int e = threadIdx.x; e < MMA_ROWS * HEAD_DIM; e += blockDim.x) {
            int r = e / HEAD_DIM, d = e % HEAD_DIM;
            typename F::T v = F::round(r0 + r < count ? src(r0 + r)[d] * scale : 0.0f);
            if (rows != 0) rows[r * F::STRIDE + d] = v;
            cols[d * VROW + r] = v;
        }
        return;
    }
    // Rows alone: 4 elements per thread, one 16-byte load and one store.
    for (int e = threadIdx.x; e < MMA_ROWS * (HEAD_DIM / 4); e += blockDim.x) {
        int r = e / (HEAD_DIM / 4), d = (e % (HEAD_DIM / 4)) * 4;
        float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (r0 + r < count) row_values(src(r0 + r), d, scale, v);
        F::store4(rows + r * F::STRIDE + d, v);
    }
}

// f(nt, e, col, r) for every element e of the KT C tiles nt of a thread:
// column col = nt*8 + 2tq + (e & 1) of the 64, row g + 8r with r = e >> 1.
template <typename Fn>
__device__ __forceinline__ void each_element(int tq, Fn f) {
#pragma unroll
    for (int nt = 0; nt < KT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) f(nt, e, nt * 8 + 2 * tq + (e & 1), e >> 1);
}

// Where a block of a tensor-core kernel works: batch row b, head hh; this
// thread's warp and fragment coordinates g = lane / 4, tq = lane % 4; H,
// the number of keys n = P + T, and whether any key is visible.
struct MmaBlock {
    int b, hh, warp, g, tq, h, n, any;
    __device__ MmaBlock(const float* mask, int t, int p, int nh)
        : b(blockIdx.z), hh(blockIdx.y), warp(threadIdx.x >> 5), g((threadIdx.x & 31) >> 2), tq(threadIdx.x & 3),
          h(nh * HEAD_DIM), n(p + t), any(any_visible(mask, blockIdx.z, t, p)) {}
};

// Checks format F's fragment layout above on this device: one warp
// multiplies A[r][k] = (r + 2k) % 7 - 3 by B[k][n] = (3k + n) % 5 - 2 (small
// integers, exact in bf16, tf32 and the sums) and writes D [16, 8]
// row-major to `out`; the loader compares it with the product (over K) it
// computes itself.
template <typename F>
__device__ __forceinline__ void mma_self_test(float* out) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    auto av = [](int r, int k) { return (float)((r + 2 * k) % 7 - 3); };
    auto bv = [](int k, int n) { return (float)((3 * k + n) % 5 - 2); };
    u32 a[4], b[2];
    for (int i = 0; i < 4; i++) {
        int r = g + 8 * (i & 1), k = F::PER_REG * t + F::K / 2 * (i >> 1);
        a[i] = F::pack(av(r, k), av(r, k + 1));
    }
    for (int i = 0; i < 2; i++) {
        int k = F::PER_REG * t + F::K / 2 * i;
        b[i] = F::pack(bv(k, g), bv(k + 1, g));
    }
    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f}, d[4];
    F::mma(d, a, b, c);
    out[g * 8 + 2 * t] = d[0];
    out[g * 8 + 2 * t + 1] = d[1];
    out[(g + 8) * 8 + 2 * t] = d[2];
    out[(g + 8) * 8 + 2 * t + 1] = d[3];
}

// A gradient into d(qkv) [rows, 3H] at `at`: f32, or bf16 when dqkv16 is set.
__device__ __forceinline__ void store_grad1(float* dqkv, u16* dqkv16, u64 at, float v) {
    if (dqkv16 != 0) {
        dqkv16[at] = bf16_bits(v);
    } else {
        dqkv[at] = v;
    }
}

// Arguments and outputs as attention_forward's.
template <typename F>
__device__ __forceinline__ void attention_forward_tc(const float* qkv, const u16* qkv16, const float* qkv_bias, const float* prefix,
                                                     u64 prefix_row_stride, const float* mask, float* ctx, float* lse, int t, int p, int nh,
                                                     float scale, u64 key, u64 threshold, float dscale, int dropout,
                                                     u16* ctx16) {
    typedef typename F::T T;
    ATTENTION_SHARED;  // q, k [64, STRIDE]; v as mma_tiles_by_cols reads it
    T* tiles[2];
    T* vs = carve_tiles<F>(smem, tiles);  // v: its rows in tf32, transposed only in bf16
    T *qs = tiles[0], *ks = tiles[1], *next = vs;
    T* vc = cols_tile<F>(vs, next);
    const MmaBlock blk(mask, t, p, nh);
    const QkvRows src{qkv, qkv16, qkv_bias, prefix, prefix_row_stride, blk.b, blk.hh, t, p, blk.h};
    int i0 = blockIdx.x * MMA_ROWS;
    load_mma_tile<F>(qs, (T*)0, i0, t, scale,
                     [&](int i) { return src.q(i); });
    // Rows g and g + 8 of this warp's 16 queries: running max and sum.
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};
    float o[DT][4] = {};
    int rows[2] = {i0 + blk.warp * 16 + blk.g, i0 + blk.warp * 16 + blk.g + 8};
    const T* qw = qs + blk.warp * 16 * F::STRIDE;
    for (int j0 = 0; j0 < blk.n; j0 += MMA_ROWS) {
        __syncthreads();
        load_mma_tile<F>(ks, (T*)0, j0, blk.n, 1.0f, [&](int j) { return src.k(j); });
        load_mma_tile<F>(F::TRANSPOSED ? (T*)0 : vs, vc, j0, blk.n, 1.0f, [&](int j) { return src.v(j); });
        __syncthreads();
        float s[KT][4] = {};
        mma_rows_by_rows<F>(qw, ks, s, blk.g, blk.tq);
        // Mask, then the online softmax of rows g (e = 0, 1) and g + 8 (e = 2, 3).
        float mx[2] = {NEG_INF, NEG_INF};
        each_element(blk.tq, [&](int nt, int e, int col, int r) {
            bool used = key_used(mask, blk.b, j0 + col, t, p, blk.any);
            s[nt][e] = used ? (blk.any ? s[nt][e] : 0.0f) : NEG_INF;
            mx[r] = fmaxf(mx[r], s[nt][e]);
        });
        float base[2], corr[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int r = 0; r < 2; r++) {
            for (int o2 = 1; o2 < 4; o2 <<= 1) mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], o2));
            float m_new = fmaxf(m[r], mx[r]);
            base[r] = m_new == NEG_INF ? 0.0f : m_new;
            corr[r] = expf(m[r] - base[r]);
            m[r] = m_new;
        }
        each_element(blk.tq, [&](int nt, int e, int col, int r) {
            float ex = expf(s[nt][e] - base[r]);
            sum[r] += ex;
            u64 at = (((u64)blk.b * nh + blk.hh) * t + min(rows[r], t - 1)) * blk.n + j0 + col;
            s[nt][e] = dropout && ex != 0.0f ? ex * drop_factor(key, threshold, dscale, at) : ex;
        });
#pragma unroll
        for (int r = 0; r < 2; r++) {
            for (int o2 = 1; o2 < 4; o2 <<= 1) sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], o2);
            l[r] = l[r] * corr[r] + sum[r];
        }
#pragma unroll
        for (int dn = 0; dn < DT; dn++)
#pragma unroll
            for (int e = 0; e < 4; e++) o[dn][e] *= corr[e >> 1];
        mma_tiles_by_cols<F>(s, vc, o, blk.g, blk.tq);
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int i = rows[r];
        if (i >= t) continue;
        float inv = 1.0f / l[r];
        u64 at = ((u64)blk.b * t + i) * blk.h + blk.hh * HEAD_DIM;
#pragma unroll
        for (int dn = 0; dn < DT; dn++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                float v = o[dn][2 * r + e] * inv;
                if (ctx != 0) ctx[at + dn * 8 + 2 * blk.tq + e] = v;
                if (ctx16 != 0) ctx16[at + dn * 8 + 2 * blk.tq + e] = bf16_bits(v);
            }
        if (lse != 0 && blk.tq == 0) lse[((u64)blk.b * nh + blk.hh) * t + i] = m[r] + logf(l[r]);
    }
}

// Arguments and outputs as attention_backward_dq's.
template <typename F>
__device__ __forceinline__ void attention_backward_dq_tc(const float* qkv, const u16* qkv16, const float* qkv_bias,
                                                         const float* prefix, u64 prefix_row_stride, const float* mask, const float* dctx, const u16* dctx16, const float* lse,
                                                         const float* delta, float* dqkv, int t, int p, int nh,
                                                         float scale, u64 key, u64 threshold, float dscale,
                                                         int dropout, u16* dqkv16) {
    typedef typename F::T T;
    ATTENTION_SHARED;  // q, dO, k, v [64, STRIDE]; k as mma_tiles_by_cols reads it
    T* tiles[4];
    T* next = carve_tiles<F>(smem, tiles);
    T *qs = tiles[0], *dos = tiles[1], *ks = tiles[2], *vs = tiles[3];
    T* kc = cols_tile<F>(ks, next);
    const MmaBlock blk(mask, t, p, nh);
    const QkvRows src{qkv, qkv16, qkv_bias, prefix, prefix_row_stride, blk.b, blk.hh, t, p, blk.h};
    int i0 = blockIdx.x * MMA_ROWS;
    load_mma_tile<F>(qs, (T*)0, i0, t, scale,
                     [&](int i) { return src.q(i); });
    load_mma_tile<F>(dos, (T*)0, i0, t, 1.0f,
                     [&](int i) { return grad_row(dctx, dctx16, blk.b, blk.hh, i, t, blk.h); });
    int rows[2] = {i0 + blk.warp * 16 + blk.g, i0 + blk.warp * 16 + blk.g + 8};
    float li[2], di[2];
    for (int r = 0; r < 2; r++) {
        u64 stat = ((u64)blk.b * nh + blk.hh) * t + min(rows[r], t - 1);
        li[r] = lse[stat];
        di[r] = delta[stat];
    }
    float dq[DT][4] = {};
    const T* qw = qs + blk.warp * 16 * F::STRIDE;
    const T* dw = dos + blk.warp * 16 * F::STRIDE;
    for (int j0 = 0; j0 < blk.n; j0 += MMA_ROWS) {
        __syncthreads();
        load_mma_tile<F>(ks, kc, j0, blk.n, 1.0f, [&](int j) { return src.k(j); });
        load_mma_tile<F>(vs, (T*)0, j0, blk.n, 1.0f, [&](int j) { return src.v(j); });
        __syncthreads();
        float s[KT][4] = {}, dp[KT][4] = {};
        mma_rows_by_rows<F>(qw, ks, s, blk.g, blk.tq);
        mma_rows_by_rows<F>(dw, vs, dp, blk.g, blk.tq);
        each_element(blk.tq, [&](int nt, int e, int col, int r) {
            int j = j0 + col;
            // A uniform row (no visible key) does not depend on q or k.
            float pr = key_used(mask, blk.b, j, t, p, blk.any) && blk.any && rows[r] < t ? expf(s[nt][e] - li[r]) : 0.0f;
            u64 at = (((u64)blk.b * nh + blk.hh) * t + rows[r]) * blk.n + j;
            float dpv = dropout && pr != 0.0f ? dp[nt][e] * drop_factor(key, threshold, dscale, at) : dp[nt][e];
            s[nt][e] = pr * (dpv - di[r]) * scale;  // dS
        });
        mma_tiles_by_cols<F>(s, kc, dq, blk.g, blk.tq);
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        if (rows[r] >= t) continue;
        u64 at = ((u64)blk.b * t + rows[r]) * 3 * blk.h + blk.hh * HEAD_DIM;
#pragma unroll
        for (int dn = 0; dn < DT; dn++)
#pragma unroll
            for (int e = 0; e < 2; e++) store_grad1(dqkv, dqkv16, at + dn * 8 + 2 * blk.tq + e, dq[dn][2 * r + e]);
    }
}

// Arguments and outputs as attention_backward_dkv's: a block per 64 keys.
template <typename F>
__device__ __forceinline__ void attention_backward_dkv_tc(const float* qkv, const u16* qkv16, const float* qkv_bias,
                                                          const float* prefix, u64 prefix_row_stride, const float* mask, const float* dctx, const u16* dctx16,
                                                          const float* lse, const float* delta, float* dqkv,
                                                          float* dprefix, int t, int p, int nh, int n_keys,
                                                          float scale, u64 key, u64 threshold, float dscale,
                                                          int dropout, u16* dqkv16) {
    typedef typename F::T T;
    ATTENTION_SHARED;  // k, v, q, dO [64, STRIDE]; q, dO as mma_tiles_by_cols reads them; f32 lse, delta [64]
    T* tiles[4];
    T* next = carve_tiles<F>(smem, tiles);
    T *ks = tiles[0], *vs = tiles[1], *qs = tiles[2], *dos = tiles[3];
    T* qc = cols_tile<F>(qs, next);
    T* doc = cols_tile<F>(dos, next);
    float* ls = reinterpret_cast<float*>(next);
    float* dl = ls + MMA_ROWS;
    const MmaBlock blk(mask, t, p, nh);
    const QkvRows src{qkv, qkv16, qkv_bias, prefix, prefix_row_stride, blk.b, blk.hh, t, p, blk.h};
    int j0 = blockIdx.x * MMA_ROWS;
    load_mma_tile<F>(ks, (T*)0, j0, n_keys, 1.0f, [&](int j) { return src.k(j); });
    load_mma_tile<F>(vs, (T*)0, j0, n_keys, 1.0f, [&](int j) { return src.v(j); });
    int keys[2] = {j0 + blk.warp * 16 + blk.g, j0 + blk.warp * 16 + blk.g + 8};
    bool used[2];
    for (int r = 0; r < 2; r++) used[r] = keys[r] < n_keys && key_used(mask, blk.b, keys[r], t, p, blk.any);
    float dk[DT][4] = {}, dv[DT][4] = {};
    const T* kw = ks + blk.warp * 16 * F::STRIDE;
    const T* vw = vs + blk.warp * 16 * F::STRIDE;
    u64 stat0 = ((u64)blk.b * nh + blk.hh) * t;
    for (int i0 = 0; i0 < t; i0 += MMA_ROWS) {
        __syncthreads();
        load_mma_tile<F>(qs, qc, i0, t, scale,
                         [&](int i) { return src.q(i); });
        load_mma_tile<F>(dos, doc, i0, t, 1.0f,
                         [&](int i) { return grad_row(dctx, dctx16, blk.b, blk.hh, i, t, blk.h); });
        for (int e = threadIdx.x; e < MMA_ROWS; e += blockDim.x) {
            ls[e] = i0 + e < t ? lse[stat0 + i0 + e] : 0.0f;
            dl[e] = i0 + e < t ? delta[stat0 + i0 + e] : 0.0f;
        }
        __syncthreads();
        // Sᵀ and dPᵀ: 16 keys of this warp against 64 queries.
        float st[KT][4] = {}, dpt[KT][4] = {};
        mma_rows_by_rows<F>(kw, qs, st, blk.g, blk.tq);
        mma_rows_by_rows<F>(vw, dos, dpt, blk.g, blk.tq);
        each_element(blk.tq, [&](int nt, int e, int c, int r) {
            int i = i0 + c;
            // A uniform row averages the values: dV but no dK.
            float pr = used[r] && i < t ? expf((blk.any ? st[nt][e] : 0.0f) - ls[c]) : 0.0f;
            float f = dropout && pr != 0.0f ? drop_factor(key, threshold, dscale, (stat0 + i) * blk.n + keys[r]) : 1.0f;
            dpt[nt][e] = blk.any ? pr * (dpt[nt][e] * f - dl[c]) : 0.0f;  // dSᵀ
            st[nt][e] = pr * f;                                             // (P · dropout)ᵀ
        });
        mma_tiles_by_cols<F>(st, doc, dv, blk.g, blk.tq);
        mma_tiles_by_cols<F>(dpt, qc, dk, blk.g, blk.tq);  // q holds q * scale: dK = scale · dSᵀ q
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int j = keys[r];
        if (j >= n_keys) continue;
#pragma unroll
        for (int dn = 0; dn < DT; dn++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int col = dn * 8 + 2 * blk.tq + e;
                if (j < p) {
                    float* out = dprefix + ((u64)blk.b * p + j) * 2 * blk.h + blk.hh * HEAD_DIM;
                    out[col] = dk[dn][2 * r + e];
                    out[blk.h + col] = dv[dn][2 * r + e];
                } else if (dqkv != 0 || dqkv16 != 0) {
                    u64 at = ((u64)blk.b * t + (j - p)) * 3 * blk.h + blk.h + blk.hh * HEAD_DIM + col;
                    store_grad1(dqkv, dqkv16, at, dk[dn][2 * r + e]);
                    store_grad1(dqkv, dqkv16, at + blk.h, dv[dn][2 * r + e]);
                }
            }
    }
}

// The kernels of one format: mma_self_test_<fmt> and
// attention_{forward,backward_dq,backward_dkv}_<fmt>, whose arguments are
// those of the f32 kernels.
#define TENSOR_CORE_ATTENTION(fmt, F)                                                                                \
    extern "C" __global__ void mma_self_test_##fmt(float* out) { mma_self_test<F>(out); }                           \
    extern "C" __global__ void attention_forward_##fmt(                                                             \
        const float* qkv, const u16* qkv16, const float* qkv_bias, const float* prefix, u64 prefix_row_stride, const float* mask,      \
        float* ctx, float* lse, int t, int p, int nh, float scale, u64 key, u64 threshold, float dscale, int dropout, \
        u16* ctx16) {                                                                                                \
        attention_forward_tc<F>(qkv, qkv16, qkv_bias, prefix, prefix_row_stride, mask, ctx, lse, t, p, nh, scale, key,     \
                                threshold, dscale, dropout, ctx16);                                                  \
    }                                                                                                                \
    extern "C" __global__ void attention_backward_dq_##fmt(                                                         \
        const float* qkv, const u16* qkv16, const float* qkv_bias, const float* prefix, u64 prefix_row_stride, const float* mask,      \
        const float* dctx, const u16* dctx16, const float* lse, const float* delta, float* dqkv, int t, int p, int nh, float scale,     \
        u64 key, u64 threshold, float dscale, int dropout, u16* dqkv16) {                                            \
        attention_backward_dq_tc<F>(qkv, qkv16, qkv_bias, prefix, prefix_row_stride, mask, dctx, dctx16, lse, delta, dqkv, t, p,   \
                                    nh, scale, key, threshold, dscale, dropout, dqkv16);                             \
    }                                                                                                                \
    extern "C" __global__ void attention_backward_dkv_##fmt(                                                        \
        const float* qkv, const u16* qkv16, const float* qkv_bias, const float* prefix, u64 prefix_row_stride, const float* mask,      \
        const float* dctx, const u16* dctx16, const float* lse, const float* delta, float* dqkv, float* dprefix, int t, int p, int nh,  \
        int n_keys, float scale, u64 key, u64 threshold, float dscale, int dropout, u16* dqkv16) {                   \
        attention_backward_dkv_tc<F>(qkv, qkv16, qkv_bias, prefix, prefix_row_stride, mask, dctx, dctx16, lse, delta, dqkv,        \
                                     dprefix, t, p, nh, n_keys, scale, key, threshold, dscale, dropout, dqkv16);     \
    }

TENSOR_CORE_ATTENTION(tf32, Tf32Format)
#if HEAD_DIM % 16 == 0
TENSOR_CORE_ATTENTION(bf16, Bf16Format)
#endif
#endif  // HEAD_DIM % 8 == 0

// delta[b, h, i] = dctx_i · ctx_i (per head): the softmax backward's row
// term; dctx f32, or bf16 in dctx16 when that is not null.
extern "C" __global__ void attention_delta(const float* ctx, const float* dctx, const u16* dctx16, float* delta,
                                           int rows, int nh, int t) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    int hh = blockIdx.y;
    if (r >= rows) return;
    int h = nh * HEAD_DIM;
    u64 at = (u64)r * h + hh * HEAD_DIM;
    const RowRef d = grad_row(dctx, dctx16, 0, hh, r, 0, h);
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < HEAD_DIM; k++) s += ctx[at + k] * d[k];
    // rows are b*T + i; delta is [B, NH, T]
    int b = r / t, i = r % t;
    delta[((u64)b * nh + hh) * t + i] = s;
}

// dQ: a block per tile of 32 queries, keys streamed as in the forward:
//   P_ij = exp(s_ij - lse_i), dP_ij = drop_ij * (dO_i · V_j),
//   dS_ij = P_ij (dP_ij - delta_i), dq_i = scale * sum_j dS_ij K_j.
// Writes the q columns of dqkv [rows, 3H], or of dqkv16 in bf16 when that
// is not null.
extern "C" __global__ void attention_backward_dq(const float* qkv, const u16* qkv16, const float* qkv_bias, const float* prefix,
                                                 u64 prefix_row_stride, const float* mask, const float* dctx, const u16* dctx16, const float* lse,
                                                 const float* delta, float* dqkv, int t, int p, int nh,
                                                 float scale, u64 key, u64 threshold, float dscale,
                                                 int dropout, u16* dqkv16) {
    ATTENTION_SHARED;  // 4 [TILE, ROW] + 1 [TILE, PROW]
    float *qs = smem, *dos = qs + TILE * ROW, *ks = dos + TILE * ROW, *vs = ks + TILE * ROW;
    float* dss = vs + TILE * ROW;
    int b = blockIdx.z, hh = blockIdx.y, i0 = blockIdx.x * TILE;
    int ti = threadIdx.x >> 3, tj = threadIdx.x & 7;
    int h = nh * HEAD_DIM, n = p + t;
    int any = any_visible(mask, b, t, p);
    const QkvRows src{qkv, qkv16, qkv_bias, prefix, prefix_row_stride, b, hh, t, p, h};
    load_tile(qs, i0, t, scale, [&](int i) { return src.q(i); });
    load_tile(dos, i0, t, 1.0f, [&](int i) { return grad_row(dctx, dctx16, b, hh, i, t, h); });
    float li[4], di[4], dq[CHUNKS][4][4] = {};
#pragma unroll
    for (int r = 0; r < 4; r++) {
        int i = min(i0 + ti + 8 * r, t - 1);
        li[r] = lse[((u64)b * nh + hh) * t + i];
        di[r] = delta[((u64)b * nh + hh) * t + i];
    }
    for (int j0 = 0; j0 < n; j0 += TILE) {
        __syncthreads();
        load_kv_tiles(ks, vs, src, j0, n);
        __syncthreads();
        float s[4][4] = {}, dp[4][4] = {};
        mm_nt(qs + ti * ROW, 8 * ROW, ks + tj * ROW, 8 * ROW, HEAD_DIM, s);
        mm_nt(dos + ti * ROW, 8 * ROW, vs + tj * ROW, 8 * ROW, HEAD_DIM, dp);
        bool used[4];
#pragma unroll
        for (int c = 0; c < 4; c++) used[c] = key_used(mask, b, j0 + tj + 8 * c, t, p, any);
#pragma unroll
        for (int r = 0; r < 4; r++) {
            int i = i0 + ti + 8 * r;
            u64 drop_base = (((u64)b * nh + hh) * t + min(i, t - 1)) * n + j0 + tj;
            float ds[4];
#pragma unroll
            for (int c = 0; c < 4; c++) {
                // A uniform row (no visible key) does not depend on q or k.
                float pr = used[c] && any && i < t ? expf(s[r][c] - li[r]) : 0.0f;
                float dpv = dropout && pr != 0.0f ? dp[r][c] * drop_factor(key, threshold, dscale, drop_base + 8 * c)
                                                  : dp[r][c];
                ds[c] = pr * (dpv - di[r]) * scale;
            }
#pragma unroll
            for (int c = 0; c < 4; c++) dss[(ti + 8 * r) * PROW + tj + 8 * c] = ds[c];
        }
        __syncthreads();
#pragma unroll
        for (int c = 0; c < CHUNKS; c++)
            if (chunk_in(c, tj)) mm_nn(dss + ti * PROW, 8 * PROW, ks + c * 32 + 4 * tj, ROW, TILE, dq[c]);
    }
#pragma unroll
    for (int r = 0; r < 4; r++) {
        int i = i0 + ti + 8 * r;
        if (i >= t) continue;
        u64 at = ((u64)b * t + i) * 3 * h + hh * HEAD_DIM;
#pragma unroll
        for (int c = 0; c < CHUNKS; c++)
            if (chunk_in(c, tj)) store_grad(dqkv, dqkv16, at + c * 32 + 4 * tj, dq[c][r]);
    }
}

// dK and dV: a block per tile of 32 keys (keys 0 .. n_keys: all of them, or
// the prefix keys alone at the lowest prefixed layer), queries streamed
// through shared memory:
//   dV_j = sum_i P_ij drop_ij dO_i,  dK_j = scale * sum_i dS_ij q_i.
// Token keys go to the k and v columns of dqkv [rows, 3H], or of dqkv16 in
// bf16 (when one is not null); prefix keys to dprefix [B, P, 2H] (per batch
// row, reduced afterwards). Masked keys get zero gradients.
extern "C" __global__ void attention_backward_dkv(const float* qkv, const u16* qkv16, const float* qkv_bias, const float* prefix,
                                                  u64 prefix_row_stride, const float* mask, const float* dctx, const u16* dctx16, const float* lse,
                                                  const float* delta, float* dqkv, float* dprefix, int t, int p,
                                                  int nh, int n_keys, float scale, u64 key, u64 threshold,
                                                  float dscale, int dropout, u16* dqkv16) {
    ATTENTION_SHARED;  // 4 [TILE, ROW] + 2 [TILE, PROW] + 2 [TILE]
    float *ks = smem, *vs = ks + TILE * ROW, *qs = vs + TILE * ROW, *dos = qs + TILE * ROW;
    float* pds = dos + TILE * ROW;  // [query][key]: P * dropout
    float* dss = pds + TILE * PROW;  // [query][key]: dS
    float *ls = dss + TILE * PROW, *dl = ls + TILE;
    int b = blockIdx.z, hh = blockIdx.y, j0 = blockIdx.x * TILE;
    int ti = threadIdx.x >> 3, tj = threadIdx.x & 7;
    int h = nh * HEAD_DIM, n = p + t;
    int any = any_visible(mask, b, t, p);
    const QkvRows src{qkv, qkv16, qkv_bias, prefix, prefix_row_stride, b, hh, t, p, h};
    load_kv_tiles(ks, vs, src, j0, n_keys);
    bool used[4];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        int j = j0 + ti + 8 * r;
        used[r] = j < n_keys && key_used(mask, b, j, t, p, any);
    }
    float dk[CHUNKS][4][4] = {}, dv[CHUNKS][4][4] = {};
    u64 stat0 = ((u64)b * nh + hh) * t;
    for (int i0 = 0; i0 < t; i0 += TILE) {
        __syncthreads();
        load_tile(qs, i0, t, scale, [&](int i) { return src.q(i); });
        load_tile(dos, i0, t, 1.0f, [&](int i) { return grad_row(dctx, dctx16, b, hh, i, t, h); });
        for (int e = threadIdx.x; e < TILE; e += blockDim.x) {
            ls[e] = i0 + e < t ? lse[stat0 + i0 + e] : 0.0f;
            dl[e] = i0 + e < t ? delta[stat0 + i0 + e] : 0.0f;
        }
        __syncthreads();
        float st[4][4] = {}, dpt[4][4] = {};
        mm_nt(ks + ti * ROW, 8 * ROW, qs + tj * ROW, 8 * ROW, HEAD_DIM, st);
        mm_nt(vs + ti * ROW, 8 * ROW, dos + tj * ROW, 8 * ROW, HEAD_DIM, dpt);
#pragma unroll
        for (int c = 0; c < 4; c++) {
            int ii = tj + 8 * c, i = i0 + ii;
            float pd[4], ds[4];
#pragma unroll
            for (int r = 0; r < 4; r++) {
                int j = j0 + ti + 8 * r;
                // A uniform row (no visible key) averages the values: dV but
                // no dK, as it does not depend on the keys.
                float pr = used[r] && i < t ? expf((any ? st[r][c] : 0.0f) - ls[ii]) : 0.0f;
                float f = dropout && pr != 0.0f ? drop_factor(key, threshold, dscale, (stat0 + i) * n + j) : 1.0f;
                pd[r] = pr * f;
                ds[r] = any ? pr * (dpt[r][c] * f - dl[ii]) : 0.0f;
            }
#pragma unroll
            for (int r = 0; r < 4; r++) {
                pds[ii * PROW + ti + 8 * r] = pd[r];
                dss[ii * PROW + ti + 8 * r] = ds[r];
            }
        }
        __syncthreads();
#pragma unroll
        for (int c = 0; c < CHUNKS; c++) {
            if (!chunk_in(c, tj)) continue;
            mm_tn(pds + ti, 8, PROW, dos + c * 32 + 4 * tj, ROW, TILE, dv[c]);
            mm_tn(dss + ti, 8, PROW, qs + c * 32 + 4 * tj, ROW, TILE, dk[c]);
        }
    }
#pragma unroll
    for (int r = 0; r < 4; r++) {
        int j = j0 + ti + 8 * r;
        if (j >= n_keys) continue;
        if (j < p) {
            float* kout = dprefix + ((u64)b * p + j) * 2 * h + hh * HEAD_DIM;
#pragma unroll
            for (int c = 0; c < CHUNKS; c++) {
                if (!chunk_in(c, tj)) continue;
                st4(kout + c * 32 + 4 * tj, dk[c][r]);
                st4(kout + h + c * 32 + 4 * tj, dv[c][r]);
            }
        } else if (dqkv != 0 || dqkv16 != 0) {
            u64 at = ((u64)b * t + (j - p)) * 3 * h + h + hh * HEAD_DIM;
#pragma unroll
            for (int c = 0; c < CHUNKS; c++) {
                if (!chunk_in(c, tj)) continue;
                store_grad(dqkv, dqkv16, at + c * 32 + 4 * tj, dk[c][r]);
                store_grad(dqkv, dqkv16, at + h + c * 32 + 4 * tj, dv[c][r]);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The optimizer on a device-resident prefix table (training on a GPU).

// AdamW as src/training/adamw.rs computes it, operation by operation and
// without fused multiply-adds (the _rn intrinsics), so the result is the
// host's bit for bit:
//   p *= decay; m = b1·m + (1 − b1)·g; v = b2·v + ((1 − b2)·g)·g;
//   p −= (step_size·m) / (√v / bc2_sqrt + eps).
// `one_minus_b1`, `one_minus_b2` are computed in f32 on the host, as there.
extern "C" __global__ void adamw_step(float* p, const float* g, float* m, float* v, u64 n, float decay, float b1,
                                      float one_minus_b1, float b2, float one_minus_b2, float step_size,
                                      float bc2_sqrt, float eps) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        float gi = g[i];
        float pi = __fmul_rn(p[i], decay);
        float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(one_minus_b1, gi));
        float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(one_minus_b2, gi), gi));
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
        p[i] = __fsub_rn(pi, __fdiv_rn(__fmul_rn(step_size, mi), denom));
        m[i] = mi;
        v[i] = vi;
    }
}

// x *= s (gradient clipping), rounded as the host's f32 product.
extern "C" __global__ void scale(float* x, u64 n, float s) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        x[i] = __fmul_rn(x[i], s);
}

// partial[block] = Σ x² over the block's grid-stride share, in f64 (the
// host adds the partials: the gradient's squared norm for clipping).
extern "C" __global__ void sum_squares(const float* x, u64 n, double* partial) {
    __shared__ double part[1024];
    double s = 0.0;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        s += (double)x[i] * (double)x[i];
    part[threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (unsigned k = 0; k < blockDim.x; k++) total += part[k];
        partial[blockIdx.x] = total;
    }
}

// ---------------------------------------------------------------------------
// Glue.

// The deep prompt of every row from the prefix encoder's output, with the
// prefix dropout of src/model/prefix.rs (PrefixEncoder::expand): past
// [P, W] with W = Ls*2H, kv [Ls, B, P, 2H], element (k, b, i, c) =
// past[i, k*2H + c] * factor((b*P + i)*W + k*2H + c).
extern "C" __global__ void expand_prefix(const float* past, float* kv, int layers, int batch, int p, int two_h,
                                         u64 key, u64 threshold, float scale, int dropout) {
    u64 w = (u64)layers * two_h;
    u64 n = (u64)layers * batch * p * two_h;
    for (u64 e = blockIdx.x * (u64)blockDim.x + threadIdx.x; e < n; e += (u64)gridDim.x * blockDim.x) {
        u64 c = e % two_h, i = (e / two_h) % p, b = (e / ((u64)two_h * p)) % batch;
        u64 k = e / ((u64)two_h * p * batch);
        u64 col = k * two_h + c;
        float v = past[i * w + col];
        if (dropout) {
            float f = drop_factor(key, threshold, scale, (b * p + i) * w + col);
            v = f == 0.0f ? 0.0f : v * f;
        }
        kv[e] = v;
    }
}

// Its backward (PrefixEncoder::reduce): d_past[i, k*2H + c] (+)=
// sum_b dkv[k, b, i, c] * factor((b*P + i)*W + k*2H + c), added to d_past
// when `accumulate` (a gradient kept on the device across backwards).
extern "C" __global__ void reduce_prefix(const float* dkv, float* d_past, int layers, int batch, int p,
                                         int two_h, u64 key, u64 threshold, float scale, int dropout,
                                         int accumulate) {
    u64 w = (u64)layers * two_h;
    u64 n = (u64)p * w;
    for (u64 e = blockIdx.x * (u64)blockDim.x + threadIdx.x; e < n; e += (u64)gridDim.x * blockDim.x) {
        u64 i = e / w, col = e % w, k = col / two_h, c = col % two_h;
        float s = 0.0f;
        for (u64 b = 0; b < (u64)batch; b++) {
            float v = dkv[((k * batch + b) * p + i) * two_h + c];
            if (dropout) {
                float f = drop_factor(key, threshold, scale, (b * p + i) * w + col);
                v = f == 0.0f ? 0.0f : v * f;
            }
            s += v;
        }
        d_past[e] = accumulate ? d_past[e] + s : s;
    }
}

// dst[r] = src[r * stride .. + h]: gathers the [CLS] rows (stride T*H).
extern "C" __global__ void gather_rows(const float* src, float* dst, int rows, int h, u64 stride) {
    for (u64 e = blockIdx.x * (u64)blockDim.x + threadIdx.x; e < (u64)rows * h; e += (u64)gridDim.x * blockDim.x) {
        u64 r = e / h, c = e % h;
        dst[e] = src[r * stride + c];
    }
}

// dst[r * stride + c] = src[r * h + c] (dst zeroed beforehand).
extern "C" __global__ void scatter_rows(const float* src, float* dst, int rows, int h, u64 stride) {
    for (u64 e = blockIdx.x * (u64)blockDim.x + threadIdx.x; e < (u64)rows * h; e += (u64)gridDim.x * blockDim.x) {
        u64 r = e / h, c = e % h;
        dst[r * stride + c] = src[e];
    }
}

// y[r, c] = bias[c] for every row: a GEMM with beta = 1 then adds x·Wᵀ.
extern "C" __global__ void broadcast_rows(const float* bias, float* y, int rows, int width) {
    for (u64 e = blockIdx.x * (u64)blockDim.x + threadIdx.x; e < (u64)rows * width; e += (u64)gridDim.x * blockDim.x)
        y[e] = bias[e % width];
}
