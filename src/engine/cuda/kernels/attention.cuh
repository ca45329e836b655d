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
// The kernels read their operands as attention_operands (below) wrote them
// once per layer: ops [B, NH, T + 2N, HD], per (batch row, head) its T
// queries (bias added, times the softmax scale), N = P + T keys and N
// values (the prefix's first), contiguous rows in f32 or bf16; mask [B, T]
// (1 real, 0 padding). Key j < P is prefix key j, key P + t is token t.
// Masked keys get probability exactly 0, as HF's f32::MIN bias gives (a
// row with no visible key at all, P = 0 and only padding, is uniform over
// its T keys, as in HF).
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
#define TILE_THREADS 64               // threads of a block (the launch's)

// The attention kernels' tiles live in dynamic shared memory, sized at
// launch by Kernel::shared_bytes (kernels/entry.rs), which follows the carving
// below (over 48 KB for large heads, so the loader raises the limit).
#ifndef ATTENTION_SHARED
#define ATTENTION_SHARED extern __shared__ __align__(16) float smem[]
#endif


// c[i][j] += sum_k a[i*lda + k] * B[k][j] (i, j < 4; kn a multiple of 4),
// B[k][j] = b[j*ldb + k] when B_ROWS (b's rows are the product's columns:
// A·bᵀ), else b[k*ldb + j] (A·b).
template <bool B_ROWS>
__device__ __forceinline__ void mm4(const float* a, int lda, const float* b, int ldb, int kn, float c[4][4]) {
    for (int k = 0; k < kn; k += 4) {
        float x[4][4], y[4][4];
#pragma unroll
        for (int r = 0; r < 4; r++) {
            ld4(a + r * lda + k, x[r]);
            ld4(B_ROWS ? b + r * ldb + k : b + (k + r) * ldb, y[r]);
        }
        auto yv = [&](int q, int j) { return B_ROWS ? y[j][q] : y[q][j]; };
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++)
                c[i][j] += x[i][0] * yv(0, j) + x[i][1] * yv(1, j) + x[i][2] * yv(2, j) + x[i][3] * yv(3, j);
    }
}

__device__ __forceinline__ void mm_nt(const float* a, int lda, const float* b, int ldb, int kn, float c[4][4]) {
    mm4<true>(a, lda, b, ldb, kn, c);
}
__device__ __forceinline__ void mm_nn(const float* a, int lda, const float* b, int ldb, int kn, float c[4][4]) {
    mm4<false>(a, lda, b, ldb, kn, c);
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
    // Element `i` of an array in f32 (f), or in bf16 (f16) when that is
    // not null, with `bias` (null: none).
    __device__ static RowRef either(const float* f, const u16* f16, u64 i, const float* bias) {
        return {f16 != 0 ? 0 : f + i, f16 != 0 ? f16 + i : 0, bias};
    }
    // The row `n` elements further (the same source).
    __device__ RowRef offset(int n) const {
        return {at != 0 ? at + n : 0, at16 != 0 ? at16 + n : 0, bias != 0 ? bias + n : 0};
    }
};

// Where attention_operands reads the queries, keys and values of batch row
// b, head hh: qkv [rows, 3H] as the GEMM wrote it (f32, or bf16 in qkv16
// when that is not null: the bf16 GEMMs' output), without its bias
// (qkv_bias [3H], added as the rows are read; null: none), and this layer's
// prefix keys and values (keys | values, 2H; expand_prefix's output, or the
// prefix table itself), which have none: batch rows `prefix_row_stride`
// apart (0: one prefix for every row), prefix rows `prefix_key_stride`.
struct QkvRows {
    const float* qkv;
    const u16* qkv16;
    const float *bias, *prefix;
    u64 prefix_row_stride, prefix_key_stride;
    int b, hh, t, p, h;
    // Token row i of qkv from column `col` on, with the bias from `col`.
    __device__ RowRef token(int i, int col) const {
        u64 at = ((u64)b * t + i) * 3 * h + col;
        return RowRef::either(qkv, qkv16, at, bias != 0 ? bias + col : 0);
    }
    __device__ RowRef q(int i) const { return token(i, hh * HEAD_DIM); }
    __device__ RowRef k(int j) const {
        if (j < p) return {prefix + b * prefix_row_stride + j * prefix_key_stride + hh * HEAD_DIM, 0, 0};
        return token(j - p, h + hh * HEAD_DIM);
    }
    // H columns past the key, in qkv and in the prefix alike.
    __device__ RowRef v(int j) const { return k(j).offset(h); }
};

