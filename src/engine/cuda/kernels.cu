// The CUDA engine's kernels, compiled at run time with NVRTC (no CUDA
// headers needed). HEAD_DIM is defined by the loader (`-DHEAD_DIM=64`), so
// the attention kernels keep a query row, its output and the running softmax
// state in registers. Every kernel is the CUDA twin of a CPU kernel in
// src/engine/cpu/ and follows its semantics exactly: the same dropout mask
// function and element numbering, HF's LayerNorm, exact erf GELU, masked keys
// with probability exactly 0.
//
// Shapes: rows = B*T, H hidden, I intermediate, NH heads, HD = HEAD_DIM,
// P prefix length, N = P + T keys. All activations are f32, row-major.

#ifndef HEAD_DIM
#error "compile with -DHEAD_DIM=<head dim>"
#endif

typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;

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

// dst = dropout(src) (the backward of dropout on a gradient, keeping src).
extern "C" __global__ void dropout_copy(const float* src, float* dst, u64 n, u64 key, u64 threshold,
                                        float scale, int enabled) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        if (!enabled) {
            dst[i] = src[i];
        } else {
            float f = drop_factor(key, threshold, scale, i);
            dst[i] = f == 0.0f ? 0.0f : src[i] * f;
        }
    }
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

// LayerNorm of one row held in global memory `in` into `out`, two passes
// (mean, then the mean squared deviation), as the CPU kernel; writes
// (mean, rstd) to stats when not null.
__device__ void layernorm_row(const float* in, const float* gamma, const float* beta, float eps,
                              float* out, float* stats, int h, float* shared) {
    float s = 0.0f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) s += in[j];
    float mean = block_sum(s, shared) / h;
    float v = 0.0f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        float d = in[j] - mean;
        v += d * d;
    }
    float var = block_sum(v, shared) / h;
    float rstd = 1.0f / sqrtf(var + eps);
    for (int j = threadIdx.x; j < h; j += blockDim.x) out[j] = (in[j] - mean) * rstd * gamma[j] + beta[j];
    if (stats != 0 && threadIdx.x == 0) {
        stats[0] = mean;
        stats[1] = rstd;
    }
}

// ---------------------------------------------------------------------------
// Embeddings: sum[r] = word[ids[r]] + position[pos[r]] + type[types[r]], then
// LayerNorm into x, then dropout (element index r*H + j). One block per row;
// `sum` is scratch [rows, H].
extern "C" __global__ void embed_layernorm(const u32* ids, const u32* pos, const u32* types,
                                           const float* word, const float* position, const float* type,
                                           const float* gamma, const float* beta, float eps, float* sum,
                                           float* x, int h, u64 key, u64 threshold, float scale,
                                           int dropout) {
    __shared__ float shared[32];
    u64 r = blockIdx.x;
    const float* w = word + (u64)ids[r] * h;
    const float* p = position + (u64)pos[r] * h;
    const float* t = type + (u64)types[r] * h;
    float* s = sum + r * h;
    for (int j = threadIdx.x; j < h; j += blockDim.x) s[j] = w[j] + p[j] + t[j];
    __syncthreads();
    float* out = x + r * h;
    layernorm_row(s, gamma, beta, eps, out, 0, h, shared);
    if (dropout) {
        __syncthreads();
        for (int j = threadIdx.x; j < h; j += blockDim.x) {
            float f = drop_factor(key, threshold, scale, r * h + j);
            out[j] = f == 0.0f ? 0.0f : out[j] * f;
        }
    }
}

// ln_in = dropout(y + bias) + residual (in place in y: the saved LayerNorm
// input), then x_out = LN(ln_in), stats (mean, rstd) when not null. The
// dropout counter of (r, j) is r*H + j. One block per row. x_out may alias
// residual (each row is read before it is written).
extern "C" __global__ void bias_dropout_residual_layernorm(float* y, const float* bias, const float* residual,
                                                           const float* gamma, const float* beta, float eps,
                                                           float* x_out, float* stats, int h, u64 key,
                                                           u64 threshold, float scale, int dropout) {
    __shared__ float shared[32];
    u64 r = blockIdx.x;
    float* row = y + r * h;
    const float* res = residual + r * h;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        float v = row[j] + bias[j];
        if (dropout) {
            float f = drop_factor(key, threshold, scale, r * h + j);
            v = f == 0.0f ? 0.0f : v * f;
        }
        row[j] = v + res[j];
    }
    __syncthreads();
    layernorm_row(row, gamma, beta, eps, x_out + r * h, stats == 0 ? 0 : stats + 2 * r, h, shared);
}

