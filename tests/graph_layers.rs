//! Graph-level behaviour of dropout and auxiliary outputs: dropout zeroes about `p` of the values and
//! scales the rest by `1/(1-p)` in training, passes them through in eval, and sends gradients back
//! through the same mask; an auxiliary head adds its weighted loss in training only. Gradient buffers
//! that share memory give the same gradients as buffers of their own.

use incept::graph::{Executor, GraphBuilder, Mode};
use incept::models::Model;
use incept::ops::conv::Conv2d;
use incept::tensor::Images;

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.f32() * 2.0 - 1.0).collect()
}

#[test]
fn dropout_masks_scales_and_passes_gradients_through_its_mask() {
    let mut b = GraphBuilder::new();
    let x = b.input("input", [3, 16, 16]).unwrap();
    let conv = b.conv("conv", x, Conv2d::new(3, 4, [1, 1]), true, false).unwrap();
    let drop = b.dropout("drop", conv, 0.5).unwrap();
    let flat = b.flatten("flat", drop).unwrap();
    let out = b.linear("fc", flat, 3, true).unwrap();
    let model = Model::init(b.build(out).unwrap(), 1);
    let images = random(2 * 3 * 256, 2);
    let mut exec = Executor::new(model.clone(), 2).unwrap();
    exec.set_keep_node_grads(true);
    let input = Images::dense(&images, 2, 3 * 256);

    exec.forward(input, Mode::Eval).unwrap();
    let (conv_out, eval_out) = (exec.node_output(conv), exec.node_output(drop));
    for n in 0..2 {
        assert_eq!(conv_out.get(n), eval_out.get(n), "eval passes values through");
    }

    exec.forward(input, Mode::Train).unwrap();
    let (conv_out, train_out) = (exec.node_output(conv), exec.node_output(drop));
    let mut kept = vec![Vec::new(); 2];
    let mut zeros = 0;
    for (n, kept) in kept.iter_mut().enumerate() {
        for (&x, &y) in conv_out.get(n).iter().zip(train_out.get(n)) {
            let keep = y != 0.0;
            assert!(
                y == 0.0 || y == 2.0 * x,
                "a value is either dropped or doubled: {x} -> {y}"
            );
            zeros += !keep as usize;
            kept.push(keep);
        }
    }
    let fraction = zeros as f64 / 2048.0;
    assert!(
        (0.45..0.55).contains(&fraction),
        "dropped {fraction} of the values, p = 0.5"
    );

    exec.loss(&[0, 2]).unwrap();
    exec.backward().unwrap();
    let (d_conv, d_drop) = (exec.node_grad(conv).unwrap(), exec.node_grad(drop).unwrap());
    for (n, kept) in kept.iter().enumerate() {
        for ((&dc, &dd), &keep) in d_conv.get(n).iter().zip(d_drop.get(n)).zip(kept) {
            let expected = if keep { 2.0 * dd } else { 0.0 };
            assert!((dc - expected).abs() <= 1e-6 * dd.abs().max(1e-3), "{dc} vs {expected}");
        }
    }
    // A new training pass draws a new mask.
    exec.forward(input, Mode::Train).unwrap();
    let again: Vec<bool> = exec.node_output(drop).get(0).iter().map(|&y| y != 0.0).collect();
    assert_ne!(again, kept[0]);
}

#[test]
fn an_auxiliary_head_adds_its_weighted_loss_in_training_only() {
    let mut b = GraphBuilder::new();
    let x = b.input("input", [2, 4, 4]).unwrap();
    let flat = b.flatten("flat", x).unwrap();
    let main = b.linear("fc", flat, 5, true).unwrap();
    let aux = b.linear("aux", flat, 5, true).unwrap();
    b.aux_output(aux, 0.4).unwrap();
    let model = Model::init(b.build(main).unwrap(), 3);
    let images = random(3 * 32, 4);
    let labels = [1, 4, 0];
    let mut exec = Executor::new(model.clone(), 3).unwrap();
    let input = Images::dense(&images, 3, 32);
    // Cross-entropy of one head's logits, from the definition.
    let ce = |logits: Images<'_>| -> f64 {
        (0..3)
            .map(|n| {
                let row = logits.get(n);
                let sum: f64 = row.iter().map(|&v| (v as f64).exp()).sum();
                sum.ln() - row[labels[n]] as f64
            })
            .sum::<f64>()
            / 3.0
    };
    exec.forward(input, Mode::Train).unwrap();
    let train = exec.loss(&labels).unwrap().loss;
    let expected = ce(exec.node_output(main).images()) + 0.4 * ce(exec.node_output(aux).images());
    assert!(
        (train - expected).abs() < 1e-6,
        "training loss {train} vs main + 0.4 aux {expected}"
    );
    exec.forward(input, Mode::Eval).unwrap();
    let eval = exec.loss(&labels).unwrap().loss;
    let expected = ce(exec.node_output(main).images());
    assert!(
        (eval - expected).abs() < 1e-6,
        "eval loss {eval} vs the main head's {expected}"
    );
    // The auxiliary head's weight gradient is 0.4 times what it would be as a main head.
    exec.forward(input, Mode::Train).unwrap();
    exec.loss(&labels).unwrap();
    exec.backward().unwrap();
    let aux_weight = model.param_index("aux.weight").unwrap();
    let ours = exec.param_grads()[aux_weight].clone();
    let mut alone = GraphBuilder::new();
    let x = alone.input("input", [2, 4, 4]).unwrap();
    let flat = alone.flatten("flat", x).unwrap();
    let head = alone.linear("aux", flat, 5, true).unwrap();
    let graph = alone.build(head).unwrap();
    let params = vec![model.params[aux_weight].clone(), model.params[aux_weight + 1].clone()];
    let mut single = Executor::new(Model { graph, params }, 3).unwrap();
    single.forward(input, Mode::Train).unwrap();
    single.loss(&labels).unwrap();
    single.backward().unwrap();
    for (a, s) in ours.iter().zip(&single.param_grads()[0]) {
        assert!((a - 0.4 * s).abs() < 1e-6, "{a} vs 0.4 x {s}");
    }
}

