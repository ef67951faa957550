//! Training gives the same bits at any thread count: a few Adam steps of googlenet-d2l (small input) in
//! rayon pools of 1, 2 and 3 threads end with byte-identical parameters. Every reduction (weight- and
//! bias-gradient sums, batch-norm statistics, the loss) runs over fixed chunks in a fixed order, never
//! over whatever each thread happened to get. Inference with Winograd gives the same bits at any thread
//! count too.

mod common;

use std::process::Command;

use common::{TempDir, write_npy_f32, write_npy_i64};
use incept::graph::Executor;
use incept::io::checkpoint::TensorFile;
use incept::models::{self, Model, ModelConfig};
use incept::optim::{Adam, Optimizer};
use incept::tensor::Images;

/// `name` at `size`×`size`, initialized with seed 0.
fn model(name: &str, size: usize) -> Model {
    let config = ModelConfig {
        size: [size, size],
        ..models::default_config(name).unwrap()
    };
    Model::init(models::build(name, config).unwrap(), 0)
}

/// The parameters after `steps` Adam steps on fixed batches of `batch` images, and the first step's
/// parameter gradients, in a pool of `threads` threads.
fn train(model: Model, batch: usize, steps: usize, threads: usize) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let len = model.graph.nodes[0].image_len();
        let classes = model.graph.output_len();
        let lens: Vec<usize> = model.graph.params.iter().map(|p| p.len()).collect();
        let mut exec = Executor::new(model, batch).unwrap();
        let mut adam = Optimizer::Adam(Adam::new(&lens));
        let mut rng = fastrand::Rng::with_seed(7);
        let mut first_grads = Vec::new();
        for step in 0..steps {
            let images: Vec<f32> = (0..batch * len).map(|_| rng.f32()).collect();
            let labels: Vec<usize> = (0..batch).map(|_| rng.usize(..classes)).collect();
            let loss = exec
                .train_step(Images::dense(&images, batch, len), &labels, &mut adam, 1e-3)
                .unwrap();
            assert!(loss.loss.is_finite());
            if step == 0 {
                first_grads = exec.param_grads().to_vec();
            }
        }
        (exec.params().to_vec(), first_grads)
    })
}

fn same_bits_at_1_2_and_3_threads(name: &str, size: usize, batch: usize) {
    let m = model(name, size);
    let (params_1, grads_1) = train(m.clone(), batch, 3, 1);
    for threads in [2, 3] {
        let (params_n, grads_n) = train(m.clone(), batch, 3, threads);
        let grads = common::differing_params(&m.graph, &grads_1, &grads_n);
        assert!(
            grads.is_empty(),
            "{name}: the first step's gradients of {} of {} tensors differ between 1 and {threads} threads, \
             among them {:?}",
            grads.len(),
            m.params.len(),
            &grads[grads.len().saturating_sub(6)..]
        );
        let params = common::differing_params(&m.graph, &params_1, &params_n);
        assert!(
            params.is_empty(),
            "{name}: after 3 steps {} of {} tensors differ between 1 and {threads} threads: {:?}",
            params.len(),
            m.params.len(),
            &params[..params.len().min(6)]
        );
    }
}

#[test]
fn googlenet_d2l_trains_to_the_same_bits_at_1_2_and_3_threads() {
    same_bits_at_1_2_and_3_threads("googlenet-d2l", 32, 6);
}

#[test]
fn batches_smaller_than_the_pool_train_to_the_same_bits_too() {
    same_bits_at_1_2_and_3_threads("googlenet-d2l", 32, 2);
}

/// Batch-norm statistics are reductions over the batch as well.
#[test]
fn googlenet_bn_trains_to_the_same_bits_at_1_2_and_3_threads() {
    same_bits_at_1_2_and_3_threads("googlenet-bn", 96, 2);
}

