//! Evaluation metrics as plain functions over gold labels and predictions.
//!
//! They follow the definitions of scikit-learn and SciPy, which the official
//! P-Tuning v2 code calls through HF `datasets` (`load_metric("glue" |
//! "super_glue")`), so numbers are comparable with published results. Where
//! those libraries return NaN or warn (a constant prediction, an empty class),
//! these functions return 0.0, the value sklearn substitutes by default; a
//! trainer comparing epochs by the main metric then never sees a NaN.
//!
//! All functions panic if `gold` and `pred` differ in length (the task-level
//! [`crate::tasks::Task::metrics`] checks that first and returns an error).

use std::collections::{BTreeMap, BTreeSet};

fn check_len(a: usize, b: usize) {
    assert_eq!(a, b, "gold and predictions differ in length");
}

/// Fraction of positions where `pred == gold`; 0.0 for empty input.
pub fn accuracy(gold: &[usize], pred: &[usize]) -> f64 {
    check_len(gold.len(), pred.len());
    if gold.is_empty() {
        return 0.0;
    }
    let right = gold.iter().zip(pred).filter(|(g, p)| g == p).count();
    right as f64 / gold.len() as f64
}

/// F1 of one class: 2·TP / (2·TP + FP + FN). 0.0 when the class is neither
/// predicted nor present (sklearn's `zero_division=0`).
fn class_f1(gold: &[usize], pred: &[usize], class: usize) -> f64 {
    let (mut tp, mut fp, mut fneg) = (0usize, 0usize, 0usize);
    for (&g, &p) in gold.iter().zip(pred) {
        match (g == class, p == class) {
            (true, true) => tp += 1,
            (false, true) => fp += 1,
            (true, false) => fneg += 1,
            (false, false) => {}
        }
    }
    let denom = 2 * tp + fp + fneg;
    if denom == 0 {
        0.0
    } else {
        2.0 * tp as f64 / denom as f64
    }
}

/// Binary F1 of the class `positive` (sklearn `f1_score(gold, pred,
/// pos_label=positive)`): the harmonic mean of precision and recall of that
/// class. Used for MRPC/QQP (positive = 1, "equivalent"/"duplicate") and
/// MultiRC's F1a (positive = 1, a correct answer option).
pub fn binary_f1(gold: &[usize], pred: &[usize], positive: usize) -> f64 {
    check_len(gold.len(), pred.len());
    class_f1(gold, pred, positive)
}

/// Macro F1 (sklearn `f1_score(average="macro")`): the unweighted mean of
/// the per-class F1 over every class that occurs in `gold` or `pred` (a class
/// absent from both is not averaged in, as in sklearn without `labels=`).
/// This is CB's "f1" in the SuperGLUE metric. 0.0 for empty input.
pub fn macro_f1(gold: &[usize], pred: &[usize]) -> f64 {
    check_len(gold.len(), pred.len());
    let classes: BTreeSet<usize> = gold.iter().chain(pred).copied().collect();
    if classes.is_empty() {
        return 0.0;
    }
    let sum: f64 = classes.iter().map(|&c| class_f1(gold, pred, c)).sum();
    sum / classes.len() as f64
}

/// Matthews correlation coefficient (sklearn `matthews_corrcoef`, the
/// multiclass form that reduces to (TP·TN − FP·FN)/√(…) for two classes).
///
/// With `t_k`, `p_k` the gold and predicted counts of class k, `c` the number
/// right and `s` the total:
/// MCC = (c·s − Σ p_k t_k) / √((s² − Σ p_k²)(s² − Σ t_k²)).
/// 0.0 when the denominator is 0, e.g. when every prediction is the same
/// class (CoLA early in training): sklearn returns 0.0 there too.
pub fn matthews_corrcoef(gold: &[usize], pred: &[usize]) -> f64 {
    check_len(gold.len(), pred.len());
    let mut t: BTreeMap<usize, f64> = BTreeMap::new();
    let mut p: BTreeMap<usize, f64> = BTreeMap::new();
    let mut correct = 0.0;
    for (&g, &q) in gold.iter().zip(pred) {
        *t.entry(g).or_default() += 1.0;
        *p.entry(q).or_default() += 1.0;
        if g == q {
            correct += 1.0;
        }
    }
    let s = gold.len() as f64;
    let pt: f64 = p
        .iter()
        .map(|(k, pk)| pk * t.get(k).copied().unwrap_or(0.0))
        .sum();
    let pp: f64 = p.values().map(|v| v * v).sum();
    let tt: f64 = t.values().map(|v| v * v).sum();
    let cov_tp = correct * s - pt;
    let cov_pp = s * s - pp;
    let cov_tt = s * s - tt;
    let denom = (cov_pp * cov_tt).sqrt();
    if denom == 0.0 || !denom.is_finite() {
        0.0
    } else {
        cov_tp / denom
    }
}

