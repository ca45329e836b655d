// The LayerNorm kernels keep a row in registers, LN_PER_THREAD elements a
// thread, and read it from global memory once. A row of up to
// 32 × LN_PER_THREAD values (1024: BERT-large's) is one warp's, and a block
// of W warps takes W consecutive rows: the sums are warp shuffles, with no
// barrier, and every row of a layer is in flight at once. A wider row (up
// to blockDim × LN_PER_THREAD: 8192 with 256 threads; the loader checks) is
// a whole block's, summed by block_sum. Thread `lane` of a row's `group`
// holds elements lane + k·group (k < LN_PER_THREAD).
#define LN_PER_THREAD 32

struct LnRow {
    u64 r;          // the row
    int lane, group;
    bool valid;     // r < rows (the last block's warps may have none)
};

// This thread's row of [rows, h], as the launch maps them: ceil(rows / W)
// blocks of W warps for h <= 32 × LN_PER_THREAD, else a block per row.
__device__ __forceinline__ LnRow ln_row(u64 rows, int h) {
    LnRow w;
    if (h <= 32 * LN_PER_THREAD) {
        w.r = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
        w.lane = threadIdx.x & 31;
        w.group = 32;
    } else {
        w.r = blockIdx.x;
        w.lane = threadIdx.x;
        w.group = blockDim.x;
    }
    w.valid = w.r < rows;
    return w;
}

// The sum of v over the threads of the row (every thread of a block-wide
// row calls it; `shared` holds 32 floats).
__device__ __forceinline__ float row_sum(const LnRow& w, float v, float* shared) {
    return w.group == 32 ? warp_sum(v) : block_sum(v, shared);
}

// This thread's elements of a row of h, V consecutive ones an access: V = 4
// where h is a multiple of 4 and every array starts on 16 bytes, else 1
// (scalar 2- and 4-byte accesses left the kernels at a quarter of the
// memory's bandwidth). Element k (k < LN_PER_THREAD) is column
// (k / V)·V·group + V·lane + k % V. FOR_ROW_VECTORS visits (k, j) for each
// access (k a multiple of V), FOR_ROW_ELEMENTS each element.
template <int V>
__device__ __forceinline__ int ln_col(const LnRow& w, int k) {
    return (k / V) * V * w.group + V * w.lane + k % V;
}
#define FOR_ROW_VECTORS(k, j, w, h, V) \
    _Pragma("unroll") for (int k = 0, j = V * (w).lane; k < LN_PER_THREAD; k += V, j += V * (w).group) if (j < h)
#define FOR_ROW_ELEMENTS(k, j, w, h, V) \
    _Pragma("unroll") for (int k = 0, j = 0; k < LN_PER_THREAD; k++) if ((j = ln_col<V>(w, k)) < h)

// Whether rows of h and these arrays (null or not) take 4-wide accesses.
template <typename... P>
__device__ __forceinline__ bool ln_vec4(int h, const P*... p) {
    return h % 4 == 0 && aligned16(p...);
}

// rows<4>(args...) where `vec4` (ln_vec4), else rows<1>(args...).
#define LN_ROWS(vec4, rows, ...)     \
    if (vec4) {                      \
        rows<4>(__VA_ARGS__);        \
    } else {                         \
        rows<1>(__VA_ARGS__);        \
    }

// LayerNorm of this thread's elements `v` of a row of h, in place: two
// passes (mean, then the mean squared deviation) in the CPU kernel's order;
// (mean, rstd) into stats when not null.
template <int V>
__device__ void layernorm_regs(const LnRow& w, float v[LN_PER_THREAD], const float* gamma, const float* beta,
                               float eps, float* stats, int h, float* shared) {
    float s = 0.0f;
    FOR_ROW_ELEMENTS(k, j, w, h, V) s += v[k];
    float mean = row_sum(w, s, shared) / h;
    float var = 0.0f;
    FOR_ROW_ELEMENTS(k, j, w, h, V) {
        float d = v[k] - mean;
        var += d * d;
    }
    var = row_sum(w, var, shared) / h;
    float rstd = 1.0f / sqrtf(var + eps);
    FOR_ROW_VECTORS(k, j, w, h, V) {
        float g[V], b[V];
        load_v<V>(gamma + j, g);
        load_v<V>(beta + j, b);
#pragma unroll
        for (int c = 0; c < V; c++) v[k + c] = (v[k + c] - mean) * rstd * g[c] + b[c];
    }
    if (stats != 0 && w.lane == 0) {
        stats[0] = mean;
        stats[1] = rstd;
    }
}

