//! Safetensors checkpoints. Weights are stored under their PyTorch state_dict names, so a file saved
//! from PyTorch (`safetensors.torch.save_file(model.state_dict(), path)`) loads directly and incept's
//! checkpoints load into PyTorch. Optimizer state is stored as `optimizer.<slot>.<param name>`, and the
//! training position and settings in the metadata. Files are written to `<path>.tmp` and renamed, so a
//! crash never leaves a half-written checkpoint in place.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::data::transforms::Normalization;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::optim::Optimizer;

/// Tensors and metadata read from a safetensors file.
#[derive(Debug, Clone, Default)]
pub struct TensorFile {
    /// Name -> (shape, values).
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// The file's metadata.
    pub metadata: HashMap<String, String>,
}

const OPTIMIZER_PREFIX: &str = "optimizer.";

/// What an incept checkpoint records about its model and inputs, so `eval`, `predict` and `--resume`
/// need no flags to repeat it (every field is `None` for weights saved by PyTorch).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// The model name.
    pub model: Option<String>,
    /// Input channels.
    pub in_channels: Option<usize>,
    /// Input height and width.
    pub size: Option<[usize; 2]>,
    /// Whether the run normalized its inputs (the statistics are in the `normalization` entry).
    pub normalized: bool,
}

impl Recorded {
    /// Reads the entries of `metadata` (from the file at `path`, for errors).
    pub fn from_metadata(metadata: &HashMap<String, String>, path: &Path) -> Result<Recorded> {
        let number = |key: &str| -> Result<Option<usize>> {
            metadata
                .get(key)
                .map(|raw| {
                    raw.parse()
                        .map_err(|_| Error::file(path.display(), format!("metadata {key}: cannot parse {raw:?}")))
                })
                .transpose()
        };
        let size = match (number("height")?, number("width")?) {
            (Some(h), Some(w)) => Some([h, w]),
            _ => None,
        };
        Ok(Recorded {
            model: metadata.get("model").cloned(),
            in_channels: number("in_channels")?,
            size,
            normalized: metadata.contains_key("normalization"),
        })
    }

    /// Reads only what the checkpoint at `path` records.
    pub fn read(path: &Path) -> Result<Recorded> {
        Recorded::from_metadata(&TensorFile::read_metadata(path)?, path)
    }
}

/// The entries every incept checkpoint records about its model: the format, the model's name, input
/// channels, classes and input size (what [`Recorded`] reads back).
pub fn model_metadata(model: &str, config: &crate::models::ModelConfig) -> Vec<(String, String)> {
    [
        ("format", "incept-checkpoint-1".to_string()),
        ("model", model.to_string()),
        ("in_channels", config.in_channels.to_string()),
        ("classes", config.classes.to_string()),
        ("height", config.size[0].to_string()),
        ("width", config.size[1].to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// An input height and width, shown as `HxW`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputSize(pub [usize; 2]);

impl std::fmt::Display for InputSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.0[0], self.0[1])
    }
}

/// One setting from a flag, from a checkpoint, or a default: the flag and the checkpoint must agree
/// (an error names both values), the checkpoint's value wins over the default.
pub fn resolve<T: PartialEq + std::fmt::Display>(
    what: &str,
    flag: Option<T>,
    recorded: Option<T>,
    checkpoint: &Path,
    default: impl FnOnce() -> Result<T>,
) -> Result<T> {
    match (flag, recorded) {
        (Some(f), Some(r)) if f != r => Err(Error::config(
            what,
            format!(
                "{} was written with {what} {r}, the command line asks for {f}; drop the flag to use the checkpoint's",
                checkpoint.display()
            ),
        )),
        (Some(f), _) => Ok(f),
        (None, Some(r)) => Ok(r),
        (None, None) => default(),
    }
}

