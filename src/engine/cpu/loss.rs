//! Losses of the heads.
//!
//! Forward and backward side by side, per row b of logits z [B, C]:
//!   forward    lse_b = m_b + ln Σ_c e^(z_bc − m_b),  m_b = max_c z_bc   (stable)
//!              loss  = (1/B) Σ_b (lse_b − z_b,y_b)
//!   backward   dz_bc = (softmax(z_b)_c − [c = y_b]) / B
//!
//! B·C is tiny (a batch × a handful of classes), so this stays scalar.

/// Mean cross-entropy of logits [B, C] against labels [B]; writes dlogits [B, C]
/// (the gradient of the mean) and returns the loss.
///
/// Labels must be < C (callers validate; checked here in debug builds only).
/// B = 0 returns 0 and writes nothing.
pub fn cross_entropy(logits: &[f32], labels: &[usize], classes: usize, dlogits: &mut [f32]) -> f32 {
    let b = labels.len();
    assert_eq!(
        logits.len(),
        b * classes,
        "cross_entropy: logits is not [B, C]"
    );
    assert_eq!(
        dlogits.len(),
        b * classes,
        "cross_entropy: dlogits is not [B, C]"
    );
    if b == 0 {
        return 0.0;
    }
    let inv_b = 1.0 / b as f32;
    // Sum the per-row losses in f64: B terms of similar size, cheap, exact enough.
    let mut total = 0.0f64;
    for ((z, dz), &y) in logits
        .chunks_exact(classes)
        .zip(dlogits.chunks_exact_mut(classes))
        .zip(labels)
    {
        debug_assert!(
            y < classes,
            "cross_entropy: label {y} out of range for {classes} classes"
        );
        let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // e^(z - m) into dz, then normalise in place: dz = softmax.
        let mut s = 0.0f32;
        for (d, &v) in dz.iter_mut().zip(z) {
            let e = (v - m).exp();
            *d = e;
            s += e;
        }
        let lse = m + s.ln();
        total += (lse - z[y]) as f64;
        let inv_s = 1.0 / s;
        for d in dz.iter_mut() {
            *d *= inv_s * inv_b;
        }
        dz[y] -= inv_b;
    }
    (total / b as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f64 reference: mean loss and its gradient.
    fn reference(logits: &[f32], labels: &[usize], c: usize) -> (f64, Vec<f64>) {
        let b = labels.len();
        let mut loss = 0.0;
        let mut grad = vec![0.0; b * c];
        for (i, &y) in labels.iter().enumerate() {
            let z: Vec<f64> = logits[i * c..(i + 1) * c]
                .iter()
                .map(|&v| v as f64)
                .collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = z.iter().map(|v| (v - m).exp()).sum();
            let lse = m + s.ln();
            loss += lse - z[y];
            for j in 0..c {
                grad[i * c + j] = ((z[j] - lse).exp() - if j == y { 1.0 } else { 0.0 }) / b as f64;
            }
        }
        (loss / b as f64, grad)
    }

    #[test]
    fn matches_f64_reference() {
        let (b, c) = (7, 5);
        let logits: Vec<f32> = (0..b * c)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.37)
            .collect();
        let labels: Vec<usize> = (0..b).map(|i| (i * 3) % c).collect();
        let mut d = vec![f32::NAN; b * c];
        let loss = cross_entropy(&logits, &labels, c, &mut d);
        let (rl, rg) = reference(&logits, &labels, c);
        assert!(
            (loss as f64 - rl).abs() < 1e-6 * rl.abs().max(1.0),
            "{loss} vs {rl}"
        );
        for (a, r) in d.iter().zip(&rg) {
            assert!((*a as f64 - r).abs() < 1e-7, "{a} vs {r}");
        }
        // Each gradient row sums to zero (softmax sums to one).
        for row in d.chunks(c) {
            assert!(row.iter().map(|&v| v as f64).sum::<f64>().abs() < 1e-7);
        }
    }

    #[test]
    fn stable_for_huge_logits() {
        // A naive exp would overflow to inf (e^1000) or underflow every term.
        let logits = [1000.0f32, 0.0, -1000.0, -5000.0, -4990.0, -5000.0];
        let labels = [0usize, 1];
        let mut d = [0.0f32; 6];
        let loss = cross_entropy(&logits, &labels, 3, &mut d);
        assert!(loss.is_finite());
        let (rl, rg) = reference(&logits, &labels, 3);
        assert!((loss as f64 - rl).abs() < 1e-3, "{loss} vs {rl}");
        for (a, r) in d.iter().zip(&rg) {
            assert!((*a as f64 - r).abs() < 1e-6);
        }
    }

    #[test]
    fn finite_difference_gradient() {
        let (b, c) = (4, 3);
        let logits: Vec<f32> = (0..b * c)
            .map(|i| ((i * 17 % 11) as f32 - 5.0) * 0.3)
            .collect();
        let labels = vec![2usize, 0, 1, 1];
        let mut d = vec![0.0f32; b * c];
        cross_entropy(&logits, &labels, c, &mut d);
        let h = 1e-2f32;
        let mut scratch = vec![0.0f32; b * c];
        for i in 0..b * c {
            let mut lp = logits.clone();
            lp[i] += h;
            let fp = cross_entropy(&lp, &labels, c, &mut scratch) as f64;
            let mut lm = logits.clone();
            lm[i] -= h;
            let fm = cross_entropy(&lm, &labels, c, &mut scratch) as f64;
            let fd = (fp - fm) / (2.0 * h as f64);
            assert!(
                (fd - d[i] as f64).abs() < 1e-3,
                "i={i} fd={fd} analytic={}",
                d[i]
            );
        }
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic]
    fn label_out_of_range_panics_in_debug() {
        let mut d = [0.0f32; 2];
        cross_entropy(&[0.0, 1.0], &[2], 2, &mut d);
    }
}

