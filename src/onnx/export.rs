//! A graph and its weights as an ONNX model: one ONNX node per op (a fused ReLU becomes a `Relu` of its
//! own), weights as initializers under their PyTorch names, a dynamic batch axis, and the checkpoint's
//! metadata (preprocessing, class names, model) as `metadata_props`. Only what the eval output needs is
//! written: auxiliary classifiers serve training and are left out.
//!
//! An int8 network ([`export_int8`]) is written in ONNX's QDQ form, which ONNX Runtime fuses into its
//! integer kernels: every byte tensor of ours is a `QuantizeLinear` / `DequantizeLinear` pair with its
//! scale and zero point, a convolution's weights are int8 initializers behind a per-channel
//! `DequantizeLinear`, its bias int32 at the product scale, and batch norms are the ones folded into the
//! convolutions; global pooling and the classifier stay float32, as in incept.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::path::Path;

use prost::Message;

use super::proto::tensor_proto::DataType;
use super::proto::tensor_shape_proto::{Dimension, dimension};
use super::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType, type_proto,
};
use super::tensor::{f32_tensor, i64_tensor, raw_tensor};
use crate::error::{Error, Result};
use crate::geometry::Pads;
use crate::graph::{Graph, Layer, NodeId};
use crate::int8::{QuantParams, QuantizedNetwork, Step};
use crate::ops::pool::PoolWindow;

/// The opset `incept export` writes unless asked for another.
pub const DEFAULT_OPSET: i64 = 17;
/// The opsets export can write: every op it emits means the same in all of them (13 moved Unsqueeze's
/// and Split's axes to inputs, which we do not emit; 22 is the newest ONNX Runtime 1.2x reads).
pub const EXPORT_OPSETS: RangeInclusive<i64> = 13..=22;

/// The ONNX model of `graph` with `params` (in [`Graph::params`] order) and `metadata` as
/// `metadata_props`, at `opset`, serialized.
pub fn export(graph: &Graph, params: &[Vec<f32>], metadata: &HashMap<String, String>, opset: i64) -> Result<Vec<u8>> {
    Ok(model_proto(graph, params, None, metadata, opset)?.encode_to_vec())
}

/// The int8 `network` as a QDQ ONNX model (see the module's documentation), serialized.
pub fn export_int8(network: &QuantizedNetwork, metadata: &HashMap<String, String>, opset: i64) -> Result<Vec<u8>> {
    Ok(model_proto(network.graph(), &[], Some(network), metadata, opset)?.encode_to_vec())
}

/// [`export`] written to `path` atomically (through `<path>.tmp`).
pub fn write(
    path: &Path,
    graph: &Graph,
    params: &[Vec<f32>],
    metadata: &HashMap<String, String>,
    opset: i64,
) -> Result<()> {
    save(path, &export(graph, params, metadata, opset)?)
}

/// [`export_int8`] written to `path` atomically.
pub fn write_int8(
    path: &Path,
    network: &QuantizedNetwork,
    metadata: &HashMap<String, String>,
    opset: i64,
) -> Result<()> {
    save(path, &export_int8(network, metadata, opset)?)
}

