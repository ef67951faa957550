//! Reads the PyTorch fixtures written by `fixtures/generate*.py`: tensors named `<case>/<name>` (or any
//! name), settings in the safetensors metadata under `<case>` as `key=value;key=value`.

use std::collections::{BTreeMap, HashMap};

use incept::ndarray::{ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensors};

pub struct Fixture {
    name: String,
    bytes: Vec<u8>,
    metadata: BTreeMap<String, String>,
}

impl Fixture {
    pub fn open(name: &str) -> Fixture {
        let path = format!("{}/fixtures/{name}.safetensors", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e} (run fixtures/generate*.py)"));
        let (_, metadata) = SafeTensors::read_metadata(&bytes).expect("fixture header");
        let metadata = metadata.metadata().clone().unwrap_or_default().into_iter().collect();
        Fixture {
            name: name.to_string(),
            bytes,
            metadata,
        }
    }

    /// A raw metadata entry.
    pub fn metadata(&self, key: &str) -> &str {
        self.metadata
            .get(key)
            .unwrap_or_else(|| panic!("{}: no metadata {key}", self.name))
    }

    /// A metadata entry, or `default` when the fixture has none.
    pub fn metadata_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.metadata.get(key).map_or(default, String::as_str)
    }

    /// Case names (metadata keys), sorted.
    pub fn cases(&self) -> Vec<String> {
        self.metadata.keys().cloned().collect()
    }

    fn setting(&self, case: &str, key: &str) -> String {
        let settings: HashMap<&str, &str> = self
            .metadata(case)
            .split(';')
            .filter_map(|p| p.split_once('='))
            .collect();
        let value = settings
            .get(key)
            .unwrap_or_else(|| panic!("{}: case {case} has no setting {key}", self.name));
        value.to_string()
    }

    pub fn usizes(&self, case: &str, key: &str) -> Vec<usize> {
        self.setting(case, key)
            .split(',')
            .map(|v| v.parse().expect("integer setting"))
            .collect()
    }

    pub fn pair(&self, case: &str, key: &str) -> [usize; 2] {
        self.usizes(case, key).try_into().expect("two values")
    }

    pub fn f32(&self, case: &str, key: &str) -> f32 {
        self.setting(case, key).parse().expect("float setting")
    }

    pub fn flag(&self, case: &str, key: &str) -> bool {
        self.setting(case, key) == "true"
    }

    pub fn text(&self, case: &str, key: &str) -> String {
        self.setting(case, key)
    }

    pub fn tensor(&self, case: &str, name: &str) -> ArrayD<f32> {
        self.named(&format!("{case}/{name}"))
    }

    /// A uint8 tensor by its full name, as its values and shape.
    pub fn bytes(&self, name: &str) -> (Vec<u8>, Vec<usize>) {
        let st = SafeTensors::deserialize(&self.bytes).expect("fixture body");
        let view = st.tensor(name).unwrap_or_else(|e| panic!("{}: {name}: {e}", self.name));
        assert_eq!(view.dtype(), Dtype::U8, "{name}");
        (view.data().to_vec(), view.shape().to_vec())
    }

    /// A float64 tensor by its full name, flattened.
    pub fn named_f64(&self, name: &str) -> Vec<f64> {
        let st = SafeTensors::deserialize(&self.bytes).expect("fixture body");
        let view = st.tensor(name).unwrap_or_else(|e| panic!("{}: {name}: {e}", self.name));
        assert_eq!(view.dtype(), Dtype::F64, "{name}");
        view.data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    /// A tensor by its full name.
    pub fn named(&self, name: &str) -> ArrayD<f32> {
        let st = SafeTensors::deserialize(&self.bytes).expect("fixture body");
        let view = st.tensor(name).unwrap_or_else(|e| panic!("{}: {name}: {e}", self.name));
        assert_eq!(view.dtype(), Dtype::F32, "{name}");
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        ArrayD::from_shape_vec(IxDyn(view.shape()), values).expect("shape matches data")
    }
}
