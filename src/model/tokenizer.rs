//! The HF tokenizer of a model folder.
