//! Adam and SGD (momentum, Nesterov, weight decay) against PyTorch: four updates from the same start
//! and gradients (`fixtures/generate.py`, `optim.safetensors`).

mod common;

use common::fixture::Fixture;
use common::rel_l2;
use incept::optim::{Adam, Optimizer, Sgd};

#[test]
fn optimizers_match_pytorch_over_four_steps() {
    let f = Fixture::open("optim");
    let mut worst = 0f64;
    for case in f.cases() {
        let p0: Vec<f32> = f.tensor(&case, "p0").iter().copied().collect();
        let mut params = vec![p0.clone()];
        let lr = f.f32(&case, "lr");
        let weight_decay = f.f32(&case, "weight_decay");
        let mut opt = if f.text(&case, "kind") == "adam" {
            let mut adam = Adam::new(&[p0.len()]);
            adam.weight_decay = weight_decay;
            Optimizer::Adam(adam)
        } else {
            Optimizer::Sgd(Sgd::new(
                &[p0.len()],
                f.f32(&case, "momentum"),
                f.flag(&case, "nesterov"),
                weight_decay,
            ))
        };
        for step in 0..4 {
            let g: Vec<f32> = f.tensor(&case, &format!("g{step}")).iter().copied().collect();
            opt.step(&mut params, &[g], lr);
        }
        let expected: Vec<f32> = f.tensor(&case, "p").iter().copied().collect();
        // Compare the change from the start, so the error is relative to what the optimizer did.
        let ours: Vec<f32> = params[0].iter().zip(&p0).map(|(a, b)| a - b).collect();
        let theirs: Vec<f32> = expected.iter().zip(&p0).map(|(a, b)| a - b).collect();
        let err = rel_l2(&ours, &theirs);
        assert!(
            err <= 1e-5,
            "{case}: parameters after 4 steps differ from PyTorch's by {err:.2e}"
        );
        worst = worst.max(err);
    }
    eprintln!("optimizers vs PyTorch over 4 steps: worst relative error of the change {worst:.2e}");
}