// dx = dLN/dx · dy from the saved input and (mean, rstd); no dgamma/dbeta
// (frozen). One block per row.
extern "C" __global__ void layernorm_backward(const float* dy, const float* x, const float* gamma,
                                              const float* stats, float* dx, int h) {
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
    float* o = dx + r * h;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        float xhat = (xr[j] - mean) * rstd;
        o[j] = rstd * (d[j] * gamma[j] - mean_g - xhat * mean_gx);
    }
}

// ---------------------------------------------------------------------------
// GELU (exact, erf), fused with the bias: pre += bias (kept for the
// backward), act = gelu(pre). [rows, I].
extern "C" __global__ void bias_gelu(float* pre, const float* bias, float* act, u64 n, int width) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        float v = pre[i] + bias[i % width];
        pre[i] = v;
        act[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
}

// d *= gelu'(pre), gelu'(x) = Φ(x) + x·φ(x).
extern "C" __global__ void gelu_backward(const float* pre, float* d, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        float x = pre[i];
        float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
        float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
        d[i] *= cdf + x * pdf;
    }
}

// ---------------------------------------------------------------------------
// Attention with a deep prompt, flash-style: one thread per query row keeps
// q, the output accumulator and the running max and sum in registers; keys
// and values stream through shared memory in tiles of KEY_TILE, so the
// T x N score matrix never reaches global memory.
//
// qkv [rows, 3H] (q | k | v, head h at h*HD); prefix [B, P, 2H] (keys |
// values; this layer's slice of expand_prefix's output) with
// `prefix_row_stride` = P*2H; mask [B, T] (1 real, 0 padding). Key j < P is prefix
// key j, key P + t is token t. Masked keys are skipped: probability exactly
// 0, as HF's f32::MIN bias gives (a row with no visible key at all, P = 0
// and only padding, is uniform over its T keys, as in HF).
//
// Dropout on the probabilities numbers element (b, h, i, j) by its flat index
// in [B, NH, T, N]; the softmax denominator is computed before dropout.
// ctx [rows, H]; lse [B, NH, T] (log-sum-exp of the scaled scores, for the
// backward) when not null.

#define KEY_TILE 32

// Key j of batch row b, head h: pointer to its HD key floats (value: + H).
__device__ __forceinline__ const float* key_ptr(const float* qkv, const float* prefix, u64 prefix_row_stride,
                                                int b, int hh, int j, int t, int p, int h) {
    if (j < p) return prefix + b * prefix_row_stride + (u64)j * 2 * h + hh * HEAD_DIM;
    return qkv + ((u64)b * t + (j - p)) * 3 * h + h + hh * HEAD_DIM;
}

__device__ __forceinline__ bool key_visible(const float* mask, int b, int j, int t, int p) {
    return j < p || mask[(u64)b * t + (j - p)] != 0.0f;
}

// Whether batch row b has any visible key (a prefix, or a real token).
__device__ int any_visible(const float* mask, int b, int t, int p) {
    int any = p > 0;
    for (int j = 0; j < t && !any; j++) any = mask[(u64)b * t + j] != 0.0f;
    return any;
}

