//! A central-difference gradient check through one whole d2l Inception block (four branches and the
//! channel concat), composed from the public ops exactly as `InceptionD2L` in
//! `../shared/reference/models.py` builds it:
//! `cat(relu(1x1), relu(3x3(relu(1x1))), relu(5x5(relu(1x1))), relu(1x1(maxpool3x3/1)))`.
//! Every parameter of all seven convolutions and the input are checked.

mod common;

use common::{GradCheck, grad_check_piecewise_linear, project, random, random4, well_separated};
use incept::Padding;
use incept::ndarray::{Array1, Array4, Ix1};
use incept::ops::activation::{relu, relu_backward};
use incept::ops::conv::Conv2d;
use incept::ops::pool::{MaxPool2d, MaxPoolCache};
use incept::ops::shape::{concat_channels, split_channels};

/// The block is piecewise linear in each variable (ReLU and max-pool kinks between linear pieces), so the
/// rounding bound of `grad_ops.rs` applies on each piece; `h` is ten times smaller here (fewer probes
/// cross a kink), which makes rounding noise ten times larger: hence 10x `grad_ops`'s `LINEAR_TOL`.
const TOLERANCE: f64 = 5e-3;
const H: f32 = 1e-3;
/// Probes that could not be measured on their own linear piece even at h / 100 (see
/// `grad_check_piecewise_linear`); more than this fraction would leave the check too thin to trust.
const MAX_SKIPPED: f64 = 0.05;

struct Block {
    convs: Vec<Conv2d>,
    pool: MaxPool2d,
    branch_channels: [usize; 4],
}

/// Conv indices: 0 = p1_1, 1 = p2_1, 2 = p2_2, 3 = p3_1, 4 = p3_2, 5 = p4_2.
fn block(in_c: usize, c1: usize, c2: (usize, usize), c3: (usize, usize), c4: usize) -> Block {
    let pad = |p| Padding::symmetric(p, p);
    Block {
        convs: vec![
            Conv2d::new(in_c, c1, [1, 1]),
            Conv2d::new(in_c, c2.0, [1, 1]),
            Conv2d::new(c2.0, c2.1, [3, 3]).with_padding(pad(1)),
            Conv2d::new(in_c, c3.0, [1, 1]),
            Conv2d::new(c3.0, c3.1, [5, 5]).with_padding(pad(2)),
            Conv2d::new(in_c, c4, [1, 1]),
        ],
        pool: MaxPool2d::new([3, 3], [1, 1]).with_padding(pad(1)),
        branch_channels: [c1, c2.1, c3.1, c4],
    }
}

type Params = Vec<(Array4<f32>, Array1<f32>)>;

/// Everything the forward pass computed that backward reads.
struct Trace {
    conv_inputs: Vec<Array4<f32>>,
    relu_outputs: Vec<Array4<f32>>,
    pool_cache: MaxPoolCache,
    output: Array4<f32>,
}

impl Block {
    fn forward(&self, x: &Array4<f32>, params: &Params) -> Trace {
        let conv_relu = |i: usize, input: &Array4<f32>| {
            let (w, b) = &params[i];
            relu(
                self.convs[i]
                    .forward(input.view(), w.view(), Some(b.view()))
                    .unwrap()
                    .view(),
            )
        };
        let (pooled, pool_cache) = self.pool.forward(x.view()).unwrap();
        let r0 = conv_relu(0, x);
        let r1 = conv_relu(1, x);
        let r2 = conv_relu(2, &r1);
        let r3 = conv_relu(3, x);
        let r4 = conv_relu(4, &r3);
        let r5 = conv_relu(5, &pooled);
        let output = concat_channels(&[r0.view(), r2.view(), r4.view(), r5.view()]).unwrap();
        Trace {
            conv_inputs: vec![x.clone(), x.clone(), r1.clone(), x.clone(), r3.clone(), pooled],
            relu_outputs: vec![r0, r1, r2, r3, r4, r5],
            pool_cache,
            output,
        }
    }

