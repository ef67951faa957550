//! The int8 checkpoint: a safetensors file holding what the integer network runs on, so loading it
//! quantizes nothing. Each convolution's weights are signed bytes under their state_dict name
//! (`[out, in, kh, kw]`, a batch norm folded in), with `<node>.weight_scale` (float32 per output
//! channel) and `<node>.bias_int32` (the bias at the product scale `x_scale · w_scale`); every
//! calibrated node has `<node>.activation_scale` (float32) and `<node>.activation_zero_point` (u8); the
//! classifier keeps its float32 weights. The metadata records the float checkpoint's (model, input size,
//! classes, normalization, class names) and `precision = int8`, the calibration method and its image
//! count.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::network::Source;
use super::{QConv, QuantParams, QuantizedNetwork, QuantizedWeights};
use crate::error::{Error, Result};
use crate::graph::{Graph, Layer, NodeId};
use crate::ops::conv::ConvGeometry;

/// The metadata entry that marks an int8 checkpoint.
pub const PRECISION_KEY: &str = "precision";

/// Whether `metadata` (a safetensors file's) is an int8 checkpoint's.
pub fn is_int8(metadata: &HashMap<String, String>) -> bool {
    metadata.get(PRECISION_KEY).is_some_and(|p| p == "int8")
}

/// One tensor to write: name, dtype, shape, little-endian bytes.
type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

impl QuantizedNetwork {
    /// Writes this network to `path` with `metadata` (to which `precision = int8` is added), atomically.
    pub fn save(&self, path: &Path, metadata: &HashMap<String, String>) -> Result<()> {
        let graph = self.graph();
        let mut entries: Vec<Entry> = Vec::new();
        let floats = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        for (id, step) in self.steps().iter().enumerate() {
            let node = &graph.nodes[id];
            match (step, &node.layer) {
                (super::Step::Conv(conv), Layer::Conv { weight, .. }) => {
                    let spec = &graph.params[*weight];
                    let q = conv.weights();
                    let bytes = q.values.iter().map(|&v| v as u8).collect();
                    entries.push((spec.name.clone(), Dtype::I8, spec.shape.clone(), bytes));
                    let outputs = vec![q.scales.len()];
                    entries.push((
                        format!("{}.weight_scale", node.name),
                        Dtype::F32,
                        outputs.clone(),
                        floats(&q.scales),
                    ));
                    let bias = conv.product_bias().iter().flat_map(|b| b.to_le_bytes()).collect();
                    entries.push((format!("{}.bias_int32", node.name), Dtype::I32, outputs, bias));
                }
                (
                    super::Step::Linear { weight, bias },
                    Layer::Linear {
                        weight: w_id,
                        bias: b_id,
                        ..
                    },
                ) => {
                    let spec = &graph.params[*w_id];
                    entries.push((spec.name.clone(), Dtype::F32, spec.shape.clone(), floats(weight)));
                    if let (Some(b), Some(b_id)) = (bias, b_id) {
                        let spec = &graph.params[*b_id];
                        entries.push((spec.name.clone(), Dtype::F32, spec.shape.clone(), floats(b)));
                    }
                }
                _ => {}
            }
        }
        for (&id, params) in self.chosen_params() {
            let name = &graph.nodes[id].name;
            entries.push((
                format!("{name}.activation_scale"),
                Dtype::F32,
                vec![1],
                floats(&[params.scale]),
            ));
            entries.push((
                format!("{name}.activation_zero_point"),
                Dtype::U8,
                vec![1],
                vec![params.zero_point],
            ));
        }
        let views = entries
            .iter()
            .map(|(name, dtype, shape, bytes)| TensorView::new(*dtype, shape.clone(), bytes).map(|v| (name.clone(), v)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::file(path.display(), e))?;
        let mut metadata = metadata.clone();
        metadata.insert(PRECISION_KEY.to_string(), "int8".to_string());
        let tmp = path.with_extension("safetensors.tmp");
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::file(dir.display(), e))?;
        }
        safetensors::serialize_to_file(views, Some(metadata), &tmp).map_err(|e| Error::file(tmp.display(), e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::file(path.display(), e))
    }

    /// Reads the int8 checkpoint `bytes` (the file at `path`, for errors) for `graph`, which must be the
    /// graph its metadata names. Every tensor is checked for its dtype and shape before it is used.
    pub fn from_checkpoint(graph: &Graph, bytes: &[u8], path: &Path) -> Result<QuantizedNetwork> {
        let file = SafeTensors::deserialize(bytes).map_err(|e| {
            Error::file(
                path.display(),
                format!("a safetensors file, but it is corrupt or truncated: {e}"),
            )
        })?;
        QuantizedNetwork::compile(graph, &FromFile { graph, file, path })
    }
}

/// An int8 checkpoint being read.
struct FromFile<'a> {
    graph: &'a Graph,
    file: SafeTensors<'a>,
    path: &'a Path,
}

