//! Files: safetensors checkpoints (weights under their PyTorch names, optimizer state, training position).

pub mod checkpoint;
