//! Adam and SGD (momentum, Nesterov, weight decay) against PyTorch: four updates from the same start
//! and gradients (`fixtures/generate.py`, `optim.safetensors`).

mod common;

#[test]
fn optimizers_match_pytorch_over_four_steps() {
    let worst = common::checks::optimizers_match_pytorch();
    eprintln!("optimizers vs PyTorch over 4 steps: worst relative error of the change {worst:.2e}");
}
