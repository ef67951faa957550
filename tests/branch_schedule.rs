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

#[test]
fn the_plan_finds_every_inception_block_as_four_branches() {
    let model = small_googlenet();
    let exec = Executor::new(&model.graph, 1).unwrap();
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
    let run = |schedule| {
        let mut exec = Executor::new(&model.graph, batch).unwrap();
        exec.set_branch_schedule(schedule);
        exec.forward(&model.graph, &model.params, Images::dense(&x, batch, len), Mode::Train)
            .unwrap();
        exec.loss(&model.graph, &labels, 0.0).unwrap();
        exec.backward(&model.graph, &model.params).unwrap();
        let outputs: Vec<Vec<f32>> = (0..model.graph.nodes.len())
            .map(|id| {
                let out = exec.node_output(id);
                (0..batch).flat_map(|n| out.get(n).to_vec()).collect()
            })
            .collect();
        (outputs, exec.param_grads().to_vec())
    };
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
