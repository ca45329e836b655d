//! GELU, erf form (HF "gelu"), fused with the bias of the dense layer before it.

/// pre[M,N] += bias (kept for the backward); out = gelu(pre).
pub fn bias_gelu_forward(pre: &mut [f32], bias: &[f32], out: &mut [f32]) {
    todo!()
}

/// g[M,N] *= gelu'(pre), in place.
pub fn gelu_backward(pre: &[f32], g: &mut [f32]) {
    todo!()
}
