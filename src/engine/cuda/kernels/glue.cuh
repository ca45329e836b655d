// ---------------------------------------------------------------------------
// Glue.

// The deep prompt of every row from the prefix encoder's output, with the
// prefix dropout of src/model/prefix.rs (PrefixEncoder::expand): a table
// [P, W] with W = Ls*2H, kv [Ls, B, P, 2H], element
// (k, b, i, c) = table_b[i, k*2H + c] * factor((b*P + i)*W + k*2H + c),
// where row b reads `past`, or, when `tables` is not null, the table at
// address tables[row_table[b]] (the adapter of the row, when the server
// batches several; engine/cuda/table_cache.rs keeps them).
// A block per row (k, b, i) of kv, grid-stride, its threads along the 2H
// values: the index arithmetic once per row (per element, four 64-bit
// divisions made it 0.24 ms for bert-large's 16 M values).
extern "C" __global__ void expand_prefix(const float* past, const u64* tables, const u32* row_table, float* kv,
                                         int layers, int batch, int p, int two_h, u64 key, u64 threshold,
                                         float scale, int dropout) {
    u64 w = (u64)layers * two_h;
    for (u64 row = blockIdx.x; row < (u64)layers * batch * p; row += gridDim.x) {
        u64 i = row % p, b = row / p % batch, k = row / ((u64)p * batch);
        const float* table = tables != 0 ? (const float*)tables[row_table[b]] : past;
        const float* src = table + i * w + k * two_h;
        u64 counter = (b * p + i) * w + k * two_h;
        for (int c = threadIdx.x; c < two_h; c += blockDim.x) {
            float v = src[c];
            if (dropout) {
                float f = drop_factor(key, threshold, scale, counter + c);
                v = f == 0.0f ? 0.0f : v * f;
            }
            kv[row * two_h + c] = v;
        }
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
