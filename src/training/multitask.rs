//! Multi-task P-Tuning v2: one deep prompt shared by several datasets, a
//! head per dataset. Each step trains the prompt and one task's head on a
//! batch of that task; an epoch visits every task's batches once, in an
//! order shuffled across tasks (so each task contributes in proportion to
//! its size). The paper then tunes the shared prompt per dataset, which
//! `--init-from runs/x/best/<task>` does.
//!
//! The model holds the head of the task being trained (the active one);
//! [`TaskHeads`] parks the others with their AdamW moments. AdamW keeps one
//! step count for the run: a head's moments move only on its task's
//! batches, and their bias correction uses the run's step.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::heads::ClassificationHead;
use crate::model::prompt_model::PromptModel;
use crate::training::adamw::{AdamW, Moments};

/// One dataset of a multi-task run: `--tasks ner/conll2003=DIR,...`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSource {
    pub task: String,
    pub data: PathBuf,
}

impl FromStr for TaskSource {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.split_once('=') {
            Some((task, data)) if !task.trim().is_empty() && !data.trim().is_empty() => {
                Ok(TaskSource {
                    task: task.trim().to_string(),
                    data: PathBuf::from(data.trim()),
                })
            }
            _ => Err(format!(
                "{s:?} is not TASK=DATA_DIR (e.g. ner/wnut17=../shared/data/wnut17)"
            )),
        }
    }
}

/// The folder names of the tasks' checkpoints under best/ and last/:
/// `ner/conll2003` → `ner-conll2003`; a task named more than once (two
/// custom datasets) adds its data folder's name: `custom-classification-reviews`.
pub fn task_slugs(sources: &[TaskSource]) -> Vec<String> {
    let slug = |task: &str| task.trim().to_ascii_lowercase().replace('/', "-");
    sources
        .iter()
        .map(|s| {
            let repeated = sources
                .iter()
                .filter(|o| slug(&o.task) == slug(&s.task))
                .count()
                > 1;
            match s.data.file_name() {
                Some(name) if repeated => format!("{}-{}", slug(&s.task), name.to_string_lossy()),
                _ => slug(&s.task),
            }
        })
        .collect()
}

/// Checks a multi-task list: at least two tasks, each with its own folder.
pub fn validate_sources(sources: &[TaskSource]) -> Result<()> {
    if sources.len() < 2 {
        return Err(Error::InvalidArgument(format!(
            "--tasks needs at least two TASK=DATA_DIR entries (got {}); train one task with --task and --data",
            sources.len()
        )));
    }
    let mut slugs = task_slugs(sources);
    slugs.sort();
    if let Some(w) = slugs.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::InvalidArgument(format!(
            "--tasks names {} twice: each dataset has one head, so give each once",
            w[0]
        )));
    }
    Ok(())
}

/// A task's head and its AdamW moments (empty before its first step).
pub type TaskHead = (ClassificationHead, Vec<Moments>);

/// The heads of a run's tasks and their AdamW moments, all but the active
/// one's parked here (the active head is the model's, its moments the
/// optimizer's after the prompt's).
pub struct TaskHeads {
    parked: Vec<TaskHead>,
    active: usize,
}

impl TaskHeads {
    /// `heads[k]` with its moments (empty before its first step); `heads[0]`
    /// becomes active: it goes into `model.head` (whose head is parked in
    /// its place), and `opt` must already hold its moments after the
    /// prompt's (a resumed run's optimizer, or a fresh one with none).
    pub fn new(model: &mut PromptModel, opt: &AdamW, mut heads: Vec<TaskHead>) -> Self {
        std::mem::swap(&mut model.head, &mut heads[0].0);
        debug_assert!(opt.moments.is_empty() || opt.moments.ends_with(&heads[0].1));
        heads[0].1.clear();
        TaskHeads {
            parked: heads,
            active: 0,
        }
    }

    /// The parameters of the parked heads (the active one's are the model's).
    pub fn parked_parameters(&self) -> usize {
        self.parked
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != self.active)
            .map(|(_, (h, _))| h.weight.value.len() + h.bias.value.len())
            .sum()
    }

    /// Makes task k's head the model's, and its moments the optimizer's
    /// (zeros when it has not stepped yet: AdamW's state before a first
    /// step), parking the active one's.
    pub fn activate(&mut self, k: usize, model: &mut PromptModel, opt: &mut AdamW) {
        if k == self.active {
            return;
        }
        let prompt_params = model.prefix.params().len();
        std::mem::swap(&mut model.head, &mut self.parked[self.active].0);
        std::mem::swap(&mut model.head, &mut self.parked[k].0);
        if opt.moments.len() > prompt_params {
            self.parked[self.active].1 = opt.moments.split_off(prompt_params);
            let incoming = std::mem::take(&mut self.parked[k].1);
            opt.moments.extend(if incoming.is_empty() {
                zero_moments(&model.head)
            } else {
                incoming
            });
        }
        self.active = k;
    }

    /// Task k's head and its moments as a checkpoint stores them with the
    /// prompt's: `opt` with k's moments in place of the active head's.
    pub fn checkpoint_parts<'a>(
        &'a self,
        k: usize,
        model: &'a PromptModel,
        opt: &AdamW,
    ) -> (&'a ClassificationHead, AdamW) {
        let prompt_params = model.prefix.params().len();
        if k == self.active {
            return (&model.head, opt.clone());
        }
        let mut moments = opt.moments.clone();
        if moments.len() > prompt_params {
            moments.truncate(prompt_params);
            let (head, parked) = &self.parked[k];
            moments.extend(if parked.is_empty() {
                zero_moments(head)
            } else {
                parked.clone()
            });
        }
        (
            &self.parked[k].0,
            AdamW {
                config: opt.config.clone(),
                step: opt.step,
                moments,
            },
        )
    }
}

