//! The model: its config, its frozen weights (one struct per HF module), the
//! encoder's forward and backward, the deep prefix and the task heads.

pub mod batch;
pub mod bert;
pub mod config;
pub mod encoder;
pub mod heads;
pub mod hub;
pub mod param;
pub mod prefix;
pub mod prompt_model;
pub mod tokenizer;
pub mod weights;