impl FromFile<'_> {
    /// Tensor `name`'s bytes, checked to be `dtype` of `shape`.
    fn tensor(&self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<&[u8]> {
        let view = self
            .file
            .tensor(name)
            .map_err(|_| Error::file(self.path.display(), format!("an int8 checkpoint without tensor {name}")))?;
        if view.dtype() != dtype || view.shape() != shape {
            return Err(Error::file(
                self.path.display(),
                format!(
                    "tensor {name}: expected {dtype:?} {shape:?}, found {:?} {:?}",
                    view.dtype(),
                    view.shape()
                ),
            ));
        }
        Ok(view.data())
    }

    fn floats(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let bytes = self.tensor(name, Dtype::F32, shape)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

impl Source for FromFile<'_> {
    fn params(&self, id: NodeId) -> Result<QuantParams> {
        let name = &self.graph.nodes[id].name;
        let scale = self.floats(&format!("{name}.activation_scale"), &[1])?[0];
        let zero_point = self.tensor(&format!("{name}.activation_zero_point"), Dtype::U8, &[1])?[0];
        if !(scale > 0.0 && scale.is_finite()) {
            return Err(Error::file(
                self.path.display(),
                format!("{name}.activation_scale: expected a positive finite scale, found {scale}"),
            ));
        }
        Ok(QuantParams { scale, zero_point })
    }

    fn conv(
        &self,
        id: NodeId,
        _fold: Option<NodeId>,
        g: &ConvGeometry,
        relu: bool,
        (x, y): (QuantParams, QuantParams),
    ) -> Result<QConv> {
        let node = &self.graph.nodes[id];
        let Layer::Conv { weight, .. } = &node.layer else {
            unreachable!("node {id} is a convolution")
        };
        let spec = &self.graph.params[*weight];
        let values = self
            .tensor(&spec.name, Dtype::I8, &spec.shape)?
            .iter()
            .map(|&b| b as i8)
            .collect();
        let outputs = [g.out_channels];
        let scales = self.floats(&format!("{}.weight_scale", node.name), &outputs)?;
        let bias = self
            .tensor(&format!("{}.bias_int32", node.name), Dtype::I32, &outputs)?
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(bad) = scales.iter().find(|s| !(**s > 0.0 && s.is_finite())) {
            return Err(Error::file(
                self.path.display(),
                format!(
                    "{}.weight_scale: expected positive finite scales, found {bad}",
                    node.name
                ),
            ));
        }
        Ok(QConv::from_quantized(
            g,
            QuantizedWeights { values, scales },
            bias,
            relu,
            x,
            y,
        ))
    }

    fn linear(&self, id: NodeId) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let Layer::Linear { weight, bias, .. } = &self.graph.nodes[id].layer else {
            unreachable!("node {id} is a linear layer")
        };
        let spec = &self.graph.params[*weight];
        let w = self.floats(&spec.name, &spec.shape)?;
        let b = bias
            .map(|b| {
                let spec = &self.graph.params[b];
                self.floats(&spec.name, &spec.shape)
            })
            .transpose()?;
        Ok((w, b))
    }
}

/// An int8 checkpoint read from disk: the network, and the metadata it records.
#[derive(Debug, Clone)]
pub struct Int8Checkpoint {
    /// The model's name.
    pub model: String,
    /// Its configuration (input channels and size, classes; no auxiliary heads).
    pub config: crate::models::ModelConfig,
    /// The network.
    pub network: QuantizedNetwork,
    /// The file's metadata.
    pub metadata: HashMap<String, String>,
}

impl Int8Checkpoint {
    /// Reads the int8 checkpoint at `path`: the model and its configuration from the metadata, every
    /// tensor checked against that model's graph.
    pub fn read(path: &Path) -> Result<Int8Checkpoint> {
        let bytes = std::fs::read(path).map_err(|e| Error::file(path.display(), e))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| {
            Error::file(
                path.display(),
                format!("a safetensors file, but it is corrupt or truncated: {e}"),
            )
        })?;
        let metadata = header.metadata().clone().unwrap_or_default();
        if !is_int8(&metadata) {
            return Err(Error::file(
                path.display(),
                "expected an int8 checkpoint (metadata precision = int8)",
            ));
        }
        let entry = |key: &str| {
            metadata
                .get(key)
                .ok_or_else(|| Error::file(path.display(), format!("an int8 checkpoint without metadata {key}")))
        };
        let number = |key: &str| -> Result<usize> {
            let raw = entry(key)?;
            raw.parse()
                .map_err(|_| Error::file(path.display(), format!("metadata {key}: cannot parse {raw:?}")))
        };
        let model = entry("model")?.clone();
        let mut config = crate::models::default_config(&model)?;
        config.in_channels = number("in_channels")?;
        config.classes = number("classes")?;
        config.size = [number("height")?, number("width")?];
        config.aux_heads = false;
        let graph = crate::models::build(&model, config)?;
        let network = QuantizedNetwork::from_checkpoint(&graph, &bytes, path)?;
        Ok(Int8Checkpoint {
            model,
            config,
            network,
            metadata,
        })
    }
}
