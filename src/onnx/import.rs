//! An ONNX model as incept's static graph. Nodes are read in file order (ONNX requires a topological
//! one) and each becomes a [`GraphBuilder`] call, so shapes are inferred and checked by the same code as a
//! native model's; the result plans, runs and trains like one.

use std::collections::{HashMap, HashSet};
use std::ops::RangeInclusive;
use std::path::Path;

use prost::Message;

use super::proto::tensor_proto::DataType;
use super::proto::tensor_shape_proto::dimension;
use super::proto::{AttributeProto, ModelProto, NodeProto, ValueInfoProto, type_proto};
use super::tensor::{Constant, Values};
use crate::error::{Error, Result};
use crate::geometry::{Padding, Pads};
use crate::graph::{Graph, GraphBuilder, NodeId};
use crate::ops::batchnorm::BatchNorm2d;
use crate::ops::conv::Conv2d;
use crate::ops::pool::{AvgPool2d, MaxPool2d};

/// The default-domain opsets import reads: 9 (the oldest with today's pooling and padding attributes)
/// to 22.
pub const IMPORT_OPSETS: RangeInclusive<i64> = 9..=22;

/// The op types import understands. Shape arithmetic (`Shape`, `Gather`, `Unsqueeze`, `Squeeze`,
/// `Concat`, `Cast` on constants) is evaluated while the graph is built; `Mul` by a scalar constant is
/// understood as the branch of a scaled residual sum (`Add`).
pub const SUPPORTED_OPS: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Concat",
    "Constant",
    "Conv",
    "Dropout",
    "Flatten",
    "Gather",
    "Gemm",
    "GlobalAveragePool",
    "Identity",
    "MaxPool",
    "Mul",
    "Pad",
    "ReduceMean",
    "Relu",
    "Reshape",
    "Shape",
    "Squeeze",
    "Sum",
    "Unsqueeze",
];

/// What an ONNX file holds, as incept runs it.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The graph, at the file's input size (or the one asked for, when the file leaves it open).
    pub graph: Graph,
    /// One vector per parameter, in [`Graph::params`] order.
    pub params: Vec<Vec<f32>>,
    /// The file's `metadata_props` (an incept export records its checkpoint's metadata there).
    pub metadata: HashMap<String, String>,
    /// The default-domain opset the file was written for.
    pub opset: i64,
    /// The program that wrote it (`producer_name producer_version`).
    pub producer: String,
}

impl Imported {
    /// The weights by name, with the metadata, as a safetensors file's would be read.
    pub fn tensor_file(&self) -> crate::io::checkpoint::TensorFile {
        crate::io::checkpoint::TensorFile {
            tensors: self
                .graph
                .params
                .iter()
                .zip(&self.params)
                .map(|(spec, values)| (spec.name.clone(), (spec.shape.clone(), values.clone())))
                .collect(),
            metadata: self.metadata.clone(),
        }
    }
}

/// Reads the ONNX model at `path` (see [`import`]).
pub fn read(path: &Path, size: Option<[usize; 2]>) -> Result<Imported> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path.display(), e))?;
    import(&bytes, path, size)
}

