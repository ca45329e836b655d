//! The model: its config, its frozen weights (one struct per HF module), the
//! encoder's forward and backward, the deep prefix and the task heads.

pub mod bert;
pub mod config;
pub mod hub;
pub mod tokenizer;
pub mod weights;
