//! The training run of `fixtures/generate_loss_curve.py`, which `tests/winograd_training.rs` and
//! `tests/bf16_training.rs` repeat under different plans: googlenet-d2l at the fixture's size with the
//! formula weights, the committed Fashion-MNIST slice resized by Pillow's bilinear filter (as the
//! fixture's `Image.resize`; incept's `data::resample` gives the same bytes), pixels / 255, batches in
//! file order, Adam with the fixture's learning rate and eps.

use std::path::Path;

use super::fixture::Fixture;
use super::formula_params;
use incept::data::{idx, resample};
use incept::graph::Executor;
use incept::models::{self, Model};
use incept::optim::{Adam, Optimizer};
use incept::tensor::Images;

/// The fixture's model, images and labels.
pub struct Run {
    pub model: Model,
    pub images: Vec<f32>,
    pub labels: Vec<usize>,
}

impl Run {
    pub fn new(f: &Fixture) -> Run {
        let size: usize = f.metadata("size").parse().unwrap();
        let count: usize = f.metadata("images").parse().unwrap();
        let (train, _) =
            idx::read_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fashion-mnist-slice")).unwrap();
        let [_, h, w] = train.shape;
        let images: Vec<f32> = train.images[..count * h * w]
            .chunks_exact(h * w)
            .flat_map(|image| {
                let bytes: Vec<u8> = image.iter().map(|&v| (v * 255.0).round() as u8).collect();
                resample::resize(&bytes, 1, [h, w], [size, size], resample::Filter::Bilinear)
            })
            .map(|b| f32::from(b) / 255.0)
            .collect();
        let config = models::ModelConfig {
            size: [size, size],
            ..models::default_config("googlenet-d2l").unwrap()
        };
        let graph = models::build("googlenet-d2l", config).unwrap();
        Run {
            model: Model {
                params: formula_params(&graph),
                graph,
            },
            images,
            labels: train.labels[..count].to_vec(),
        }
    }

    /// The loss of every step, on an executor that `plan` has set up (its plan options).
    pub fn losses(&self, f: &Fixture, plan: impl FnOnce(&mut Executor)) -> Vec<f64> {
        let steps: usize = f.metadata("steps").parse().unwrap();
        let batch: usize = f.metadata("batch").parse().unwrap();
        let lr: f32 = f.metadata("lr").parse().unwrap();
        let eps: f32 = f.metadata("eps").parse().unwrap();
        let len = self.images.len() / self.labels.len();
        let mut exec = Executor::new(self.model.clone(), batch).unwrap();
        plan(&mut exec);
        let lens: Vec<usize> = exec.params().iter().map(Vec::len).collect();
        let mut optimizer = Optimizer::Adam(Adam {
            eps,
            ..Adam::new(&lens)
        });
        (0..steps)
            .map(|step| {
                let first = (step * batch) % self.labels.len();
                let x = &self.images[first * len..(first + batch) * len];
                let y = &self.labels[first..first + batch];
                exec.train_step(Images::dense(x, batch, len), y, &mut optimizer, lr)
                    .unwrap()
                    .loss
            })
            .collect()
    }
}