// v[c] = dropout(v[c]) of elements `at` + c when `dropout`.
template <int V>
__device__ __forceinline__ void dropout_v(float* v, u64 at, u64 key, u64 threshold, float scale, int dropout) {
    if (!dropout) return;
#pragma unroll
    for (int c = 0; c < V; c++) {
        float f = drop_factor(key, threshold, scale, at + c);
        v[c] = f == 0.0f ? 0.0f : v[c] * f;
    }
}

// ---------------------------------------------------------------------------
// Embeddings: x = LN(word[ids[r]] + position[pos[r]] + type[types[r]]), then
// dropout (element index r*H + j), and x in bf16 into x16 when not null.
// Prompt tuning (`prompt` not null): the first prompt_len rows of each
// sequence of `seq` rows read their own row of prompt [B, prompt_len, H]
// instead of a word's. Where the backward reaches the embeddings (stats not
// null), the sum goes into sum_out and (mean, rstd) into stats.
// Rows as ln_row maps them.
template <int V>
__device__ void embed_layernorm_rows(const LnRow& row, const u32* ids, const u32* pos, const u32* types,
                                     const float* word, const float* position, const float* type,
                                     const float* gamma, const float* beta, float eps, float* x, int h, u64 key,
                                     u64 threshold, float scale, int dropout, u16* x16, const float* prompt,
                                     int prompt_len, u64 seq, float* sum_out, float* stats, float* shared) {
    u64 r = row.r;
    u64 i = prompt != 0 ? r % seq : 0;
    const float* w = prompt != 0 && i < (u64)prompt_len ? prompt + ((r / seq) * prompt_len + i) * h
                                                        : word + (u64)ids[r] * h;
    const float* p = position + (u64)pos[r] * h;
    const float* t = type + (u64)types[r] * h;
    float v[LN_PER_THREAD];
    FOR_ROW_VECTORS(k, j, row, h, V) {
        float a[V], b[V], c[V];
        load_v<V>(w + j, a);
        load_v<V>(p + j, b);
        load_v<V>(t + j, c);
#pragma unroll
        for (int e = 0; e < V; e++) v[k + e] = a[e] + b[e] + c[e];
        if (stats != 0) store_v<V>(sum_out + r * h + j, v + k);
    }
    layernorm_regs<V>(row, v, gamma, beta, eps, stats == 0 ? 0 : stats + 2 * r, h, shared);
    FOR_ROW_VECTORS(k, j, row, h, V) {
        u64 at = r * h + j;
        dropout_v<V>(v + k, at, key, threshold, scale, dropout);
        store_v<V>(x + at, v + k);
        if (x16 != 0) store_v16<V>(x16 + at, v + k);
    }
}
extern "C" __global__ void embed_layernorm(const u32* ids, const u32* pos, const u32* types,
                                           const float* word, const float* position, const float* type,
                                           const float* gamma, const float* beta, float eps, float* x, int h,
                                           u64 key, u64 threshold, float scale, int dropout, u16* x16, u64 rows,
                                           const float* prompt, int prompt_len, u64 seq, float* sum_out,
                                           float* stats) {
    __shared__ float shared[32];
    const LnRow row = ln_row(rows, h);
    if (!row.valid) return;
    LN_ROWS(ln_vec4(h, word, position, type, gamma, beta, x, x16, prompt, sum_out), embed_layernorm_rows, row, ids,
            pos, types, word, position, type, gamma, beta, eps, x, h, key, threshold, scale, dropout, x16, prompt,
            prompt_len, seq, sum_out, stats, shared)
}

