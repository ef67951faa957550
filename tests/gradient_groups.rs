//! Gradient groups ([`incept::reduction`]): a batch's parameter gradients computed in one executor with
//! N groups have the bits of N shards computed by separate executors and summed pairwise by rank
//! distance (what `mpirun -np N` does across processes), on every convolution algorithm; and the groups
//! change only the rounding, never the gradient (checked against one group, far below float32's noise
//! on these sums).

mod common;

use common::rel_l2;
use incept::distributed::SingleProcess;
use incept::graph::Executor;
use incept::models::{self, Model, ModelConfig};
use incept::ops::conv::ConvAlgo;
use incept::reduction::Sharding;
use incept::tensor::Images;

fn model() -> Model {
    let config = ModelConfig {
        size: [32, 32],
        ..models::default_config("googlenet-d2l").unwrap()
    };
    Model::init(models::build("googlenet-d2l", config).unwrap(), 3)
}

/// A fixed batch: images and labels.
fn batch(model: &Model, size: usize) -> (Vec<f32>, Vec<usize>) {
    let len = model.graph.nodes[0].image_len();
    let mut rng = fastrand::Rng::with_seed(11);
    let images = (0..size * len).map(|_| rng.f32()).collect();
    let labels = (0..size).map(|_| rng.usize(..model.graph.output_len())).collect();
    (images, labels)
}

fn executor(model: &Model, algo: ConvAlgo, capacity: usize) -> Executor {
    let mut exec = Executor::new(model.clone(), capacity).unwrap();
    exec.set_conv_algo(algo).unwrap();
    exec
}

/// The batch's gradients in one executor cut into `groups` groups.
fn one_process(model: &Model, algo: ConvAlgo, size: usize, groups: usize) -> Vec<Vec<f32>> {
    let (images, labels) = batch(model, size);
    let len = model.graph.nodes[0].image_len();
    let mut exec = executor(model, algo, size);
    exec.set_gradient_groups(groups).unwrap();
    exec.compute_gradients(Images::dense(&images, size, len), &labels)
        .unwrap();
    exec.param_grads().to_vec()
}

/// The batch's gradients as `ranks` executors compute them, one group each (each planned for the
/// whole batch, as a rank is), summed by recursive doubling: at distance 1, 2, 4, ... rank r adds
/// rank r ^ distance's partial sum.
fn ranks(model: &Model, algo: ConvAlgo, size: usize, ranks: usize) -> Vec<Vec<f32>> {
    let (images, labels) = batch(model, size);
    let len = model.graph.nodes[0].image_len();
    let mut sums: Vec<Vec<Vec<f32>>> = (0..ranks)
        .map(|rank| {
            let shard = Sharding {
                rank,
                ranks,
                groups: ranks,
            }
            .shard(size);
            let mine = shard.images();
            let mut exec = executor(model, algo, size);
            exec.compute_shard_gradients(
                Images::dense(&images[mine.start * len..mine.end * len], mine.len(), len),
                &labels[mine],
                &shard,
                &SingleProcess,
            )
            .unwrap();
            exec.param_grads().to_vec()
        })
        .collect();
    let mut distance = 1;
    while distance < ranks {
        sums = (0..ranks)
            .map(|r| {
                sums[r]
                    .iter()
                    .zip(&sums[r ^ distance])
                    .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x + y).collect())
                    .collect()
            })
            .collect();
        distance *= 2;
    }
    sums.swap_remove(0)
}

#[test]
fn n_groups_in_one_process_have_the_bits_of_n_ranks() {
    let m = model();
    // 20 images: groups of 10 and of 5; 64: of 32 and 16, where the classifier's GEMM changes its
    // kernel with the rows it is given (so it runs group by group).
    for (size, algo) in [(20, ConvAlgo::Auto), (20, ConvAlgo::Direct), (64, ConvAlgo::Auto)] {
        for n in [2, 4] {
            let (one, across) = (one_process(&m, algo, size, n), ranks(&m, algo, size, n));
            let differ = common::differing_params(&m.graph, &one, &across);
            assert!(
                differ.is_empty(),
                "{algo:?}, {size} images, {n} groups: {} of {} gradients differ from {n} ranks' sum: {differ:?}",
                differ.len(),
                m.params.len()
            );
        }
    }
}

/// Groups reorder the sums and nothing else: every tensor within float32 rounding of the one-group
/// gradient (measured: at most 6.3e-7 relative L2 here), where a group that lost or doubled images, or
/// a loss averaged over the shard instead of the batch, would be off by a factor.
#[test]
fn groups_change_the_rounding_only() {
    let m = model();
    for algo in [ConvAlgo::Auto, ConvAlgo::Direct, ConvAlgo::Im2colGemm] {
        let whole = one_process(&m, algo, 20, 1);
        for n in [2, 8] {
            let grouped = one_process(&m, algo, 20, n);
            let (worst, name) = m
                .graph
                .params
                .iter()
                .zip(grouped.iter().zip(&whole))
                .map(|(p, (g, w))| (rel_l2(g, w), p.name.clone()))
                .fold((0.0, String::new()), |a, b| if b.0 > a.0 { b } else { a });
            eprintln!("{algo:?}, {n} groups: worst {worst:.1e} ({name})");
            assert!(
                worst < 2e-6,
                "{algo:?}, {n} groups: {name} is {worst:.2e} from one group's"
            );
        }
    }
}

/// A synchronized batch norm in one process with one group takes the unsynchronized path's sums in
/// the same order, so googlenet-bn's gradients have the same bits with `--sync-bn` as without: its
/// split into per-group sums, the cluster's sum and the input gradient from given sums change nothing
/// (`tests/mpi_training.rs` then holds two ranks to one process with two groups).
#[test]
fn a_synchronized_batch_norm_in_one_process_changes_nothing() {
    let config = ModelConfig {
        size: [96, 96],
        ..models::default_config("googlenet-bn").unwrap()
    };
    let m = Model::init(models::build("googlenet-bn", config).unwrap(), 5);
    let (images, labels) = batch(&m, 4);
    let len = m.graph.nodes[0].image_len();
    let grads = |sync: bool| {
        let mut exec = executor(&m, ConvAlgo::Auto, 4);
        exec.set_sync_batch_norm(sync);
        exec.compute_gradients(Images::dense(&images, 4, len), &labels).unwrap();
        exec.param_grads().to_vec()
    };
    let differ = common::differing_params(&m.graph, &grads(true), &grads(false));
    assert!(differ.is_empty(), "{} gradients differ: {differ:?}", differ.len());
}
