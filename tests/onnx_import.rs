//! Models exported by PyTorch's own exporter (`fixtures/generate_onnx.py`: torchvision's googlenet and
//! inception_v3, timm's inception_v4 and inception_resnet_v2, the chapter's googlenet-d2l, and a small
//! ResNet with its batch norms folded) imported and run: logits within 10x PyTorch float32's own distance
//! from float64. The googlenet-d2l file also becomes the native graph exactly: same bits.
//! And what must be refused, refused before any work, naming what was expected.

mod common;

use std::path::Path;

use common::fixture::Fixture;
use incept::graph::{Executor, Mode};
use incept::models::Model;
use incept::onnx::proto::ModelProto;
use incept::tensor::Images;
use prost::Message;

const BATCH: usize = 2;

struct Case {
    size: usize,
    channels: usize,
    manifest: Vec<(String, Vec<usize>, String)>,
}

fn case(f: &Fixture, name: &str) -> Case {
    let meta: serde_json::Value = serde_json::from_str(f.metadata(name)).unwrap();
    let manifest = meta
        .get("manifest")
        .and_then(|m| m.as_array())
        .map(|m| {
            m.iter()
                .map(|e| {
                    let key = e[0].as_str().unwrap().to_string();
                    let shape = e[1]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_u64().unwrap() as usize)
                        .collect();
                    (key, shape, e[2].as_str().unwrap().to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    Case {
        size: meta["size"].as_u64().unwrap() as usize,
        channels: meta["channels"].as_u64().unwrap() as usize,
        manifest,
    }
}

/// The fixture's model with its state_dict initializers refilled with the hashed weights.
fn model_bytes(f: &Fixture, name: &str, c: &Case) -> Vec<u8> {
    let (bytes, _) = f.bytes(&format!("{name}/onnx"));
    let mut model = ModelProto::decode(bytes.as_slice()).unwrap();
    let mut p = 0;
    let mut hashed = std::collections::HashMap::new();
    for (key, shape, dtype) in &c.manifest {
        if dtype == "float32" {
            hashed.insert(key.clone(), common::hashed_tensor(p, key, shape));
            p += 1;
        }
    }
    for init in &mut model.graph.as_mut().unwrap().initializer {
        if let Some(values) = hashed.get(init.name.as_deref().unwrap()) {
            init.raw_data = Some(values.iter().flat_map(|v| v.to_le_bytes()).collect());
        }
    }
    model.encode_to_vec()
}

fn run(model: Model, x: &[f32]) -> Vec<f32> {
    let mut exec = Executor::new(model, BATCH).unwrap();
    exec.forward(Images::dense(x, BATCH, x.len() / BATCH), Mode::Eval)
        .unwrap();
    exec.output_vec()
}

fn rel_l2_64(found: &[f32], reference: &[f64]) -> f64 {
    let num: f64 = found.iter().zip(reference).map(|(&a, &b)| (a as f64 - b).powi(2)).sum();
    let den: f64 = reference.iter().map(|b| b * b).sum();
    (num / den).sqrt()
}

#[test]
fn pytorch_exports_run_within_ten_times_pytorchs_own_float32_distance() {
    let f = Fixture::open("onnx_import");
    for name in [
        "googlenet-d2l",
        "googlenet",
        "inception-v3",
        "inception-v4",
        "inception-resnet-v2",
        "resnet",
    ] {
        let c = case(&f, name);
        let bytes = if c.manifest.is_empty() {
            f.bytes(&format!("{name}/onnx")).0
        } else {
            model_bytes(&f, name, &c)
        };
        let imported = incept::onnx::import(&bytes, Path::new(name), None).unwrap();
        assert_eq!(imported.graph.input_shape(), [c.channels, c.size, c.size], "{name}");
        let x = common::onnx_input(BATCH, c.channels * c.size * c.size);
        let ours = run(
            Model {
                graph: imported.graph,
                params: imported.params,
            },
            &x,
        );
        let y64 = f.named_f64(&format!("{name}/logits64"));
        let y32: Vec<f32> = f.tensor(name, "logits32").iter().copied().collect();
        let (d_ours, d_torch) = (rel_l2_64(&ours, &y64), rel_l2_64(&y32, &y64));
        eprintln!("{name}: incept {d_ours:.2e}, PyTorch float32 {d_torch:.2e} from float64");
        assert!(
            d_ours <= 10.0 * d_torch,
            "{name}: relative L2 {d_ours:.3e} from float64, PyTorch float32's is {d_torch:.3e}"
        );
    }
}

/// torch.onnx.export of the chapter's googlenet-d2l imports as the native graph: same parameters under
/// the same names, same bits.
#[test]
fn the_chapters_googlenet_imports_as_the_native_graph() {
    let f = Fixture::open("onnx_import");
    let c = case(&f, "googlenet-d2l");
    let imported = incept::onnx::import(&model_bytes(&f, "googlenet-d2l", &c), Path::new("d2l"), None).unwrap();
    let config = incept::models::default_config("googlenet-d2l").unwrap();
    let native = incept::models::build("googlenet-d2l", config).unwrap();
    let by_name: std::collections::HashMap<&str, &Vec<f32>> = imported
        .graph
        .params
        .iter()
        .map(|p| p.name.as_str())
        .zip(&imported.params)
        .collect();
    let params: Vec<Vec<f32>> = native.params.iter().map(|p| by_name[p.name.as_str()].clone()).collect();
    assert_eq!(native.params.len(), imported.params.len());
    let names = |g: &incept::graph::Graph| g.nodes.iter().map(|n| n.layer.describe()).collect::<Vec<_>>();
    assert_eq!(names(&imported.graph), names(&native), "layers in order");
    let x = common::onnx_input(BATCH, 96 * 96);
    let ours = run(
        Model {
            graph: imported.graph,
            params: imported.params,
        },
        &x,
    );
    assert_eq!(ours, run(Model { graph: native, params }, &x));
}

/// The small ResNet, whole, to break in the refusal tests.
fn resnet() -> ModelProto {
    let f = Fixture::open("onnx_import");
    ModelProto::decode(f.bytes("resnet/onnx").0.as_slice()).unwrap()
}

fn refused(model: &ModelProto, path: &Path) -> String {
    let bytes = model.encode_to_vec();
    match incept::onnx::import(&bytes, path, None) {
        Ok(_) => panic!("imported what should be refused"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for p in parts {
        assert!(message.contains(p), "{message:?} does not mention {p:?}");
    }
}

#[test]
fn files_that_are_not_onnx_or_are_cut_short_are_refused() {
    let bytes = resnet().encode_to_vec();
    for (what, data) in [
        ("truncated", &bytes[..bytes.len() / 2]),
        ("a PNG", &include_bytes!("../fixtures/photo.png")[..]),
        ("empty", &[][..]),
    ] {
        let e = incept::onnx::import(data, Path::new("m.onnx"), None)
            .err()
            .unwrap_or_else(|| panic!("{what} imported"));
        assert_mentions(&e.to_string(), &["m.onnx", "ONNX"]);
    }
}

#[test]
fn an_unsupported_op_is_named_with_the_ops_that_are_supported() {
    let mut m = resnet();
    let g = m.graph.as_mut().unwrap();
    let node = g
        .node
        .iter_mut()
        .find(|n| n.op_type.as_deref() == Some("MaxPool"))
        .unwrap();
    node.op_type = Some("LpPool".into());
    let name = node.name.clone().unwrap();
    let e = refused(&m, Path::new("m.onnx"));
    assert_mentions(&e, &[&name, "LpPool", "supported ops: Add, AveragePool"]);
}

#[test]
fn opsets_outside_the_range_are_refused() {
    for opset in [8, 23] {
        let mut m = resnet();
        m.opset_import[0].version = Some(opset);
        assert_mentions(
            &refused(&m, Path::new("m.onnx")),
            &["opset 9 to 22", &format!("found opset {opset}")],
        );
    }
}

#[test]
fn an_initializer_of_the_wrong_shape_is_refused() {
    // Dims that disagree with the values stored.
    let mut m = resnet();
    let init = &mut m.graph.as_mut().unwrap().initializer[0];
    let name = init.name.clone().unwrap();
    init.dims[0] += 1;
    assert_mentions(&refused(&m, Path::new("m.onnx")), &[&name, "needs", "holds"]);
    // A classifier weight whose input side does not match what reaches it.
    let mut m = resnet();
    let g = m.graph.as_mut().unwrap();
    let gemm = g
        .node
        .iter()
        .find(|n| n.op_type.as_deref() == Some("Gemm"))
        .unwrap()
        .clone();
    let w = g
        .initializer
        .iter_mut()
        .find(|i| Some(&i.name.clone().unwrap()) == gemm.input.get(1))
        .unwrap();
    let [o, i] = w.dims[..] else { panic!() };
    w.dims = vec![o / 2, i * 2];
    assert_mentions(&refused(&m, Path::new("m.onnx")), &["Gemm weight", "48 input features"]);
}

#[test]
fn missing_external_data_is_refused_naming_the_file() {
    use incept::onnx::proto::StringStringEntryProto;
    let mut m = resnet();
    let init = &mut m.graph.as_mut().unwrap().initializer[0];
    init.raw_data = None;
    init.data_location = Some(1);
    init.external_data = vec![StringStringEntryProto {
        key: Some("location".into()),
        value: Some("weights.bin".into()),
    }];
    let dir = common::TempDir::new("onnx-external");
    let e = refused(&m, &dir.join("m.onnx"));
    assert_mentions(&e, &["external data", "weights.bin", "cannot be read"]);
    // Present, it is read.
    let f = Fixture::open("onnx_import");
    let original = ModelProto::decode(f.bytes("resnet/onnx").0.as_slice()).unwrap();
    let data = original.graph.unwrap().initializer[0].raw_data.clone().unwrap();
    std::fs::write(dir.join("weights.bin"), &data).unwrap();
    let bytes = m.encode_to_vec();
    let imported = incept::onnx::import(&bytes, &dir.join("m.onnx"), None).unwrap();
    let expected = incept::onnx::import(&resnet().encode_to_vec(), Path::new("m.onnx"), None).unwrap();
    assert_eq!(imported.params, expected.params);
}

#[test]
fn shapes_that_cannot_be_planned_are_refused() {
    use incept::onnx::proto::tensor_shape_proto::dimension::Value;
    use incept::onnx::proto::type_proto;
    fn dims(m: &mut ModelProto) -> &mut Vec<incept::onnx::proto::tensor_shape_proto::Dimension> {
        let input = &mut m.graph.as_mut().unwrap().input[0];
        match input.r#type.as_mut().unwrap().value.as_mut().unwrap() {
            type_proto::Value::TensorType(t) => &mut t.shape.as_mut().unwrap().dim,
            _ => panic!(),
        }
    }
    // An open height and width: refused without a size, planned with one.
    let mut m = resnet();
    dims(&mut m)[2].value = Some(Value::DimParam("h".into()));
    dims(&mut m)[3].value = Some(Value::DimParam("w".into()));
    assert_mentions(&refused(&m, Path::new("m.onnx")), &["input size open", "[?, 3, ?, ?]"]);
    let bytes = m.encode_to_vec();
    let at_40 = incept::onnx::import(&bytes, Path::new("m.onnx"), Some([40, 40])).unwrap();
    assert_eq!(at_40.graph.input_shape(), [3, 40, 40]);
    // A fixed size is the file's: another is refused.
    let bytes = resnet().encode_to_vec();
    let e = incept::onnx::import(&bytes, Path::new("m.onnx"), Some([40, 40])).unwrap_err();
    assert_mentions(&e.to_string(), &["fixes the input size to 32x32", "40x40"]);
    // An open channel count.
    let mut m = resnet();
    dims(&mut m)[1].value = Some(Value::DimParam("c".into()));
    assert_mentions(&refused(&m, Path::new("m.onnx")), &["fixed channel count"]);
    // A grouped convolution.
    let mut m = resnet();
    let conv = m
        .graph
        .as_mut()
        .unwrap()
        .node
        .iter_mut()
        .find(|n| n.op_type.as_deref() == Some("Conv"))
        .unwrap();
    conv.attribute.retain(|a| a.name.as_deref() != Some("group"));
    conv.attribute.push(incept::onnx::proto::AttributeProto {
        name: Some("group".into()),
        i: Some(3),
        r#type: Some(2),
        ..Default::default()
    });
    assert_mentions(&refused(&m, Path::new("m.onnx")), &["grouped convolution (group 3)"]);
}
