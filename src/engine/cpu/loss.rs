//! Losses of the heads.

/// Mean cross-entropy of logits [B, C] against labels [B]; writes dlogits [B, C]
/// (the gradient of the mean) and returns the loss.
pub fn cross_entropy(logits: &[f32], labels: &[usize], classes: usize, dlogits: &mut [f32]) -> f32 {
    todo!()
}
