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