/// AdamW's state of a head before its first step.
fn zero_moments(head: &ClassificationHead) -> Vec<Moments> {
    [&head.weight, &head.bias]
        .iter()
        .map(|p| Moments {
            m: vec![0.0; p.value.len()],
            v: vec![0.0; p.value.len()],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::bert::BertModel;
    use crate::model::prefix::{PrefixConfig, PrefixEncoder, PromptMethod};
    use crate::training::adamw::AdamWConfig;
    use std::sync::Arc;

    /// One AdamW step of the prompt and the active head, every gradient 1.
    fn step(model: &mut PromptModel, opt: &mut AdamW) {
        for p in model.params_mut() {
            p.grad = vec![1.0; p.value.len()];
        }
        model.optimizer_step(opt, 0.1, 0.0).unwrap();
    }

    #[test]
    fn a_parked_head_keeps_its_weights_and_moments() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert");
        let backbone = Arc::new(BertModel::load(&dir).unwrap());
        let (h, l) = (
            backbone.config.hidden_size,
            backbone.config.num_hidden_layers,
        );
        let config = PrefixConfig {
            method: PromptMethod::PTuningV2,
            len: 2,
            projection: false,
            hidden_size: 8,
            layers: vec![0, 1],
        };
        let mut model = PromptModel {
            backbone,
            prefix: PrefixEncoder::new(config, h, l, 1).unwrap(),
            head: ClassificationHead::new(h, 1, 0),
            gpu: None,
        };
        let n = model.prefix.params().len();
        let mut opt = AdamW::new(AdamWConfig::default());
        let heads = vec![
            (ClassificationHead::new(h, 2, 1), Vec::new()),
            (ClassificationHead::new(h, 3, 2), Vec::new()),
        ];
        let mut heads = TaskHeads::new(&mut model, &opt, heads);
        assert_eq!(model.head.num_labels(), 2);
        step(&mut model, &mut opt);
        let (head0, moments0) = (model.head.weight.value.clone(), opt.moments[n..].to_vec());
        let prompt_moments = opt.moments[..n].to_vec();

        heads.activate(1, &mut model, &mut opt);
        assert_eq!(model.head.num_labels(), 3);
        assert_eq!(opt.moments[..n], prompt_moments[..], "the prompt's stay");
        assert!(opt.moments[n..]
            .iter()
            .all(|m| m.m.iter().chain(&m.v).all(|&x| x == 0.0)));
        // Task 0's head, parked, is checkpointed with its own moments.
        let (parked, parked_opt) = heads.checkpoint_parts(0, &model, &opt);
        assert_eq!(
            (&parked.weight.value, &parked_opt.moments[n..]),
            (&head0, &moments0[..])
        );
        step(&mut model, &mut opt);
        let moments1 = opt.moments[n..].to_vec();
        assert_eq!(heads.parked_parameters(), 2 * h + 2);

        heads.activate(0, &mut model, &mut opt);
        assert_eq!(model.head.weight.value, head0);
        assert_eq!(opt.moments[n..], moments0[..]);
        assert_ne!(
            opt.moments[..n],
            prompt_moments[..],
            "the prompt moved twice"
        );
        let (parked, parked_opt) = heads.checkpoint_parts(1, &model, &opt);
        assert_eq!(parked.num_labels(), 3);
        assert_eq!(parked_opt.moments[n..], moments1[..]);
        assert_eq!(parked_opt.step, 2);
    }

    #[test]
    fn task_sources_parse_and_name_their_folders() {
        let s: TaskSource = "ner/wnut17=../data/wnut17".parse().unwrap();
        assert_eq!(s.task, "ner/wnut17");
        assert_eq!(s.data, PathBuf::from("../data/wnut17"));
        let err = "ner/wnut17".parse::<TaskSource>().unwrap_err();
        assert!(err.contains("TASK=DATA_DIR"), "{err}");
        let conll: TaskSource = "ner/conll2003=/d/conll".parse().unwrap();
        let a: TaskSource = "custom/classification=/d/reviews".parse().unwrap();
        let b: TaskSource = "custom/classification=/d/tweets".parse().unwrap();
        let list = [s.clone(), conll, a, b];
        assert_eq!(
            task_slugs(&list),
            [
                "ner-wnut17",
                "ner-conll2003",
                "custom-classification-reviews",
                "custom-classification-tweets"
            ]
        );
        validate_sources(&list).unwrap();
        let err = validate_sources(&list[..1]).unwrap_err().to_string();
        assert!(err.contains("at least two"), "{err}");
        let twice = [s.clone(), s];
        let err = validate_sources(&twice).unwrap_err().to_string();
        assert!(err.contains("ner-wnut17-wnut17 twice"), "{err}");
    }
}
