//! SuperGLUE tasks read from the official jsonl release (`train.jsonl`,
//! `val.jsonl`, `test.jsonl`; one JSON object per line, `label` absent in
//! test).
//!
//! Inputs are built exactly as THUDM/P-tuning-v2 `tasks/superglue/dataset.py`
//! (`task_to_keys` + `preprocess_function`, default `template_id = 0`) builds
//! them from HF `datasets`' `super_glue` records:
//!
//! | task    | text                                                           | pair                      |
//! |---------|----------------------------------------------------------------|---------------------------|
//! | BoolQ   | `question`                                                     | `passage`                 |
//! | CB, RTE | `premise`                                                      | `hypothesis`              |
//! | WiC     | `"{sentence1} {sentence2} Does {word} have the same meaning in both sentences?"` | — |
//! | WSC     | `"{span2_text}: {text}"`                                       | `span1_text`              |
//! | COPA    | `"{premise} because"` (question "cause") / `"{premise} so"` (question "effect"), once per choice | `choice1`, `choice2` |
//! | MultiRC | passage `text` (one example per answer option)                 | `"{question} {answer}"`   |
//!
//! Labels follow the HF `super_glue` `ClassLabel` order the official code
//! takes its `label_list` from: `["False", "True"]` for the JSON booleans
//! (BoolQ, WiC, WSC) and MultiRC's 0/1, CB `["entailment", "contradiction",
//! "neutral"]`, RTE `["entailment", "not_entailment"]`; COPA's label is the
//! choice index.
//!
//! Metrics are those of the official `compute_metrics`: HF's `super_glue`
//! metric (accuracy; CB also macro-F1 `"f1"` and `"combined_score"`, their
//! mean), and for MultiRC sklearn's binary F1 over answer options, here
//! `"f1a"`, plus the SuperGLUE exact match `"em"` and accuracy. Model
//! selection (`test_key`) uses accuracy, and F1 for MultiRC.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::formats::{read_jsonl, At, JsonRecord};
use super::{
    class_pairs, file_stem, list, metric_map, metrics, Example, Label, Prediction, Split, Task,
    TaskKind,
};
use crate::Result;

/// Which SuperGLUE task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuperGlue {
    BoolQ,
    Cb,
    Copa,
    Rte,
    Wic,
    Wsc,
    MultiRc,
}

/// A SuperGLUE task (see the module docs for formats).
#[derive(Debug, Clone)]
pub struct SuperGlueTask {
    which: SuperGlue,
}

const BOOL_LABELS: &[&str] = &["False", "True"];
const CB_LABELS: &[&str] = &["entailment", "contradiction", "neutral"];
const RTE_LABELS: &[&str] = &["entailment", "not_entailment"];
const COPA_LABELS: &[&str] = &["0", "1"];

impl SuperGlueTask {
    /// The task for a registry name (`"superglue/cb"`), if it is one.
    pub fn by_name(name: &str) -> Option<Self> {
        let which = match name {
            "superglue/boolq" => SuperGlue::BoolQ,
            "superglue/cb" => SuperGlue::Cb,
            "superglue/copa" => SuperGlue::Copa,
            "superglue/rte" => SuperGlue::Rte,
            "superglue/wic" => SuperGlue::Wic,
            "superglue/wsc" => SuperGlue::Wsc,
            "superglue/multirc" => SuperGlue::MultiRc,
            _ => return None,
        };
        Some(Self { which })
    }

    /// The task.
    pub fn new(which: SuperGlue) -> Self {
        Self { which }
    }

