//! One SGD step through the command line, as a user would run it, against float64 PyTorch:
//! `incept train --model M --init W --data-npy X Y --optimizer sgd --lr 1 --momentum 0 --weight-decay 0
//! --batch 4 --steps 1 --no-shuffle --save OUT`, with the family fixtures' weights and training batch
//! (`fixtures/generate_family.py`). With lr 1 and no momentum, the change of each parameter is its
//! gradient, held to 1e-3 or 10× how far float32-sized rounding moves it on this batch (PyTorch float32's
//! distance, or float64's under the generator's perturbations), whichever is larger: the plan's fast
//! algorithms round like any float32 engine, so a decision within rounding of its kink may flip (see
//! `common/parity.rs`; `tests/inception_family.rs` holds every tensor to 1e-3 with float64-accumulating
//! convolutions, and so does this test through `--conv-algo naive`). The running statistics after the
//! step must be float64 PyTorch's. No `--resize`: each model trains at the size of its images, which for
//! inception-tf-cifar is its native 32×32.

mod common;

use std::process::Command;

use common::fixture::Fixture;
use common::parity::{self, Limits, values};
use common::{TempDir, fixture_params, write_npy_f32, write_npy_i64};
use incept::io::checkpoint::{TensorFile, save};
use incept::models;

/// One SGD step of `name` through `incept train`; with `naive`, `--conv-algo naive` (float64-accumulating
/// convolutions) and every gradient held to 1e-3 flat.
fn one_sgd_step_matches_float64_pytorch(name: &str, naive: bool) {
    let f = Fixture::open(&name.replace('-', "_"));
    let size: usize = f.metadata("grad_size").parse().unwrap();
    let graph = models::build(
        name,
        models::ModelConfig {
            size: [size, size],
            ..models::default_config(name).unwrap()
        },
    )
    .unwrap();
    let params = fixture_params(&graph, &f);
    let dir = TempDir::new(&format!("sgd-step-{name}"));
    save(&dir.join("w.safetensors"), &graph, &params, None, &Default::default()).unwrap();
    let labels: Vec<i64> = values(&f, "labels").iter().map(|&l| l as i64).collect();
    let batch = labels.len();
    write_npy_f32(&dir.join("x.npy"), &[batch, 3, size, size], &values(&f, "x_train"));
    write_npy_i64(&dir.join("y.npy"), &labels);
    let out = Command::new(env!("CARGO_BIN_EXE_incept"))
        .args([
            "train",
            "--model",
            name,
            "--optimizer",
            "sgd",
            "--lr",
            "1",
            "--momentum",
            "0",
        ])
        .args(["--weight-decay", "0", "--batch", &batch.to_string(), "--steps", "1"])
        .args([
            "--no-shuffle",
            "--quiet",
            "--conv-algo",
            if naive { "naive" } else { "auto" },
        ])
        .arg("--init")
        .arg(dir.join("w.safetensors"))
        .arg("--data-npy")
        .arg(dir.join("x.npy"))
        .arg(dir.join("y.npy"))
        .arg("--save")
        .arg(dir.join("out.safetensors"))
        .arg("--out")
        .arg(&*dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "incept train failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("{size}x{size}")),
        "{name} must train at its images' size {size}: {stdout}"
    );
    let path = dir.join("out.safetensors");
    let trained = TensorFile::read(&path).unwrap();
    assert_eq!(trained.metadata["height"], size.to_string());
    let after = trained.params_for(&graph, &path).unwrap();
    // With lr 1 and no momentum, before - after is the gradient, up to the rounding of the update.
    let grads: Vec<Vec<f32>> = graph
        .params
        .iter()
        .zip(params.iter().zip(&after))
        .map(|(spec, (before, after))| {
            if !spec.trainable {
                return Vec::new();
            }
            before
                .iter()
                .zip(after)
                .map(|(&b, &a)| (b as f64 - a as f64) as f32)
                .collect()
        })
        .collect();
    let limits = if naive {
        Limits::Exact(1e-3)
    } else {
        Limits::Float32(1e-3)
    };
    let compared = parity::gradients_match(name, &f, &graph, &grads, &after, limits, Some(&params));
    let worst = compared
        .iter()
        .max_by(|a, b| (a.err / a.limit).total_cmp(&(b.err / b.limit)))
        .map(|c| {
            (
                c.err / c.limit,
                format!("{} {:.2e} (limit {:.1e})", c.name, c.err, c.limit),
            )
        })
        .unwrap();
    eprintln!(
        "{name}{}: one SGD step from the command line vs float64 PyTorch, worst {:.2} of its limit: {}",
        if naive { " (--conv-algo naive)" } else { "" },
        worst.0,
        worst.1
    );
}

#[test]
fn one_sgd_step_of_inception_tf_cifar_at_its_native_32x32_matches_float64_pytorch() {
    one_sgd_step_matches_float64_pytorch("inception-tf-cifar", false);
}

#[test]
fn one_sgd_step_of_googlenet_bn_matches_float64_pytorch() {
    one_sgd_step_matches_float64_pytorch("googlenet-bn", false);
    one_sgd_step_matches_float64_pytorch("googlenet-bn", true);
}

#[test]
fn one_sgd_step_of_inception_v2_matches_float64_pytorch() {
    one_sgd_step_matches_float64_pytorch("inception-v2", false);
    one_sgd_step_matches_float64_pytorch("inception-v2", true);
}