// The rows of batch row b, head hh in a [B, NH, rows, HD] array (f32 in
// f, or bf16 in f16 when that is not null): the attention's operands
// (attention_operands) and dO (attention_delta).
struct HeadRows {
    const float* f;
    const u16* f16;
    u64 base;
    __device__ HeadRows(const float* f_, const u16* f16_, int b, int hh, int nh, int rows)
        : f(f_), f16(f16_), base(((u64)b * nh + hh) * rows * HEAD_DIM) {}
    __device__ RowRef row(int r) const {
        return RowRef::either(f, f16, base + (u64)r * HEAD_DIM, 0);
    }
    // The rows as the tile loaders take them: row index -> RowRef.
    __device__ auto rows() const {
        return [this](int r) { return row(r); };
    }
};

// The operands of batch row b, head hh in ops [B, NH, T + 2N, HD]: query
// i, key j, value j.
struct Operands : HeadRows {
    int t, n;
    __device__ Operands(const float* ops, const u16* ops16, int b, int hh, int nh, int t_, int n_)
        : HeadRows(ops, ops16, b, hh, nh, t_ + 2 * n_), t(t_), n(n_) {}
    __device__ RowRef q(int i) const { return row(i); }
    __device__ RowRef k(int j) const { return row(t + j); }
    __device__ RowRef v(int j) const { return row(t + n + j); }
};


// Whether key j takes part, as a value that is not 0 where it does: the
// mask's (a token key, when the row has a visible key), 1 (a prefix key, or
// any key of a row with none visible: a uniform row), 0 (past the last
// key). Returned unexamined, so that a caller can load it a tile ahead and
// wait for global memory only where it compares (the tensor-core forward).
__device__ __forceinline__ float key_flag(const float* mask, int b, int j, int t, int p, int any) {
    if (j >= p + t) return 0.0f;
    if (!any || j < p) return 1.0f;
    return mask[(u64)b * t + (j - p)];
}

// Whether key j takes part: j < n and (visible, or none is: a uniform row).
__device__ __forceinline__ bool key_used(const float* mask, int b, int j, int t, int p, int any) {
    return key_flag(mask, b, j, t, p, any) != 0.0f;
}

// Whether batch row b has any visible key (a prefix, or a real token).
__device__ int any_visible(const float* mask, int b, int t, int p) {
    int any = p > 0;
    for (int j = 0; j < t && !any; j++) any = mask[(u64)b * t + j] != 0.0f;
    return any;
}

// Four elements d .. d + 3 of a row as loaded, not yet used: four f32, or
// four bf16 in bits[0..1], converted only where used (converted at once,
// they held twice the registers: dQ went from 155-170 to 190-210). The tile
// loaders issue all of a thread's loads before they use any, so that they
// overlap: one element (or 16 bytes) at a time, each waiting for global
// memory in turn, bounded the attention kernels.
struct Chunk {
    u32 bits[4];
};

// One 16-byte load from f32 rows, 8 bytes from bf16.
__device__ __forceinline__ Chunk load_chunk(RowRef row, int d) {
    Chunk c = {};
    if (row.at16 != 0) {
        u64 w = *reinterpret_cast<const u64*>(row.at16 + d);
        c.bits[0] = (u32)w;
        c.bits[1] = (u32)(w >> 32);
    } else {
        float v[4];
        ld4(row.at + d, v);
#pragma unroll
        for (int i = 0; i < 4; i++) c.bits[i] = __float_as_uint(v[i]);
    }
    return c;
}

// The chunk of `row` at d, its bias added (the same few hundred bytes for
// every row: cache hits), times `scale`.
__device__ __forceinline__ void chunk_values(const Chunk& c, RowRef row, int d, float scale, float v[4]) {
    float bias[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (row.bias != 0) ld4(row.bias + d, bias);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float x = row.at16 != 0 ? bf16_float((u16)(c.bits[i / 2] >> (16 * (i % 2)))) : __uint_as_float(c.bits[i]);
        v[i] = (x + bias[i]) * scale;
    }
}

