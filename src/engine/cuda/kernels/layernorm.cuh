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

#define FOR_ROW_ELEMENTS(k, j, w, h) \
    _Pragma("unroll") for (int k = 0, j = (w).lane; k < LN_PER_THREAD; k++, j += (w).group) if (j < h)

// LayerNorm of this thread's elements `v` of a row of h, in place: two
// passes (mean, then the mean squared deviation) in the CPU kernel's order;
// (mean, rstd) into stats when not null.
__device__ void layernorm_regs(const LnRow& w, float v[LN_PER_THREAD], const float* gamma, const float* beta,
                               float eps, float* stats, int h, float* shared) {
    float s = 0.0f;
    FOR_ROW_ELEMENTS(k, j, w, h) s += v[k];
    float mean = row_sum(w, s, shared) / h;
    float var = 0.0f;
    FOR_ROW_ELEMENTS(k, j, w, h) {
        float d = v[k] - mean;
        var += d * d;
    }
    var = row_sum(w, var, shared) / h;
    float rstd = 1.0f / sqrtf(var + eps);
    FOR_ROW_ELEMENTS(k, j, w, h) v[k] = (v[k] - mean) * rstd * gamma[j] + beta[j];
    if (stats != 0 && w.lane == 0) {
        stats[0] = mean;
        stats[1] = rstd;
    }
}

// ---------------------------------------------------------------------------
// Embeddings: x = LN(word[ids[r]] + position[pos[r]] + type[types[r]]), then
// dropout (element index r*H + j), and x in bf16 into x16 when not null.
// Rows as ln_row maps them.
extern "C" __global__ void embed_layernorm(const u32* ids, const u32* pos, const u32* types,
                                           const float* word, const float* position, const float* type,
                                           const float* gamma, const float* beta, float eps, float* x, int h,
                                           u64 key, u64 threshold, float scale, int dropout, u16* x16, u64 rows) {
    __shared__ float shared[32];
    const LnRow row = ln_row(rows, h);
    if (!row.valid) return;
    u64 r = row.r;
    const float* w = word + (u64)ids[r] * h;
    const float* p = position + (u64)pos[r] * h;
    const float* t = type + (u64)types[r] * h;
    float v[LN_PER_THREAD];
    FOR_ROW_ELEMENTS(k, j, row, h) v[k] = w[j] + p[j] + t[j];
    layernorm_regs(row, v, gamma, beta, eps, 0, h, shared);
    FOR_ROW_ELEMENTS(k, j, row, h) {
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
// counter of (r, j) is r*H + j. Rows as ln_row maps them. x_out may alias
// residual (each thread reads its elements before it writes them). x_out
// in bf16 into x16 too when not null.
extern "C" __global__ void bias_dropout_residual_layernorm(float* y, const u16* y16, const float* bias,
                                                           const float* residual, const float* gamma,
                                                           const float* beta, float eps, float* x_out, float* stats,
                                                           int h, u64 key, u64 threshold, float scale, int dropout,
                                                           u16* x16, u64 rows) {
    __shared__ float shared[32];
    const LnRow row = ln_row(rows, h);
    if (!row.valid) return;
    u64 r = row.r;
    const float* res = residual + r * h;
    float v[LN_PER_THREAD];
    FOR_ROW_ELEMENTS(k, j, row, h) {
        u64 at = r * h + j;
        float a = (y16 != 0 ? bf16_float(y16[at]) : y[at]) + bias[j];
        if (dropout) {
            float f = drop_factor(key, threshold, scale, at);
            a = f == 0.0f ? 0.0f : a * f;
        }
        v[k] = a + res[j];
        if (stats != 0) y[at] = v[k];
    }
    layernorm_regs(row, v, gamma, beta, eps, stats == 0 ? 0 : stats + 2 * r, h, shared);
    FOR_ROW_ELEMENTS(k, j, row, h) {
        x_out[r * h + j] = v[k];
        if (x16 != 0) x16[r * h + j] = bf16_bits(v[k]);
    }
}

// dx = dLN/dx · dy from the saved input and (mean, rstd); no dgamma/dbeta
// (frozen). Rows as ln_row maps them, dy and x held in registers. Fused
// with the next step of the backward, the dropout site before the
// LayerNorm's input (the residual branch's output): dropout(dx) into
// `dropped`, or into dropped16 in bf16 instead when that is not null (the
// input of the branch's bf16 GEMM), with the dropout counter of (r, j) at
// r*H + j; dx itself stays, for the residual.
extern "C" __global__ void layernorm_backward(const float* dy, const float* x, const float* gamma,
                                              const float* stats, float* dx, int h, u64 key, u64 threshold,
                                              float scale, int dropout, float* dropped, u16* dropped16, u64 rows) {
    __shared__ float shared[32];
    const LnRow row = ln_row(rows, h);
    if (!row.valid) return;
    u64 r = row.r;
    const float* d = dy + r * h;
    const float* xr = x + r * h;
    float mean = stats[2 * r], rstd = stats[2 * r + 1];
    float g[LN_PER_THREAD], xhat[LN_PER_THREAD];
    float a = 0.0f, b = 0.0f;
    FOR_ROW_ELEMENTS(k, j, row, h) {
        g[k] = d[j] * gamma[j];
        xhat[k] = xr[j] - mean;
        a += g[k];
        b += g[k] * xhat[k];
    }
    float mean_g = row_sum(row, a, shared) / h;
    float mean_gx = row_sum(row, b, shared) * rstd / h;
    FOR_ROW_ELEMENTS(k, j, row, h) {
        u64 at = r * h + j;
        float v = rstd * (g[k] - mean_g - xhat[k] * rstd * mean_gx);
        dx[at] = v;
        store_dropped(v, at, key, threshold, scale, dropout, dropped, dropped16);
    }
}
