//! Entity-level scores for sequence labeling, identical to Python's `seqeval`
//! 1.2.2 — the metric the official P-Tuning v2 code reports for NER and SRL
//! (`tasks/ner/dataset.py` and `tasks/srl/dataset.py` call
//! `load_metric("seqeval")`, which is `seqeval.metrics.classification_report`
//! and reads `overall_precision` / `overall_recall` / `overall_f1` from its
//! "micro avg").
//!
//! Two ways of cutting tag sequences into entities:
//!
//! - [`Mode::Default`] (seqeval's default, `mode=None`): the conlleval-style
//!   chunker `seqeval.metrics.sequence_labeling.get_entities`. Lenient: an
//!   `I-X` without a `B-X` starts an entity, a type change ends one, `E-`/`S-`
//!   tags (IOBES) are understood. All sentences are concatenated with an `O`
//!   between them, exactly as seqeval does, so entity positions are global.
//! - [`Mode::Strict`] (`mode="strict", scheme=IOB2`): `seqeval.scheme.Entities`
//!   with the IOB2 scheme. An entity is a `B-X` followed by the `I-X` run after
//!   it; a stray `I-X` is no entity. Any tag that is not `O`, `B-*` or `I-*`
//!   is an error, as in seqeval (which raises there).
//!
//! An entity counts as correct when its type, sentence and boundaries all
//! match a gold entity. Precision, recall and F1 are micro averages over all
//! entities; the per-type scores are those of `classification_report`.
//! Zero divisions give 0, as seqeval's default `zero_division="warn"` does.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::{Error, Result};

/// How tag sequences are cut into entities (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// seqeval's default, conlleval-compatible chunking.
    #[default]
    Default,
    /// `mode="strict", scheme=IOB2`.
    Strict,
}

/// Scores of one entity type (a row of `classification_report`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TypeScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Gold entities of this type.
    pub support: usize,
}

/// Overall (micro-averaged) and per-type entity scores.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqevalReport {
    /// correct / predicted entities (0 when nothing was predicted).
    pub precision: f64,
    /// correct / gold entities (0 when there is no gold entity).
    pub recall: f64,
    /// 2·P·R / (P + R), 0 when P + R = 0.
    pub f1: f64,
    /// Token accuracy (seqeval's `accuracy_score`, the official code's
    /// `"accuracy"`): equal tags / tags; 0 when there are no tags (where
    /// seqeval divides by zero).
    pub accuracy: f64,
    /// Every type seen in the gold or predicted entities, sorted by name.
    pub per_type: BTreeMap<String, TypeScores>,
    /// Gold entities.
    pub gold_entities: usize,
    /// Predicted entities.
    pub pred_entities: usize,
    /// Predicted entities that match a gold one.
    pub correct_entities: usize,
}

/// One entity in a tag sequence: `tags[start..end]` (end exclusive).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Entity {
    /// The type, e.g. `"PER"` for `B-PER I-PER` (`"_"` for a bare `B`).
    pub label: String,
    pub start: usize,
    pub end: usize,
}

