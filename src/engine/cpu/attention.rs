//! Self-attention with a deep prompt: every row attends to P prefix keys and
//! values, always visible, followed by the T token keys under the padding mask.

use super::dropout::Dropout;

#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub prefix: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// Forward.
/// - qkv [B*T, 3H]: query cols [0,H), key [H,2H), value [2H,3H); head h at h*HD.
/// - prefix_kv [B, P, 2H]: prefix keys cols [0,H), values [H,2H) (after prefix dropout).
/// - key_mask [B, T]: 1.0 for a real token, 0.0 for padding.
/// - probs [B, NH, T, P+T]: softmax(QKᵀ/√HD + mask) before dropout, saved for the backward.
/// - ctx [B*T, H]: dropout(probs) · V, head h at cols h*HD.
pub fn attention_forward(
    shape: AttentionShape,
    qkv: &[f32],
    prefix_kv: &[f32],
    key_mask: &[f32],
    dropout: Option<&Dropout>,
    probs: Option<&mut [f32]>,
    ctx: &mut [f32],
) {
    todo!()
}

/// Backward from dctx [B*T, H]. Writes dprefix_kv [B, P, 2H] and, when given,
/// dqkv [B*T, 3H] (both overwritten). The lowest prefixed layer passes no dqkv.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    shape: AttentionShape,
    qkv: &[f32],
    prefix_kv: &[f32],
    key_mask: &[f32],
    dropout: Option<&Dropout>,
    probs: &[f32],
    dctx: &[f32],
    dqkv: Option<&mut [f32]>,
    dprefix_kv: &mut [f32],
) {
    todo!()
}
