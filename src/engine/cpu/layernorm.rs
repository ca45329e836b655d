//! LayerNorm over rows of width H, fused with the bias, dropout and residual add
//! that precede it in every BERT sub-layer.

use super::dropout::Dropout;

/// h[M,H] = dropout(h + bias) + residual, in place: the input of the LayerNorm.
pub fn bias_dropout_residual(h: &mut [f32], bias: &[f32], dropout: Option<&Dropout>, residual: &[f32]) {
    todo!()
}

/// y = (x - mean) * rstd * gamma + beta per row. Writes (mean, rstd) per row into
/// stats [M, 2] when given (training), so the backward need not recompute them.
pub fn layernorm_forward(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, y: &mut [f32], stats: Option<&mut [f32]>) {
    todo!()
}

/// dx[M,H] = ∂LN/∂x · dy, from the saved x and stats. Overwrites dx. No dgamma or
/// dbeta: the LayerNorm is frozen.
pub fn layernorm_backward(dy: &[f32], x: &[f32], gamma: &[f32], stats: &[f32], dx: &mut [f32]) {
    todo!()
}