// Rows r0 .. r0 + ROWS of a [*, HD] source (`src(r)`: row r's RowRef, in
// f32 or bf16), as f32 (with the row's bias, times `scale`), zeros from
// row `count` on: store(r, d, v) writes
// elements d .. d + 3 of tile row r. THREADS is the block's size
// (every thread calls it); each takes chunks tid, tid + THREADS, ..., and
// loads BATCH of them before it stores any (their bits live in registers
// meanwhile: 4 each). The batches are a loop, not unrolled: unrolled, the
// compiler hoisted every batch's loads to the top (45 more registers in
// dK/dV, where 168 keep 3 blocks on a multiprocessor).
template <int ROWS, int THREADS, int BATCH = 8, typename Src, typename Store>
__device__ __forceinline__ void load_rows(int r0, int count, Src src, Store store, float scale = 1.0f) {
    constexpr int PER_ROW = HEAD_DIM / 4, CHUNKS_ALL = ROWS * PER_ROW;
#pragma unroll 1
    for (int c0 = 0; c0 < CHUNKS_ALL; c0 += BATCH * THREADS) {
        Chunk raw[BATCH];
#pragma unroll
        for (int k = 0; k < BATCH; k++) {
            int e = c0 + k * THREADS + (int)threadIdx.x, r = e / PER_ROW;
            raw[k] = e < CHUNKS_ALL && r0 + r < count ? load_chunk(src(r0 + r), e % PER_ROW * 4) : Chunk{};
        }
#pragma unroll
        for (int k = 0; k < BATCH; k++) {
            int e = c0 + k * THREADS + (int)threadIdx.x, r = e / PER_ROW, d = e % PER_ROW * 4;
            if (e >= CHUNKS_ALL) continue;
            float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            if (r0 + r < count) chunk_values(raw[k], src(r0 + r), d, scale, v);
            store(r, d, v);
        }
    }
}

// Rows r0 .. r0 + TILE into a [TILE, ROW] shared tile, as load_rows reads
// them, by the 64 threads of a block.
template <typename Src>
__device__ __forceinline__ void load_tile(float* dst, int r0, int count, Src src) {
    load_rows<TILE, TILE_THREADS>(r0, count, src, [&](int r, int d, const float* v) { st4(dst + r * ROW + d, v); });
}