#[test]
fn a_scaled_residual_add_passes_dy_to_the_residual_and_scale_dy_to_the_branch() {
    let mut b = GraphBuilder::new();
    let x = b.input("input", [3, 5, 5]).unwrap();
    let residual = b.conv("residual", x, Conv2d::new(3, 4, [1, 1]), true, false).unwrap();
    let branch = b.conv("branch", x, Conv2d::new(3, 4, [1, 1]), true, false).unwrap();
    let sum = b.add_scaled("add", residual, branch, 0.3, true).unwrap();
    let flat = b.flatten("flat", sum).unwrap();
    let out = b.linear("fc", flat, 3, true).unwrap();
    let model = Model::init(b.build(out).unwrap(), 5);
    let images = random(2 * 75, 6);
    let mut exec = Executor::new(model.clone(), 2).unwrap();
    exec.set_keep_node_grads(true);
    exec.forward(Images::dense(&images, 2, 75), Mode::Train).unwrap();
    let (r, br, y) = (
        exec.node_output(residual),
        exec.node_output(branch),
        exec.node_output(sum),
    );
    for n in 0..2 {
        for ((&r, &b), &y) in r.get(n).iter().zip(br.get(n)).zip(y.get(n)) {
            assert!(
                (y - (r + 0.3 * b).max(0.0)).abs() < 1e-6,
                "{y} vs relu({r} + 0.3 x {b})"
            );
        }
    }
    let y: Vec<Vec<f32>> = (0..2).map(|n| y.get(n).to_vec()).collect();
    exec.loss(&[2, 0]).unwrap();
    exec.backward().unwrap();
    let (dr, db, dy) = (
        exec.node_grad(residual).unwrap(),
        exec.node_grad(branch).unwrap(),
        exec.node_grad(sum).unwrap(),
    );
    // The sum's gradient has been masked by its ReLU once backward has passed it.
    for n in 0..2 {
        for (((&dr, &db), &dy), &y) in dr.get(n).iter().zip(db.get(n)).zip(dy.get(n)).zip(&y[n]) {
            let g = if y > 0.0 { dy } else { 0.0 };
            assert!(
                (dr - g).abs() < 1e-7 && (db - 0.3 * g).abs() < 1e-7,
                "{dr}, {db} vs {g}"
            );
        }
    }
}

#[test]
fn shared_gradient_buffers_give_the_same_gradients() {
    // googlenet-d2l (Inception blocks: in-place concats, four branches) and inception-v3's auxiliary
    // head, two steps each, with and without shared gradient buffers: the same bits.
    for name in ["googlenet-d2l", "inception-v3"] {
        let mut config = incept::models::default_config(name).unwrap();
        let size = if name == "inception-v3" { 75 } else { 32 };
        config.size = [size, size];
        let model = Model::init(incept::models::build(name, config).unwrap(), 3);
        let [c, h, w] = model.graph.input_shape();
        let images = random(2 * c * h * w, 4);
        let run = |keep: bool| {
            let mut exec = Executor::new(model.clone(), 2).unwrap();
            exec.set_keep_node_grads(keep);
            let mut grads = Vec::new();
            for labels in [[1, 7], [3, 0]] {
                exec.forward(Images::dense(&images, 2, c * h * w), Mode::Train).unwrap();
                exec.loss(&labels).unwrap();
                exec.backward().unwrap();
                grads.push(exec.param_grads().to_vec());
            }
            let first_conv = 1;
            (
                grads,
                exec.node_grad(first_conv).is_some(),
                exec.node_grad(exec.graph().output).is_some(),
            )
        };
        let (kept, shared) = (run(true), run(false));
        assert!(kept.0 == shared.0, "{name}: the parameter gradients differ");
        assert!(kept.1 && kept.2, "{name}: kept gradients are readable");
        assert!(!shared.2, "{name}: the output's gradient was released once used");
    }
}
