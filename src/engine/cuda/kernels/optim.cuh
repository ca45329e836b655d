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
