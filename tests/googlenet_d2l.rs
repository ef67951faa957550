//! googlenet-d2l against the chapter and against PyTorch's `googlenet_d2l` (fixtures from
//! `fixtures/generate_googlenet.py`): parameter names, the shape trace, eval logits and the gradient of
//! every parameter for one batch. The gradient reference is PyTorch in float64 on a 4x1x32x32 batch
//! the generator checked to be well conditioned: no max-pool maximum or ReLU input within 1e-5
//! (relative) of flipping. Where one is (each of 120 batches tried at 96x96 had one), the
//! gradient depends on the last bit of rounding, and float32 engines legitimately disagree.

mod common;

use common::fixture::Fixture;
use common::{assert_state_dict_names, formula_params, parity, rel_l2};
use incept::graph::{Executor, Mode, PlanOptions, WinogradPolicy};
use incept::models::{self, Model};
use incept::tensor::Images;

fn pytorch_model(f: &Fixture, size: usize) -> Model {
    let config = models::ModelConfig {
        size: [size, size],
        ..models::default_config("googlenet-d2l").unwrap()
    };
    let graph = models::build("googlenet-d2l", config).unwrap();
    assert_state_dict_names(&graph, f, "googlenet-d2l");
    let params = formula_params(&graph);
    Model { graph, params }
}

#[test]
fn summary_prints_the_chapters_shape_trace() {
    let graph = models::build("googlenet-d2l", models::default_config("googlenet-d2l").unwrap()).unwrap();
    // Printed by the chapter (../shared/chapter, section GoogLeNet模型) for a 1x1x96x96 input.
    let chapter = [
        "output shape: [1, 64, 24, 24]",
        "output shape: [1, 192, 12, 12]",
        "output shape: [1, 480, 6, 6]",
        "output shape: [1, 832, 3, 3]",
        "output shape: [1, 1024, 1, 1]",
        "output shape: [1, 1024]",
        "output shape: [1, 10]",
    ];
    assert_eq!(models::shape_trace(&graph), chapter);
    assert_eq!(
        graph.parameter_count(),
        5_977_530,
        "PyTorch counts 5,977,530 parameters"
    );
}

fn values(f: &Fixture, name: &str) -> Vec<f32> {
    f.named(name).iter().copied().collect()
}

#[test]
fn eval_logits_match_pytorch() {
    let f = Fixture::open("googlenet_d2l");
    let model = pytorch_model(&f, 96);
    let x = values(&f, "x");
    for (isa, model) in parity::on_each_isa(&model, 4) {
        let mut exec = Executor::new(model, 4).unwrap();
        exec.set_isa(isa).unwrap();
        exec.forward(Images::dense(&x, 4, 96 * 96), Mode::Eval).unwrap();
        let err = rel_l2(&exec.output_vec(), &values(&f, "logits"));
        eprintln!("googlenet-d2l eval logits on {isa:?} vs PyTorch: relative L2 error {err:.2e}");
        assert!(
            err <= 1e-4,
            "logits on {isa:?} differ from PyTorch by {err:.2e} (relative L2) > 1e-4"
        );
    }
}

/// The same logits with inference allowed Winograd F(4,3) (`WinogradPolicy::Fast`) on the 24×24,
/// 12×12 and 3×3 layers and F(2,3) on the 6×6 ones, on every instruction set.
#[test]
fn eval_logits_match_pytorch_with_fast_winograd() {
    let f = Fixture::open("googlenet_d2l");
    let model = pytorch_model(&f, 96);
    let x = values(&f, "x");
    for (isa, model) in parity::on_each_isa(&model, 4) {
        let mut exec = Executor::new(model, 4).unwrap();
        let options = PlanOptions {
            isa,
            winograd: WinogradPolicy::Fast,
            ..exec.plan().options
        };
        exec.set_plan_options(options).unwrap();
        let tiles: Vec<usize> = exec.plan().winograd_tiles.iter().flatten().copied().collect();
        assert!(tiles.contains(&4) && tiles.contains(&2), "the plan chose {tiles:?}");
        exec.forward(Images::dense(&x, 4, 96 * 96), Mode::Eval).unwrap();
        let err = rel_l2(&exec.output_vec(), &values(&f, "logits"));
        eprintln!("googlenet-d2l eval logits with F(4,3) on {isa:?} vs PyTorch: relative L2 error {err:.2e}");
        assert!(
            err <= 5e-6,
            "logits on {isa:?} differ from PyTorch by {err:.2e} (relative L2) > 5e-6"
        );
    }
}