/// As a user runs it: `incept --threads T train ... --steps 3 --save A` writes the same tensors (weights
/// and Adam's moments, compared bit for bit) and the same metadata, apart from the training time it
/// records, for T = 1, 2 and 3 (googlenet-d2l on 8 random 32×32 images, batch 4, with shuffling).
#[test]
fn incept_train_writes_byte_identical_weights_at_1_2_and_3_threads() {
    let dir = TempDir::new("thread-invariance-cli");
    let mut rng = fastrand::Rng::with_seed(3);
    let (n, size) = (8, 32);
    let images: Vec<f32> = (0..n * size * size).map(|_| rng.f32()).collect();
    let labels: Vec<i64> = (0..n).map(|_| rng.i64(0..10)).collect();
    write_npy_f32(&dir.join("x.npy"), &[n, 1, size, size], &images);
    write_npy_i64(&dir.join("y.npy"), &labels);
    let saved: Vec<TensorFile> = [1, 2, 3]
        .iter()
        .map(|threads| {
            let out = dir.join(format!("t{threads}"));
            let checkpoint = dir.join(format!("t{threads}.safetensors"));
            let run = Command::new(env!("CARGO_BIN_EXE_incept"))
                .args(["--threads", &threads.to_string(), "train", "--model", "googlenet-d2l"])
                .args(["--batch", "4", "--steps", "3", "--quiet", "--data-npy"])
                .arg(dir.join("x.npy"))
                .arg(dir.join("y.npy"))
                .arg("--save")
                .arg(&checkpoint)
                .arg("--out")
                .arg(&out)
                .output()
                .unwrap();
            assert!(
                run.status.success(),
                "incept train failed: {}",
                String::from_utf8_lossy(&run.stderr)
            );
            let mut file = TensorFile::read(&checkpoint).unwrap();
            file.metadata.remove("seconds");
            file
        })
        .collect();
    let bits = |f: &TensorFile| -> Vec<(String, Vec<usize>, Vec<u32>)> {
        let tensors = f.tensors.iter();
        tensors
            .map(|(name, (shape, v))| (name.clone(), shape.clone(), v.iter().map(|x| x.to_bits()).collect()))
            .collect()
    };
    assert!(saved[0].tensors.len() > 116, "weights and optimizer state");
    for (threads, file) in [(2, &saved[1]), (3, &saved[2])] {
        assert!(
            bits(&saved[0]) == bits(file),
            "1 and {threads} threads saved different tensors"
        );
        assert_eq!(saved[0].metadata, file.metadata, "1 and {threads} threads");
    }
}

/// Inference with Winograd (both policies: F(2,3), and F(4,3) too) gives the same logits, bit for bit,
/// whether the executor is planned and run in a pool of 1, 2 or 3 threads: the plan's choice does not
/// depend on the thread count, and neither do the tile blocks' sums.
#[test]
fn winograd_inference_gives_the_same_bits_at_1_2_and_3_threads() {
    use incept::graph::{Mode, PlanOptions, WinogradPolicy};
    let model = model("googlenet-d2l", 96);
    let x: Vec<f32> = (0..4 * 96 * 96).map(|i| ((i * 37) % 101) as f32 / 101.0).collect();
    for policy in [WinogradPolicy::Accurate, WinogradPolicy::Fast] {
        let logits: Vec<(Vec<f32>, Vec<Option<usize>>)> = [1, 2, 3]
            .into_iter()
            .map(|threads| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| {
                    let mut exec = Executor::new(model.clone(), 4).unwrap();
                    let options = PlanOptions {
                        winograd: policy,
                        ..exec.plan().options
                    };
                    exec.set_plan_options(options).unwrap();
                    exec.forward(Images::dense(&x, 4, 96 * 96), Mode::Eval).unwrap();
                    (exec.output_vec(), exec.plan().winograd_tiles.clone())
                })
            })
            .collect();
        assert!(logits[0].1.iter().any(Option::is_some), "{policy:?}: no Winograd layer");
        for (threads, other) in [2, 3].iter().zip(&logits[1..]) {
            assert_eq!(
                other.1, logits[0].1,
                "{policy:?}: the plan's choice at {threads} threads"
            );
            assert_eq!(other.0, logits[0].0, "{policy:?}: logits at {threads} threads");
        }
    }
}