/// The graph and weights of the serialized ONNX model `bytes` (read from `path`, which names it in
/// errors and whose directory holds any external data). `size` is the input height and width: it must
/// repeat the file's when the file fixes one, and is needed when the file leaves them symbolic.
pub fn import(bytes: &[u8], path: &Path, size: Option<[usize; 2]>) -> Result<Imported> {
    let file_error = |reason: String| Error::file(path.display(), reason);
    let model = ModelProto::decode(bytes).map_err(|e| {
        file_error(format!(
            "an ONNX model (a protobuf ModelProto), but it does not decode ({e}); is it truncated, or not ONNX?"
        ))
    })?;
    let Some(graph) = &model.graph else {
        return Err(file_error(
            "an ONNX model, but it has no graph (not an ONNX file, or truncated?)".into(),
        ));
    };
    let opset = model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .and_then(|o| o.version)
        .ok_or_else(|| file_error("an ONNX model, but it imports no default-domain opset".into()))?;
    if !IMPORT_OPSETS.contains(&opset) {
        return Err(file_error(format!(
            "ONNX opset {} to {}, found opset {opset}",
            IMPORT_OPSETS.start(),
            IMPORT_OPSETS.end()
        )));
    }
    let mut reader = Reader {
        path,
        opset,
        builder: GraphBuilder::new(),
        values: HashMap::new(),
        consumers: HashMap::new(),
        pending: HashMap::new(),
        params: HashMap::new(),
        used_params: HashSet::new(),
        node_names: HashSet::new(),
        input_batch: None,
    };
    for init in &graph.initializer {
        let name = init.name.clone().unwrap_or_default();
        // A tensor of a type we do not read (a QDQ file's int8 weights) is refused where a node uses it,
        // so the message names that node.
        let value = match Constant::from_proto(init, path) {
            Ok(c) => Value::Const(c),
            Err(Error::File { reason, .. }) => Value::Unreadable(reason),
            Err(e) => return Err(e),
        };
        reader.values.insert(name, value);
    }
    for n in &graph.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            *reader.consumers.entry(i.clone()).or_default() += 1;
        }
    }
    for o in &graph.output {
        *reader.consumers.entry(o.name.clone().unwrap_or_default()).or_default() += 1;
    }
    let inputs: Vec<&ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !reader.values.contains_key(i.name.as_deref().unwrap_or("")))
        .collect();
    let [input] = inputs[..] else {
        return Err(file_error(format!(
            "one graph input (the images), found {}: {}",
            inputs.len(),
            inputs
                .iter()
                .map(|i| i.name.as_deref().unwrap_or("?"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    reader.input(input, size)?;
    for node in &graph.node {
        reader.node(node).map_err(|e| match e {
            e @ Error::File { .. } => e,
            // The graph builder names our node; the file's own name (given below) is what the user can find.
            Error::Node { source, .. } => file_error(format!(
                "node {:?} ({}): {source}",
                node.name.as_deref().unwrap_or(""),
                node.op_type.as_deref().unwrap_or("")
            )),
            e => file_error(format!(
                "node {:?} ({}): {e}",
                node.name.as_deref().unwrap_or(""),
                node.op_type.as_deref().unwrap_or("")
            )),
        })?;
    }
    let [output] = &graph.output[..] else {
        return Err(file_error(format!(
            "one graph output (the logits), found {}",
            graph.output.len()
        )));
    };
    let output_name = output.name.as_deref().unwrap_or("");
    let output = match reader.values.get(output_name) {
        Some(Value::Node { id, .. }) => *id,
        _ => {
            return Err(file_error(format!(
                "the graph output {output_name:?} is not computed from the input"
            )));
        }
    };
    let Reader {
        builder, mut params, ..
    } = reader;
    let graph_built = builder.build(output)?;
    let params = graph_built
        .params
        .iter()
        .map(|p| {
            params
                .remove(&p.name)
                .expect("every parameter's values were recorded when it was added")
        })
        .collect();
    Ok(Imported {
        graph: graph_built,
        params,
        metadata: model
            .metadata_props
            .iter()
            .map(|e| (e.key.clone().unwrap_or_default(), e.value.clone().unwrap_or_default()))
            .collect(),
        opset,
        producer: format!(
            "{} {}",
            model.producer_name.as_deref().unwrap_or("unknown"),
            model.producer_version.as_deref().unwrap_or("")
        )
        .trim()
        .to_string(),
    })
}

/// What an ONNX value name stands for while the graph is built.
#[derive(Debug, Clone)]
enum Value {
    /// A per-image tensor computed by node `id`: 4-D `[n, c, h, w]`, or 2-D `[n, features]` when
    /// `flat` (our node's shape is then `[features, 1, 1]`).
    Node { id: NodeId, flat: bool },
    /// `scale * node`: the branch of a scaled residual sum, waiting for its `Add`.
    Scaled { id: NodeId, scale: f32 },
    /// A constant: an initializer, a `Constant` node, or folded shape arithmetic.
    Const(Constant),
    /// An initializer that could not be read, and why.
    Unreadable(String),
}

/// The batch size in folded shape arithmetic (it stays symbolic).
const BATCH: i64 = i64::MIN;

struct Reader<'p> {
    path: &'p Path,
    opset: i64,
    builder: GraphBuilder,
    values: HashMap<String, Value>,
    /// How many node inputs and graph outputs read each value.
    consumers: HashMap<String, usize>,
    /// Reads of each node's output not yet processed (all names bound to it), for ReLU fusion.
    pending: HashMap<NodeId, usize>,
    /// Parameter values by name, as the builder names them.
    params: HashMap<String, Vec<f32>>,
    /// Initializers already taken as parameters (a second use would share weights, which we do not).
    used_params: HashSet<String>,
    node_names: HashSet<String>,
    /// The input's batch size when the file fixes it.
    input_batch: Option<usize>,
}

impl Reader<'_> {
    fn input(&mut self, input: &ValueInfoProto, size: Option<[usize; 2]>) -> Result<()> {
        let name = input.name.clone().unwrap_or_default();
        let bad = |reason: String| Error::file(self.path.display(), format!("graph input {name:?}: {reason}"));
        let Some(type_proto::Value::TensorType(t)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
            return Err(bad("expected a tensor".into()));
        };
        if t.elem_type != Some(DataType::Float as i32) {
            let found = t
                .elem_type
                .and_then(|e| DataType::try_from(e).ok())
                .map_or("no type".to_string(), |d| d.as_str_name().to_string());
            return Err(bad(format!("expected FLOAT values, found {found}")));
        }
        let dims: Vec<Option<usize>> = t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(dimension::Value::DimValue(v)) if v > 0 => Some(v as usize),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let [batch, Some(c), h, w] = dims[..] else {
            return Err(bad(format!(
                "expected images [n, c, h, w] with a fixed channel count, found {}",
                describe_dims(&dims)
            )));
        };
        let hw = match (h, w, size) {
            (Some(h), Some(w), Some(s)) if s != [h, w] => {
                return Err(bad(format!(
                    "the file fixes the input size to {h}x{w}, {}x{} was asked for",
                    s[0], s[1]
                )));
            }
            (Some(h), Some(w), _) => [h, w],
            (_, _, Some(s)) => s,
            _ => {
                return Err(bad(format!(
                    "the file leaves the input size open ({}); give the size to plan for",
                    describe_dims(&dims)
                )));
            }
        };
        self.input_batch = batch;
        let id = self.builder.input(&name, [c, hw[0], hw[1]])?;
        self.node_names.insert(name.clone());
        self.bind(&name, Value::Node { id, flat: false });
        Ok(())
    }

    fn bind(&mut self, name: &str, value: Value) {
        if let Value::Node { id, .. } | Value::Scaled { id, .. } = value {
            *self.pending.entry(id).or_default() += self.consumers.get(name).copied().unwrap_or(0);
        }
        self.values.insert(name.to_string(), value);
    }

    fn value(&self, name: &str) -> Result<Value> {
        match self.values.get(name) {
            Some(Value::Unreadable(reason)) => Err(Error::File {
                path: self.path.display().to_string(),
                reason: reason.clone(),
            }),
            Some(v) => Ok(v.clone()),
            None => Err(Error::config(
                "onnx",
                format!("input {name:?} is not computed by any earlier node"),
            )),
        }
    }

    /// Input `k` of `node` as a per-image tensor.
    fn tensor(&self, node: &NodeProto, k: usize) -> Result<(NodeId, bool)> {
        match self.value(input_name(node, k)?)? {
            Value::Node { id, flat } => Ok((id, flat)),
            Value::Scaled { .. } => Err(Error::config(
                "onnx",
                "a Mul by a constant is supported only as the branch of a residual sum (x + s * branch)",
            )),
            Value::Const(_) | Value::Unreadable(_) => Err(Error::config(
                "onnx",
                format!("input {k} is a constant, where the op needs a tensor computed from the images"),
            )),
        }
    }

    /// Input `k` of `node` as a constant, if it is given.
    fn constant(&self, node: &NodeProto, k: usize) -> Result<Option<Constant>> {
        match node.input.get(k).filter(|i| !i.is_empty()) {
            None => Ok(None),
            Some(name) => match self.value(name)? {
                Value::Const(c) => Ok(Some(c)),
                _ => Err(Error::config(
                    "onnx",
                    format!("input {k} ({name:?}) must be a constant (an initializer), it is computed from the images"),
                )),
            },
        }
    }

    /// A weight: a constant of `dims`, taken once as parameter `name`.
    fn weight(&mut self, node: &NodeProto, k: usize, what: &str) -> Result<Option<(String, Constant)>> {
        let Some(c) = self.constant(node, k)? else {
            return Ok(None);
        };
        let name = input_name(node, k)?.to_string();
        if !self.used_params.insert(name.clone()) {
            return Err(Error::config(
                "onnx",
                format!("the {what} {name:?} is used by two nodes; shared weights are not supported"),
            ));
        }
        Ok(Some((name, c)))
    }

    /// A unique name for our node: the weight's module path when the weight is named `<path>.weight`
    /// (PyTorch's exports), else the ONNX node's name, else its first output's.
    fn node_name(&mut self, node: &NodeProto, weight: Option<&str>) -> String {
        let base = weight
            .and_then(|w| w.strip_suffix(".weight"))
            .map(str::to_string)
            .or_else(|| node.name.clone().filter(|n| !n.is_empty()))
            .unwrap_or_else(|| node.output.first().cloned().unwrap_or_default());
        let mut name = base.clone();
        let mut k = 1;
        while !self.node_names.insert(name.clone()) {
            k += 1;
            name = format!("{base}#{k}");
        }
        name
    }

    fn output(&mut self, node: &NodeProto, value: Value) -> Result<()> {
        let out = node
            .output
            .first()
            .ok_or_else(|| Error::config("onnx", "the node has no output"))?;
        // Optional outputs (MaxPool's indices, Dropout's mask, BatchNormalization's training statistics).
        if let Some(extra) = node
            .output
            .iter()
            .skip(1)
            .find(|o| !o.is_empty() && self.consumers.contains_key(*o))
        {
            return Err(Error::config(
                "onnx",
                format!("its extra output {extra:?} is used; only the first output is supported"),
            ));
        }
        self.bind(out, value);
        Ok(())
    }

    fn node(&mut self, node: &NodeProto) -> Result<()> {
        let op = node.op_type.as_deref().unwrap_or("");
        if let Some(domain) = node.domain.as_deref().filter(|d| !d.is_empty() && *d != "ai.onnx") {
            return Err(unsupported(node, &format!("{domain}::{op}")));
        }
        // These reads are now processed: a ReLU may fuse into a node no one else reads.
        for name in node.input.iter().filter(|i| !i.is_empty()) {
            if let Some(Value::Node { id, .. } | Value::Scaled { id, .. }) = self.values.get(name) {
                if let Some(p) = self.pending.get_mut(id) {
                    *p = p.saturating_sub(1);
                }
            }
        }
        let value = match op {
            "Conv" => self.conv(node)?,
            "Gemm" => self.gemm(node)?,
            "BatchNormalization" => self.batch_norm(node)?,
            "Relu" => self.relu(node)?,
            "MaxPool" | "AveragePool" => self.pool(node, op)?,
            "GlobalAveragePool" => {
                let (x, _) = self.tensor(node, 0)?;
                let name = self.node_name(node, None);
                Value::Node {
                    id: self.builder.global_avg_pool(&name, x)?,
                    flat: false,
                }
            }
            "ReduceMean" => self.reduce_mean(node)?,
            "Concat" => self.concat(node)?,
            "Add" | "Sum" => self.add(node)?,
            "Mul" => self.mul(node)?,
            "Flatten" => {
                let axis = attr_int(node, "axis").unwrap_or(1);
                if axis != 1 {
                    return Err(Error::config(
                        "onnx",
                        format!("Flatten with axis {axis}: only axis 1 ([n, c, h, w] to [n, c*h*w]) is supported"),
                    ));
                }
                self.flatten(node)?
            }
            "Reshape" => self.reshape(node)?,
            "Pad" => self.pad(node)?,
            "Dropout" => self.dropout(node)?,
            "Identity" => self.value(input_name(node, 0)?)?,
            "Constant" => Value::Const(self.constant_node(node)?),
            "Shape" | "Gather" | "Unsqueeze" | "Squeeze" | "Cast" => self.shape_arithmetic(node, op)?,
            _ => return Err(unsupported(node, op)),
        };
        self.output(node, value)
    }

    fn conv(&mut self, node: &NodeProto) -> Result<Value> {
        let (x, _) = self.tensor(node, 0)?;
        let (weight, w) = self
            .weight(node, 1, "weight")?
            .ok_or_else(|| Error::config("onnx", "Conv needs a weight"))?;
        let bias = self.weight(node, 2, "bias")?;
        let [c, h, wd] = self.builder.shape_of(x)?;
        let group = attr_int(node, "group").unwrap_or(1);
        if group != 1 {
            return Err(Error::config(
                "onnx",
                format!("a grouped convolution (group {group}); only group 1 is supported"),
            ));
        }
        let [o, i, kh, kw] = w.dims[..] else {
            return Err(Error::shape(
                "Conv weight",
                "[out, in, kh, kw]",
                format!("{:?}", w.dims),
            ));
        };
        if i != c {
            return Err(Error::shape(
                "Conv weight",
                format!("[{o}, {c}, {kh}, {kw}] for an input of {c} channels"),
                format!("{:?}", w.dims),
            ));
        }
        if let Some(k) = attr_ints(node, "kernel_shape").filter(|k| *k != [kh as i64, kw as i64]) {
            return Err(Error::shape(
                "Conv kernel_shape",
                format!("[{kh}, {kw}] (the weight's)"),
                format!("{k:?}"),
            ));
        }
        if let Some((b, values)) = &bias {
            if values.dims != [o] {
                return Err(Error::shape(
                    &format!("Conv bias {b:?}"),
                    format!("[{o}]"),
                    format!("{:?}", values.dims),
                ));
            }
        }
        let stride = pair(node, "strides")?;
        let dilation = pair(node, "dilations")?;
        let padding = padding(node, [h, wd], [kh, kw], stride)?;
        let conv = Conv2d::new(c, o, [kh, kw])
            .with_stride(stride)
            .with_dilation(dilation)
            .with_padding(padding);
        let name = self.node_name(node, Some(&weight));
        let bias_name = bias.as_ref().map(|(b, _)| b.as_str());
        let id = self
            .builder
            .conv_with_params(&name, x, conv, &weight, bias_name, false)?;
        self.params.insert(weight, w.floats());
        if let Some((b, values)) = bias {
            self.params.insert(b, values.floats());
        }
        Ok(Value::Node { id, flat: false })
    }

    fn gemm(&mut self, node: &NodeProto) -> Result<Value> {
        let (x, flat) = self.tensor(node, 0)?;
        let [features, ..] = self.builder.shape_of(x)?;
        if !flat {
            return Err(Error::config(
                "onnx",
                "Gemm needs a 2-D input [n, features]; flatten it first",
            ));
        }
        if attr_int(node, "transA").unwrap_or(0) != 0 {
            return Err(Error::config(
                "onnx",
                "Gemm with transA = 1 (the batch on the second axis)",
            ));
        }
        let (weight, w) = self
            .weight(node, 1, "weight")?
            .ok_or_else(|| Error::config("onnx", "Gemm needs a weight"))?;
        let bias = self.weight(node, 2, "bias")?;
        let trans_b = attr_int(node, "transB").unwrap_or(0) != 0;
        let (alpha, beta) = (
            attr_float(node, "alpha").unwrap_or(1.0),
            attr_float(node, "beta").unwrap_or(1.0),
        );
        let [rows, cols] = w.dims[..] else {
            return Err(Error::shape("Gemm weight", "2-D", format!("{:?}", w.dims)));
        };
        let (out, inputs) = if trans_b { (rows, cols) } else { (cols, rows) };
        if inputs != features {
            return Err(Error::shape(
                "Gemm weight",
                format!("{features} input features (the input's)"),
                format!("{:?}", w.dims),
            ));
        }
        // Our linear layer holds PyTorch's [out, in] weight; alpha and beta are folded into it.
        let values = w.floats();
        let mut weight_values: Vec<f32> = if trans_b {
            values
        } else {
            (0..out * inputs)
                .map(|k| values[(k % inputs) * out + k / inputs])
                .collect()
        };
        if alpha != 1.0 {
            weight_values.iter_mut().for_each(|v| *v *= alpha);
        }
        let bias_values = match &bias {
            Some((b, c)) if c.len() != out || c.dims.len() > 2 => {
                return Err(Error::shape(
                    &format!("Gemm bias {b:?}"),
                    format!("[{out}]"),
                    format!("{:?}", c.dims),
                ));
            }
            Some((_, c)) => Some(c.floats().into_iter().map(|v| v * beta).collect::<Vec<f32>>()),
            None => None,
        };
        let name = self.node_name(node, Some(&weight));
        let bias_name = bias.as_ref().map(|(b, _)| b.as_str());
        let id = self.builder.linear_with_params(&name, x, out, &weight, bias_name)?;
        self.params.insert(weight, weight_values);
        if let (Some((b, _)), Some(values)) = (bias, bias_values) {
            self.params.insert(b, values);
        }
        Ok(Value::Node { id, flat: true })
    }

    fn batch_norm(&mut self, node: &NodeProto) -> Result<Value> {
        let (x, flat) = self.tensor(node, 0)?;
        let [c, ..] = self.builder.shape_of(x)?;
        if attr_int(node, "training_mode").unwrap_or(0) != 0 {
            return Err(Error::config(
                "onnx",
                "BatchNormalization in training mode; export the model in eval mode",
            ));
        }
        let mut names = Vec::new();
        for (k, what) in [(1, "scale"), (2, "shift"), (3, "running mean"), (4, "running variance")] {
            let (name, values) = self
                .weight(node, k, what)?
                .ok_or_else(|| Error::config("onnx", format!("BatchNormalization needs its {what}")))?;
            if values.dims != [c] {
                return Err(Error::shape(
                    &format!("BatchNormalization {what} {name:?}"),
                    format!("[{c}]"),
                    format!("{:?}", values.dims),
                ));
            }
            self.params.insert(name.clone(), values.floats());
            names.push(name);
        }
        let eps = attr_float(node, "epsilon").unwrap_or(1e-5);
        // ONNX's momentum weighs the old running value, PyTorch's the new statistic. 1 - 0.9f32 is not
        // 0.1f32: rounded to six decimals, PyTorch's value comes back exactly.
        let onnx_momentum = attr_float(node, "momentum").unwrap_or(0.9) as f64;
        let momentum = ((1.0 - onnx_momentum) * 1e6).round() / 1e6;
        let bn = BatchNorm2d::new(c).with_eps(eps).with_momentum(momentum as f32);
        let names: [String; 4] = names.try_into().expect("four names");
        let name = self.node_name(node, Some(&names[0]));
        let id = self.builder.batch_norm_with_params(&name, x, bn, &names, false)?;
        Ok(Value::Node { id, flat })
    }

    fn relu(&mut self, node: &NodeProto) -> Result<Value> {
        let (x, flat) = self.tensor(node, 0)?;
        let unread = self.pending.get(&x).copied().unwrap_or(0) == 0 && self.builder.readers(x) == 0;
        if unread && self.builder.fuse_relu(x) {
            return Ok(Value::Node { id: x, flat });
        }
        let name = self.node_name(node, None);
        Ok(Value::Node {
            id: self.builder.relu(&name, x)?,
            flat,
        })
    }

    fn pool(&mut self, node: &NodeProto, op: &str) -> Result<Value> {
        let (x, _) = self.tensor(node, 0)?;
        let [_, h, w] = self.builder.shape_of(x)?;
        let kernel = attr_ints(node, "kernel_shape")
            .and_then(|k| Some([usize::try_from(*k.first()?).ok()?, usize::try_from(*k.get(1)?).ok()?]))
            .filter(|k| k.iter().all(|&v| v > 0))
            .ok_or_else(|| Error::config("onnx", format!("{op} needs a 2-D kernel_shape")))?;
        let stride = pair(node, "strides")?;
        if pair(node, "dilations")? != [1, 1] {
            return Err(Error::config(
                "onnx",
                format!("a dilated {op}; only dilation 1 is supported"),
            ));
        }
        let padding = padding(node, [h, w], kernel, stride)?;
        let ceil_mode = attr_int(node, "ceil_mode").unwrap_or(0) != 0;
        let name = self.node_name(node, None);
        let id = if op == "MaxPool" {
            let pool = MaxPool2d::new(kernel, stride)
                .with_padding(padding)
                .with_ceil_mode(ceil_mode);
            self.builder.max_pool(&name, x, pool)?
        } else {
            let pool = AvgPool2d::new(kernel, stride)
                .with_padding(padding)
                .with_ceil_mode(ceil_mode)
                .with_count_include_pad(attr_int(node, "count_include_pad").unwrap_or(0) != 0);
            self.builder.avg_pool(&name, x, pool)?
        };
        Ok(Value::Node { id, flat: false })
    }

    fn reduce_mean(&mut self, node: &NodeProto) -> Result<Value> {
        let (x, flat) = self.tensor(node, 0)?;
        let axes = match attr_ints(node, "axes") {
            Some(a) => Some(a.to_vec()),
            None => self.constant(node, 1)?.and_then(|c| c.ints().map(<[i64]>::to_vec)),
        };
        let spatial = matches!(axes.as_deref(), Some([2, 3] | [-2, -1] | [3, 2] | [-1, -2]));
        if flat || !spatial {
            return Err(Error::config(
                "onnx",
                format!("ReduceMean over axes {axes:?}; only the spatial mean (axes [2, 3]) is supported"),
            ));
        }
        let keep = attr_int(node, "keepdims").unwrap_or(1) != 0;
        let name = self.node_name(node, None);
        let id = self.builder.global_avg_pool(&name, x)?;
        Ok(Value::Node { id, flat: !keep })
    }

    fn concat(&mut self, node: &NodeProto) -> Result<Value> {
        let values: Vec<Value> = node.input.iter().map(|i| self.value(i)).collect::<Result<_>>()?;
        let axis = attr_int(node, "axis").unwrap_or(0);
        if values.iter().all(|v| matches!(v, Value::Const(_))) {
            // Shape arithmetic: integer vectors joined end to end.
            let mut joined = Vec::new();
            for v in &values {
                match v {
                    Value::Const(c) if c.dims.len() <= 1 && axis == 0 => joined.extend_from_slice(
                        c.ints()
                            .ok_or_else(|| Error::config("onnx", "Concat of float constants is not supported"))?,
                    ),
                    _ => return Err(Error::config("onnx", "Concat of constants beyond 1-D integer vectors")),
                }
            }
            return Ok(Value::Const(Constant {
                dims: vec![joined.len()],
                values: Values::I64(joined),
            }));
        }
        let mut parts = Vec::new();
        let mut flat_parts = Vec::new();
        for k in 0..node.input.len() {
            let (id, flat) = self.tensor(node, k)?;
            parts.push(id);
            flat_parts.push(flat);
        }
        let flat = flat_parts[0];
        let channel_axis = if flat { [1, -1] } else { [1, -3] };
        if flat_parts.iter().any(|&f| f != flat) || !channel_axis.contains(&axis) {
            return Err(Error::config(
                "onnx",
                format!("Concat along axis {axis}; only the channel axis (1) is supported"),
            ));
        }
        let name = self.node_name(node, None);
        Ok(Value::Node {
            id: self.builder.concat(&name, &parts)?,
            flat,
        })
    }

    fn add(&mut self, node: &NodeProto) -> Result<Value> {
        let [a, b] = &node.input[..] else {
            return Err(Error::config(
                "onnx",
                format!("a sum of {} inputs; two are supported", node.input.len()),
            ));
        };
        let (residual, branch, scale, flat) = match (self.value(a)?, self.value(b)?) {
            (Value::Node { id: r, flat }, Value::Node { id: b, .. }) => (r, b, 1.0, flat),
            (Value::Node { id: r, flat }, Value::Scaled { id: b, scale, .. })
            | (Value::Scaled { id: b, scale, .. }, Value::Node { id: r, flat }) => (r, b, scale, flat),
            _ => {
                return Err(Error::config(
                    "onnx",
                    "Add is supported between two tensors computed from the images (a residual sum), \
                     one of them optionally scaled by a constant; not with a constant",
                ));
            }
        };
        let name = self.node_name(node, None);
        Ok(Value::Node {
            id: self.builder.add_scaled(&name, residual, branch, scale, false)?,
            flat,
        })
    }

    fn mul(&mut self, node: &NodeProto) -> Result<Value> {
        let scalar = |c: &Constant| (c.len() == 1).then(|| c.floats()[0]);
        let (a, b) = (self.value(input_name(node, 0)?)?, self.value(input_name(node, 1)?)?);
        let ((Value::Node { id, .. }, Value::Const(c)) | (Value::Const(c), Value::Node { id, .. })) = (a, b) else {
            return Err(Error::config(
                "onnx",
                "Mul is supported only as a tensor times a scalar constant (a scaled residual branch)",
            ));
        };
        let scale = scalar(&c).ok_or_else(|| {
            Error::config(
                "onnx",
                format!("Mul by a constant of shape {:?}; only a scalar is supported", c.dims),
            )
        })?;
        Ok(Value::Scaled { id, scale })
    }

    fn flatten(&mut self, node: &NodeProto) -> Result<Value> {
        let (x, flat) = self.tensor(node, 0)?;
        if flat {
            return Ok(Value::Node { id: x, flat });
        }
        let name = self.node_name(node, None);
        Ok(Value::Node {
            id: self.builder.flatten(&name, x)?,
            flat: true,
        })
    }

    fn reshape(&mut self, node: &NodeProto) -> Result<Value> {
        let (x, flat) = self.tensor(node, 0)?;
        let [c, h, w] = self.builder.shape_of(x)?;
        let shape = self
            .constant(node, 1)?
            .and_then(|s| s.ints().map(<[i64]>::to_vec))
            .ok_or_else(|| Error::config("onnx", "Reshape needs a constant integer shape"))?;
        let features = (c * h * w) as i64;
        let batch_ok = |d: i64| d == BATCH || d == 0 || d == -1 || self.input_batch.is_some_and(|n| n as i64 == d);
        let current: Vec<i64> = if flat {
            vec![features]
        } else {
            vec![c as i64, h as i64, w as i64]
        };
        match shape[..] {
            [n, f] if batch_ok(n) && (f == features || f == -1) && !(n == -1 && f == -1) => self.flatten(node),
            [n, ref rest @ ..] if batch_ok(n) && *rest == current[..] => Ok(Value::Node { id: x, flat }),
            _ => Err(Error::config(
                "onnx",
                format!(
                    "Reshape of [n, {}] to {:?}: only flattening to [n, {features}] is supported",
                    current.iter().map(i64::to_string).collect::<Vec<_>>().join(", "),
                    shape
                        .iter()
                        .map(|&d| if d == BATCH { "n".to_string() } else { d.to_string() })
                        .collect::<Vec<_>>()
                ),
            )),
        }
    }

    fn pad(&mut self, node: &NodeProto) -> Result<Value> {
        let (x, flat) = self.tensor(node, 0)?;
        let mode = attr_string(node, "mode").unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return Err(Error::config(
                "onnx",
                format!("Pad in {mode} mode; only constant (zero) padding is supported"),
            ));
        }
        let pads = match attr_ints(node, "pads") {
            Some(p) if self.opset < 11 => p.to_vec(),
            _ => self
                .constant(node, 1)?
                .and_then(|c| c.ints().map(<[i64]>::to_vec))
                .ok_or_else(|| Error::config("onnx", "Pad needs constant integer pads"))?,
        };
        let value = match self.opset {
            ..11 => attr_float(node, "value").unwrap_or(0.0),
            _ => self
                .constant(node, 2)?
                .map_or(0.0, |c| c.floats().first().copied().unwrap_or(0.0)),
        };
        if value != 0.0 || node.input.get(3).is_some_and(|a| !a.is_empty()) || flat {
            return Err(Error::config(
                "onnx",
                "Pad: only zero padding of all four axes of [n, c, h, w] is supported",
            ));
        }
        let p: Vec<usize> = pads.iter().map(|&v| usize::try_from(v).unwrap_or(usize::MAX)).collect();
        let [0, 0, top, left, 0, 0, bottom, right] = p[..] else {
            return Err(Error::config(
                "onnx",
                format!("Pad with pads {pads:?}; only non-negative padding of height and width is supported"),
            ));
        };
        let name = self.node_name(node, None);
        let pads = Pads {
            top,
            bottom,
            left,
            right,
        };
        Ok(Value::Node {
            id: self.builder.zero_pad(&name, x, pads)?,
            flat: false,
        })
    }

    fn dropout(&mut self, node: &NodeProto) -> Result<Value> {
        let (x, flat) = self.tensor(node, 0)?;
        let ratio = match self.opset {
            ..12 => attr_float(node, "ratio").unwrap_or(0.5),
            _ => self
                .constant(node, 1)?
                .map_or(0.5, |c| c.floats().first().copied().unwrap_or(0.5)),
        };
        // Dropout stays a node: inference skips it, fine-tuning drops as the original model did.
        let name = self.node_name(node, None);
        Ok(Value::Node {
            id: self.builder.dropout(&name, x, ratio)?,
            flat,
        })
    }

    fn constant_node(&self, node: &NodeProto) -> Result<Constant> {
        let a = node
            .attribute
            .first()
            .ok_or_else(|| Error::config("onnx", "Constant with no value"))?;
        let scalar_or = |values: Values, len: usize, scalar: bool| Constant {
            dims: if scalar { vec![] } else { vec![len] },
            values,
        };
        match a.name.as_deref().unwrap_or("") {
            "value" => Constant::from_proto(
                a.t.as_ref()
                    .ok_or_else(|| Error::config("onnx", "Constant value is not a tensor"))?,
                self.path,
            ),
            "value_float" => Ok(scalar_or(Values::F32(vec![a.f.unwrap_or(0.0)]), 1, true)),
            "value_floats" => Ok(scalar_or(Values::F32(a.floats.clone()), a.floats.len(), false)),
            "value_int" => Ok(scalar_or(Values::I64(vec![a.i.unwrap_or(0)]), 1, true)),
            "value_ints" => Ok(scalar_or(Values::I64(a.ints.clone()), a.ints.len(), false)),
            other => Err(Error::config(
                "onnx",
                format!("Constant with a {other} attribute is not supported"),
            )),
        }
    }

    /// Shape arithmetic on constants, folded here: the batch size stays symbolic ([`BATCH`]).
    fn shape_arithmetic(&mut self, node: &NodeProto, op: &str) -> Result<Value> {
        let input = self.value(input_name(node, 0)?)?;
        let int_vector = |values: Vec<i64>| Constant {
            dims: vec![values.len()],
            values: Values::I64(values),
        };
        match (op, input) {
            ("Shape", Value::Node { id, flat }) => {
                let [c, h, w] = self.builder.shape_of(id)?;
                let dims = if flat {
                    vec![BATCH, (c * h * w) as i64]
                } else {
                    vec![BATCH, c as i64, h as i64, w as i64]
                };
                let rank = dims.len() as i64;
                let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
                let start = clamp(attr_int(node, "start").unwrap_or(0));
                let end = clamp(attr_int(node, "end").unwrap_or(rank));
                Ok(Value::Const(int_vector(dims[start..end.max(start)].to_vec())))
            }
            ("Shape", Value::Const(c)) => Ok(Value::Const(int_vector(c.dims.iter().map(|&d| d as i64).collect()))),
            ("Gather", Value::Const(data)) => {
                let data_ints = data.ints().filter(|_| data.dims.len() == 1);
                let index = self.constant(node, 1)?;
                let axis = attr_int(node, "axis").unwrap_or(0);
                match (
                    data_ints,
                    index.as_ref().and_then(|i| i.ints().map(|v| (v, i.dims.clone()))),
                ) {
                    (Some(d), Some((idx, dims))) if axis == 0 => {
                        let picked = idx
                            .iter()
                            .map(|&i| {
                                let k = if i < 0 { i + d.len() as i64 } else { i };
                                d.get(k as usize).copied().ok_or_else(|| {
                                    Error::config("onnx", format!("Gather index {i} of a {}-vector", d.len()))
                                })
                            })
                            .collect::<Result<Vec<_>>>()?;
                        Ok(Value::Const(Constant {
                            dims,
                            values: Values::I64(picked),
                        }))
                    }
                    _ => Err(Error::config(
                        "onnx",
                        "Gather is supported only on constant integer vectors (shape arithmetic)",
                    )),
                }
            }
            ("Unsqueeze" | "Squeeze", Value::Const(c)) if c.len() <= 1 || c.dims.len() <= 1 => {
                // A scalar becomes a 1-vector and back; the values do not move.
                let dims = if op == "Unsqueeze" { vec![c.len()] } else { vec![] };
                Ok(Value::Const(Constant {
                    dims: if op == "Squeeze" && c.len() != 1 {
                        c.dims.clone()
                    } else {
                        dims
                    },
                    values: c.values,
                }))
            }
            ("Cast", Value::Const(c)) => {
                let to = attr_int(node, "to").unwrap_or(0);
                let values = match to {
                    t if t == DataType::Float as i64 => Values::F32(c.floats()),
                    t if t == DataType::Int64 as i64 || t == DataType::Int32 as i64 => match &c.values {
                        Values::I64(v) => Values::I64(v.clone()),
                        Values::F32(v) => Values::I64(v.iter().map(|&x| x as i64).collect()),
                    },
                    _ => return Err(Error::config("onnx", format!("Cast to data type {to}"))),
                };
                Ok(Value::Const(Constant { dims: c.dims, values }))
            }
            ("Cast", v @ Value::Node { .. }) if attr_int(node, "to") == Some(DataType::Float as i64) => Ok(v),
            _ => Err(Error::config(
                "onnx",
                format!(
                    "{op} on a tensor computed from the images; it is supported only on constants (shape arithmetic)"
                ),
            )),
        }
    }
}

fn input_name(node: &NodeProto, k: usize) -> Result<&str> {
    node.input
        .get(k)
        .map(String::as_str)
        .filter(|i| !i.is_empty())
        .ok_or_else(|| Error::config("onnx", format!("missing input {k}")))
}

fn unsupported(node: &NodeProto, op: &str) -> Error {
    Error::config(
        "onnx",
        format!(
            "node {:?} is a {op}, which incept does not run; supported ops: {}",
            node.name.as_deref().unwrap_or(""),
            SUPPORTED_OPS.join(", ")
        ),
    )
}

fn attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    node.attribute.iter().find(|a| a.name.as_deref() == Some(name))
}

fn attr_int(node: &NodeProto, name: &str) -> Option<i64> {
    attr(node, name).and_then(|a| a.i)
}

fn attr_float(node: &NodeProto, name: &str) -> Option<f32> {
    attr(node, name).and_then(|a| a.f)
}

fn attr_ints<'n>(node: &'n NodeProto, name: &str) -> Option<&'n [i64]> {
    attr(node, name).map(|a| a.ints.as_slice())
}