/// Scores `pred` against `gold` (one tag sequence per sentence, both in the
/// same order and of the same lengths).
///
/// Errors: no sentences, a different number of sentences or a sentence of a
/// different length (seqeval raises on all three), an empty tag string, and
/// in [`Mode::Strict`] a tag that is not `O`, `B-*` or `I-*`.
pub fn evaluate(gold: &[Vec<String>], pred: &[Vec<String>], mode: Mode) -> Result<SeqevalReport> {
    if gold.is_empty() && pred.is_empty() {
        return Err(Error::InvalidArgument(
            "seqeval: no sentences to score".to_string(),
        ));
    }
    if gold.len() != pred.len() {
        return Err(Error::InvalidArgument(format!(
            "seqeval: {} predicted sentences for {} gold sentences",
            pred.len(),
            gold.len()
        )));
    }
    for (i, (g, p)) in gold.iter().zip(pred).enumerate() {
        if g.len() != p.len() {
            return Err(Error::InvalidArgument(format!(
                "seqeval: sentence {i} has {} gold tags but {} predicted tags",
                g.len(),
                p.len()
            )));
        }
    }

    // Entities as (type, key) pairs; the key identifies the position: global
    // (start, end) offsets in the concatenation for the default mode, (sentence,
    // start, end) for strict mode, as seqeval keys them.
    let (gold_set, pred_set) = match mode {
        Mode::Default => (
            default_keys(gold, "gold")?,
            default_keys(pred, "predicted")?,
        ),
        Mode::Strict => (strict_keys(gold, "gold")?, strict_keys(pred, "predicted")?),
    };

    let types: BTreeSet<&String> = gold_set.iter().chain(&pred_set).map(|(t, _)| t).collect();
    let mut per_type = BTreeMap::new();
    let (mut tp_all, mut pred_all, mut true_all) = (0usize, 0usize, 0usize);
    for ty in types {
        let t: HashSet<&Key> = gold_set
            .iter()
            .filter(|(x, _)| x == ty)
            .map(|(_, k)| k)
            .collect();
        let p: HashSet<&Key> = pred_set
            .iter()
            .filter(|(x, _)| x == ty)
            .map(|(_, k)| k)
            .collect();
        let tp = t.intersection(&p).count();
        let (precision, recall, f1) = prf(tp, p.len(), t.len());
        per_type.insert(
            ty.clone(),
            TypeScores {
                precision,
                recall,
                f1,
                support: t.len(),
            },
        );
        tp_all += tp;
        pred_all += p.len();
        true_all += t.len();
    }
    let (precision, recall, f1) = prf(tp_all, pred_all, true_all);

    let tokens: usize = gold.iter().map(Vec::len).sum();
    let equal: usize = gold
        .iter()
        .zip(pred)
        .map(|(g, p)| g.iter().zip(p).filter(|(a, b)| a == b).count())
        .sum();
    let accuracy = if tokens == 0 {
        0.0
    } else {
        equal as f64 / tokens as f64
    };

    Ok(SeqevalReport {
        precision,
        recall,
        f1,
        accuracy,
        per_type,
        gold_entities: true_all,
        pred_entities: pred_all,
        correct_entities: tp_all,
    })
}

/// The entities of one tag sequence, in order of their end. In
/// [`Mode::Default`] this is seqeval's `get_entities` on the sequence (end
/// made exclusive); in [`Mode::Strict`] the IOB2 entities.
///
/// Errors: an empty tag; in strict mode a tag that is not `O`, `B-*`, `I-*`.
pub fn entities<S: AsRef<str>>(tags: &[S], mode: Mode) -> Result<Vec<Entity>> {
    let tags: Vec<&str> = tags.iter().map(AsRef::as_ref).collect();
    let found = match mode {
        Mode::Default => {
            check_nonempty(&tags, 0, "")?;
            get_entities(tags.iter().copied())
        }
        Mode::Strict => strict_sentence(&tags, 0, "")?,
    };
    Ok(found
        .into_iter()
        .map(|(label, start, end)| Entity { label, start, end })
        .collect())
}

/// Precision, recall and F1 from counts, with seqeval's zero handling and
/// its order of floating-point operations (`2 * p * r / (p + r)`).
fn prf(tp: usize, predicted: usize, gold: usize) -> (f64, f64, f64) {
    let div = |n: usize, d: usize| if d == 0 { 0.0 } else { n as f64 / d as f64 };
    let p = div(tp, predicted);
    let r = div(tp, gold);
    let denom = p + r;
    let f = if denom == 0.0 {
        0.0
    } else {
        2.0 * p * r / denom
    };
    (p, r, f)
}

/// Where an entity is: (sentence or 0, start, end exclusive).
type Key = (usize, usize, usize);

fn check_nonempty(tags: &[&str], sentence: usize, which: &str) -> Result<()> {
    if let Some(pos) = tags.iter().position(|t| t.is_empty()) {
        return Err(Error::InvalidArgument(format!(
            "seqeval: empty tag at position {pos} of {which}{}sentence {sentence}",
            if which.is_empty() { "" } else { " " }
        )));
    }
    Ok(())
}

/// Default mode over all sentences: seqeval flattens the list of sentences
/// with an `O` after each and chunks the result once, so positions are
/// global offsets and chunker state (even a stale chunk start) carries
/// across sentences exactly as there.
fn default_keys(sentences: &[Vec<String>], which: &str) -> Result<Vec<(String, Key)>> {
    for (i, s) in sentences.iter().enumerate() {
        let tags: Vec<&str> = s.iter().map(String::as_str).collect();
        check_nonempty(&tags, i, which)?;
    }
    let flat = sentences
        .iter()
        .flat_map(|s| s.iter().map(String::as_str).chain(std::iter::once("O")));
    Ok(get_entities(flat)
        .into_iter()
        .map(|(t, start, end)| (t, (0, start, end)))
        .collect())
}

