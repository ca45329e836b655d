//! Training: the optimizer, schedules, clipping, the loop, checkpoints and the
//! run folder's files.

pub mod adamw;
pub mod checkpoint;
pub mod clip;
pub mod curve;
pub mod run_files;
pub mod schedule;
