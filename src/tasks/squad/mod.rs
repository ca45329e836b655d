//! SQuAD extractive question answering, as the official P-Tuning v2 code runs
//! it (THUDM/P-tuning-v2 `tasks/qa/dataset.py` and `tasks/qa/utils_qa.py`,
//! which follow HF's `examples/pytorch/question-answering/run_qa.py`), scored
//! with the official SQuAD evaluation scripts.
//!
//! - [`read_squad`]: the official JSON (`data → paragraphs → qas`) into
//!   [`SquadExample`]s; misaligned training answers are skipped and counted.
//! - [`qa_features`]: question + context windows (`only_second` truncation,
//!   max length 384, doc stride 128), streamed example by example, with
//!   per-token context offsets and the training targets.
//! - [`postprocess`] / [`Postprocessor`]: start/end logits of every window
//!   back to one answer string per question (n-best 20, max answer length 30,
//!   the SQuAD 2.0 null answer and its threshold).
//! - [`squad_metrics`]: exact match and F1 (evaluate-v1.1.py /
//!   evaluate-v2.0.py).
//! - [`write_predictions`]: `predictions.json` (id → answer text), atomically.
//!
//! The flow of an evaluation:
//! ```no_run
//! use ptuning::model::tokenizer::Tokenizer;
//! use ptuning::tasks::squad::*;
//! # fn logits(_: &QaFeature) -> (Vec<f32>, Vec<f32>) { unimplemented!() }
//! # fn main() -> ptuning::Result<()> {
//! let tok = Tokenizer::from_dir(std::path::Path::new("model"))?;
//! let dev = read_squad("dev.json".as_ref(), false)?.examples;
//! let mut post = Postprocessor::new(&dev, PostprocessOptions::default());
//! for feature in qa_features(&tok, &dev, MAX_SEQ_LEN, DOC_STRIDE) {
//!     let feature = feature?;
//!     let (start, end) = logits(&feature); // the model, one window at a time
//!     post.push_feature(&feature, &start, &end)?;
//! }
//! let predictions = post.finish();
//! let scores = squad_metrics(&dev, &predictions)?; // "exact_match", "f1"
//! write_predictions("predictions.json".as_ref(), &predictions)?;
//! # let _ = scores; Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

mod features;
mod metrics;
mod postprocess;
mod read;

pub use features::{
    qa_features, qa_features_vec, raw_tokenizer, ExampleWindows, QaFeature, QaFeatures,
    QaFeaturizer, DOC_STRIDE, MAX_SEQ_LEN,
};
pub use metrics::{
    exact_match_score, f1_score, normalize_answer, squad_metrics, squad_v1_metrics,
    squad_v2_metrics, v2_exact_score, v2_f1_score,
};
pub use postprocess::{postprocess, AnswerSpan, ContextOffsets, PostprocessOptions, Postprocessor};
pub use read::{read_squad, Answer, SquadExample, SquadRead};

/// The QA tasks' names: SQuAD v1.1, and v2.0 with unanswerable questions.
pub const QA_TASKS: [&str; 2] = ["qa/squad", "qa/squad_v2"];

/// Writes `predictions.json` in the official format, a JSON object question
/// id → answer text (what `evaluate-v1.1.py` and `postprocess_qa_predictions`
/// write; 4-space indent and a final newline, as `json.dumps(indent=4)`).
/// Atomic: written to a temporary file beside `path`, flushed, then renamed
/// over it, so a crash never leaves a half-written file.
pub fn write_predictions(path: &Path, predictions: &BTreeMap<String, String>) -> Result<()> {
    let mut bytes = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut bytes, formatter);
    serde::Serialize::serialize(predictions, &mut ser).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    bytes.push(b'\n');

    let name = path
        .file_name()
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{}: predictions path has no file name",
                path.display()
            ))
        })?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}