/// seqeval's `get_entities` (prefix tags, `suffix=False`): (type, start,
/// end exclusive). The tag letter is the first character and the type is
/// what follows the first `-` after it (the rest of the tag when there is no
/// `-`), `"_"` when empty — `chunk[0]` and `chunk[1:].split('-', 1)[-1] or '_'`.
fn get_entities<'a>(seq: impl Iterator<Item = &'a str>) -> Vec<(String, usize, usize)> {
    let mut prev_tag = 'O';
    let mut prev_type = String::new();
    let mut begin = 0usize;
    let mut chunks = Vec::new();
    for (i, chunk) in seq.chain(std::iter::once("O")).enumerate() {
        let mut chars = chunk.chars();
        // An empty tag was rejected before; treat it as O defensively.
        let tag = chars.next().unwrap_or('O');
        let rest = chars.as_str();
        let ty = match rest.split_once('-') {
            Some((_, after)) => after,
            None => rest,
        };
        let ty = if ty.is_empty() { "_" } else { ty };
        if end_of_chunk(prev_tag, tag, &prev_type, ty) {
            chunks.push((prev_type.clone(), begin, i));
        }
        if start_of_chunk(prev_tag, tag, &prev_type, ty) {
            begin = i;
        }
        prev_tag = tag;
        prev_type = ty.to_string();
    }
    chunks
}

/// seqeval's `end_of_chunk`: did a chunk end between the previous and the
/// current word? (The initial `prev_type` is `""`, as in seqeval.)
fn end_of_chunk(prev_tag: char, tag: char, prev_type: &str, ty: &str) -> bool {
    matches!(prev_tag, 'E' | 'S')
        || (matches!(prev_tag, 'B' | 'I') && matches!(tag, 'B' | 'S' | 'O'))
        || (prev_tag != 'O' && prev_tag != '.' && prev_type != ty)
}

/// seqeval's `start_of_chunk`: did a chunk start between the previous and the
/// current word?
fn start_of_chunk(prev_tag: char, tag: char, prev_type: &str, ty: &str) -> bool {
    matches!(tag, 'B' | 'S')
        || (matches!(prev_tag, 'E' | 'S' | 'O') && matches!(tag, 'E' | 'I'))
        || (tag != 'O' && tag != '.' && prev_type != ty)
}

/// Strict mode over all sentences: entities keyed by (sentence, start, end),
/// like seqeval's `Entity(sent_id, start, end, tag)`.
fn strict_keys(sentences: &[Vec<String>], which: &str) -> Result<Vec<(String, Key)>> {
    let mut out = Vec::new();
    for (i, s) in sentences.iter().enumerate() {
        let tags: Vec<&str> = s.iter().map(String::as_str).collect();
        for (t, start, end) in strict_sentence(&tags, i, which)? {
            out.push((t, (i, start, end)));
        }
    }
    Ok(out)
}

/// A tag's prefix letter in seqeval's scheme module (only the ones IOB2
/// allows survive validation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefix {
    I,
    O,
    B,
}

/// seqeval's `Token` for IOB2: the prefix (first character) and the type
/// (`token[1:].strip('-') or '_'`).
struct Tok<'a> {
    prefix: Prefix,
    ty: &'a str,
}

impl<'a> Tok<'a> {
    fn parse(tag: &'a str, position: usize, sentence: usize, which: &str) -> Result<Self> {
        let mut chars = tag.chars();
        let prefix = match chars.next() {
            Some('I') => Prefix::I,
            Some('O') => Prefix::O,
            Some('B') => Prefix::B,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "seqeval strict mode (IOB2): invalid tag {tag:?} at position {position} of \
                     {which}{}sentence {sentence}; allowed prefixes are I, O and B",
                    if which.is_empty() { "" } else { " " }
                )))
            }
        };
        let ty = chars.as_str().trim_matches('-');
        Ok(Tok {
            prefix,
            ty: if ty.is_empty() { "_" } else { ty },
        })
    }

    /// IOB2 `start_patterns`: `(ANY, B, ANY)`.
    fn is_start(&self, _prev: &Tok) -> bool {
        self.prefix == Prefix::B
    }

    /// IOB2 `inside_patterns`: `(B, I, SAME)`, `(I, I, SAME)`.
    fn is_inside(&self, prev: &Tok) -> bool {
        matches!(prev.prefix, Prefix::B | Prefix::I)
            && self.prefix == Prefix::I
            && prev.ty == self.ty
    }

    /// IOB2 `end_patterns` (does `prev` end a chunk before `self`?):
    /// `(I, O, ANY)`, `(I, I, DIFF)`, `(I, B, ANY)`, `(B, O, ANY)`,
    /// `(B, I, DIFF)`, `(B, B, ANY)`.
    fn is_end(&self, prev: &Tok) -> bool {
        match (prev.prefix, self.prefix) {
            (Prefix::I | Prefix::B, Prefix::O | Prefix::B) => true,
            (Prefix::I | Prefix::B, Prefix::I) => prev.ty != self.ty,
            _ => false,
        }
    }
}

