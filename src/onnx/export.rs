//! A graph and its weights as an ONNX model: one ONNX node per op (a fused ReLU becomes a `Relu` of its
//! own), weights as initializers under their PyTorch names, a dynamic batch axis, and the checkpoint's
//! metadata (preprocessing, class names, model) as `metadata_props`. Only what the eval output needs is
//! written: auxiliary classifiers serve training and are left out.

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
use super::tensor::{f32_tensor, i64_tensor};
use crate::error::{Error, Result};
use crate::geometry::Pads;
use crate::graph::{Graph, Layer, NodeId};
use crate::ops::pool::PoolWindow;

/// The opset `incept export` writes unless asked for another.
pub const DEFAULT_OPSET: i64 = 17;
/// The opsets export can write: every op it emits means the same in all of them (13 moved Unsqueeze's
/// and Split's axes to inputs, which we do not emit; 22 is the newest ONNX Runtime 1.2x reads).
pub const EXPORT_OPSETS: RangeInclusive<i64> = 13..=22;

/// The ONNX model of `graph` with `params` (in [`Graph::params`] order) and `metadata` as
/// `metadata_props`, at `opset`, serialized.
pub fn export(graph: &Graph, params: &[Vec<f32>], metadata: &HashMap<String, String>, opset: i64) -> Result<Vec<u8>> {
    Ok(model_proto(graph, params, metadata, opset)?.encode_to_vec())
}

/// [`export`] written to `path` atomically (through `<path>.tmp`).
pub fn write(
    path: &Path,
    graph: &Graph,
    params: &[Vec<f32>],
    metadata: &HashMap<String, String>,
    opset: i64,
) -> Result<()> {
    let bytes = export(graph, params, metadata, opset)?;
    let tmp = path.with_extension("onnx.tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::file(tmp.display(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path.display(), e))
}

fn model_proto(
    graph: &Graph,
    params: &[Vec<f32>],
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
    if params.len() != graph.params.len() {
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
        nodes: Vec::new(),
        initializers: Vec::new(),
        names: vec![String::new(); graph.nodes.len()],
        flat: vec![false; graph.nodes.len()],
        written: vec![false; graph.params.len()],
    };
    for id in needed_nodes(graph) {
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

/// The nodes the eval output reads, directly or not, in execution order.
fn needed_nodes(graph: &Graph) -> Vec<NodeId> {
    let mut needed = vec![false; graph.nodes.len()];
    needed[graph.output] = true;
    for id in (0..graph.nodes.len()).rev() {
        if needed[id] {
            for &i in &graph.nodes[id].inputs {
                needed[i] = true;
            }
        }
    }
    (0..graph.nodes.len()).filter(|&i| needed[i]).collect()
}

struct Writer<'g> {
    graph: &'g Graph,
    params: &'g [Vec<f32>],
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