    fn labels(&self) -> &'static [&'static str] {
        match self.which {
            SuperGlue::BoolQ | SuperGlue::Wic | SuperGlue::Wsc | SuperGlue::MultiRc => BOOL_LABELS,
            SuperGlue::Cb => CB_LABELS,
            SuperGlue::Rte => RTE_LABELS,
            SuperGlue::Copa => COPA_LABELS,
        }
    }

    /// Reads the label of one line (`None` when absent), checking that a
    /// file is labeled on every line or on none (`labeled` is set by the
    /// first line).
    fn label(
        &self,
        at: At<'_>,
        obj: &Map<String, Value>,
        labeled: &mut Option<bool>,
    ) -> Result<Option<Label>> {
        let Some(v) = presence(at, obj, "label", labeled)? else {
            return Ok(None);
        };
        let class = match self.which {
            SuperGlue::BoolQ | SuperGlue::Wic | SuperGlue::Wsc => match v {
                Value::Bool(b) => *b as usize,
                other => return Err(at.wrong_type("label", "a boolean (true/false)", other)),
            },
            SuperGlue::Cb | SuperGlue::Rte => match v {
                Value::String(s) => {
                    let names = self.labels();
                    names.iter().position(|n| n == s).ok_or_else(|| {
                        at.error(format!(
                            "unknown label {s:?} for {}; expected one of: {}",
                            self.name(),
                            list(names)
                        ))
                    })?
                }
                other => return Err(at.wrong_type("label", "a string", other)),
            },
            SuperGlue::Copa => match v.as_u64() {
                Some(i @ (0 | 1)) => i as usize,
                _ => {
                    return Err(at.wrong_type(
                        "label",
                        "0 or 1 (the index of the correct choice)",
                        v,
                    ))
                }
            },
            SuperGlue::MultiRc => binary01(at, "label", v)?,
        };
        Ok(Some(Label::Class(class)))
    }

    fn read_record(
        &self,
        path: &Path,
        stem: &str,
        n: usize,
        rec: &JsonRecord,
        labeled: &mut Option<bool>,
        out: &mut Vec<Example>,
    ) -> Result<()> {
        let at = At {
            path,
            line: rec.line,
            prefix: "",
        };
        let obj = &rec.object;
        if self.which == SuperGlue::MultiRc {
            return read_multirc(at, stem, obj, labeled, out);
        }
        let guid = match obj.get("idx") {
            Some(_) => format!("{stem}-{}", at.index(obj, "idx")?),
            None => format!("{stem}-{n}"),
        };
        let one = |text: String, pair: Option<String>| vec![(text, pair)];
        let inputs = match self.which {
            SuperGlue::BoolQ => one(
                at.str(obj, "question")?.to_string(),
                Some(at.str(obj, "passage")?.to_string()),
            ),
            // AX-b, RTE's broad-coverage diagnostic, names them sentence1 and sentence2.
            SuperGlue::Rte if diagnostic(obj) == Some("AX-b") => one(
                at.str(obj, "sentence1")?.to_string(),
                Some(at.str(obj, "sentence2")?.to_string()),
            ),
            SuperGlue::Cb | SuperGlue::Rte => one(
                at.str(obj, "premise")?.to_string(),
                Some(at.str(obj, "hypothesis")?.to_string()),
            ),
            SuperGlue::Wic => {
                // dataset.py, template_id 0 ("ROBERTA"): one sequence, no pair.
                let (s1, s2, word) = (
                    at.str(obj, "sentence1")?,
                    at.str(obj, "sentence2")?,
                    at.str(obj, "word")?,
                );
                one(
                    format!("{s1} {s2} Does {word} have the same meaning in both sentences?"),
                    None,
                )
            }
            SuperGlue::Wsc => {
                // dataset.py, template_id 0: span2_word_text = "{span2_text}: {text}",
                // paired with span1_text (task_to_keys["wsc"]).
                let text = at.str(obj, "text")?;
                let target = at.object(obj, "target")?;
                let t = At {
                    prefix: "target.",
                    ..at
                };
                let span1 = t.str(target, "span1_text")?;
                let span2 = t.str(target, "span2_text")?;
                one(format!("{span2}: {text}"), Some(span1.to_string()))
            }
            SuperGlue::Copa => {
                // dataset.py: joiner = "because" if question == "cause" else "so";
                // text_a = f"{premise} {joiner}", paired with each choice.
                let premise = at.str(obj, "premise")?;
                let joiner = match at.str(obj, "question")? {
                    "cause" => "because",
                    "effect" => "so",
                    other => {
                        return Err(at.wrong_type(
                            "question",
                            "\"cause\" or \"effect\"",
                            &Value::String(other.to_string()),
                        ))
                    }
                };
                let text_a = format!("{premise} {joiner}");
                vec![
                    (text_a.clone(), Some(at.str(obj, "choice1")?.to_string())),
                    (text_a, Some(at.str(obj, "choice2")?.to_string())),
                ]
            }
            SuperGlue::MultiRc => unreachable!("handled above"),
        };
        let label = self.label(at, obj, labeled)?;
        let (mut group, mut categories) = (None, Vec::new());
        if self.which == SuperGlue::Rte {
            // AX-g: a minimal pair is two consecutive lines (checked in `read`).
            if diagnostic(obj) == Some("AX-g") {
                group = Some(format!("pair-{}", n / 2));
            }
            categories = AXB_CATEGORIES
                .iter()
                .filter(|c| obj.contains_key(**c))
                .map(|c| c.to_string())
                .collect();
        }
        out.push(Example {
            guid,
            inputs,
            label,
            group,
            categories,
        });
        Ok(())
    }
}