// Keys and values j0 .. j0 + KEY_TILE of (batch row b, head hh) into shared
// memory, with whether each is visible (all are when none is: a uniform
// row). Called by every thread of the block between two __syncthreads.
__device__ void load_key_tile(float ks[KEY_TILE][HEAD_DIM], float vs[KEY_TILE][HEAD_DIM], int* vis,
                              const float* qkv, const float* prefix, u64 prefix_row_stride, const float* mask,
                              int b, int hh, int j0, int t, int p, int h, int any) {
    int n = p + t;
    for (int e = threadIdx.x; e < KEY_TILE * HEAD_DIM; e += blockDim.x) {
        int jj = e / HEAD_DIM, d = e % HEAD_DIM, j = j0 + jj;
        if (j < n) {
            const float* kp = key_ptr(qkv, prefix, prefix_row_stride, b, hh, j, t, p, h);
            ks[jj][d] = kp[d];
            vs[jj][d] = kp[h + d];
        }
    }
    for (int jj = threadIdx.x; jj < KEY_TILE; jj += blockDim.x) {
        int j = j0 + jj;
        vis[jj] = j < n && (!any || key_visible(mask, b, j, t, p));
    }
}

extern "C" __global__ void attention_forward(const float* qkv, const float* prefix, u64 prefix_row_stride,
                                             const float* mask, float* ctx, float* lse, int t, int p, int nh,
                                             float scale, u64 key, u64 threshold, float dscale, int dropout) {
    __shared__ float ks[KEY_TILE][HEAD_DIM];
    __shared__ float vs[KEY_TILE][HEAD_DIM];
    __shared__ int vis[KEY_TILE];
    int b = blockIdx.z, hh = blockIdx.y;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int h = nh * HEAD_DIM, n = p + t;
    bool active = i < t;
    int any = any_visible(mask, b, t, p);

    float q[HEAD_DIM], acc[HEAD_DIM];
    const float* qrow = qkv + ((u64)b * t + (active ? i : 0)) * 3 * h + hh * HEAD_DIM;
#pragma unroll
    for (int d = 0; d < HEAD_DIM; d++) {
        q[d] = active ? qrow[d] * scale : 0.0f;
        acc[d] = 0.0f;
    }
    float m = __int_as_float(0xff800000), l = 0.0f;  // -inf
    u64 drop_base = (((u64)b * nh + hh) * t + (active ? i : 0)) * n;
    for (int j0 = 0; j0 < n; j0 += KEY_TILE) {
        __syncthreads();
        load_key_tile(ks, vs, vis, qkv, prefix, prefix_row_stride, mask, b, hh, j0, t, p, h, any);
        __syncthreads();
        if (!active) continue;
        int tile = min(KEY_TILE, n - j0);
        for (int jj = 0; jj < tile; jj++) {
            if (!vis[jj]) continue;
            float s = 0.0f;
#pragma unroll
            for (int d = 0; d < HEAD_DIM; d++) s += q[d] * ks[jj][d];
            // No visible key: every score is f32::MIN in HF, a uniform row.
            if (!any) s = 0.0f;
            float m_new = fmaxf(m, s);
            float corr = expf(m - m_new);
            float e = expf(s - m_new);
            l = l * corr + e;
            float w = e;
            if (dropout) w *= drop_factor(key, threshold, dscale, drop_base + j0 + jj);
#pragma unroll
            for (int d = 0; d < HEAD_DIM; d++) acc[d] = acc[d] * corr + w * vs[jj][d];
            m = m_new;
        }
    }
    if (!active) return;
    float inv = 1.0f / l;
    float* out = ctx + ((u64)b * t + i) * h + hh * HEAD_DIM;
#pragma unroll
    for (int d = 0; d < HEAD_DIM; d++) out[d] = acc[d] * inv;
    if (lse != 0) lse[((u64)b * nh + hh) * t + i] = m + logf(l);
}

// delta[b, h, i] = dctx_i · ctx_i (per head): the softmax backward's row term.
extern "C" __global__ void attention_delta(const float* ctx, const float* dctx, float* delta, int rows, int nh,
                                           int t) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    int hh = blockIdx.y;
    if (r >= rows) return;
    int h = nh * HEAD_DIM;
    const float* o = ctx + (u64)r * h + hh * HEAD_DIM;
    const float* d = dctx + (u64)r * h + hh * HEAD_DIM;
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < HEAD_DIM; k++) s += o[k] * d[k];
    // rows are b*T + i; delta is [B, NH, T]
    int b = r / t, i = r % t;
    delta[((u64)b * nh + hh) * t + i] = s;
}

