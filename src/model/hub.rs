//! Resolving a --model argument to a local HF model folder.