/// seqeval's `Tokens.entities` for one sentence under IOB2: (type, start,
/// end exclusive). Every tag is validated first: seqeval validates each one
/// while walking and raises on the first invalid, so the outcome is the same.
fn strict_sentence(
    tags: &[&str],
    sentence: usize,
    which: &str,
) -> Result<Vec<(String, usize, usize)>> {
    let mut ext = Vec::with_capacity(tags.len() + 1);
    for (pos, t) in tags.iter().enumerate() {
        ext.push(Tok::parse(t, pos, sentence, which)?);
    }
    // The outside token appended at the end (and used as the first `prev`).
    ext.push(Tok {
        prefix: Prefix::O,
        ty: "_",
    });
    let outside = Tok {
        prefix: Prefix::O,
        ty: "_",
    };
    let mut found = Vec::new();
    let mut i = 0usize;
    let mut prev: &Tok = &outside;
    while i < ext.len() {
        let tok = &ext[i];
        if tok.is_start(prev) {
            // `_forward`: the first index after `i` that does not continue the
            // chunk. The final outside token is never inside a chunk, so
            // `end` stays below `ext.len()`.
            let mut end = i + 1;
            let mut last = tok;
            while ext[end].is_inside(last) {
                last = &ext[end];
                end += 1;
            }
            if ext[end].is_end(&ext[end - 1]) {
                found.push((tok.ty.to_string(), i, end));
            }
            i = end;
        } else {
            i += 1;
        }
        prev = &ext[i - 1];
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn readme_example() {
        // seqeval's docstring: MISC is wrong (boundary), PER right.
        let gold = vec![v("O O O B-MISC I-MISC I-MISC O"), v("B-PER I-PER O")];
        let pred = vec![v("O O B-MISC I-MISC I-MISC I-MISC O"), v("B-PER I-PER O")];
        for mode in [Mode::Default, Mode::Strict] {
            let r = evaluate(&gold, &pred, mode).unwrap();
            assert_eq!((r.precision, r.recall, r.f1), (0.5, 0.5, 0.5));
            assert_eq!(r.per_type["MISC"].f1, 0.0);
            assert_eq!(r.per_type["PER"].f1, 1.0);
            assert_eq!(r.per_type["PER"].support, 1);
            assert!((r.accuracy - 0.8).abs() < 1e-12);
        }
    }

    #[test]
    fn lenient_versus_strict() {
        let tags = v("I-PER I-PER O B-LOC I-ORG");
        let d = entities(&tags, Mode::Default).unwrap();
        let lbl: Vec<_> = d
            .iter()
            .map(|e| (e.label.as_str(), e.start, e.end))
            .collect();
        assert_eq!(lbl, [("PER", 0, 2), ("LOC", 3, 4), ("ORG", 4, 5)]);
        let s = entities(&tags, Mode::Strict).unwrap();
        let lbl: Vec<_> = s
            .iter()
            .map(|e| (e.label.as_str(), e.start, e.end))
            .collect();
        assert_eq!(lbl, [("LOC", 3, 4)]);
        let e = entities(&v("B-PER E-PER"), Mode::Strict)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"E-PER\"") && e.contains("position 1"), "{e}");
        assert_eq!(entities(&v("B-PER E-PER"), Mode::Default).unwrap().len(), 1);
    }

    #[test]
    fn length_errors() {
        let e = evaluate(&[v("O")], &[], Mode::Default)
            .unwrap_err()
            .to_string();
        assert!(e.contains("0 predicted sentences for 1 gold"), "{e}");
        let e = evaluate(&[v("O O")], &[v("O")], Mode::Default)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sentence 0 has 2 gold tags but 1 predicted"),
            "{e}"
        );
        assert!(evaluate(&[], &[], Mode::Default).is_err());
    }
}