/// AX-b's coarse categories: the fields that hold an example's fine ones.
const AXB_CATEGORIES: [&str; 4] = [
    "lexical-semantics",
    "predicate-argument-structure",
    "logic",
    "knowledge",
];

/// The value of an optional field that must be present on every line of a
/// labeled file and on none of an unlabeled one; the first occurrence
/// decides (`labeled`).
fn presence<'v>(
    at: At<'_>,
    obj: &'v Map<String, Value>,
    key: &str,
    labeled: &mut Option<bool>,
) -> Result<Option<&'v Value>> {
    let v = obj.get(key).filter(|v| !v.is_null());
    match (*labeled, v) {
        (None, _) => {
            *labeled = Some(v.is_some());
            Ok(v)
        }
        (Some(true), None) => Err(at.error(format!(
            "missing field \"{}{key}\" (the file's first example is labeled, so every one must be)",
            at.prefix
        ))),
        (Some(false), Some(_)) => Err(at.error(format!(
            "unexpected field \"{}{key}\" (the file's first example has no label, so none may)",
            at.prefix
        ))),
        (Some(_), v) => Ok(v),
    }
}

/// A 0/1 label (MultiRC answers); JSON booleans are accepted too.
fn binary01(at: At<'_>, key: &str, v: &Value) -> Result<usize> {
    match v {
        Value::Bool(b) => Ok(*b as usize),
        _ => match v.as_u64() {
            Some(i @ (0 | 1)) => Ok(i as usize),
            _ => Err(at.wrong_type(key, "0 or 1", v)),
        },
    }
}

/// One MultiRC line (a passage) → one example per answer option, as HF's
/// `super_glue` loader flattens it: text = the passage text, pair =
/// `"{question} {answer}"` (dataset.py `question_answer`), grouped by
/// question for exact match.
fn read_multirc(
    at: At<'_>,
    stem: &str,
    obj: &Map<String, Value>,
    labeled: &mut Option<bool>,
    out: &mut Vec<Example>,
) -> Result<()> {
    let p_idx = at.index(obj, "idx")?;
    let passage = at.object(obj, "passage")?;
    let pa = At {
        prefix: "passage.",
        ..at
    };
    let text = pa.str(passage, "text")?;
    let questions = pa.array(passage, "questions")?;
    for (qi, q) in questions.iter().enumerate() {
        let q_prefix = format!("passage.questions[{qi}].");
        let qa = At {
            prefix: &q_prefix,
            ..at
        };
        let Value::Object(q) = q else {
            return Err(pa.wrong_type(&format!("questions[{qi}]"), "an object", q));
        };
        let question = qa.str(q, "question")?;
        let q_idx = qa.index(q, "idx")?;
        let answers = qa.array(q, "answers")?;
        for (ai, a) in answers.iter().enumerate() {
            let a_prefix = format!("{q_prefix}answers[{ai}].");
            let aa = At {
                prefix: &a_prefix,
                ..at
            };
            let Value::Object(a) = a else {
                return Err(qa.wrong_type(&format!("answers[{ai}]"), "an object", a));
            };
            let answer = aa.str(a, "text")?;
            let a_idx = aa.index(a, "idx")?;
            let label = match presence(aa, a, "label", labeled)? {
                Some(v) => Some(Label::Class(binary01(aa, "label", v)?)),
                None => None,
            };
            out.push(Example {
                guid: format!("{stem}-{p_idx}-{q_idx}-{a_idx}"),
                inputs: vec![(text.to_string(), Some(format!("{question} {answer}")))],
                label,
                group: Some(format!("{p_idx}-{q_idx}")),
                categories: Vec::new(),
            });
        }
    }
    Ok(())
}