// The key and value tiles j0 .. j0 + TILE (zeros past the last key).
__device__ __forceinline__ void load_kv_tiles(float* ks, float* vs, const Operands& src, int j0, int n_keys) {
    load_tile(ks, j0, n_keys, [&](int j) { return src.k(j); });
    load_tile(vs, j0, n_keys, [&](int j) { return src.v(j); });
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

// acc[c] += this thread's rows of w ([TILE, PROW], rows ti + 8r) times its
// column group c of m ([TILE, ROW]), for every group inside the head:
// probabilities times values, dS times keys.
__device__ __forceinline__ void mm_chunks(const float* w, const float* m, float acc[CHUNKS][4][4], int ti, int tj) {
#pragma unroll
    for (int c = 0; c < CHUNKS; c++)
        if (chunk_in(c, tj)) mm_nn(w + ti * PROW, 8 * PROW, m + c * 32 + 4 * tj, ROW, TILE, acc[c]);
}

// This thread's products of rows ti + 8r of `a` with rows tj + 8c of `b`
// (both [TILE, ROW] tiles, over the head): scores q·k (forward and dQ
// alike, so the backward recomputes the forward's), dO·v, and transposed.
__device__ __forceinline__ void tile_products(const float* a, const float* b, int ti, int tj, float c[4][4]) {
    mm_nt(a + ti * ROW, 8 * ROW, b + tj * ROW, 8 * ROW, HEAD_DIM, c);
}

// Whether keys j0 + tj + 8c (c < 4), this thread's score columns, take part.
__device__ __forceinline__ void keys_in_use(const float* mask, int b, int j0, int tj, int t, int p, int any,
                                            bool used[4]) {
#pragma unroll
    for (int c = 0; c < 4; c++) used[c] = key_used(mask, b, j0 + tj + 8 * c, t, p, any);
}

// f(r, i) for this thread's tile rows r < 4 whose row i = r0 + ti + 8r is
// below `count`: where a kernel writes its outputs.
template <typename Fn>
__device__ __forceinline__ void each_row(int r0, int ti, int count, Fn f) {
#pragma unroll
    for (int r = 0; r < 4; r++) {
        int i = r0 + ti + 8 * r;
        if (i < count) f(r, i);
    }
}

// Elements of an operand row per thread of attention_operands: 8 (16
// bytes of bf16 an access) where the head size allows, else 4.
#define OPS_PER_THREAD (HEAD_DIM % 8 == 0 ? 8 : 4)

// Elements d .. d + 7 of `row` (16-byte aligned), its bias added, times
// `scale`: one 16-byte load of bf16 or two of f32, and two of the bias.
__device__ __forceinline__ void row_values8(RowRef row, int d, float scale, float v[8]) {
    if (row.at16 != 0) {
        float4 w = *reinterpret_cast<const float4*>(row.at16 + d);
        u32 bits[4] = {__float_as_uint(w.x), __float_as_uint(w.y), __float_as_uint(w.z), __float_as_uint(w.w)};
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = bf16_float((u16)(bits[i / 2] >> (16 * (i % 2))));
    } else {
        ld4(row.at + d, v);
        ld4(row.at + d + 4, v + 4);
    }
    float bias[8] = {};
    if (row.bias != 0) {
        ld4(row.bias + d, bias);
        ld4(row.bias + d + 4, bias + 4);
    }
#pragma unroll
    for (int i = 0; i < 8; i++) v[i] = (v[i] + bias[i]) * scale;
}

// v[0..8] at element `at` of ops (f32) or, when ops16 is not null, of ops16
// in bf16 (16-byte aligned): 16 bytes of bf16 a store, or two of f32.
__device__ __forceinline__ void store8_either(float* ops, u16* ops16, u64 at, const float v[8]) {
    if (ops16 != 0) {
        u32 bits[4];
#pragma unroll
        for (int i = 0; i < 4; i++) bits[i] = bf16x2_bits(v[2 * i], v[2 * i + 1]);
        float4 w;
        w.x = __uint_as_float(bits[0]);
        w.y = __uint_as_float(bits[1]);
        w.z = __uint_as_float(bits[2]);
        w.w = __uint_as_float(bits[3]);
        *reinterpret_cast<float4*>(ops16 + at) = w;
    } else {
        st4(ops + at, v);
        st4(ops + at + 4, v + 4);
    }
}

// ops [B, NH, T + 2N, HD], the operands of every attention kernel of a
// layer, written once by its forward (and kept for its backward): per
// (batch row, head) the queries (q + bias) * scale, the keys (the prefix's,
// then k + bias) and the values alike, in f32 (ops; rounded to tf32 when
// `round_tf32`, as the tf32 tensor cores read them), or bf16 in ops16 when
// that is not null. Each kernel's tiles are then contiguous rows it copies
// (the bias, the scale and the rounding were a third of the forward's
// instructions when every kernel applied them as it read). Grid (x, NH, B),
// grid-stride over the (T + 2N) * HD / OPS_PER_THREAD pieces of a (row,
// head); the launch sizes x for one piece a thread
// (kernels::operands_per_thread). `minus_bias` (with T = 0: the prefix's
// rows alone, for attention_forward_qkv_bf16): the prefix keys and values
// less the key and value biases, which that kernel's token rows lack (a
// grid of one batch row writes row 0's, for all when they share a table).
extern "C" __global__ void attention_operands(const float* qkv, const u16* qkv16, const float* qkv_bias,
                                              const float* prefix, u64 prefix_row_stride, u64 prefix_key_stride,
                                              float* ops, u16* ops16, int t, int p, int nh, float scale,
                                              int round_tf32, int minus_bias) {
    constexpr int V = OPS_PER_THREAD, PER_ROW = HEAD_DIM / V;
    int b = blockIdx.z, hh = blockIdx.y, n = p + t, pieces = (t + 2 * n) * PER_ROW;
    const QkvRows src{qkv, qkv16, qkv_bias, prefix, prefix_row_stride, prefix_key_stride, b, hh, t, p, nh * HEAD_DIM};
    u64 base = ((u64)b * nh + hh) * (t + 2 * n) * HEAD_DIM;
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < pieces; e += gridDim.x * blockDim.x) {
        int r = e / PER_ROW, d = e % PER_ROW * V;
        RowRef row = r < t ? src.q(r) : r < t + n ? src.k(r - t) : src.v(r - t - n);
        float v[V];
        if constexpr (V == 8) {
            row_values8(row, d, r < t ? scale : 1.0f, v);
        } else {
            chunk_values(load_chunk(row, d), row, d, r < t ? scale : 1.0f, v);
        }
        if (minus_bias && r >= t) {
            const float* bias = qkv_bias + (r < t + n ? 1 : 2) * nh * HEAD_DIM + hh * HEAD_DIM + d;
#pragma unroll
            for (int k = 0; k < V; k++) v[k] -= bias[k];
        }
        if (round_tf32) {
#pragma unroll
            for (int k = 0; k < V; k++) v[k] = tf32_round(v[k]);
        }
        if constexpr (V == 8) {
            store8_either(ops, ops16, base + (u64)r * HEAD_DIM + d, v);
        } else {
            store_either<4>(ops, ops16, base + (u64)r * HEAD_DIM + d, v);
        }
    }
}