// ln_in = dropout(y + bias) + residual, then x_out = LN(ln_in), y the
// GEMM's output: f32, or bf16 in y16 when that is not null (the bf16
// GEMMs). Where the backward reads them (stats not null), ln_in goes into y
// (the saved LayerNorm input) and (mean, rstd) into stats. The dropout
// counter of (r, j) is r*H + j. Rows as ln_row maps them. x_out may alias
// residual (each thread reads its elements before it writes them). x_out
// in bf16 into x16 too when not null. RES16: the residual is read from
// residual16 in bf16 (inference's bf16 residual stream), and x_out is
// written only if X32. Template arguments, not tests of the pointers:
// those took the training kernel from 96 registers to 112, and spilled 80
// bytes of the inference kernel.
template <int V, bool RES16 = false, bool X32 = true>
__device__ void bias_dropout_residual_layernorm_rows(const LnRow& row, float* y, const u16* y16, const float* bias,
                                                     const float* residual, const u16* residual16,
                                                     const float* gamma, const float* beta, float eps, float* x_out,
                                                     float* stats, int h, u64 key, u64 threshold, float scale,
                                                     int dropout, u16* x16, float* shared) {
    u64 r = row.r;
    float v[LN_PER_THREAD];
    FOR_ROW_VECTORS(k, j, row, h, V) {
        u64 at = r * h + j;
        float a[V], b[V], c[V];
        load_either<V>(y, y16, at, a);
        load_v<V>(bias + j, b);
        if constexpr (RES16) {
            load_v16<V>(residual16 + at, c);
        } else {
            load_v<V>(residual + at, c);
        }
#pragma unroll
        for (int e = 0; e < V; e++) a[e] += b[e];
        dropout_v<V>(a, at, key, threshold, scale, dropout);
#pragma unroll
        for (int e = 0; e < V; e++) v[k + e] = a[e] + c[e];
        if (stats != 0) store_v<V>(y + at, v + k);
    }
    layernorm_regs<V>(row, v, gamma, beta, eps, stats == 0 ? 0 : stats + 2 * r, h, shared);
    FOR_ROW_VECTORS(k, j, row, h, V) {
        if (X32) store_v<V>(x_out + r * h + j, v + k);
        if (x16 != 0) store_v16<V>(x16 + r * h + j, v + k);
    }
}
extern "C" __global__ void bias_dropout_residual_layernorm(float* y, const u16* y16, const float* bias,
                                                           const float* residual, const float* gamma,
                                                           const float* beta, float eps, float* x_out, float* stats,
                                                           int h, u64 key, u64 threshold, float scale, int dropout,
                                                           u16* x16, u64 rows) {
    __shared__ float shared[32];
    const LnRow row = ln_row(rows, h);
    if (!row.valid) return;
    LN_ROWS(ln_vec4(h, y, y16, bias, residual, gamma, beta, x_out, x16), bias_dropout_residual_layernorm_rows, row, y,
            y16, bias, residual, (const u16*)0, gamma, beta, eps, x_out, stats, h, key, threshold, scale, dropout, x16,
            shared)
}

// The same in inference (no dropout, nothing saved), kernels of their own
// for rows a warp holds, 4-wide accesses only (h <= 32 × LN_PER_THREAD, h a
// multiple of 4, every array on 16 bytes: the loader checks, and runs the
// kernel above otherwise). Without the training and scalar paths they fit
// in 64 registers (ptxas sm_90; the kernel above takes 96), so 8 blocks of
// 4 warps share a multiprocessor instead of 5: bert-large's 4096 rows of a
// batch of 32 × 128 are in flight at once on 132 multiprocessors, one wave
// where the kernel above needs 1.55. One path a kernel: two in one spilled
// 80 to 104 bytes.
template <bool RES16, bool X32>
__device__ __forceinline__ void residual_layernorm_rows(const float* y, const u16* y16, const float* bias,
                                                        const float* residual, const u16* residual16,
                                                        const float* gamma, const float* beta, float eps, float* x_out,
                                                        int h, u16* x16, u64 rows) {
    __shared__ float shared[32];
    const LnRow row = ln_row(rows, h);
    if (!row.valid) return;
    // y is only read: nothing is saved (stats null).
    bias_dropout_residual_layernorm_rows<4, RES16, X32>(row, const_cast<float*>(y), y16, bias, residual, residual16,
                                                        gamma, beta, eps, x_out, (float*)0, h, 0ull, 0ull, 1.0f, 0,
                                                        x16, shared);
}
// f32 residual and x_out (fp32 and tf32; x16 too in bf16 training's layers
// that save nothing).
extern "C" __global__ void __launch_bounds__(128, 8)
    residual_layernorm(const float* y, const u16* y16, const float* bias, const float* residual, const float* gamma,
                       const float* beta, float eps, float* x_out, int h, u16* x16, u64 rows) {
    residual_layernorm_rows<false, true>(y, y16, bias, residual, (const u16*)0, gamma, beta, eps, x_out, h, x16, rows);
}
// bf16 inference's residual stream, bf16 alone (as PyTorch keeps a bf16
// model's): y16 and residual16 in, x16 out, 6 bytes an element where the
// kernel above moves 12 (y16, residual and x_out in f32, x16).
extern "C" __global__ void __launch_bounds__(128, 8)
    residual16_layernorm(const u16* y16, const float* bias, const u16* residual16, const float* gamma,
                         const float* beta, float eps, u16* x16, int h, u64 rows) {
    residual_layernorm_rows<true, false>((const float*)0, y16, bias, (const float*)0, residual16, gamma, beta, eps,
                                         (float*)0, h, x16, rows);
}
// The last layer's: x_out in f32 alone, for the head.
extern "C" __global__ void __launch_bounds__(128, 8)
    residual16_layernorm_f32(const u16* y16, const float* bias, const u16* residual16, const float* gamma,
                             const float* beta, float eps, float* x_out, int h, u64 rows) {
    residual_layernorm_rows<true, true>((const float*)0, y16, bias, (const float*)0, residual16, gamma, beta, eps,
                                        x_out, h, (u16*)0, rows);
}