impl Task for SuperGlueTask {
    fn name(&self) -> &str {
        match self.which {
            SuperGlue::BoolQ => "superglue/boolq",
            SuperGlue::Cb => "superglue/cb",
            SuperGlue::Copa => "superglue/copa",
            SuperGlue::Rte => "superglue/rte",
            SuperGlue::Wic => "superglue/wic",
            SuperGlue::Wsc => "superglue/wsc",
            SuperGlue::MultiRc => "superglue/multirc",
        }
    }

    fn kind(&self) -> TaskKind {
        match self.which {
            SuperGlue::Copa => TaskKind::MultipleChoice { choices: 2 },
            _ => TaskKind::Classification,
        }
    }

    fn label_names(&self) -> Vec<String> {
        self.labels().iter().map(|s| s.to_string()).collect()
    }

    /// `dir/train.jsonl`, `dir/val.jsonl`, `dir/test.jsonl`.
    fn split_path(&self, dir: &Path, split: Split) -> PathBuf {
        dir.join(match split {
            Split::Train => "train.jsonl",
            Split::Dev => "val.jsonl",
            Split::Test => "test.jsonl",
        })
    }

    fn read(&self, path: &Path) -> Result<Vec<Example>> {
        let records = read_jsonl(path)?;
        if let Some(name) = records.first().and_then(|r| diagnostic(&r.object)) {
            if self.which != SuperGlue::Rte {
                return Err(super::formats::invalid(
                    path,
                    records[0].line,
                    format!(
                        "this is SuperGLUE's {name} diagnostic, which an RTE adapter scores \
                         (superglue/rte), not a {} one",
                        self.name()
                    ),
                ));
            }
        }
        let stem = file_stem(path);
        let mut labeled = None;
        let mut out = Vec::with_capacity(records.len());
        for (n, rec) in records.iter().enumerate() {
            self.read_record(path, &stem, n, rec, &mut labeled, &mut out)?;
        }

        if out.is_empty() {
            return Err(super::formats::no_examples(
                path,
                "no answer options in any passage",
            ));
        }
        Ok(out)
    }

    /// `"f1a"` for MultiRC (the official `test_key` "f1"), else `"accuracy"`.
    fn main_metric(&self) -> &'static str {
        match self.which {
            SuperGlue::MultiRc => "f1a",
            _ => "accuracy",
        }
    }

    fn metrics(
        &self,
        examples: &[Example],
        predictions: &[Prediction],
    ) -> Result<BTreeMap<String, f64>> {
        let (gold, pred) = class_pairs(self.name(), examples, predictions, self.labels().len())?;
        let acc = metrics::accuracy(&gold, &pred);
        Ok(match self.which {
            SuperGlue::Cb => {
                let f1 = metrics::macro_f1(&gold, &pred);
                metric_map(&[
                    ("accuracy", acc),
                    ("f1", f1),
                    ("combined_score", (acc + f1) / 2.0),
                ])
            }
            SuperGlue::MultiRc => {
                let groups: Vec<&str> = examples
                    .iter()
                    .map(|e| e.group.as_deref().unwrap_or(e.guid.as_str()))
                    .collect();
                metric_map(&[
                    ("f1a", metrics::multirc_f1a(&gold, &pred)),
                    ("em", metrics::multirc_em(&groups, &gold, &pred)),
                    ("accuracy", acc),
                ])
            }
            SuperGlue::Rte => rte_metrics(examples, &gold, &pred)?,
            _ => metric_map(&[("accuracy", acc)]),
        })
    }
}