fn save(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("onnx.tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::file(tmp.display(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path.display(), e))
}

fn model_proto(
    graph: &Graph,
    params: &[Vec<f32>],
    int8: Option<&QuantizedNetwork>,
    metadata: &HashMap<String, String>,
    opset: i64,
) -> Result<ModelProto> {
    if !EXPORT_OPSETS.contains(&opset) {
        return Err(Error::config(
            "--opset",
            format!(
                "ONNX opset {} to {} (the ops written mean the same in each), found {opset}",
                EXPORT_OPSETS.start(),
                EXPORT_OPSETS.end()
            ),
        ));
    }
    if int8.is_none() && params.len() != graph.params.len() {
        return Err(Error::config(
            "export",
            format!(
                "{} parameter tensors for {} parameters",
                params.len(),
                graph.params.len()
            ),
        ));
    }
    let mut writer = Writer {
        graph,
        params,
        int8,
        quantized_floats: HashMap::new(),
        nodes: Vec::new(),
        initializers: Vec::new(),
        names: vec![String::new(); graph.nodes.len()],
        flat: vec![false; graph.nodes.len()],
        written: vec![false; graph.params.len()],
    };
    let needed = graph.main_path();
    for id in (0..graph.nodes.len()).filter(|&id| needed[id]) {
        writer.node(id)?;
    }
    let Writer {
        mut nodes,
        initializers,
        names,
        ..
    } = writer;
    // The result gets a plain name: a node's output names are its own, so rename the last writer's.
    let output = &names[graph.output];
    for n in &mut nodes {
        for o in n.output.iter_mut().chain(n.input.iter_mut()) {
            if o == output {
                *o = OUTPUT.to_string();
            }
        }
    }
    let [c, h, w] = graph.input_shape();
    let mut props: Vec<(&String, &String)> = metadata.iter().collect();
    props.sort();
    Ok(ModelProto {
        // IR 8 came with opset 17 and is the oldest ONNX Runtime 1.14+ reads for every opset we write.
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        producer_name: Some("incept".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(GraphProto {
            name: metadata.get("model").cloned().or(Some("incept".into())),
            node: nodes,
            initializer: initializers,
            input: vec![value_info(
                INPUT,
                &[Dim::Batch, Dim::Fixed(c), Dim::Fixed(h), Dim::Fixed(w)],
            )],
            output: vec![value_info(
                OUTPUT,
                &[Dim::Batch, Dim::Fixed(graph.nodes[graph.output].image_len())],
            )],
            ..Default::default()
        }),
        metadata_props: props
            .into_iter()
            .map(|(k, v)| StringStringEntryProto {
                key: Some(k.clone()),
                value: Some(v.clone()),
            })
            .collect(),
        ..Default::default()
    })
}

/// The graph input's and output's names in the file.
const INPUT: &str = "input";
const OUTPUT: &str = "logits";

struct Writer<'g> {
    graph: &'g Graph,
    params: &'g [Vec<f32>],
    /// The int8 network being written in QDQ form (its float32 `params` are then unused).
    int8: Option<&'g QuantizedNetwork>,
    /// Float values quantized where a convolution reads them (the input), by node.
    quantized_floats: HashMap<NodeId, String>,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// The ONNX value holding each node's output.
    names: Vec<String>,
    /// Whether that value is 2-D `[n, features]` (after Flatten or Gemm) rather than 4-D.
    flat: Vec<bool>,
    /// Whether each parameter is already an initializer.
    written: Vec<bool>,
}

impl Writer<'_> {
    fn node(&mut self, id: NodeId) -> Result<()> {
        if let Some(network) = self.int8 {
            return self.int8_node(network, id);
        }
        self.float_node(id)
    }

    /// Node `id` of an int8 network: the float op where it is one, the integer form where ours is
    /// (convolutions), then the Q/DQ pair of the node's bytes.
    fn int8_node(&mut self, network: &QuantizedNetwork, id: NodeId) -> Result<()> {
        let graph = self.graph;
        let node = &graph.nodes[id];
        match (&network.steps()[id], &node.layer) {
            (Step::Conv(qc), Layer::Conv { conv, weight, .. }) => {
                let input = node.inputs[0];
                let x = match network.node_params(input) {
                    Some(_) => self.names[input].clone(),
                    None => self.quantize_float(input, qc.input_params()),
                };
                let name = node.name.as_str();
                let w = qc.weights();
                let outputs = w.scales.len();
                let spec = &graph.params[*weight];
                let w_bytes = w.values.iter().map(|&v| v as u8).collect();
                self.initializers
                    .push(raw_tensor(&spec.name, &spec.shape, DataType::Int8, w_bytes));
                self.initializers
                    .push(f32_tensor(&format!("{name}.weight_scale"), &[outputs], &w.scales));
                let zeros = vec![0u8; outputs];
                self.initializers.push(raw_tensor(
                    &format!("{name}.weight_zero_point"),
                    &[outputs],
                    DataType::Int8,
                    zeros,
                ));
                let w_dq = self.emit(
                    "DequantizeLinear",
                    &format!("{name}.weight_dq"),
                    vec![
                        spec.name.clone(),
                        format!("{name}.weight_scale"),
                        format!("{name}.weight_zero_point"),
                    ],
                    vec![int("axis", 0)],
                    false,
                );
                // The bias at the product scale, as ONNX Runtime's QLinearConv takes it.
                let x_scale = qc.input_params().scale;
                let b_scales: Vec<f32> = w.scales.iter().map(|s| x_scale * s).collect();
                let b_bytes = qc.product_bias().iter().flat_map(|b| b.to_le_bytes()).collect();
                self.initializers.push(raw_tensor(
                    &format!("{name}.bias_int32"),
                    &[outputs],
                    DataType::Int32,
                    b_bytes,
                ));
                self.initializers
                    .push(f32_tensor(&format!("{name}.bias_scale"), &[outputs], &b_scales));
                let zeros = vec![0u8; 4 * outputs];
                self.initializers.push(raw_tensor(
                    &format!("{name}.bias_zero_point"),
                    &[outputs],
                    DataType::Int32,
                    zeros,
                ));
                let b_dq = self.emit(
                    "DequantizeLinear",
                    &format!("{name}.bias_dq"),
                    vec![
                        format!("{name}.bias_int32"),
                        format!("{name}.bias_scale"),
                        format!("{name}.bias_zero_point"),
                    ],
                    vec![int("axis", 0)],
                    false,
                );
                let [_, h, w_in] = graph.nodes[input].shape;
                let pads = conv.padding.resolve([h, w_in], conv.kernel, conv.stride, conv.dilation);
                let attrs = vec![
                    ints("kernel_shape", &conv.kernel),
                    ints("strides", &conv.stride),
                    ints("dilations", &conv.dilation),
                    onnx_pads(pads),
                    int("group", 1),
                ];
                let relu = qc.relu();
                let y = self.emit("Conv", name, vec![x, w_dq, b_dq], attrs, relu);
                self.names[id] = if relu {
                    self.emit("Relu", &format!("{name}.relu"), vec![y], vec![], false)
                } else {
                    y
                };
            }
            (
                Step::Linear { weight, bias },
                Layer::Linear {
                    weight: w_id,
                    bias: b_id,
                    ..
                },
            ) => {
                let x = self.flat_input(node.inputs[0], &node.name);
                let spec = &graph.params[*w_id];
                self.initializers.push(f32_tensor(&spec.name, &spec.shape, weight));
                let mut inputs = vec![x, spec.name.clone()];
                if let (Some(b), Some(b_id)) = (bias, b_id) {
                    let spec = &graph.params[*b_id];
                    self.initializers.push(f32_tensor(&spec.name, &spec.shape, b));
                    inputs.push(spec.name.clone());
                }
                self.flat[id] = true;
                self.names[id] = self.emit("Gemm", &node.name, inputs, vec![int("transB", 1)], false);
                return Ok(());
            }
            // A batch norm folded into its convolution, a dropout: the value of the node they follow.
            (Step::Same(src), Layer::BatchNorm { .. } | Layer::Dropout(_)) => {
                self.names[id] = self.names[*src].clone();
                self.flat[id] = self.flat[*src];
                return Ok(());
            }
            (Step::Input | Step::Same(_) | Step::Dequantize | Step::GlobalAvgPool, _) => return self.float_node(id),
            (
                Step::MaxPool(_)
                | Step::AvgPool(..)
                | Step::Relu
                | Step::Concat
                | Step::ZeroPad(_)
                | Step::AddScaled { .. },
                _,
            ) => self.float_node(id)?,
            (step, layer) => {
                return Err(Error::config(
                    "export",
                    format!("int8 step {step:?} of a {} node has no QDQ form", layer.describe()),
                )
                .in_node(&node.name));
            }
        }
        // The node's bytes: its value quantized and dequantized with their parameters.
        if let Some(p) = network.node_params(id) {
            let value = self.names[id].clone();
            self.names[id] = self.qdq(&value, &node.name, p);
        }
        Ok(())
    }

    /// A float value quantized with `p` for the convolutions that read it (once per node).
    fn quantize_float(&mut self, node: NodeId, p: QuantParams) -> String {
        if let Some(q) = self.quantized_floats.get(&node) {
            return q.clone();
        }
        let value = self.names[node].clone();
        let name = self.graph.nodes[node].name.clone();
        let q = self.qdq(&value, &name, p);
        self.quantized_floats.insert(node, q.clone());
        q
    }

    /// `value` through QuantizeLinear and DequantizeLinear with `p`: what a byte tensor of ours holds.
    fn qdq(&mut self, value: &str, name: &str, p: QuantParams) -> String {
        let (scale, zero_point) = (format!("{name}.act_scale"), format!("{name}.act_zero_point"));
        self.initializers.push(f32_tensor(&scale, &[], &[p.scale]));
        self.initializers
            .push(raw_tensor(&zero_point, &[], DataType::Uint8, vec![p.zero_point]));
        let q = self.emit(
            "QuantizeLinear",
            &format!("{name}.quantize"),
            vec![value.to_string(), scale.clone(), zero_point.clone()],
            vec![],
            false,
        );
        self.emit(
            "DequantizeLinear",
            &format!("{name}.dequantize"),
            vec![q, scale, zero_point],
            vec![],
            false,
        )
    }

    fn float_node(&mut self, id: NodeId) -> Result<()> {
        let graph = self.graph;
        let node = &graph.nodes[id];
        let name = node.name.as_str();
        let input_names: Vec<String> = node.inputs.iter().map(|&i| self.names[i].clone()).collect();
        let input = |k: usize| input_names[k].clone();
        let input_hw = || {
            let [_, h, w] = graph.nodes[node.inputs[0]].shape;
            [h, w]
        };
        let (value, relu) = match &node.layer {
            Layer::Input => {
                self.names[id] = INPUT.into();
                return Ok(());
            }
            Layer::Conv {
                conv,
                weight,
                bias,
                relu,
            } => {
                let mut inputs = vec![input(0), self.param(*weight)];
                inputs.extend(bias.map(|b| self.param(b)));
                let pads = conv
                    .padding
                    .resolve(input_hw(), conv.kernel, conv.stride, conv.dilation);
                let attrs = vec![
                    ints("kernel_shape", &conv.kernel),
                    ints("strides", &conv.stride),
                    ints("dilations", &conv.dilation),
                    onnx_pads(pads),
                    int("group", 1),
                ];
                (self.emit("Conv", name, inputs, attrs, *relu), *relu)
            }
            Layer::Linear { weight, bias, .. } => {
                let x = self.flat_input(node.inputs[0], name);
                let mut inputs = vec![x, self.param(*weight)];
                inputs.extend(bias.map(|b| self.param(b)));
                self.flat[id] = true;
                (self.emit("Gemm", name, inputs, vec![int("transB", 1)], false), false)
            }
            Layer::BatchNorm {
                bn,
                gamma,
                beta,
                running_mean,
                running_var,
                relu,
            } => {
                let inputs = vec![
                    input(0),
                    self.param(*gamma),
                    self.param(*beta),
                    self.param(*running_mean),
                    self.param(*running_var),
                ];
                // ONNX's momentum weighs the old running value, PyTorch's the new batch statistic.
                let attrs = vec![float("epsilon", bn.eps), float("momentum", 1.0 - bn.momentum)];
                (self.emit("BatchNormalization", name, inputs, attrs, *relu), *relu)
            }
            Layer::ZeroPad(p) => {
                let pads = format!("{name}.pads");
                let values = [0, 0, p.top, p.left, 0, 0, p.bottom, p.right].map(|v| v as i64);
                self.initializers.push(i64_tensor(&pads, &[8], &values));
                let attrs = vec![string("mode", "constant")];
                (self.emit("Pad", name, vec![input(0), pads], attrs, false), false)
            }
            Layer::Dropout(d) => {
                // Kept so that an imported file trains as the original did; inference skips it.
                let ratio = format!("{name}.ratio");
                self.initializers.push(f32_tensor(&ratio, &[], &[d.p]));
                (self.emit("Dropout", name, vec![input(0), ratio], vec![], false), false)
            }
            Layer::MaxPool(p) => {
                let attrs = pool_attrs(&p.window, input_hw());
                (self.emit("MaxPool", name, vec![input(0)], attrs, false), false)
            }
            Layer::AvgPool(p) => {
                let mut attrs = pool_attrs(&p.window, input_hw());
                attrs.push(int("count_include_pad", p.count_include_pad as i64));
                (self.emit("AveragePool", name, vec![input(0)], attrs, false), false)
            }
            Layer::GlobalAvgPool | Layer::AdaptiveAvgPool([1, 1]) => (
                self.emit("GlobalAveragePool", name, vec![input(0)], vec![], false),
                false,
            ),
            Layer::AdaptiveAvgPool([oh, ow]) => {
                // PyTorch's bins are one plain window when the output divides the input.
                let [h, w] = input_hw();
                if h % oh != 0 || w % ow != 0 {
                    return Err(Error::config(
                        "export",
                        format!("adaptive average pooling from {h}x{w} to {oh}x{ow} has bins of unequal size, which ONNX cannot express"),
                    )
                    .in_node(name));
                }
                let (kh, kw) = (h / oh, w / ow);
                let attrs = vec![ints("kernel_shape", &[kh, kw]), ints("strides", &[kh, kw])];
                (self.emit("AveragePool", name, vec![input(0)], attrs, false), false)
            }
            Layer::Relu => (self.emit("Relu", name, vec![input(0)], vec![], false), false),
            Layer::Concat => {
                let inputs = (0..node.inputs.len()).map(input).collect();
                (self.emit("Concat", name, inputs, vec![int("axis", 1)], false), false)
            }
            Layer::AddScaled { scale, relu } => {
                let branch = if *scale == 1.0 {
                    input(1)
                } else {
                    let s = format!("{name}.scale");
                    self.initializers.push(f32_tensor(&s, &[], &[*scale]));
                    self.emit("Mul", &format!("{name}.mul"), vec![input(1), s], vec![], false)
                };
                (self.emit("Add", name, vec![input(0), branch], vec![], *relu), *relu)
            }
            Layer::Flatten => {
                self.flat[id] = true;
                let x = self.flat_input(node.inputs[0], name);
                self.names[id] = x;
                return Ok(());
            }
        };
        self.names[id] = if relu {
            self.emit("Relu", &format!("{name}.relu"), vec![value], vec![], false)
        } else {
            value
        };
        Ok(())
    }

    /// `node`'s output as a 2-D value, flattened here if it is not yet.
    fn flat_input(&mut self, node: NodeId, reader: &str) -> String {
        if self.flat[node] {
            return self.names[node].clone();
        }
        let x = self.names[node].clone();
        let flat = self.emit(
            "Flatten",
            &format!("{reader}.flatten"),
            vec![x],
            vec![int("axis", 1)],
            false,
        );
        // Later readers reuse it.
        self.names[node] = flat.clone();
        self.flat[node] = true;
        flat
    }

    /// Adds an ONNX node named `name` whose output value is named after it (`.pre_relu` when a Relu
    /// follows); returns that value's name.
    fn emit(&mut self, op: &str, name: &str, inputs: Vec<String>, attrs: Vec<AttributeProto>, relu: bool) -> String {
        let value = if relu {
            format!("{name}.pre_relu")
        } else {
            name.to_string()
        };
        self.nodes.push(NodeProto {
            op_type: Some(op.into()),
            name: Some(name.into()),
            input: inputs,
            output: vec![value.clone()],
            attribute: attrs,
            ..Default::default()
        });
        value
    }

    /// The initializer holding parameter `p`, written on first use.
    fn param(&mut self, p: usize) -> String {
        let spec = &self.graph.params[p];
        if !self.written[p] {
            self.initializers
                .push(f32_tensor(&spec.name, &spec.shape, &self.params[p]));
            self.written[p] = true;
        }
        spec.name.clone()
    }
}

/// Kernel, strides, explicit pads and ceil_mode of a pooling window on an `input`-sized plane.
fn pool_attrs(window: &PoolWindow, input: [usize; 2]) -> Vec<AttributeProto> {
    let pads = window.padding.resolve(input, window.kernel, window.stride, [1, 1]);
    vec![
        ints("kernel_shape", &window.kernel),
        ints("strides", &window.stride),
        onnx_pads(pads),
        int("ceil_mode", window.ceil_mode as i64),
    ]
}

/// ONNX orders pads as all beginnings, then all ends.
fn onnx_pads(p: Pads) -> AttributeProto {
    ints("pads", &[p.top, p.left, p.bottom, p.right])
}

fn ints(name: &str, values: &[usize]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: values.iter().map(|&v| v as i64).collect(),
        ..Default::default()
    }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    }
}

fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(value),
        ..Default::default()
    }
}

fn string(name: &str, value: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(value.as_bytes().to_vec()),
        ..Default::default()
    }
}

enum Dim {
    Batch,
    Fixed(usize),
}

/// A float tensor's name, type and shape (the batch axis symbolic).
fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Batch => dimension::Value::DimParam("batch".into()),
                Dim::Fixed(n) => dimension::Value::DimValue(*n as i64),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
