//! Training: the optimizer, schedules, clipping, the loop, checkpoints and the
//! run folder's files.

pub mod adamw;
pub mod adapter;
pub mod checkpoint;
pub mod clip;
pub mod curve;
pub mod data;
pub mod evaluate;
pub mod multitask;
pub mod peft;
pub mod run_files;
pub mod schedule;
pub mod sweep;
pub mod trainer;
pub mod warm_start;
