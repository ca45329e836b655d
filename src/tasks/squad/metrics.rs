//! The official SQuAD evaluation: `evaluate-v1.1.py` (exact match and token
//! F1, max over the gold answers, averaged ×100) and `evaluate-v2.0.py` (the
//! same with "" as the only gold answer of an unanswerable question, plus
//! HasAns / NoAns breakdowns), as HF's `squad` / `squad_v2` metrics run them
//! for P-Tuning v2.
//!
//! `normalize_answer` follows the Python exactly: `str.lower()`, drop
//! `string.punctuation` (ASCII only), replace `\b(a|an|the)\b` by a space
//! (word characters as Python's `re` sees them: letters, digits, numerics,
//! `_`), then `" ".join(text.split())` with Python's whitespace (Unicode
//! White_Space plus U+001C..U+001F). The one approximation: Rust's
//! alphanumeric class also counts a few combining marks (Unicode
//! Other_Alphabetic, e.g. Indic vowel signs) as word characters, which only
//! matters for an article glued to such a mark.

use std::collections::{BTreeMap, HashMap};

use crate::{Error, Result};

use super::features::is_py_space;
use super::read::SquadExample;

/// The official `normalize_answer`: lower case, no punctuation, no articles,
/// single spaces.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let chars: Vec<char> = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    let no_articles = remove_articles(&chars);
    py_split(&no_articles).collect::<Vec<_>>().join(" ")
}

/// `re.sub(r"\b(a|an|the)\b", " ", text)`.
fn remove_articles(chars: &[char]) -> String {
    const ARTICLES: [&[char]; 3] = [&['a'], &['a', 'n'], &['t', 'h', 'e']];
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(chars.len());
    let mut i = 0;
    'scan: while i < chars.len() {
        if i == 0 || !is_word(chars[i - 1]) {
            for art in ARTICLES {
                let end = i + art.len();
                if chars[i..].starts_with(art) && chars.get(end).is_none_or(|&c| !is_word(c)) {
                    out.push(' ');
                    i = end;
                    continue 'scan;
                }
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Python's `str.split()` without arguments.
fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|t| !t.is_empty())
}

/// evaluate-v1.1.py `exact_match_score`.
pub fn exact_match_score(prediction: &str, ground_truth: &str) -> bool {
    normalize_answer(prediction) == normalize_answer(ground_truth)
}

/// evaluate-v1.1.py `f1_score` (0 when no token is shared, including when
/// either side normalizes to nothing).
pub fn f1_score(prediction: &str, ground_truth: &str) -> f64 {
    let p = normalize_answer(prediction);
    let g = normalize_answer(ground_truth);
    token_f1(
        &py_split(&p).collect::<Vec<_>>(),
        &py_split(&g).collect::<Vec<_>>(),
    )
}

/// evaluate-v2.0.py `compute_exact` (the same comparison as v1.1).
pub fn v2_exact_score(gold: &str, prediction: &str) -> bool {
    normalize_answer(gold) == normalize_answer(prediction)
}

/// evaluate-v2.0.py `compute_f1`: as v1.1, except that when either side has
/// no tokens the score is 1 if both have none, else 0.
pub fn v2_f1_score(gold: &str, prediction: &str) -> f64 {
    let g = normalize_answer(gold);
    let p = normalize_answer(prediction);
    let gt: Vec<&str> = py_split(&g).collect();
    let pt: Vec<&str> = py_split(&p).collect();
    if gt.is_empty() || pt.is_empty() {
        return if gt == pt { 1.0 } else { 0.0 };
    }
    token_f1(&pt, &gt)
}

/// `Counter(pred) & Counter(gold)`, then precision/recall/F1 in the same
/// float operations as the scripts.
fn token_f1(pred: &[&str], gold: &[&str]) -> f64 {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in gold {
        *counts.entry(t).or_default() += 1;
    }
    let mut num_same = 0usize;
    for t in pred {
        if let Some(c) = counts.get_mut(t) {
            if *c > 0 {
                *c -= 1;
                num_same += 1;
            }
        }
    }
    if num_same == 0 {
        return 0.0;
    }
    let precision = 1.0 * num_same as f64 / pred.len() as f64;
    let recall = 1.0 * num_same as f64 / gold.len() as f64;
    (2.0 * precision * recall) / (precision + recall)
}

/// Scores predictions (question id → answer text) against the gold answers:
/// the SQuAD 2.0 evaluation ([`squad_v2_metrics`]) when any example is
/// unanswerable, else SQuAD 1.1 ([`squad_v1_metrics`]).
pub fn squad_metrics(
    examples: &[SquadExample],
    predictions: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, f64>> {
    if examples.iter().any(|e| e.is_impossible) {
        squad_v2_metrics(examples, predictions)
    } else {
        squad_v1_metrics(examples, predictions)
    }
}

/// evaluate-v1.1.py: `{"exact_match", "f1"}`, each 100 × the mean over all
/// questions of the best score over the gold answers. A question without a
/// prediction scores 0 (and is counted, as in the script); predictions for
/// unknown ids are ignored. Errors on no examples or a question without
/// gold answers.
pub fn squad_v1_metrics(
    examples: &[SquadExample],
    predictions: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, f64>> {
    check(examples)?;
    let mut em = 0.0f64;
    let mut f1 = 0.0f64;
    let mut missing = 0usize;
    for ex in examples {
        if ex.answers.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "squad: question {} has no gold answers; SQuAD 1.1 metrics need answered questions (read SQuAD 2.0 files with version_2)",
                ex.id
            )));
        }
        let Some(pred) = predictions.get(&ex.id) else {
            missing += 1;
            continue;
        };
        let best_em = ex.answers.iter().any(|a| exact_match_score(pred, &a.text));
        em += if best_em { 1.0 } else { 0.0 };
        f1 += ex
            .answers
            .iter()
            .map(|a| f1_score(pred, &a.text))
            .fold(f64::NEG_INFINITY, f64::max);
    }
    warn_missing(missing, examples.len());
    let total = examples.len() as f64;
    Ok(BTreeMap::from([
        ("exact_match".to_string(), 100.0 * em / total),
        ("f1".to_string(), 100.0 * f1 / total),
    ]))
}

