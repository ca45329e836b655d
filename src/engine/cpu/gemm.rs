//! Matrix products. Weights are row-major [out, in], as HF stores them.

/// y[M,N] = x[M,K] · w[N,K]ᵀ + bias[N] (bias optional). Overwrites y.
pub fn linear_forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, n: usize, k: usize, y: &mut [f32]) {
    todo!()
}

/// dx[M,K] (+)= dy[M,N] · w[N,K]. Accumulates into dx when `accumulate`.
pub fn linear_backward_input(dy: &[f32], w: &[f32], m: usize, n: usize, k: usize, dx: &mut [f32], accumulate: bool) {
    todo!()
}

/// Gradients of a trainable linear layer: dw[N,K] += dy[M,N]ᵀ · x[M,K], db[N] += Σ_rows dy.
pub fn linear_backward_params(x: &[f32], dy: &[f32], m: usize, n: usize, k: usize, dw: &mut [f32], db: Option<&mut [f32]>) {
    todo!()
}
