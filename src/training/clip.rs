//! Gradient clipping by global norm, as torch.nn.utils.clip_grad_norm_ (the HF
//! Trainer default of 1.0 that the official scripts keep).

use crate::model::param::Param;

/// Scales every gradient by max_norm/(norm + 1e-6) when the global L2 norm
/// exceeds max_norm. Returns the norm before clipping.
pub fn clip_grad_norm(params: &mut [&mut Param], max_norm: f32) -> f32 {
    let norm = grad_sum_squares(params).sqrt() as f32;
    if let Some(coef) = clip_coef(norm, max_norm) {
        scale_grads(params, coef);
    }
    norm
}

/// Σ g² over every gradient of `params`, in f64 (the global norm's square;
/// a GPU-resident gradient adds its own part to it).
pub fn grad_sum_squares(params: &[&mut Param]) -> f64 {
    params
        .iter()
        .flat_map(|p| p.grad.iter())
        .map(|&g| (g as f64) * (g as f64))
        .sum()
}

/// The factor max_norm/(norm + 1e-6) that clipping applies to every
/// gradient, when it is below 1.
pub fn clip_coef(norm: f32, max_norm: f32) -> Option<f32> {
    let coef = max_norm / (norm + 1e-6);
    (coef < 1.0).then_some(coef)
}

/// g *= coef for every gradient of `params`.
pub fn scale_grads(params: &mut [&mut Param], coef: f32) {
    for p in params.iter_mut() {
        p.grad.iter_mut().for_each(|g| *g *= coef);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_to_the_global_norm_and_leaves_small_gradients() {
        let mut a = Param::new("a", &[2], vec![0.0; 2], true);
        let mut b = Param::new("b", &[1], vec![0.0], false);
        a.grad = vec![3.0, 0.0];
        b.grad = vec![4.0];
        let norm = clip_grad_norm(&mut [&mut a, &mut b], 1.0);
        assert!((norm - 5.0).abs() < 1e-6);
        assert!((a.grad[0] - 0.6).abs() < 1e-5 && (b.grad[0] - 0.8).abs() < 1e-5);
        let norm = clip_grad_norm(&mut [&mut a, &mut b], 10.0);
        assert!((norm - 1.0).abs() < 1e-4);
        assert!(
            (a.grad[0] - 0.6).abs() < 1e-5,
            "under the limit nothing changes"
        );
    }
}
