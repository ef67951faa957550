//! Checks run twice: by their own test binaries on the runtime-dispatched (SIMD) path, and by
//! `scalar_kernels.rs` with the baseline path forced.

use incept::ndarray::{Array1, Array2, Ix1, Ix2, s};
use incept::ops::batchnorm::BatchNorm2d;
use incept::ops::loss::SoftmaxCrossEntropy;
use incept::optim::{Adam, Optimizer, RmsProp, Sgd};

use super::fixture::Fixture;
use super::{max_rel_error, random, random4, rel_l2};

/// Adam, SGD and RMSProp against PyTorch over four updates from the same start and gradients
/// (`fixtures/generate.py`, `optim.safetensors`). Returns the worst relative error of the change.
pub fn optimizers_match_pytorch() -> f64 {
    let f = Fixture::open("optim");
    let mut worst = 0f64;
    for case in f.cases() {
        let p0: Vec<f32> = f.tensor(&case, "p0").iter().copied().collect();
        let mut params = vec![p0.clone()];
        let lr = f.f32(&case, "lr");
        let weight_decay = f.f32(&case, "weight_decay");
        let lens = [p0.len()];
        let mut opt = match f.text(&case, "kind").as_str() {
            "adam" => {
                let mut adam = Adam::new(&lens);
                adam.weight_decay = weight_decay;
                Optimizer::Adam(adam)
            }
            "sgd" => Optimizer::Sgd(Sgd::new(
                &lens,
                f.f32(&case, "momentum"),
                f.flag(&case, "nesterov"),
                weight_decay,
            )),
            "rmsprop" => Optimizer::RmsProp(RmsProp::new(
                &lens,
                f.f32(&case, "alpha"),
                f.f32(&case, "eps"),
                f.f32(&case, "momentum"),
                f.flag(&case, "centered"),
                weight_decay,
            )),
            kind => panic!("{case}: unknown optimizer kind {kind}"),
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
    worst
}

/// Batch norm's training forward (output and running statistics) and input gradient against plain
/// f64 loops written from the definitions, on awkward shapes. Returns the worst relative error.
pub fn batch_norm_matches_plain_loops() -> f64 {
    let mut worst = 0f64;
    // Channel counts that are not multiples of 8 or 16 (7, 182, 191) as well as ones that are.
    for (i, &c) in [1, 3, 4, 7, 13, 16, 17, 182, 191].iter().enumerate() {
        let input = [3, c, 2 + i % 5, 7];
        let x = random4(input, i as u64) * 3.0 + 1.0;
        let dy = random4(input, 40 + i as u64);
        let gamma = random(Ix1(c), 10 + i as u64);
        let beta = random(Ix1(c), 20 + i as u64);
        let (mut rm, mut rv) = (Array1::zeros(c), Array1::ones(c));
        let bn = BatchNorm2d::new(c).with_eps(1e-3).with_momentum(0.1);
        let (y, cache) = bn
            .forward_train(x.view(), gamma.view(), beta.view(), rm.view_mut(), rv.view_mut())
            .unwrap();
        let dx = bn.backward_input(x.view(), dy.view(), gamma.view(), &cache).unwrap();
        let m = (3 * input[2] * 7) as f64;
        for ch in 0..c {
            let values: Vec<f64> = x.slice(s![.., ch, .., ..]).iter().map(|&v| v as f64).collect();
            let grads: Vec<f64> = dy.slice(s![.., ch, .., ..]).iter().map(|&v| v as f64).collect();
            let mean = values.iter().sum::<f64>() / m;
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / m;
            let rstd = 1.0 / (var + 1e-3).sqrt();
            let (g, b) = (gamma[ch] as f64, beta[ch] as f64);
            let want_y: Vec<f32> = values.iter().map(|&v| ((v - mean) * rstd * g + b) as f32).collect();
            // dx = g·rstd/m · (m·dy - Σdy - x̂·Σ(dy·x̂))
            let xhat: Vec<f64> = values.iter().map(|v| (v - mean) * rstd).collect();
            let sum_dy: f64 = grads.iter().sum();
            let sum_dy_xhat: f64 = grads.iter().zip(&xhat).map(|(d, h)| d * h).sum();
            let want_dx: Vec<f32> = grads
                .iter()
                .zip(&xhat)
                .map(|(d, h)| (g * rstd / m * (m * d - sum_dy - h * sum_dy_xhat)) as f32)
                .collect();
            let ys: Vec<f32> = y.slice(s![.., ch, .., ..]).iter().copied().collect();
            let dxs: Vec<f32> = dx.slice(s![.., ch, .., ..]).iter().copied().collect();
            let errors = [max_rel_error(&ys, &want_y, 1e-3), max_rel_error(&dxs, &want_dx, 1e-3)];
            assert!(
                errors.iter().all(|&e| e <= 1e-5),
                "batch norm channel {ch} of {input:?}: output / input-gradient errors {:.2e} / {:.2e}",
                errors[0],
                errors[1]
            );
            assert!(
                (rm[ch] as f64 - 0.1 * mean).abs() < 1e-5,
                "running mean, channel {ch} of {input:?}"
            );
            let unbiased = var * m / (m - 1.0);
            assert!(
                (rv[ch] as f64 - (0.9 + 0.1 * unbiased)).abs() < 1e-5,
                "running var, channel {ch} of {input:?}"
            );
            worst = worst.max(errors[0]).max(errors[1]);
        }
    }
    worst
}

/// Softmax cross-entropy's loss and logit gradient, with and without label smoothing, against the
/// f64 definitions. Returns the worst relative error.
pub fn cross_entropy_matches_the_definition() -> f64 {
    let labels = [3, 0, 4, 4, 1, 9, 2];
    let mut worst = 0f64;
    for smoothing in [0.0f32, 0.1] {
        let loss = SoftmaxCrossEntropy::new(smoothing).unwrap();
        let logits: Array2<f32> = random(Ix2(7, 10), 130) * 4.0;
        let (value, cache) = loss.forward(logits.view(), &labels).unwrap();
        let grad = loss.backward(&cache);
        let (eps, n) = (smoothing as f64, labels.len() as f64);
        let (mut want_loss, mut want_grad) = (0.0f64, Vec::new());
        for (row, &label) in logits.rows().into_iter().zip(&labels) {
            let z: Vec<f64> = row.iter().map(|&v| v as f64).collect();
            let total: f64 = z.iter().map(|v| v.exp()).sum();
            let p: Vec<f64> = z.iter().map(|v| v.exp() / total).collect();
            let target = |c: usize| (1.0 - eps) * (c == label) as u8 as f64 + eps / 10.0;
            want_loss -= (0..10).map(|c| target(c) * p[c].ln()).sum::<f64>() / n;
            want_grad.extend((0..10).map(|c| ((p[c] - target(c)) / n) as f32));
        }
        let loss_error = (value as f64 - want_loss).abs() / want_loss.abs();
        let grad_error = max_rel_error(grad.as_slice().unwrap(), &want_grad, 1e-3);
        assert!(
            loss_error <= 1e-6 && grad_error <= 1e-5,
            "smoothing {smoothing}: loss error {loss_error:.2e}, gradient error {grad_error:.2e}"
        );
        worst = worst.max(loss_error).max(grad_error);
    }
    worst
}