// dQ: one thread per query row, keys streamed as in the forward:
//   P_ij = exp(s_ij - lse_i), dP_ij = drop_ij * (dO_i · V_j),
//   dS_ij = P_ij (dP_ij - delta_i), dq_i = scale * sum_j dS_ij K_j.
// Writes the q columns of dqkv [rows, 3H].
extern "C" __global__ void attention_backward_dq(const float* qkv, const float* prefix, u64 prefix_row_stride,
                                                 const float* mask, const float* dctx, const float* lse,
                                                 const float* delta, float* dqkv, int t, int p, int nh,
                                                 float scale, u64 key, u64 threshold, float dscale,
                                                 int dropout) {
    __shared__ float ks[KEY_TILE][HEAD_DIM];
    __shared__ float vs[KEY_TILE][HEAD_DIM];
    __shared__ int vis[KEY_TILE];
    int b = blockIdx.z, hh = blockIdx.y;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int h = nh * HEAD_DIM, n = p + t;
    bool active = i < t;
    int any = any_visible(mask, b, t, p);

    float q[HEAD_DIM], dout[HEAD_DIM], dq[HEAD_DIM];
    u64 row = (u64)b * t + (active ? i : 0);
    const float* qrow = qkv + row * 3 * h + hh * HEAD_DIM;
    const float* drow = dctx + row * h + hh * HEAD_DIM;
#pragma unroll
    for (int d = 0; d < HEAD_DIM; d++) {
        q[d] = active ? qrow[d] * scale : 0.0f;
        dout[d] = active ? drow[d] : 0.0f;
        dq[d] = 0.0f;
    }
    u64 stat = ((u64)b * nh + hh) * t + (active ? i : 0);
    float li = active ? lse[stat] : 0.0f, di = active ? delta[stat] : 0.0f;
    u64 drop_base = stat * n;
    for (int j0 = 0; j0 < n; j0 += KEY_TILE) {
        __syncthreads();
        load_key_tile(ks, vs, vis, qkv, prefix, prefix_row_stride, mask, b, hh, j0, t, p, h, any);
        __syncthreads();
        if (!active) continue;
        int tile = min(KEY_TILE, n - j0);
        for (int jj = 0; jj < tile; jj++) {
            if (!vis[jj]) continue;
            float s = 0.0f, dp = 0.0f;
#pragma unroll
            for (int d = 0; d < HEAD_DIM; d++) {
                s += q[d] * ks[jj][d];
                dp += dout[d] * vs[jj][d];
            }
            float pr = expf((any ? s : 0.0f) - li);
            if (dropout) dp *= drop_factor(key, threshold, dscale, drop_base + j0 + jj);
            // A uniform row (no visible key) does not depend on q or k.
            float ds = any ? pr * (dp - di) * scale : 0.0f;
#pragma unroll
            for (int d = 0; d < HEAD_DIM; d++) dq[d] += ds * ks[jj][d];
        }
    }
    if (!active) return;
    float* out = dqkv + row * 3 * h + hh * HEAD_DIM;
#pragma unroll
    for (int d = 0; d < HEAD_DIM; d++) out[d] = dq[d];
}

#define QUERY_TILE 16