    /// Returns dx and the (dw, db) of every conv, walking the branches in reverse.
    fn backward(&self, x_shape: [usize; 4], params: &Params, t: &Trace, dy: &Array4<f32>) -> (Array4<f32>, Params) {
        let mut grads: Params = self
            .convs
            .iter()
            .map(|c| (Array4::zeros(c.weight_shape()), Array1::zeros(c.out_channels)))
            .collect();
        // Through conv i (after its ReLU): fills its parameter gradients, returns its input gradient.
        let mut conv_relu_back = |i: usize, d_out: &Array4<f32>| {
            let d_pre = relu_backward(t.relu_outputs[i].view(), d_out.view()).unwrap();
            let conv = &self.convs[i];
            let input = &t.conv_inputs[i];
            conv.backward_weight(input.view(), d_pre.view(), grads[i].0.view_mut())
                .unwrap();
            conv.backward_bias(d_pre.view(), grads[i].1.view_mut()).unwrap();
            let shape = *input.shape().first_chunk().unwrap();
            conv.backward_input(params[i].0.view(), d_pre.view(), shape).unwrap()
        };
        let parts = split_channels(dy.view(), &self.branch_channels).unwrap();
        let mut dx = conv_relu_back(0, &parts[0]);
        let d_r1 = conv_relu_back(2, &parts[1]);
        dx += &conv_relu_back(1, &d_r1);
        let d_r3 = conv_relu_back(4, &parts[2]);
        dx += &conv_relu_back(3, &d_r3);
        let d_pooled = conv_relu_back(5, &parts[3]);
        dx += &self.pool.backward(&t.pool_cache, d_pooled.view()).unwrap();
        assert_eq!(dx.shape(), &x_shape);
        (dx, grads)
    }
}

#[test]
fn grad_through_a_whole_d2l_inception_block() {
    let b = block(3, 2, (2, 3), (2, 3), 2);
    let shape = [2, 3, 6, 5];
    let mut x = Array4::from_shape_vec(shape, well_separated(shape.iter().product(), 1)).unwrap();
    let mut params: Params = b
        .convs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            (
                random4(c.weight_shape(), 10 + i as u64),
                random(Ix1(c.out_channels), 20 + i as u64) * 0.1,
            )
        })
        .collect();
    let trace = b.forward(&x, &params);
    assert_eq!(trace.output.shape(), &[2, 10, 6, 5]);
    let r = random4([2, 10, 6, 5], 3);
    let (dx, grads) = b.backward(shape, &params, &trace, &r);
    // The loss, or None if the ReLU activation pattern differs from the unperturbed one. The input's
    // values are well separated, so perturbing it never moves a max-pool maximum (checked in grad_ops).
    let pattern = |t: &Trace| -> Vec<bool> { t.relu_outputs.iter().flat_map(|a| a.iter().map(|&v| v > 0.0)).collect() };
    let base_pattern = pattern(&trace);
    let loss = |x: &Array4<f32>, p: &Params| {
        let t = b.forward(x, p);
        (pattern(&t) == base_pattern).then(|| project(t.output.as_slice().unwrap(), r.as_slice().unwrap()))
    };

    let p0 = params.clone();
    let mut report: Vec<(String, GradCheck)> = vec![(
        "input".to_string(),
        grad_check_piecewise_linear(x.as_slice_mut().unwrap(), dx.as_slice().unwrap(), H, 1000, |v| {
            loss(&Array4::from_shape_vec(shape, v.to_vec()).unwrap(), &p0)
        }),
    )];
    let names = ["p1_1", "p2_1", "p2_2", "p3_1", "p3_2", "p4_2"];
    for i in 0..params.len() {
        let x0 = x.clone();
        let mut trial = params.clone();
        let ew = grad_check_piecewise_linear(
            params[i].0.as_slice_mut().unwrap(),
            grads[i].0.as_slice().unwrap(),
            H,
            200,
            |v| {
                trial[i].0.as_slice_mut().unwrap().copy_from_slice(v);
                loss(&x0, &trial)
            },
        );
        let mut trial = p0.clone();
        let eb = grad_check_piecewise_linear(
            params[i].1.as_slice_mut().unwrap(),
            grads[i].1.as_slice().unwrap(),
            H,
            200,
            |v| {
                trial[i].1.as_slice_mut().unwrap().copy_from_slice(v);
                loss(&x0, &trial)
            },
        );
        report.push((format!("{}.weight", names[i]), ew));
        report.push((format!("{}.bias", names[i]), eb));
    }
    let (mut probes, mut skipped, mut one_sided, mut worst) = (0, 0, 0, 0f64);
    for (name, check) in &report {
        assert!(
            check.worst <= TOLERANCE,
            "inception block: {name} gradient error {:.2e} > {TOLERANCE:.0e}",
            check.worst
        );
        assert!(
            check.probes > 0,
            "inception block: every probe of {name} crossed a kink"
        );
        (probes, skipped, worst) = (probes + check.probes, skipped + check.skipped, worst.max(check.worst));
        one_sided += check.one_sided;
    }
    let fraction = skipped as f64 / (probes + skipped) as f64;
    assert!(
        fraction <= MAX_SKIPPED,
        "inception block: {skipped} of {} probes crossed a kink",
        probes + skipped
    );
    eprintln!(
        "inception block: worst gradient error {worst:.2e} over the input and {} parameter tensors ({probes} probes, {one_sided} of them one-sided next to a kink, {skipped} skipped)",
        report.len() - 1
    );
}
