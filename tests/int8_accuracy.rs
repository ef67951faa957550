//! int8 inference stays as close to float64 as ONNX Runtime's int8 does: googlenet-bn, inception-v2 and
//! inception-v3 with the weights, running statistics and input of their `generate_family.py` fixtures,
//! calibrated (MinMax) on the 16 images `fixtures/generate_int8_logits.py` gave ONNX Runtime's
//! `quantize_static` (per-channel s8 weights, u8 activations, QDQ), their logits no further from the
//! fixture's float64 logits than twice ORT's int8 logits are.

mod common;

use common::fixture::Fixture;
use common::parity::{input, values, without_dropout};
use common::{assert_state_dict_names, fixture_params, rel_l2, splitmix_uniform};
use incept::graph::Executor;
use incept::int8::{CalibrationMethod, QuantizedNetwork, Ranges};
use incept::microkernel::Int8Isa;
use incept::models::{self, Model};

/// Our distance from float64 over ONNX Runtime int8's, at most.
const TIMES_ORT: f64 = 2.0;

fn check(name: &str) {
    let f = Fixture::open(&name.replace('-', "_"));
    let ort = Fixture::open("int8_logits");
    let size: usize = f.metadata("size").parse().unwrap();
    let config = models::ModelConfig {
        size: [size, size],
        ..models::default_config(name).unwrap()
    };
    let graph = models::build(name, config).unwrap();
    assert_state_dict_names(&graph, &f, name);
    let params = fixture_params(&graph, &f);
    let mut model = Model { graph, params };
    without_dropout(&mut model);
    for (spec, value) in model.graph.params.iter().zip(&mut model.params) {
        if !spec.trainable {
            *value = values(&f, &format!("calibrated/{}", spec.name));
        }
    }
    let len = 3 * size * size;
    let x = input(&f, "x", 2 * len);
    let reference: Vec<f32> = values(&f, "logits");
    let stream: usize = ort.metadata("calibration_stream").parse().unwrap();
    let count: usize = ort.metadata("calibration_images").parse().unwrap();
    let calibration: Vec<f32> = splitmix_uniform(stream, count * len).map(|u| u as f32).collect();
    let mut exec = Executor::new(model.clone(), 4).unwrap();
    let ranges = Ranges::measure(&mut exec, &calibration, CalibrationMethod::MinMax).unwrap();
    let mut network = QuantizedNetwork::new(&model.graph, &model.params, &ranges).unwrap();
    let bar = TIMES_ORT
        * rel_l2(
            ort.named(&format!("{name}/logits_ort_int8")).as_slice().unwrap(),
            &reference,
        );
    for isa in Int8Isa::ALL.into_iter().filter(|isa| isa.available()) {
        network.set_isa(isa, incept::int8::RequantizeIsa::best());
        let ours = rel_l2(&network.forward(&x).unwrap(), &reference);
        eprintln!(
            "{name} int8 on {isa:?}: {ours:.3e} from float64 (relative L2), bar {bar:.3e} (2x ONNX Runtime int8)"
        );
        assert!(
            ours <= bar,
            "{name} on {isa:?}: int8 logits {ours:.3e} from float64, more than {bar:.3e}"
        );
    }
}

#[test]
fn googlenet_bn_int8_is_as_close_as_onnx_runtime_int8() {
    check("googlenet-bn");
}

#[test]
fn inception_v2_int8_is_as_close_as_onnx_runtime_int8() {
    check("inception-v2");
}

#[test]
fn inception_v3_int8_is_as_close_as_onnx_runtime_int8() {
    check("inception-v3");
}
