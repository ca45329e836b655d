//! Reading tensors from safetensors files.
