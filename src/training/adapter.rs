//! A trained adapter ready for inference: a checkpoint folder (best/ or last/)
//! joined with the backbone it was trained on, checked by weights hash.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::prompt_model::PromptModel;
use crate::training::checkpoint::{check_backbone, checkpoint_dir, load_checkpoint, RunInfo};
use crate::training::data::{load_task_data, DevSource, TaskData};
use crate::training::trainer::{Backbone, TrainConfig};

pub struct Adapter {
    pub model: PromptModel,
    pub info: RunInfo,
    pub backbone: Backbone,
    /// The settings it was trained with (task, columns, lengths).
    pub config: TrainConfig,
}

impl Adapter {
    /// Loads `run_dir` (a checkpoint folder; a run folder means its best/, or
    /// last/ when it has no best/). The backbone is the one named in the
    /// adapter unless `model` overrides it; either way its weights must hash
    /// to the adapter's.
    pub fn load(run_dir: &Path, model: Option<&str>) -> Result<Self> {
        let dir = checkpoint_dir(run_dir)?;
        let ckpt = load_checkpoint(&dir)?;
        let name = model
            .unwrap_or(&ckpt.info.backbone.name_or_path)
            .to_string();
        let backbone = Backbone::load(&name)?;
        check_backbone(&ckpt.info, &name, &backbone.hash)?;
        let config: TrainConfig = serde_json::from_value(ckpt.info.hyperparameters.clone())
            .map_err(|e| Error::Json {
                path: dir.join("ptuning.json"),
                message: format!("hyperparameters: {e}"),
            })?;
        let model = PromptModel {
            backbone: Arc::clone(&backbone.model),
            prefix: ckpt.prefix,
            head: ckpt.head,
            gpu: None,
        };
        Ok(Adapter {
            model,
            info: ckpt.info,
            backbone,
            config,
        })
    }

    /// The examples of `path` (any split of the task's format; labels needed
    /// only for evaluation), tokenized as in training.
    pub fn data_for(&self, path: &Path) -> Result<Box<dyn TaskData>> {
        self.task_data(DevSource::File(path))
    }

    /// The inputs of `path` to predict on: as [`Adapter::data_for`], and for
    /// sequence labelling a `.txt` file is raw text, one text per line,
    /// unless it is in column form.
    pub fn input_for(&self, path: &Path) -> Result<Box<dyn TaskData>> {
        self.task_data(DevSource::Input(path))
    }

    fn task_data(&self, source: DevSource<'_>) -> Result<Box<dyn TaskData>> {
        let labels = (!self.info.label_names.is_empty()).then(|| self.info.label_names.clone());
        load_task_data(&self.config, &self.backbone.tokenizer, labels, source)
    }
}
