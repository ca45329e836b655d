//! `--init-from`: a new run starts from a trained adapter's prompt instead
//! of a random one. This is prompt transfer (train on a large source task,
//! then tune the same prompt on a small target task, as SPoT does), or a
//! second run from a trained prompt with other settings (a new schedule,
//! more epochs, more data). The head comes along only when it
//! means the same thing: the same task with the same labels; otherwise the
//! run gets a fresh head. The optimizer always starts fresh: this is a new
//! run, not a resumed one (`--resume` is that).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::heads::ClassificationHead;
use crate::model::prefix::{PrefixConfig, PrefixEncoder, PromptMethod};
use crate::training::checkpoint::{check_backbone, checkpoint_dir, load_checkpoint};
use crate::training::data::HeadSpec;

/// What a run takes from the adapter it starts from.
#[derive(Debug)]
pub struct WarmStart {
    /// The checkpoint folder read (a run folder resolves to its best/).
    pub dir: PathBuf,
    /// The source adapter's prompt, in the run's shape.
    pub prefix: PrefixEncoder,
    /// For each of the run's tasks, the source's head when its task and
    /// labels are that task's.
    pub heads: Vec<Option<ClassificationHead>>,
    /// The source adapter's task.
    pub source_task: String,
}

/// Reads the adapter at `from` (a checkpoint folder, or a run folder: its
/// best/, else its last/), once, for a run of `tasks` (each task's name and
/// head) on the backbone `backbone` (as given, and its weights hash) whose
/// prompt is `prefix`.
///
/// The prompt must have the run's length and layers. A reparameterized run
/// needs the MLP itself, which only a last/ folder keeps (best/ holds the
/// folded table); a plain run takes a table, folding a source MLP.
pub fn warm_start(
    from: &Path,
    backbone: (&str, &str),
    prefix: &PrefixConfig,
    tasks: &[(&str, HeadSpec)],
) -> Result<WarmStart> {
    let dir = checkpoint_dir(from).map_err(|e| init_error(from, &e.to_string()))?;
    let ckpt = load_checkpoint(&dir).map_err(|e| init_error(&dir, &e.to_string()))?;
    check_backbone(&ckpt.info, backbone.0, backbone.1)
        .map_err(|e| init_error(&dir, &e.to_string()))?;
    let source = &ckpt.prefix.config;
    if source.method != prefix.method {
        return Err(init_error(
            &dir,
            &format!(
                "its prompt is {}'s, this run trains {}; pass --method {}",
                source.method.name(),
                prefix.method.name(),
                source.method.name()
            ),
        ));
    }
    if source.len != prefix.len || source.layers != prefix.layers {
        let message = match prefix.method {
            PromptMethod::PTuningV2 => format!(
                "its prompt has {} tokens on layers {:?}, this run's {} tokens on layers {:?}; \
                 pass --prefix-len {} and --prefix-layers {}",
                source.len,
                source.layers,
                prefix.len,
                prefix.layers,
                source.len,
                layer_list(&source.layers),
            ),
            PromptMethod::PromptTuning => format!(
                "its prompt has {} tokens, this run's {}; pass --prefix-len {}",
                source.len, prefix.len, source.len
            ),
        };
        return Err(init_error(&dir, &message));
    }
    let mut table = match (prefix.projection, source.projection) {
        (false, false) => ckpt.prefix,
        (false, true) => ckpt.prefix.fold(),
        (true, true) if source.hidden_size == prefix.hidden_size => ckpt.prefix,
        (true, true) => {
            return Err(init_error(
                &dir,
                &format!(
                    "its prompt's MLP has {} hidden units, this run asks for {}; pass --prefix-hidden-size {}",
                    source.hidden_size, prefix.hidden_size, source.hidden_size
                ),
            ))
        }
        (true, false) => {
            return Err(init_error(
                &dir,
                "it holds a plain prompt table (best/ keeps a reparameterized prompt folded), \
                 which cannot be turned back into an MLP; train without --prefix-projection, \
                 or start from the last/ folder of a run trained with it",
            ))
        }
    };
    // Without an MLP the hidden size means nothing; the run's config is
    // the one its checkpoints describe.
    table.config = prefix.clone();
    let heads = tasks
        .iter()
        .map(|(task, head)| {
            let same = ckpt.info.task == *task
                && ckpt.info.head == head.kind
                && ckpt.info.label_names == head.label_names
                && ckpt.head.num_labels() == head.outputs;
            same.then(|| ckpt.head.clone())
        })
        .collect();
    Ok(WarmStart {
        dir,
        prefix: table,
        heads,
        source_task: ckpt.info.task,
    })
}

/// The layers as --prefix-layers takes them: `0,1,5`.
fn layer_list(layers: &[usize]) -> String {
    layers
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn init_error(dir: &Path, message: &str) -> Error {
    Error::InvalidArgument(format!("--init-from {}: {message}", dir.display()))
}