/// Pearson correlation (SciPy `pearsonr(x, y)[0]`): covariance over the
/// product of standard deviations, computed around the means in f64.
/// 0.0 when either side is constant or has fewer than two values (SciPy
/// returns NaN there).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    check_len(x.len(), y.len());
    let n = x.len();
    if n < 2 {
        return 0.0;
    }
    let mx = x.iter().sum::<f64>() / n as f64;
    let my = y.iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    let denom = (sxx * syy).sqrt();
    if denom == 0.0 || !denom.is_finite() {
        0.0
    } else {
        (sxy / denom).clamp(-1.0, 1.0)
    }
}

/// 1-based ranks with ties given their average rank (SciPy `rankdata`,
/// method "average"): [10, 20, 20, 5] → [2, 3.5, 3.5, 1].
/// NaNs sort last (as `f64::total_cmp` orders them).
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && x[order[j]] == x[order[i]] {
            j += 1;
        }
        // Positions i..j (0-based) share ranks i+1..=j: their mean.
        let avg = (i + 1 + j) as f64 / 2.0;
        for &k in &order[i..j] {
            ranks[k] = avg;
        }
        i = j;
    }
    ranks
}

/// Spearman rank correlation (SciPy `spearmanr(x, y)[0]`): Pearson of the
/// average ranks, so ties are handled as SciPy does. 0.0 when either side
/// is constant.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    check_len(x.len(), y.len());
    pearson(&average_ranks(x), &average_ranks(y))
}

/// MultiRC F1a: binary F1 over all answer options, positive class 1 (an
/// answer marked correct). This is the SuperGLUE "f1a" and the "f1" the
/// official P-Tuning v2 code reports and selects on for MultiRC.
pub fn multirc_f1a(gold: &[usize], pred: &[usize]) -> f64 {
    binary_f1(gold, pred, 1)
}