// dx = dLN/dx · dy from the saved input and (mean, rstd); no dgamma/dbeta
// (frozen). Rows as ln_row maps them, dy and x held in registers. Fused
// with the next step of the backward, the dropout site before the
// LayerNorm's input (the residual branch's output): dropout(dx) into
// `dropped`, or into dropped16 in bf16 instead when that is not null (the
// input of the branch's bf16 GEMM), with the dropout counter of (r, j) at
// r*H + j; dx itself stays, for the residual.
template <int V>
__device__ void layernorm_backward_rows(const LnRow& row, const float* dy, const float* x, const float* gamma,
                                        const float* stats, float* dx, int h, u64 key, u64 threshold, float scale,
                                        int dropout, float* dropped, u16* dropped16, float* shared) {
    u64 r = row.r;
    const float* d = dy + r * h;
    const float* xr = x + r * h;
    float mean = stats[2 * r], rstd = stats[2 * r + 1];
    float g[LN_PER_THREAD], xhat[LN_PER_THREAD];
    float a = 0.0f, b = 0.0f;
    FOR_ROW_VECTORS(k, j, row, h, V) {
        float dv[V], gv[V], xv[V];
        load_v<V>(d + j, dv);
        load_v<V>(gamma + j, gv);
        load_v<V>(xr + j, xv);
#pragma unroll
        for (int e = 0; e < V; e++) {
            g[k + e] = dv[e] * gv[e];
            xhat[k + e] = xv[e] - mean;
        }
    }
    FOR_ROW_ELEMENTS(k, j, row, h, V) {
        a += g[k];
        b += g[k] * xhat[k];
    }
    float mean_g = row_sum(row, a, shared) / h;
    float mean_gx = row_sum(row, b, shared) * rstd / h;
    FOR_ROW_VECTORS(k, j, row, h, V) {
        u64 at = r * h + j;
        float v[V];
#pragma unroll
        for (int e = 0; e < V; e++) v[e] = rstd * (g[k + e] - mean_g - xhat[k + e] * rstd * mean_gx);
        store_v<V>(dx + at, v);
        dropout_v<V>(v, at, key, threshold, scale, dropout);
        store_either<V>(dropped, dropped16, at, v);
    }
}
extern "C" __global__ void layernorm_backward(const float* dy, const float* x, const float* gamma,
                                              const float* stats, float* dx, int h, u64 key, u64 threshold,
                                              float scale, int dropout, float* dropped, u16* dropped16, u64 rows) {
    __shared__ float shared[32];
    const LnRow row = ln_row(rows, h);
    if (!row.valid) return;
    LN_ROWS(ln_vec4(h, dy, x, gamma, dx, dropped, dropped16), layernorm_backward_rows, row, dy, x, gamma, stats, dx, h,
            key, threshold, scale, dropout, dropped, dropped16, shared)
}