// dK and dV: one thread per key (keys from `first_key` on: 0 for all, P for
// tokens only is never used; the lowest prefixed layer passes n_keys = P to
// get the prefix keys alone), queries streamed through shared memory:
//   dV_j = sum_i P_ij drop_ij dO_i,  dK_j = scale * sum_i dS_ij q_i.
// Token keys go to the k and v columns of dqkv [rows, 3H] (when not null);
// prefix keys to dprefix [B, P, 2H] (per batch row, reduced afterwards).
// Masked keys get zero gradients.
extern "C" __global__ void attention_backward_dkv(const float* qkv, const float* prefix, u64 prefix_row_stride,
                                                  const float* mask, const float* dctx, const float* lse,
                                                  const float* delta, float* dqkv, float* dprefix, int t, int p,
                                                  int nh, int n_keys, float scale, u64 key, u64 threshold,
                                                  float dscale, int dropout) {
    __shared__ float qs[QUERY_TILE][HEAD_DIM];
    __shared__ float ds_[QUERY_TILE][HEAD_DIM];
    __shared__ float ls[QUERY_TILE];
    __shared__ float dl[QUERY_TILE];
    int b = blockIdx.z, hh = blockIdx.y;
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    int h = nh * HEAD_DIM, n = p + t;
    bool active = j < n_keys;
    int any = any_visible(mask, b, t, p);
    bool visible = active && (!any || key_visible(mask, b, j, t, p));

    float k[HEAD_DIM], v[HEAD_DIM], dk[HEAD_DIM], dv[HEAD_DIM];
    const float* kp = key_ptr(qkv, prefix, prefix_row_stride, b, hh, active ? j : 0, t, p, h);
#pragma unroll
    for (int d = 0; d < HEAD_DIM; d++) {
        k[d] = visible ? kp[d] : 0.0f;
        v[d] = visible ? kp[h + d] : 0.0f;
        dk[d] = 0.0f;
        dv[d] = 0.0f;
    }
    u64 stat0 = ((u64)b * nh + hh) * t;
    for (int i0 = 0; i0 < t; i0 += QUERY_TILE) {
        __syncthreads();
        for (int e = threadIdx.x; e < QUERY_TILE * HEAD_DIM; e += blockDim.x) {
            int ii = e / HEAD_DIM, d = e % HEAD_DIM, i = i0 + ii;
            if (i < t) {
                u64 row = (u64)b * t + i;
                qs[ii][d] = qkv[row * 3 * h + hh * HEAD_DIM + d] * scale;
                ds_[ii][d] = dctx[row * h + hh * HEAD_DIM + d];
            }
        }
        for (int ii = threadIdx.x; ii < QUERY_TILE; ii += blockDim.x) {
            int i = i0 + ii;
            ls[ii] = i < t ? lse[stat0 + i] : 0.0f;
            dl[ii] = i < t ? delta[stat0 + i] : 0.0f;
        }
        __syncthreads();
        if (!visible) continue;
        int tile = min(QUERY_TILE, t - i0);
        for (int ii = 0; ii < tile; ii++) {
            float s = 0.0f, dp = 0.0f;
#pragma unroll
            for (int d = 0; d < HEAD_DIM; d++) {
                s += qs[ii][d] * k[d];
                dp += ds_[ii][d] * v[d];
            }
            float pr = expf((any ? s : 0.0f) - ls[ii]);
            float f = dropout ? drop_factor(key, threshold, dscale, (stat0 + i0 + ii) * n + j) : 1.0f;
            float pd = pr * f;
            float dsv = any ? pr * (dp * f - dl[ii]) : 0.0f;
#pragma unroll
            for (int d = 0; d < HEAD_DIM; d++) {
                dv[d] += pd * ds_[ii][d];
                dk[d] += dsv * qs[ii][d];  // qs holds q*scale: dK = scale * dS q
            }
        }
    }
    if (!active) return;
    float* kout;
    if (j < p) {
        kout = dprefix + ((u64)b * p + j) * 2 * h + hh * HEAD_DIM;
    } else {
        if (dqkv == 0) return;
        kout = dqkv + ((u64)b * t + (j - p)) * 3 * h + h + hh * HEAD_DIM;
    }
#pragma unroll
    for (int d = 0; d < HEAD_DIM; d++) {
        kout[d] = dk[d];
        kout[h + d] = dv[d];
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

// Its backward (PrefixEncoder::reduce): d_past[i, k*2H + c] =
// sum_b dkv[k, b, i, c] * factor((b*P + i)*W + k*2H + c).
extern "C" __global__ void reduce_prefix(const float* dkv, float* d_past, int layers, int batch, int p,
                                         int two_h, u64 key, u64 threshold, float scale, int dropout) {
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
        d_past[e] = s;
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

// f32 → bf16, round to nearest even (NaN kept quiet), for bf16 GEMM inputs.
extern "C" __global__ void to_bf16(const float* src, u16* dst, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        u32 bits = __float_as_uint(src[i]);
        if ((bits & 0x7fffffffu) > 0x7f800000u) {
            dst[i] = (u16)((bits >> 16) | 0x40u);
        } else {
            bits += 0x7fffu + ((bits >> 16) & 1u);
            dst[i] = (u16)(bits >> 16);
        }
    }
}