extern "C" __global__ void attention_forward(const float* ops, const u16* ops16, const float* mask, float* ctx,
                                             float* lse, int t, int p, int nh, u64 key, u64 threshold, float dscale,
                                             int dropout, u16* ctx16) {
    ATTENTION_SHARED;  // 3 [TILE, ROW] + 1 [TILE, PROW]
    float *qs = smem, *ks = qs + TILE * ROW, *vs = ks + TILE * ROW, *ps = vs + TILE * ROW;
    int b = blockIdx.z, hh = blockIdx.y, i0 = blockIdx.x * TILE;
    int ti = threadIdx.x >> 3, tj = threadIdx.x & 7;
    int h = nh * HEAD_DIM, n = p + t;
    int any = any_visible(mask, b, t, p);
    const Operands src(ops, ops16, b, hh, nh, t, n);
    load_tile(qs, i0, t, src.rows());

    float o[CHUNKS][4][4] = {}, m[4] = {NEG_INF, NEG_INF, NEG_INF, NEG_INF}, l[4] = {};
    for (int j0 = 0; j0 < n; j0 += TILE) {
        __syncthreads();
        load_kv_tiles(ks, vs, src, j0, n);
        __syncthreads();
        float s[4][4] = {};
        tile_products(qs, ks, ti, tj, s);
        bool used[4];
        keys_in_use(mask, b, j0, tj, t, p, any, used);
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
        mm_chunks(ps, vs, o, ti, tj);
    }
    each_row(i0, ti, t, [&](int r, int i) {
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
    });
}

// delta[b, h, i] = dctx_i · ctx_i (per head): the softmax backward's row
// term; dctx [rows, H] f32, or bf16 in dctx16 when that is not null. It
// also writes dO, the dctx of each head, where the attention's backward
// reads it: dout [B, NH, T, HD] in f32 (rounded to tf32 when
// `round_tf32`), or bf16 in dout16 when that is not null (the operands'
// format, attention_operands'), so that those kernels copy their tiles.
// DELTA_LANES neighbouring threads take a (row, head), 16 bytes of ctx
// each, so that a warp reads whole rows (a thread per row read 64 strided
// floats), and sum by shuffles; 1 where HD / 4 does not divide a warp.
// Grid-stride over rows × DELTA_LANES threads, a warp at a time (the
// shuffles need all 32).
#define DELTA_LANES (HEAD_DIM / 4 <= 32 && 32 % (HEAD_DIM / 4) == 0 ? HEAD_DIM / 4 : 1)
extern "C" __global__ void attention_delta(const float* ctx, const float* dctx, const u16* dctx16, float* delta,
                                           float* dout, u16* dout16, int rows, int nh, int t, int round_tf32) {
    int hh = blockIdx.y, h = nh * HEAD_DIM, lane = threadIdx.x % DELTA_LANES;
    u64 total = (u64)rows * DELTA_LANES, stride = (u64)gridDim.x * blockDim.x;
    for (u64 base = (blockIdx.x * (u64)blockDim.x + threadIdx.x) & ~31ull; base < total; base += stride) {
        u64 g = base + (threadIdx.x & 31);
        int r = (int)(g / DELTA_LANES);
        float s = 0.0f;
        if (g < total) {
            // rows are b*T + i; delta and dout are per (b, head) first
            u64 at = (u64)r * h + hh * HEAD_DIM, out = (((u64)(r / t) * nh + hh) * t + r % t) * HEAD_DIM;
            for (int k = 4 * lane; k < HEAD_DIM; k += 4 * DELTA_LANES) {
                float dv[4], cv[4];
                load_either<4>(dctx + at, dctx16 != 0 ? dctx16 + at : 0, k, dv);
                ld4(ctx + at + k, cv);
#pragma unroll
                for (int e = 0; e < 4; e++) s += cv[e] * dv[e];
                if (round_tf32) {
#pragma unroll
                    for (int e = 0; e < 4; e++) dv[e] = tf32_round(dv[e]);
                }
                store_either<4>(dout, dout16, out + k, dv);
            }
        }
        for (int o = DELTA_LANES / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (g < total && lane == 0) delta[((u64)(r / t) * nh + hh) * t + r % t] = s;
    }
}

// dQ: a block per tile of 32 queries, keys streamed as in the forward:
//   P_ij = exp(s_ij - lse_i), dP_ij = drop_ij * (dO_i · V_j),
//   dS_ij = P_ij (dP_ij - delta_i), dq_i = scale * sum_j dS_ij K_j.
// Writes the q columns of dqkv [rows, 3H], or of dqkv16 in bf16 when that
// is not null.
extern "C" __global__ void attention_backward_dq(const float* ops, const u16* ops16, const float* mask,
                                                 const float* dout, const u16* dout16, const float* lse,
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
    const Operands src(ops, ops16, b, hh, nh, t, n);
    const HeadRows dO(dout, dout16, b, hh, nh, t);
    load_tile(qs, i0, t, src.rows());
    load_tile(dos, i0, t, dO.rows());
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
        tile_products(qs, ks, ti, tj, s);
        tile_products(dos, vs, ti, tj, dp);
        bool used[4];
        keys_in_use(mask, b, j0, tj, t, p, any, used);
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
        mm_chunks(dss, ks, dq, ti, tj);
    }
    each_row(i0, ti, t, [&](int r, int i) {
        u64 at = ((u64)b * t + i) * 3 * h + hh * HEAD_DIM;
#pragma unroll
        for (int c = 0; c < CHUNKS; c++)
            if (chunk_in(c, tj)) store_grad(dqkv, dqkv16, at + c * 32 + 4 * tj, dq[c][r]);
    });
}