#[test]
fn one_batch_gradients_of_every_parameter_match_pytorch() {
    let f = Fixture::open("googlenet_d2l");
    let model = pytorch_model(&f, 32);
    let x = values(&f, "x32");
    let labels: Vec<usize> = values(&f, "labels").iter().map(|&l| l as usize).collect();
    let samples: usize = f.metadata("samples").parse().unwrap();
    for (isa, model) in parity::on_each_isa(&model, 4) {
        // Planned for batches of 128, as `incept train` plans: Winograd then runs on the 2x2 maps too
        // (at batch 4 they have too few tiles), with a batch smaller than the plan's.
        let mut exec = Executor::new(model.clone(), 128).unwrap();
        exec.set_isa(isa).unwrap();
        exec.forward(Images::dense(&x, 4, 32 * 32), Mode::Train).unwrap();
        let loss = exec.loss(&labels).unwrap();
        let torch_loss = values(&f, "loss32")[0] as f64;
        assert!(
            (loss.loss - torch_loss).abs() <= 1e-5 * torch_loss.abs(),
            "loss {} on {isa:?} vs PyTorch {torch_loss}",
            loss.loss
        );
        exec.backward().unwrap();
        let mut worst = (0f64, String::new());
        for (spec, grad) in model.graph.params.iter().zip(exec.param_grads()) {
            let count = samples.min(grad.len());
            let ours: Vec<f32> = (0..count).map(|k| grad[k * grad.len() / count]).collect();
            let err = rel_l2(&ours, &values(&f, &format!("grad/{}", spec.name)));
            let norm = grad.iter().map(|&g| (g as f64).powi(2)).sum::<f64>().sqrt();
            let torch_norm = values(&f, &format!("grad_norm/{}", spec.name))[0] as f64;
            let norm_err = (norm - torch_norm).abs() / torch_norm;
            assert!(
                err <= 1e-3 && norm_err <= 1e-3,
                "{} on {isa:?}: gradient differs from PyTorch: sampled {err:.2e}, norm {norm_err:.2e}",
                spec.name
            );
            if err.max(norm_err) > worst.0 {
                worst = (err.max(norm_err), spec.name.clone());
            }
        }
        eprintln!(
            "googlenet-d2l gradients on {isa:?} vs PyTorch: worst relative error {:.2e} ({})",
            worst.0, worst.1
        );
    }
}

#[test]
fn incept_predict_on_weights_with_pytorch_names_matches_pytorch_logits() {
    use ndarray_npy::{ReadNpyExt, WriteNpyExt};
    let f = Fixture::open("googlenet_d2l");
    let model = pytorch_model(&f, 96);
    let dir = common::TempDir::new("predict");
    // The safetensors layout PyTorch's save_file writes: the state_dict keys, float32, no metadata.
    incept::io::checkpoint::save(
        &dir.join("w.safetensors"),
        &model.graph,
        &model.params,
        None,
        &Default::default(),
    )
    .unwrap();
    let x = f.named("x").into_dimensionality::<incept::ndarray::Ix4>().unwrap();
    x.write_npy(std::fs::File::create(dir.join("x.npy")).unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_incept"))
        .arg("predict")
        .arg("--weights")
        .arg(dir.join("w.safetensors"))
        .arg("--input")
        .arg(dir.join("x.npy"))
        .arg("--output")
        .arg(dir.join("y.npy"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let y = incept::ndarray::Array2::<f32>::read_npy(std::fs::File::open(dir.join("y.npy")).unwrap()).unwrap();
    assert_eq!(y.shape(), &[4, 10]);
    let err = rel_l2(y.as_slice().unwrap(), &values(&f, "logits"));
    assert!(err <= 1e-4, "incept predict logits differ from PyTorch by {err:.2e}");
}