/// Mean squared error of predictions [B] (a 1-output head) against targets [B]:
///   forward    loss = (1/B) Σ_b (x_b − t_b)²      (torch MSELoss, mean)
///   backward   dx_b = 2 (x_b − t_b) / B
/// Writes dpred [B] and returns the loss.
pub fn mse(pred: &[f32], targets: &[f32], dpred: &mut [f32]) -> f32 {
    assert_eq!(
        pred.len(),
        targets.len(),
        "mse: predictions and targets differ in length"
    );
    if pred.is_empty() {
        return 0.0;
    }
    let inv_b = 1.0 / pred.len() as f32;
    let mut total = 0.0f64;
    for ((d, &x), &t) in dpred.iter_mut().zip(pred).zip(targets) {
        let diff = x - t;
        total += (diff as f64) * (diff as f64);
        *d = 2.0 * diff * inv_b;
    }
    (total / pred.len() as f64) as f32
}

#[cfg(test)]
mod mse_tests {
    use super::mse;

    #[test]
    fn mse_and_its_gradient() {
        let mut d = [0.0; 2];
        let loss = mse(&[1.0, 3.0], &[0.0, 1.0], &mut d);
        assert!((loss - 2.5).abs() < 1e-6);
        assert_eq!(d, [1.0, 2.0]);
    }
}

/// The label torch's cross-entropy skips (`ignore_index`): special tokens,
/// later sub-tokens of a word, padding.
pub const IGNORE: i64 = -100;

/// Mean cross-entropy over the rows of logits [N, C] whose label is not
/// [`IGNORE`] (torch's CrossEntropyLoss with ignore_index): the mean is over
/// labelled rows only, and ignored rows get a zero gradient. With no labelled
/// row the loss is 0 (torch would give NaN).
pub fn cross_entropy_masked(
    logits: &[f32],
    labels: &[i64],
    classes: usize,
    dlogits: &mut [f32],
) -> f32 {
    assert_eq!(
        logits.len(),
        labels.len() * classes,
        "cross_entropy_masked: logits is not [N, C]"
    );
    dlogits.fill(0.0);
    let rows: Vec<usize> = (0..labels.len()).filter(|&r| labels[r] != IGNORE).collect();
    if rows.is_empty() {
        return 0.0;
    }
    let inv = 1.0 / rows.len() as f32;
    let mut total = 0.0f64;
    for &r in &rows {
        let y = labels[r] as usize;
        debug_assert!(y < classes, "cross_entropy_masked: label {y} out of range");
        let z = &logits[r * classes..][..classes];
        let dz = &mut dlogits[r * classes..][..classes];
        let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut s = 0.0f32;
        for (d, &v) in dz.iter_mut().zip(z) {
            *d = (v - m).exp();
            s += *d;
        }
        total += (m + s.ln() - z[y]) as f64;
        dz.iter_mut().for_each(|d| *d *= inv / s);
        dz[y] -= inv;
    }
    (total / rows.len() as f64) as f32
}

/// Extractive QA: logits [B·T, 2] hold a start and an end logit per token.
/// loss = (CE(start logits of each sequence, start) + CE(end ..., end)) / 2,
/// each a mean over the batch, as HF's *ForQuestionAnswering computes it.
pub fn span_loss(
    logits: &[f32],
    seq: usize,
    start: &[usize],
    end: &[usize],
    dlogits: &mut [f32],
) -> f32 {
    let batch = start.len();
    assert_eq!(
        logits.len(),
        batch * seq * 2,
        "span_loss: logits is not [B*T, 2]"
    );
    let mut loss = 0.0;
    for (column, targets) in [(0, start), (1, end)] {
        // [B, T] view of one column, then the gradient back into it.
        let z: Vec<f32> = logits.iter().skip(column).step_by(2).copied().collect();
        let mut dz = vec![0.0; z.len()];
        loss += 0.5 * cross_entropy(&z, targets, seq, &mut dz);
        for (d, g) in dlogits.iter_mut().skip(column).step_by(2).zip(&dz) {
            *d = 0.5 * g;
        }
    }
    loss
}

#[cfg(test)]
mod token_loss_tests {
    use super::*;

    #[test]
    fn masked_rows_are_skipped_and_the_mean_is_over_labelled_rows() {
        let logits = [1.0, 2.0, 0.5, 0.5, 3.0, -1.0];
        let mut d_all = [0.0; 6];
        let full = cross_entropy(&logits[..2], &[1], 2, &mut d_all[..2]);
        let mut d = [9.0; 6];
        let loss = cross_entropy_masked(&logits, &[1, IGNORE, IGNORE], 2, &mut d);
        assert!((loss - full).abs() < 1e-7);
        assert_eq!(&d[2..], &[0.0; 4]);
        assert_eq!(d[..2], d_all[..2]);
        assert_eq!(cross_entropy_masked(&logits, &[IGNORE; 3], 2, &mut d), 0.0);
    }

    #[test]
    fn span_loss_averages_start_and_end() {
        // B = 1, T = 2: start logits (0, 0), end logits (0, ln 3).
        let logits = [0.0, 0.0, 0.0, 3f32.ln()];
        let mut d = [0.0; 4];
        let loss = span_loss(&logits, 2, &[0], &[1], &mut d);
        let expected = 0.5 * (2f32.ln() + (4f32 / 3.0).ln());
        assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
        assert!((d[0] + 0.25).abs() < 1e-6 && (d[2] - 0.25).abs() < 1e-6);
    }
}
