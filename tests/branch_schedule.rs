//! Running the Inception branches concurrently must compute what running the nodes one by one does:
//! every node's output and, after a backward pass (which reads the forward's activations and max-pool
//! argmaxes), every parameter gradient.

mod common;

use common::{random, rel_l2};
use incept::graph::{BranchSchedule, Executor, Mode};
use incept::models::{self, Model};
use incept::tensor::Images;

fn small_googlenet() -> Model {
    let config = models::ModelConfig {
        size: [32, 32],
        ..models::default_config("googlenet-d2l").unwrap()
    };
    Model::init(models::build("googlenet-d2l", config).unwrap(), 3)
}

/// Every node's output and every parameter gradient after `passes` training forwards (the last one with
/// a loss and backward) of `model` on `x`, with the branches scheduled as `schedule`.
fn train_outputs(
    model: &Model,
    x: &[f32],
    labels: &[usize],
    passes: usize,
    schedule: BranchSchedule,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let batch = labels.len();
    let len = model.graph.nodes[0].image_len();
    let mut exec = Executor::new(model.clone(), batch).unwrap();
    exec.set_branch_schedule(schedule);
    for _ in 0..passes {
        exec.forward(Images::dense(x, batch, len), Mode::Train).unwrap();
    }
    exec.loss(labels).unwrap();
    exec.backward().unwrap();
    let outputs = (0..model.graph.nodes.len())
        .map(|id| {
            let out = exec.node_output(id);
            (0..batch).flat_map(|n| out.get(n).to_vec()).collect()
        })
        .collect();
    (outputs, exec.param_grads().to_vec())
}

#[test]
fn the_plan_finds_every_inception_block_as_four_branches() {
    let model = small_googlenet();
    let exec = Executor::new(model.clone(), 1).unwrap();
    let groups = &exec.plan().branch_groups;
    assert_eq!(groups.len(), 9, "googlenet-d2l has nine Inception blocks");
    for g in groups {
        let lengths: Vec<usize> = g.chains.iter().map(Vec::len).collect();
        // p1: 1x1; p2: 1x1 then 3x3; p3: 1x1 then 5x5; p4: max pool then 1x1.
        assert_eq!(
            lengths,
            [1, 2, 2, 2],
            "block ending at {}",
            model.graph.nodes[g.concat].name
        );
        let name = &model.graph.nodes[g.chains[0][0]].name;
        assert!(name.ends_with("p1_1"), "first chain starts at {name}");
    }
}

#[test]
fn concurrent_branches_match_sequential_outputs_and_gradients() {
    let model = small_googlenet();
    let batch = 3;
    let len = model.graph.nodes[0].image_len();
    let x = random(incept::ndarray::Ix1(batch * len), 11)
        .into_raw_vec_and_offset()
        .0;
    let labels = [1, 7, 4];
    let run = |schedule| train_outputs(&model, &x, &labels, 1, schedule);
    let (seq_out, seq_grads) = run(BranchSchedule::Sequential);
    let (par_out, par_grads) = run(BranchSchedule::Concurrent);
    for (id, (a, b)) in par_out.iter().zip(&seq_out).enumerate() {
        let err = rel_l2(a, b);
        assert!(
            err <= 1e-6,
            "node {}: output differs by {err:e}",
            model.graph.nodes[id].name
        );
    }
    for (spec, (a, b)) in model.graph.params.iter().zip(par_grads.iter().zip(&seq_grads)) {
        let err = rel_l2(a, b);
        assert!(err <= 1e-6, "gradient of {}: differs by {err:e}", spec.name);
    }
}

/// A branch group with dropout in two of its chains, trained (no batch norm, so the branches may run
/// image by image): the concurrent path must use the training mode and the same per-image dropout
/// streams as the whole-batch path, so the masks, every output and every gradient agree.
#[test]
fn concurrent_branches_with_dropout_train_as_sequential_ones() {
    use incept::geometry::Padding;
    use incept::graph::GraphBuilder;
    use incept::ops::conv::Conv2d;
    use incept::ops::pool::MaxPool2d;
    let mut b = GraphBuilder::new();
    let x = b.input("input", [3, 8, 8]).unwrap();
    let stem = b.conv("stem", x, Conv2d::new(3, 8, [1, 1]), true, true).unwrap();
    let d1 = b.dropout("p1.drop", stem, 0.5).unwrap();
    let p1 = b.conv("p1.conv", d1, Conv2d::new(8, 4, [1, 1]), true, true).unwrap();
    let p2 = b
        .conv(
            "p2.conv",
            stem,
            Conv2d::new(8, 4, [3, 3]).with_padding(Padding::symmetric(1, 1)),
            true,
            true,
        )
        .unwrap();
    let pool = MaxPool2d::new([3, 3], [1, 1]).with_padding(Padding::symmetric(1, 1));
    let p3 = b.max_pool("p3.pool", stem, pool).unwrap();
    let p3 = b.dropout("p3.drop", p3, 0.3).unwrap();
    let cat = b.concat("cat", &[p1, p2, p3]).unwrap();
    let g = b.global_avg_pool("gap", cat).unwrap();
    let f = b.flatten("flat", g).unwrap();
    let out = b.linear("fc", f, 10, true).unwrap();
    let model = Model::init(b.build(out).unwrap(), 5);
    let batch = 3;
    let len = model.graph.nodes[0].image_len();
    let x = random(incept::ndarray::Ix1(batch * len), 12)
        .into_raw_vec_and_offset()
        .0;
    let labels = [2, 5, 9];
    assert_eq!(
        Executor::new(model.clone(), batch).unwrap().plan().branch_groups.len(),
        1,
        "the three chains form one group"
    );
    // Two passes: the second draws masks of its own.
    let run = |schedule| train_outputs(&model, &x, &labels, 2, schedule);
    let (seq_out, seq_grads) = run(BranchSchedule::Sequential);
    let (par_out, par_grads) = run(BranchSchedule::Concurrent);
    for (id, (a, b)) in par_out.iter().zip(&seq_out).enumerate() {
        let name = &model.graph.nodes[id].name;
        if name.ends_with("drop") {
            let zeros = |v: &[f32]| v.iter().map(|&x| x == 0.0).collect::<Vec<_>>();
            assert_eq!(zeros(a), zeros(b), "{name}: the dropout masks differ");
            assert!(a.contains(&0.0), "{name}: dropout dropped nothing");
        }
        let err = rel_l2(a, b);
        assert!(err <= 1e-6, "node {name}: output differs by {err:e}");
    }
    for (spec, (a, b)) in model.graph.params.iter().zip(par_grads.iter().zip(&seq_grads)) {
        let err = rel_l2(a, b);
        assert!(err <= 1e-6, "gradient of {}: differs by {err:e}", spec.name);
    }
}
