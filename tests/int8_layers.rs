//! Each int8 convolution of a whole network against the float32 layer it replaces, on a sharp path: the
//! float network's own input to the layer, quantized, through the one int8 convolution (a batch norm
//! folded in, the parameters calibration chose), dequantized, against the float network's output of the
//! layer (after its batch norm and ReLU), calibrated on that image among others so nothing is clipped. The error is rounding noise: its root mean square must stay
//! within 1.5× what independent roundings predict (half a step, uniform, of the output, of each input
//! times its weight and of each weight times its input), so a systematic error (a batch norm's shift
//! lost, a zero point misplaced, a wrong scale) fails where the network-level comparison, whose bar is
//! ONNX Runtime's own large distance on random weights, would not see it.

mod common;

use common::fixture::Fixture;
use common::parity::{input, values, without_dropout};
use common::{assert_state_dict_names, fixture_params, splitmix_uniform};
use incept::graph::{Executor, Layer, Mode};
use incept::int8::{CalibrationMethod, QuantizedNetwork, Ranges, RequantizeIsa, Step};
use incept::microkernel::{Int8Isa, LANES};
use incept::models::{self, Model};
use incept::tensor::Images;

/// The root mean square of the measured error over the predicted one, at most.
const TIMES_PREDICTED: f64 = 1.5;

fn check(name: &str) {
    let f = Fixture::open(&name.replace('-', "_"));
    let size: usize = f.metadata("size").parse().unwrap();
    let config = models::ModelConfig {
        size: [size, size],
        ..models::default_config(name).unwrap()
    };
    let graph = models::build(name, config).unwrap();
    assert_state_dict_names(&graph, &f, name);
    let mut model = Model {
        params: fixture_params(&graph, &f),
        graph,
    };
    without_dropout(&mut model);
    for (spec, value) in model.graph.params.iter().zip(&mut model.params) {
        if !spec.trainable {
            *value = values(&f, &format!("calibrated/{}", spec.name));
        }
    }
    let len = 3 * size * size;
    // Calibrated on the test image too, so no value is clipped: what is left is rounding.
    let x = input(&f, "x", 2 * len);
    let mut calibration: Vec<f32> = splitmix_uniform(4242, 3 * len).map(|u| u as f32).collect();
    calibration.extend_from_slice(&x[..len]);
    let mut exec = Executor::new(model.clone(), 4).unwrap();
    let ranges = Ranges::measure(&mut exec, &calibration, CalibrationMethod::MinMax).unwrap();
    let network = QuantizedNetwork::new(&model.graph, &model.params, &ranges).unwrap();
    exec.forward(Images::dense(&x[..len], 1, len), Mode::Eval).unwrap();
    let mut checked = 0;
    for (id, step) in network.steps().iter().enumerate() {
        let Step::Conv(conv) = step else { continue };
        let nodes = &model.graph.nodes;
        // The float layer's output: its batch norm's where one is folded in.
        let out_node = (0..nodes.len())
            .find(|&j| {
                matches!(network.steps()[j], Step::Same(of) if of == id)
                    && matches!(nodes[j].layer, Layer::BatchNorm { .. })
            })
            .unwrap_or(id);
        let x_float = exec.node_output(nodes[id].inputs[0]);
        let y_float = exec.node_output(out_node);
        let mut x_bytes = vec![0u8; conv.input_len()];
        conv.input_from_nchw(x_float.get(0), &mut x_bytes);
        let mut y_bytes = vec![0u8; conv.output_len()];
        conv.forward_image(&x_bytes, &mut y_bytes, Int8Isa::best(), RequantizeIsa::best());

        let g = conv.geometry();
        let (sx, sy) = (
            f64::from(conv.input_params().scale),
            f64::from(conv.output_params().scale),
        );
        let q = conv.weights();
        let per_output = q.values.len() / g.out_channels;
        let plane = g.h.output * g.w.output;
        let mean_square_x =
            x_float.get(0).iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x_float.get(0).len() as f64;
        let (mut error, mut predicted) = (0.0, 0.0);
        for o in 0..g.out_channels {
            let sw = f64::from(q.scales[o]);
            let sum_w2: f64 = q.values[o * per_output..][..per_output]
                .iter()
                .map(|&v| (f64::from(v) * sw).powi(2))
                .sum();
            // Each rounding is uniform within half a step (variance step² / 12), independent of the others.
            let variance = (sy * sy + sx * sx * sum_w2 + sw * sw * per_output as f64 * mean_square_x) / 12.0;
            for p in 0..plane {
                let found = conv
                    .output_params()
                    .dequantize(y_bytes[(o / LANES * plane + p) * LANES + o % LANES]);
                let want = y_float.get(0)[o * plane + p];
                error += (f64::from(found) - f64::from(want)).powi(2);
                predicted += variance;
            }
        }
        let ratio = (error / predicted).sqrt();
        assert!(
            ratio <= TIMES_PREDICTED,
            "{name} {}: int8 error {:.3e} RMS, {ratio:.2}x the rounding noise predicted",
            nodes[id].name,
            (error / (plane * g.out_channels) as f64).sqrt()
        );
        checked += 1;
    }
    eprintln!("{name}: {checked} int8 convolutions within {TIMES_PREDICTED}x their predicted rounding noise");
    assert!(checked > 50, "{name}: only {checked} convolutions");
}

#[test]
fn googlenet_bn_layers_are_float_layers_plus_rounding_noise() {
    check("googlenet-bn");
}

#[test]
fn inception_v3_layers_are_float_layers_plus_rounding_noise() {
    check("inception-v3");
}