/// evaluate-v2.0.py (no-answer probabilities all 0, as P-Tuning v2 passes
/// them): `exact_match` (the script's `exact`), `f1`, `total`, and
/// `HasAns_exact` / `HasAns_f1` / `HasAns_total` and `NoAns_*` over the
/// answerable / unanswerable questions when there are any. Gold answers
/// that normalize to nothing are dropped; a question with none left has ""
/// as its only gold answer. A question without a prediction scores 0 and
/// is counted (the script would leave it out of `total` and fail on the
/// breakdowns).
pub fn squad_v2_metrics(
    examples: &[SquadExample],
    predictions: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, f64>> {
    check(examples)?;
    let mut sums = [[0.0f64; 2]; 2]; // [has_ans, no_ans] × [exact, f1]
    let mut counts = [0usize; 2];
    let (mut all_exact, mut all_f1) = (0.0f64, 0.0f64);
    let mut missing = 0usize;
    for ex in examples {
        let group = usize::from(ex.answers.is_empty());
        counts[group] += 1;
        let Some(pred) = predictions.get(&ex.id) else {
            missing += 1;
            continue;
        };
        let mut golds: Vec<&str> = ex
            .answers
            .iter()
            .map(|a| a.text.as_str())
            .filter(|t| !normalize_answer(t).is_empty())
            .collect();
        if golds.is_empty() {
            golds.push("");
        }
        let exact = if golds.iter().any(|g| v2_exact_score(g, pred)) {
            1.0
        } else {
            0.0
        };
        let f1 = golds
            .iter()
            .map(|g| v2_f1_score(g, pred))
            .fold(f64::NEG_INFINITY, f64::max);
        sums[group][0] += exact;
        sums[group][1] += f1;
        all_exact += exact;
        all_f1 += f1;
    }
    warn_missing(missing, examples.len());
    let total = examples.len() as f64;
    let mut out = BTreeMap::from([
        ("exact_match".to_string(), 100.0 * all_exact / total),
        ("f1".to_string(), 100.0 * all_f1 / total),
        ("total".to_string(), total),
    ]);
    for (group, name) in [(0, "HasAns"), (1, "NoAns")] {
        if counts[group] > 0 {
            let n = counts[group] as f64;
            out.insert(format!("{name}_exact"), 100.0 * sums[group][0] / n);
            out.insert(format!("{name}_f1"), 100.0 * sums[group][1] / n);
            out.insert(format!("{name}_total"), n);
        }
    }
    Ok(out)
}

fn check(examples: &[SquadExample]) -> Result<()> {
    if examples.is_empty() {
        return Err(Error::InvalidArgument(
            "squad: no examples to score".to_string(),
        ));
    }
    Ok(())
}

fn warn_missing(missing: usize, total: usize) {
    if missing > 0 {
        tracing::warn!("squad: {missing} of {total} questions have no prediction and score 0");
    }
}
