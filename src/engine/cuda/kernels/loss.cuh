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