/// MultiRC exact match: the fraction of questions (answer options grouped
/// by `groups[i]`, the question id) whose every answer option is predicted
/// right. 0.0 for empty input.
pub fn multirc_em(groups: &[&str], gold: &[usize], pred: &[usize]) -> f64 {
    check_len(gold.len(), pred.len());
    check_len(groups.len(), gold.len());
    let mut all_right: BTreeMap<&str, bool> = BTreeMap::new();
    for ((g, &t), &p) in groups.iter().zip(gold).zip(pred) {
        let e = all_right.entry(g).or_insert(true);
        *e &= t == p;
    }
    if all_right.is_empty() {
        return 0.0;
    }
    all_right.values().filter(|&&ok| ok).count() as f64 / all_right.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    // Expected values below were computed with scikit-learn 1.9.1 / SciPy
    // 1.17.1 (sklearn.metrics.{accuracy_score, f1_score, matthews_corrcoef},
    // scipy.stats.{pearsonr, spearmanr, rankdata}) on the same arrays, and
    // the simple ones also by hand as noted.

    #[test]
    fn accuracy_by_hand() {
        // 3 of 4 right.
        close(accuracy(&[0, 1, 1, 0], &[0, 1, 0, 0]), 0.75);
        close(accuracy(&[], &[]), 0.0);
    }

    #[test]
    fn binary_f1_by_hand() {
        // gold [1,1,0,0,1], pred [1,0,1,0,1]: TP 2, FP 1, FN 1 → 4/6.
        close(binary_f1(&[1, 1, 0, 0, 1], &[1, 0, 1, 0, 1], 1), 2.0 / 3.0);
        // sklearn f1_score([0,0],[0,0]) = 0.0 (zero_division).
        close(binary_f1(&[0, 0], &[0, 0], 1), 0.0);
    }

    #[test]
    fn macro_f1_matches_sklearn() {
        // f1_score([0,1,2,0,1,2,0,0],[0,2,1,0,0,2,1,0], average="macro")
        // = 0.4166666666666667; by hand: class 0 TP3 FP1 FN1 → 0.75, class 1
        // TP0 → 0, class 2 TP1 FP1 FN1 → 0.5; mean 1.25/3.
        close(
            macro_f1(&[0, 1, 2, 0, 1, 2, 0, 0], &[0, 2, 1, 0, 0, 2, 1, 0]),
            0.4166666666666667,
        );
        // A class only in the predictions is averaged in (sklearn):
        // f1_score([0,0,1],[0,2,1], average="macro") = 0.5555555555555555.
        close(macro_f1(&[0, 0, 1], &[0, 2, 1]), 0.5555555555555555);
    }

    #[test]
    fn mcc_matches_sklearn() {
        // matthews_corrcoef([1,1,1,0,0,0,1,0],[1,0,1,0,0,1,1,0]) = 0.5
        // (TP3 TN3 FP1 FN1 → (9-1)/sqrt(4·4·4·4)).
        close(
            matthews_corrcoef(&[1, 1, 1, 0, 0, 0, 1, 0], &[1, 0, 1, 0, 0, 1, 1, 0]),
            0.5,
        );
        // Multiclass: matthews_corrcoef([0,1,2,0,1,2],[0,2,1,0,0,2])
        // = 0.26111648393354675.
        close(
            matthews_corrcoef(&[0, 1, 2, 0, 1, 2], &[0, 2, 1, 0, 0, 2]),
            0.26111648393354675,
        );
        // Perfectly wrong binary: -1.
        close(matthews_corrcoef(&[0, 1, 0, 1], &[1, 0, 1, 0]), -1.0);
    }

    #[test]
    fn mcc_constant_predictions_is_zero() {
        // sklearn returns 0.0 here (zero denominator).
        close(matthews_corrcoef(&[0, 1, 1, 0], &[1, 1, 1, 1]), 0.0);
        close(matthews_corrcoef(&[1, 1], &[1, 1]), 0.0);
        close(matthews_corrcoef(&[], &[]), 0.0);
    }

    #[test]
    fn pearson_matches_scipy() {
        // pearsonr([1,2,3,4,5],[2,4,5,4,5]).statistic = 0.7745966692414834
        close(
            pearson(&[1.0, 2.0, 3.0, 4.0, 5.0], &[2.0, 4.0, 5.0, 4.0, 5.0]),
            0.7745966692414834,
        );
        close(pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), -1.0);
        // Constant side: SciPy gives NaN, we give 0.
        close(pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), 0.0);
    }

    #[test]
    fn ranks_average_ties() {
        // scipy.stats.rankdata([10,20,20,5]) = [2, 3.5, 3.5, 1]
        assert_eq!(
            average_ranks(&[10.0, 20.0, 20.0, 5.0]),
            vec![2.0, 3.5, 3.5, 1.0]
        );
        // rankdata([1,1,1]) = [2,2,2]
        assert_eq!(average_ranks(&[1.0, 1.0, 1.0]), vec![2.0, 2.0, 2.0]);
    }

    #[test]
    fn spearman_matches_scipy() {
        // spearmanr([1,2,3,4,5],[5,6,7,8,7]).statistic = 0.8207826816681233
        close(
            spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5.0, 6.0, 7.0, 8.0, 7.0]),
            0.8207826816681233,
        );
        // spearmanr([0.5,2.5,2.5,4.0,1.0,3.0],[1.0,2.0,3.0,4.0,0.0,3.0])
        // .statistic = 0.8970588235294118 (ties on both sides)
        close(
            spearman(
                &[0.5, 2.5, 2.5, 4.0, 1.0, 3.0],
                &[1.0, 2.0, 3.0, 4.0, 0.0, 3.0],
            ),
            0.8970588235294118,
        );
    }

    #[test]
    fn multirc_by_hand() {
        // Question a: answers (1,1) and (0,0) right → exact.
        // Question b: (1,0) wrong, (0,0) right → not exact.
        // Question c: (0,0) right → exact. EM = 2/3.
        let groups = ["a", "a", "b", "b", "c"];
        let gold = [1, 0, 1, 0, 0];
        let pred = [1, 0, 0, 0, 0];
        close(multirc_em(&groups, &gold, &pred), 2.0 / 3.0);
        // F1a: TP 1, FP 0, FN 1 → 2/3.
        close(multirc_f1a(&gold, &pred), 2.0 / 3.0);
    }
}
