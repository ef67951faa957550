//! Initializers and constants: ONNX `TensorProto` to and from plain vectors.

use std::path::Path;

use super::proto::TensorProto;
use super::proto::tensor_proto::{DataLocation, DataType};
use crate::error::{Error, Result};

/// A constant's values: weights are float32, shapes and pads are integers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A constant tensor of the file: an initializer or the value of a `Constant` node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Constant {
    pub dims: Vec<usize>,
    pub values: Values,
}

impl Constant {
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }

    /// The values as float32 (integers convert), for weights and scalars.
    pub fn floats(&self) -> Vec<f32> {
        match &self.values {
            Values::F32(v) => v.clone(),
            Values::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// The values as integers, or `None` for a float tensor.
    pub fn ints(&self) -> Option<&[i64]> {
        match &self.values {
            Values::I64(v) => Some(v),
            Values::F32(_) => None,
        }
    }

    /// Reads `t` (of the model at `model_path`, whose directory holds any external data).
    pub fn from_proto(t: &TensorProto, model_path: &Path) -> Result<Constant> {
        let name = t.name.as_deref().unwrap_or("");
        let bad = |reason: String| Error::file(model_path.display(), format!("initializer {name:?}: {reason}"));
        let dims: Vec<usize> = t
            .dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| bad(format!("negative dimension in {:?}", t.dims))))
            .collect::<Result<_>>()?;
        let len: usize = dims.iter().product();
        let dtype = t.data_type.unwrap_or(0);
        let width = match DataType::try_from(dtype) {
            Ok(DataType::Float | DataType::Int32) => 4,
            Ok(DataType::Int64) => 8,
            other => {
                let found = other
                    .map(|d| d.as_str_name().to_string())
                    .unwrap_or_else(|_| dtype.to_string());
                return Err(bad(format!("expected FLOAT, INT64 or INT32 values, found {found}")));
            }
        };
        let external;
        let raw: Option<&[u8]> = if t.data_location == Some(DataLocation::External as i32) {
            external = read_external(t, model_path, len * width).map_err(bad)?;
            Some(&external)
        } else {
            t.raw_data.as_deref()
        };
        let values = match (DataType::try_from(dtype), raw) {
            (Ok(DataType::Float), Some(raw)) => Values::F32(
                raw.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            (Ok(DataType::Int64), Some(raw)) => Values::I64(
                raw.chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("chunks of 8")))
                    .collect(),
            ),
            (Ok(DataType::Int32), Some(raw)) => Values::I64(
                raw.chunks_exact(4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                    .collect(),
            ),
            (Ok(DataType::Float), None) => Values::F32(t.float_data.clone()),
            (Ok(DataType::Int64), None) => Values::I64(t.int64_data.clone()),
            (_, None) => Values::I64(t.int32_data.iter().map(|&x| x as i64).collect()),
            _ => unreachable!("the data type was checked above"),
        };
        let found = match &values {
            Values::F32(v) => v.len(),
            Values::I64(v) => v.len(),
        };
        if found != len || raw.is_some_and(|r| r.len() != len * width) {
            return Err(bad(format!(
                "shape {dims:?} needs {len} values, the file holds {}",
                raw.map_or(found, |r| r.len() / width)
            )));
        }
        Ok(Constant { dims, values })
    }
}

/// The bytes of an initializer stored outside the model (`location`, `offset`, `length` relative to the
/// model's directory), which must hold `expected` bytes.
fn read_external(t: &TensorProto, model_path: &Path, expected: usize) -> std::result::Result<Vec<u8>, String> {
    use std::io::{Read, Seek, SeekFrom};
    let entry = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key.as_deref() == Some(key))
            .and_then(|e| e.value.clone())
    };
    let location = entry("location").ok_or("stored as external data with no location")?;
    let number = |key: &str| -> std::result::Result<Option<u64>, String> {
        entry(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("external data {key} {v:?} is not a number"))
            })
            .transpose()
    };
    let offset = number("offset")?.unwrap_or(0);
    let length = number("length")?.unwrap_or(expected as u64);
    if length != expected as u64 {
        return Err(format!("external data of {length} bytes, its shape needs {expected}"));
    }
    let dir = model_path.parent().unwrap_or(Path::new("."));
    let file_path = dir.join(&location);
    let mut file = std::fs::File::open(&file_path)
        .map_err(|e| format!("its external data file {} cannot be read: {e}", file_path.display()))?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    if offset + length > size {
        return Err(format!(
            "external data at bytes {offset}..{} of {}, which has {size}",
            offset + length,
            file_path.display()
        ));
    }
    let mut bytes = vec![0; expected];
    file.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
    file.read_exact(&mut bytes).map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// A float32 initializer named `name`.
pub(crate) fn f32_tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(DataType::Float as i32),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// An initializer of `dtype` from its little-endian bytes (int8 weights, uint8 zero points, int32 biases).
pub(crate) fn raw_tensor(name: &str, dims: &[usize], dtype: DataType, bytes: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(dtype as i32),
        raw_data: Some(bytes),
        ..Default::default()
    }
}

/// An int64 initializer named `name` (pads, shapes).
pub(crate) fn i64_tensor(name: &str, dims: &[usize], values: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(DataType::Int64 as i32),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}
