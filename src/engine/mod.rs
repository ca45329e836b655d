//! The compute engine: a fixed set of fused kernels for a frozen transformer
//! encoder, each with its forward and its activation-gradient backward side by
//! side. There is no autograd and no tensor type: kernels take row-major f32
//! slices and their shapes, and the model code (src/model) owns every buffer.

pub mod cpu;
pub mod cuda;
pub mod device;
