//! Files: safetensors checkpoints (weights under their PyTorch names, optimizer state, training position),
//! and the check that an output path can be written before the work that fills it.

pub mod checkpoint;
pub mod output;