/// RTE's accuracy, and on its diagnostics what SuperGLUE reports: on AX-b
/// (examples with categories) Matthews' correlation, overall (`mcc`) and per
/// coarse category (`mcc_logic`, ...); on AX-g (examples in pairs) gender
/// parity, the share of pairs predicted alike.
fn rte_metrics(
    examples: &[Example],
    gold: &[usize],
    pred: &[usize],
) -> Result<BTreeMap<String, f64>> {
    let mut out = metric_map(&[("accuracy", metrics::accuracy(gold, pred))]);
    if examples.iter().any(|e| !e.categories.is_empty()) {
        out.insert("mcc".into(), metrics::matthews_corrcoef(gold, pred));
        for category in AXB_CATEGORIES {
            let (g, p): (Vec<usize>, Vec<usize>) = (0..examples.len())
                .filter(|&i| examples[i].categories.iter().any(|c| c == category))
                .map(|i| (gold[i], pred[i]))
                .unzip();
            if !g.is_empty() {
                let name = format!("mcc_{}", category.replace('-', "_"));
                out.insert(name, metrics::matthews_corrcoef(&g, &p));
            }
        }
    }
    let mut pairs: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in examples.iter().enumerate() {
        if let Some(group) = &e.group {
            pairs.entry(group).or_default().push(i);
        }
    }
    for pair in pairs.values() {
        check_gender_pair(examples, pair)?;
    }
    if !pairs.is_empty() {
        let alike = pairs.values().filter(|p| pred[p[0]] == pred[p[1]]);
        out.insert(
            "gender_parity".into(),
            alike.count() as f64 / pairs.len() as f64,
        );
    }
    Ok(out)
}

/// AX-g pairs consecutive lines: the same hypothesis and label, premises
/// that differ in a pronoun's gender. Gender parity is only meaningful if
/// the file keeps that order (predictions need no pairs, so this is checked
/// where the parity is scored).
fn check_gender_pair(examples: &[Example], pair: &[usize]) -> Result<()> {
    let bad = |why: &str| {
        let guids: Vec<&str> = pair.iter().map(|&i| examples[i].guid.as_str()).collect();
        Err(crate::Error::InvalidArgument(format!(
            "AX-g's gender parity scores pairs of consecutive lines (same hypothesis and \
             label, premises differing in a pronoun); {}: {why}",
            guids.join(" and ")
        )))
    };
    let [a, b] = pair else {
        return bad("has no partner");
    };
    let (a, b) = (&examples[*a], &examples[*b]);
    if a.inputs[0].1 != b.inputs[0].1 || a.label != b.label {
        return bad("the hypotheses or labels differ");
    }
    if a.inputs[0].0 == b.inputs[0].0 {
        return bad("the premises are the same");
    }
    Ok(())
}

/// Which SuperGLUE diagnostic a record comes from, if any: AX-g's lines have
/// a `pair_id`; AX-b's have `sentence1` and `sentence2`, as WiC's do, but no
/// `word`.
fn diagnostic(obj: &Map<String, Value>) -> Option<&'static str> {
    let axb = obj.contains_key("sentence1") && obj.contains_key("sentence2");
    if obj.contains_key("pair_id") {
        Some("AX-g")
    } else if axb && !obj.contains_key("word") {
        Some("AX-b")
    } else {
        None
    }
}
