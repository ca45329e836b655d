//! AdamW with decoupled weight decay, as torch.optim.AdamW computes it:
//!
//! ```text
//! p ← p·(1 − lr·wd)                       (weights only, not biases)
//! m ← β1·m + (1−β1)·g      v ← β2·v + (1−β2)·g²
//! p ← p − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + ε)
//! ```

use crate::model::param::Param;

#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f32,
    pub betas: (f32, f32),
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-2,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Moments of one parameter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Moments {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Steps taken so far (t in the bias corrections).
    pub step: u64,
    /// One entry per parameter, in the order `step` receives them.
    pub moments: Vec<Moments>,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            step: 0,
            moments: Vec::new(),
        }
    }

    /// One update of `params` from their gradients, with learning rate `lr`
    /// (the schedule's value for this step).
    pub fn step(&mut self, params: &mut [&mut Param], lr: f32) {
        self.ensure_moments(params);
        let s = self.begin_step(lr);
        for (param, mom) in params.iter_mut().zip(&mut self.moments) {
            s.update(param, mom);
        }
    }

    /// Zero moments for `params` unless they have theirs (a fresh optimizer).
    pub fn ensure_moments(&mut self, params: &[&mut Param]) {
        if self.moments.len() != params.len() {
            self.moments = params
                .iter()
                .map(|p| Moments {
                    m: vec![0.0; p.value.len()],
                    v: vec![0.0; p.value.len()],
                })
                .collect();
        }
    }

    /// Counts a step and returns its scalars, for [`StepScalars::update`]
    /// here and the same update on a GPU (the adamw_step kernel).
    pub fn begin_step(&mut self, lr: f32) -> StepScalars {
        self.step += 1;
        let (b1, b2) = self.config.betas;
        let t = self.step as i32;
        // Bias corrections in f64, as torch computes them on the host.
        let bc1 = 1.0 - (b1 as f64).powi(t);
        let bc2_sqrt = (1.0 - (b2 as f64).powi(t)).sqrt();
        StepScalars {
            lr,
            weight_decay: self.config.weight_decay,
            b1,
            b2,
            eps: self.config.eps,
            step_size: (lr as f64 / bc1) as f32,
            bc2_sqrt: bc2_sqrt as f32,
        }
    }
}

/// What one AdamW step needs besides each parameter and its moments.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepScalars {
    pub lr: f32,
    pub weight_decay: f32,
    pub b1: f32,
    pub b2: f32,
    pub eps: f32,
    /// lr / (1 − β1ᵗ)
    pub step_size: f32,
    /// √(1 − β2ᵗ)
    pub bc2_sqrt: f32,
}

impl StepScalars {
    /// The factor applied to a parameter before its update: 1 − lr·wd for
    /// weights, 1 for biases.
    pub fn decay(&self, param: &Param) -> f32 {
        if param.decay {
            1.0 - self.lr * self.weight_decay
        } else {
            1.0
        }
    }

    /// The update of one parameter and its moments.
    pub fn update(&self, param: &mut Param, mom: &mut Moments) {
        let decay = self.decay(param);
        let (b1, b2, eps) = (self.b1, self.b2, self.eps);
        for (((p, g), m), v) in param
            .value
            .iter_mut()
            .zip(&param.grad)
            .zip(&mut mom.m)
            .zip(&mut mom.v)
        {
            *p *= decay;
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            let denom = v.sqrt() / self.bc2_sqrt + eps;
            *p -= self.step_size * *m / denom;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_each_weight_by_lr_against_its_gradient_sign() {
        // At t = 1, m̂ = g and v̂ = g², so the update is lr·g/(|g|+ε) ≈ lr·sign(g).
        let mut p = Param::new("w", &[3], vec![1.0, -2.0, 0.5], false);
        p.grad = vec![0.3, -4.0, 1e-3];
        let mut opt = AdamW::new(AdamWConfig {
            weight_decay: 0.0,
            ..Default::default()
        });
        opt.step(&mut [&mut p], 0.1);
        let expected = [0.9, -1.9, 0.4];
        for (a, b) in p.value.iter().zip(expected) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn weight_decay_skips_biases() {
        let mut w = Param::new("w", &[1], vec![2.0], true);
        let mut b = Param::new("b", &[1], vec![2.0], false);
        let mut opt = AdamW::new(AdamWConfig {
            weight_decay: 0.5,
            ..Default::default()
        });
        opt.step(&mut [&mut w, &mut b], 0.1);
        // zero gradients: only the decay moves the weight
        assert!((w.value[0] - 2.0 * (1.0 - 0.05)).abs() < 1e-6);
        assert_eq!(b.value[0], 2.0);
    }
}