// dK and dV: a block per tile of 32 keys (keys 0 .. n_keys: all of them, or
// the prefix keys alone at the lowest prefixed layer), queries streamed
// through shared memory:
//   dV_j = sum_i P_ij drop_ij dO_i,  dK_j = scale * sum_i dS_ij q_i.
// Token keys go to the k and v columns of dqkv [rows, 3H], or of dqkv16 in
// bf16 (when one is not null); prefix keys to dprefix [B, P, 2H] (per batch
// row, reduced afterwards). Masked keys get zero gradients.
extern "C" __global__ void attention_backward_dkv(const float* ops, const u16* ops16, const float* mask,
                                                  const float* dout, const u16* dout16, const float* lse,
                                                  const float* delta, float* dqkv, float* dprefix, int t, int p,
                                                  int nh, int n_keys, u64 key, u64 threshold, float dscale,
                                                  int dropout, u16* dqkv16) {
    ATTENTION_SHARED;  // 4 [TILE, ROW] + 2 [TILE, PROW] + 2 [TILE]
    float *ks = smem, *vs = ks + TILE * ROW, *qs = vs + TILE * ROW, *dos = qs + TILE * ROW;
    float* pds = dos + TILE * ROW;  // [query][key]: P * dropout
    float* dss = pds + TILE * PROW;  // [query][key]: dS
    float *ls = dss + TILE * PROW, *dl = ls + TILE;
    int b = blockIdx.z, hh = blockIdx.y, j0 = blockIdx.x * TILE;
    int ti = threadIdx.x >> 3, tj = threadIdx.x & 7;
    int h = nh * HEAD_DIM, n = p + t;
    int any = any_visible(mask, b, t, p);
    const Operands src(ops, ops16, b, hh, nh, t, n);
    const HeadRows dO(dout, dout16, b, hh, nh, t);
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
        load_tile(qs, i0, t, src.rows());  // q * scale: dK = dSᵀ (q * scale)
        load_tile(dos, i0, t, dO.rows());
        for (int e = threadIdx.x; e < TILE; e += blockDim.x) {
            ls[e] = i0 + e < t ? lse[stat0 + i0 + e] : 0.0f;
            dl[e] = i0 + e < t ? delta[stat0 + i0 + e] : 0.0f;
        }
        __syncthreads();
        float st[4][4] = {}, dpt[4][4] = {};
        tile_products(ks, qs, ti, tj, st);
        tile_products(vs, dos, ti, tj, dpt);
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
    each_row(j0, ti, n_keys, [&](int r, int j) {
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
    });
}