impl TensorFile {
    /// Reads `path`, accepting float32 tensors (and PyTorch's int64 `num_batches_tracked`, skipped).
    pub fn read(path: &Path) -> Result<TensorFile> {
        let bytes = std::fs::read(path).map_err(|e| Error::file(path.display(), e))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            Error::file(
                path.display(),
                format!("a safetensors file, but it is corrupt or truncated: {e}"),
            )
        })?;
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| Error::file(path.display(), e))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            if name.ends_with("num_batches_tracked") {
                continue;
            }
            if view.dtype() != Dtype::F32 {
                return Err(Error::file(
                    path.display(),
                    format!("tensor {name}: expected dtype F32, found {:?}", view.dtype()),
                ));
            }
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            tensors.insert(name, (view.shape().to_vec(), values));
        }
        Ok(TensorFile {
            tensors,
            metadata: meta.metadata().clone().unwrap_or_default(),
        })
    }

    /// Only the metadata of the safetensors file at `path`: its header is read, its tensors are not (a
    /// resumed run reads the whole file once more when it loads them, which checks them).
    pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
        use std::io::Read;
        /// The part of a safetensors header that is not a tensor's entry.
        #[derive(serde::Deserialize)]
        struct Header {
            #[serde(rename = "__metadata__", default)]
            metadata: HashMap<String, String>,
        }
        let corrupt = |what: String| Error::file(path.display(), format!("a safetensors file, but {what}"));
        let mut file = std::fs::File::open(path).map_err(|e| Error::file(path.display(), e))?;
        let size = file.metadata().map_err(|e| Error::file(path.display(), e))?.len();
        let mut len = [0u8; 8];
        file.read_exact(&mut len)
            .map_err(|_| corrupt(format!("it has {size} bytes, fewer than the 8 of its header length")))?;
        let len = u64::from_le_bytes(len);
        if len > size.saturating_sub(8) {
            return Err(corrupt(format!(
                "its header claims {len} bytes and the file has {} after the length",
                size.saturating_sub(8)
            )));
        }
        let mut header = vec![0u8; len as usize];
        file.read_exact(&mut header)
            .map_err(|e| Error::file(path.display(), e))?;
        let header: Header =
            serde_json::from_slice(&header).map_err(|e| corrupt(format!("its header is not valid JSON: {e}")))?;
        Ok(header.metadata)
    }

    /// What the file records about the run that wrote it (incept's checkpoints do; a PyTorch state_dict
    /// records nothing).
    pub fn recorded(&self, path: &Path) -> Result<Recorded> {
        Recorded::from_metadata(&self.metadata, path)
    }

    /// The parameters of `graph` from this file, in graph order. Every missing, unexpected and misshaped
    /// tensor is listed in one error.
    pub fn params_for(&self, graph: &Graph, path: &Path) -> Result<Vec<Vec<f32>>> {
        self.params_or_fresh(graph, path, &[], Vec::new())
            .map(|(params, _)| params)
    }

    /// [`TensorFile::params_for`], except that the parameters under `optional` name prefixes (a
    /// model's auxiliary heads) keep their values in `fresh` (one vector per parameter) when the file
    /// has none under that prefix. Also returns the prefixes so kept.
    pub fn params_or_fresh<'p>(
        &self,
        graph: &Graph,
        path: &Path,
        optional: &[&'p str],
        mut fresh: Vec<Vec<f32>>,
    ) -> Result<(Vec<Vec<f32>>, Vec<&'p str>)> {
        let absent: Vec<&str> = optional
            .iter()
            .copied()
            .filter(|prefix| graph.params.iter().any(|p| p.name.starts_with(prefix)))
            .filter(|prefix| !self.tensors.keys().any(|k| k.starts_with(prefix)))
            .collect();
        let kept_fresh = |name: &str| absent.iter().any(|prefix| name.starts_with(prefix));
        self.check_fit(graph, path, kept_fresh)?;
        let params = graph
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| match kept_fresh(&p.name) {
                true => std::mem::take(&mut fresh[i]),
                false => self.tensors[&p.name].1.clone(),
            })
            .collect();
        Ok((params, absent))
    }

    /// Whether this file holds exactly `graph`'s parameters, in their shapes (the error of
    /// [`TensorFile::params_for`] when not), without copying any.
    pub fn fits(&self, graph: &Graph, path: &Path) -> Result<()> {
        self.check_fit(graph, path, |_| false)
    }

    /// Every missing, unexpected and misshaped tensor in one error, leaving out the parameters
    /// `kept_fresh` accepts as absent.
    fn check_fit(&self, graph: &Graph, path: &Path, kept_fresh: impl Fn(&str) -> bool) -> Result<()> {
        let mut problems = Vec::new();
        for spec in graph.params.iter().filter(|p| !kept_fresh(&p.name)) {
            match self.tensors.get(&spec.name) {
                None => problems.push(format!("missing {} {:?}", spec.name, spec.shape)),
                Some((shape, _)) if *shape != spec.shape => problems.push(format!(
                    "misshaped {}: expected {:?}, found {:?}",
                    spec.name, spec.shape, shape
                )),
                Some(_) => {}
            }
        }
        for name in self.tensors.keys() {
            if !name.starts_with(OPTIMIZER_PREFIX) && !graph.params.iter().any(|p| &p.name == name) {
                problems.push(format!("unexpected {name}"));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        // The first few by kind, then counts: a wrong model's mismatch can list hundreds.
        const SHOWN: usize = 10;
        let count = |kind: &str| problems.iter().filter(|p| p.starts_with(kind)).count();
        let summary = format!(
            "{} missing, {} misshaped, {} unexpected",
            count("missing"),
            count("misshaped"),
            count("unexpected")
        );
        let more = problems.len().saturating_sub(SHOWN);
        let mut shown = problems[..problems.len().min(SHOWN)].join("; ");
        if more > 0 {
            shown.push_str(&format!("; and {more} more"));
        }
        Err(Error::file(
            path.display(),
            format!("weights do not fit the model ({summary}): {shown}"),
        ))
    }

    /// The input normalization the run that wrote this file recorded (`None`: it recorded none).
    pub fn normalization(&self, path: &Path) -> Result<Option<Normalization>> {
        self.metadata
            .get("normalization")
            .map(|text| Normalization::from_metadata(text).map_err(|e| Error::file(path.display(), e)))
            .transpose()
    }

    /// The optimizer state saved for `graph`'s parameters, as `(slot, one vector per parameter)`.
    pub fn optimizer_slots(&self, graph: &Graph, slots: &[&str], path: &Path) -> Result<Vec<(String, Vec<Vec<f32>>)>> {
        slots
            .iter()
            .map(|slot| {
                let values = graph
                    .params
                    .iter()
                    .map(|p| {
                        let key = format!("{OPTIMIZER_PREFIX}{slot}.{}", p.name);
                        match self.tensors.get(&key) {
                            Some((shape, v)) if *shape == p.shape => Ok(v.clone()),
                            Some((shape, _)) => Err(Error::file(
                                path.display(),
                                format!("{key}: expected shape {:?}, found {shape:?}", p.shape),
                            )),
                            None => Err(Error::file(path.display(), format!("optimizer state {key} is missing"))),
                        }
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((slot.to_string(), values))
            })
            .collect()
    }

    /// A metadata value parsed as `T`, or an error naming the key.
    pub fn meta<T: std::str::FromStr>(&self, key: &str, path: &Path) -> Result<T> {
        let raw = self
            .metadata
            .get(key)
            .ok_or_else(|| Error::file(path.display(), format!("metadata {key} is missing")))?;
        raw.parse()
            .map_err(|_| Error::file(path.display(), format!("metadata {key}: cannot parse {raw:?}")))
    }
}

/// Writes weights (and optionally optimizer state) with `metadata`, atomically.
pub fn save(
    path: &Path,
    graph: &Graph,
    params: &[Vec<f32>],
    optimizer: Option<&Optimizer>,
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let mut named: Vec<(String, Vec<usize>, &[f32])> = graph
        .params
        .iter()
        .zip(params)
        .map(|(spec, v)| (spec.name.clone(), spec.shape.clone(), v.as_slice()))
        .collect();
    if let Some(opt) = optimizer {
        for (slot, values) in opt.slots() {
            for (spec, v) in graph.params.iter().zip(values) {
                named.push((
                    format!("{OPTIMIZER_PREFIX}{slot}.{}", spec.name),
                    spec.shape.clone(),
                    v.as_slice(),
                ));
            }
        }
    }
    let views = named
        .iter()
        .map(|(name, shape, values)| {
            let bytes: &[u8] = bytes_of(values);
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (name.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::file(path.display(), e))?;
    let tmp = path.with_extension("safetensors.tmp");
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir.display(), e))?;
    }
    safetensors::serialize_to_file(views, Some(metadata.clone()), &tmp).map_err(|e| Error::file(tmp.display(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path.display(), e))
}

/// The little-endian bytes of an f32 slice.
fn bytes_of(values: &[f32]) -> &[u8] {
    const {
        assert!(
            cfg!(target_endian = "little"),
            "checkpoints are written on little-endian machines"
        )
    };
    // SAFETY: f32 has no padding or invalid bit patterns, u8 has alignment 1, and the length covers
    // exactly the same memory; on little-endian targets (asserted above) these are safetensors' bytes.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values)) }
}