fn attr_string(node: &NodeProto, name: &str) -> Option<String> {
    attr(node, name)
        .and_then(|a| a.s.as_ref())
        .map(|s| String::from_utf8_lossy(s).into_owned())
}

/// A 2-D attribute of positive sizes (strides, dilations), 1 where absent.
fn pair(node: &NodeProto, name: &str) -> Result<[usize; 2]> {
    match attr_ints(node, name) {
        None => Ok([1, 1]),
        Some(&[a, b]) if a > 0 && b > 0 => Ok([a as usize, b as usize]),
        Some(v) => Err(Error::config(
            "onnx",
            format!("{name} {v:?}: two positive sizes expected"),
        )),
    }
}

/// A window op's padding: `auto_pad`, or explicit `pads` (ONNX orders them top, left, bottom, right).
fn padding(node: &NodeProto, input: [usize; 2], kernel: [usize; 2], stride: [usize; 2]) -> Result<Padding> {
    let _ = (input, kernel, stride);
    match attr_string(node, "auto_pad").as_deref() {
        None | Some("NOTSET") | Some("") => {}
        Some("VALID") => return Ok(Padding::Valid),
        // TensorFlow's SAME: the odd pixel at the end, as ours.
        Some("SAME_UPPER") => return Ok(Padding::Same),
        Some(other) => {
            return Err(Error::config(
                "onnx",
                format!("auto_pad {other}; NOTSET, VALID and SAME_UPPER are supported"),
            ));
        }
    }
    match attr_ints(node, "pads") {
        None => Ok(Padding::Valid),
        Some(&[0, 0, 0, 0]) => Ok(Padding::Valid),
        Some(&[t, l, b, r]) if [t, l, b, r].iter().all(|&v| v >= 0) => {
            Ok(Padding::explicit(t as usize, b as usize, l as usize, r as usize))
        }
        Some(p) => Err(Error::config(
            "onnx",
            format!("pads {p:?}: four non-negative sizes expected"),
        )),
    }
}

fn describe_dims(dims: &[Option<usize>]) -> String {
    let d: Vec<String> = dims.iter().map(|d| d.map_or("?".into(), |v| v.to_string())).collect();
    format!("[{}]", d.join(", "))
}
