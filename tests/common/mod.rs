//! Helpers shared by the integration tests: seeded random tensors, error measures, and a central-difference
//! gradient checker.
#![allow(dead_code)]

pub mod bf16_tile;
pub mod checks;
pub mod cli;
pub mod fixture;
mod hashed;
pub mod loss_curve;
pub mod onnx_models;
pub mod parity;

#[allow(unused_imports)]
pub use hashed::{hashed_params, hashed_tensor, splitmix_uniform};
#[allow(unused_imports)]
pub use onnx_models::{ONNX_MODELS, onnx_input, onnx_int8_model, onnx_model};

use incept::ndarray::{Array, Array4, Dimension};

/// A seeded array of values uniform in `[-1, 1)`.
pub fn random<D: Dimension>(shape: D, seed: u64) -> Array<f32, D> {
    let mut rng = fastrand::Rng::with_seed(seed);
    Array::from_shape_simple_fn(shape, || rng.f32() * 2.0 - 1.0)
}

/// A seeded 4-D array with values uniform in `[-1, 1)`.
pub fn random4(shape: [usize; 4], seed: u64) -> Array4<f32> {
    random(incept::ndarray::Dim(shape), seed)
}

/// `max |a - b| / max(max |b|, floor)`: the worst error relative to the scale of the expected values.
pub fn max_rel_error(found: &[f32], expected: &[f32], floor: f64) -> f64 {
    assert_eq!(found.len(), expected.len(), "compared slices differ in length");
    let scale = expected.iter().fold(floor, |m, &v| m.max((v as f64).abs()));
    let worst = found
        .iter()
        .zip(expected)
        .fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
    worst / scale
}

/// Names of `graph`'s parameters whose values in `a` and `b` differ in any bit.
pub fn differing_params(graph: &incept::graph::Graph, a: &[Vec<f32>], b: &[Vec<f32>]) -> Vec<String> {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    graph
        .params
        .iter()
        .zip(a.iter().zip(b))
        .filter(|(_, (a, b))| bits(a) != bits(b))
        .map(|(spec, _)| spec.name.clone())
        .collect()
}

/// `||a - b||₂ / ||b||₂`: relative L2 error.
pub fn rel_l2(found: &[f32], expected: &[f32]) -> f64 {
    assert_eq!(found.len(), expected.len(), "compared slices differ in length");
    let diff: f64 = found
        .iter()
        .zip(expected)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    let norm: f64 = expected.iter().map(|&b| (b as f64).powi(2)).sum();
    (diff / norm.max(1e-300)).sqrt()
}

/// `sum(y * r)` in f64: the scalar whose gradient with respect to `y` is `r`.
pub fn project(y: &[f32], r: &[f32]) -> f64 {
    y.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Central-difference gradient check of `analytic` = d loss / d `variable`.
///
/// Perturbs up to `max_probes` elements (all of them if there are fewer, else an evenly spread subset)
/// by `±h`, evaluates `loss` each time, and returns the worst error relative to the largest analytic
/// gradient magnitude. `variable` is restored afterwards.
pub fn grad_check(
    variable: &mut [f32],
    analytic: &[f32],
    h: f32,
    max_probes: usize,
    mut loss: impl FnMut(&[f32]) -> f64,
) -> f64 {
    let n = variable.len();
    let step = n.div_ceil(max_probes.max(1)).max(1);
    let scale = analytic.iter().fold(1e-6f64, |m, &g| m.max((g as f64).abs()));
    let mut worst = 0f64;
    for i in (0..n).step_by(step) {
        let original = variable[i];
        variable[i] = original + h;
        let plus = loss(variable);
        variable[i] = original - h;
        let minus = loss(variable);
        variable[i] = original;
        // The step actually taken, after f32 rounding of `original ± h`.
        let taken = ((original + h) as f64) - ((original - h) as f64);
        worst = worst.max(((plus - minus) / taken - analytic[i] as f64).abs() / scale);
    }
    worst
}

/// The outcome of [`grad_check_piecewise_linear`].
#[derive(Debug, Clone, Copy)]
pub struct GradCheck {
    /// Worst error relative to the largest analytic gradient magnitude.
    pub worst: f64,
    /// Probes compared.
    pub probes: usize,
    /// Of those, probes measured one-sided because the other side left the linear piece.
    pub one_sided: usize,
    /// Probes given up because both sides left the piece even at `h / 100`.
    pub skipped: usize,
}

/// [`grad_check`] for functions that are piecewise linear in each variable (convs, ReLUs, max pools):
/// `loss` returns `None` when the perturbed point lies on another linear piece than the unperturbed one
/// (a ReLU changed sign, a max changed place). On one piece any difference quotient is exact up to
/// rounding, so a probe with one side off the piece uses the other side alone; with both sides off it
/// retries at `h / 10` and `h / 100`, then is skipped and counted.
pub fn grad_check_piecewise_linear(
    variable: &mut [f32],
    analytic: &[f32],
    h: f32,
    max_probes: usize,
    mut loss: impl FnMut(&[f32]) -> Option<f64>,
) -> GradCheck {
    assert_eq!(variable.len(), analytic.len());
    let base = loss(variable).expect("the unperturbed point lies on its own piece");
    let n = variable.len();
    let step = n.div_ceil(max_probes.max(1)).max(1);
    let scale = analytic.iter().fold(1e-6f64, |m, &g| m.max((g as f64).abs()));
    let mut result = GradCheck {
        worst: 0.0,
        probes: 0,
        one_sided: 0,
        skipped: 0,
    };
    for i in (0..n).step_by(step) {
        let original = variable[i];
        let mut numeric = None;
        for h in [h, h / 10.0, h / 100.0] {
            let (up, down) = (original + h, original - h);
            variable[i] = up;
            let plus = loss(variable);
            variable[i] = down;
            let minus = loss(variable);
            variable[i] = original;
            // Steps as actually taken, after f32 rounding.
            let (up, down, at) = (up as f64, down as f64, original as f64);
            numeric = match (plus, minus) {
                (Some(p), Some(m)) => Some((p - m) / (up - down)),
                (Some(p), None) => Some((p - base) / (up - at)),
                (None, Some(m)) => Some((base - m) / (at - down)),
                (None, None) => continue,
            };
            if plus.is_none() || minus.is_none() {
                result.one_sided += 1;
            }
            break;
        }
        match numeric {
            Some(numeric) => {
                result.worst = result.worst.max((numeric - analytic[i] as f64).abs() / scale);
                result.probes += 1;
            }
            None => result.skipped += 1,
        }
    }
    result
}

/// Values in `[-1, 1)` whose pairwise gaps all exceed `gap`, so a perturbation of less than `gap / 2`
/// never changes which element of a pooling window is the largest, nor the sign at a ReLU.
pub fn well_separated(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut order: Vec<usize> = (0..len).collect();
    rng.shuffle(&mut order);
    // Spread over [-1, 1) and keep every value away from 0 as well.
    order
        .iter()
        .map(|&k| -1.0 + 2.0 * (k as f32 + 0.5) / len as f32)
        .collect()
}

/// The weights `fixtures/generate_googlenet.py` gives parameter tensor number `p` of the state_dict:
/// a Weyl sequence mapped to `±sqrt(6/fan_in)` (weights) or `±0.1` (biases), bit-identical to numpy's.
pub fn formula_weights(p: usize, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let scale = if shape.len() > 1 {
        (6.0 / shape[1..].iter().product::<usize>() as f64).sqrt()
    } else {
        0.1
    };
    let add = (p as u64) * 40503 + 12345;
    (0..n as u64)
        .map(|i| {
            let u = (i.wrapping_mul(2654435761).wrapping_add(add) % (1u64 << 32)) as f64 / 4294967296.0;
            ((2.0 * u - 1.0) * scale) as f32
        })
        .collect()
}

/// The parameters the fixture generators give a graph: [`formula_weights`] of each tensor's number, with
/// batch norm's scale and running variance moved to `1 + f` (`generate_family.py`; googlenet-d2l has
/// neither, so `generate_googlenet.py`'s plain formula is the same rule).
pub fn formula_params(graph: &incept::graph::Graph) -> Vec<Vec<f32>> {
    graph
        .params
        .iter()
        .enumerate()
        .map(|(p, spec)| {
            let values = formula_weights(p, &spec.shape);
            let one_plus =
                spec.name.ends_with("running_var") || (spec.name.ends_with(".weight") && spec.shape.len() == 1);
            if one_plus {
                values.iter().map(|v| 1.0 + v).collect()
            } else {
                values
            }
        })
        .collect()
}

/// The parameters a family fixture's generator used: [`hashed_params`] or [`formula_params`], as its
/// metadata `weights` says.
pub fn fixture_params(graph: &incept::graph::Graph, f: &fixture::Fixture) -> Vec<Vec<f32>> {
    match f.metadata_or("weights", "weyl") {
        "hashed" => hashed_params(graph),
        _ => formula_params(graph),
    }
}

/// Asserts that `graph`'s parameters are named and ordered as the fixture's PyTorch state_dict keys.
pub fn assert_state_dict_names(graph: &incept::graph::Graph, f: &fixture::Fixture, what: &str) {
    let names: Vec<&str> = f.metadata("param_names").split(',').collect();
    let ours: Vec<&str> = graph.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        ours, names,
        "{what}: parameter names and order must be PyTorch's state_dict keys"
    );
}

/// Writes the state_dict a fixture's `<key>/state_dict` manifest describes (keys, shapes and dtypes in
/// order) to `path` as torchvision / timm save it: float tensors [`hashed_tensor`] in order, int64
/// `num_batches_tracked` 0, no metadata.
pub fn write_state_dict(f: &fixture::Fixture, key: &str, path: &std::path::Path) {
    use safetensors::tensor::{Dtype, TensorView};
    let manifest: Vec<(String, Vec<usize>, String)> =
        serde_json::from_str(f.metadata(&format!("{key}/state_dict"))).unwrap();
    let mut float_index = 0;
    let data: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = manifest
        .into_iter()
        .map(|(name, shape, dtype)| match dtype.as_str() {
            "float32" => {
                let values = hashed_tensor(float_index, &name, &shape);
                float_index += 1;
                let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                (name, shape, Dtype::F32, bytes)
            }
            "int64" => (name, shape, Dtype::I64, 0i64.to_le_bytes().to_vec()),
            other => panic!("{name}: unexpected dtype {other}"),
        })
        .collect();
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(name, shape, dtype, bytes)| (name.clone(), TensorView::new(*dtype, shape.clone(), bytes).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None::<std::collections::HashMap<String, String>>, path).unwrap();
}

/// Largest |ours - reference| over the largest |reference|.
pub fn relative_to_largest(ours: &[f32], reference: &[f64]) -> f64 {
    let scale = reference.iter().fold(0f64, |m, &r| m.max(r.abs()));
    let diff = ours
        .iter()
        .zip(reference)
        .fold(0f64, |m, (&o, &r)| m.max((f64::from(o) - r).abs()));
    diff / scale
}

/// Writes float32 `data` of `shape` as a .npy file.
pub fn write_npy_f32(path: &std::path::Path, shape: &[usize], data: &[f32]) {
    use ndarray_npy::WriteNpyExt;
    let a = incept::ndarray::ArrayD::from_shape_vec(shape, data.to_vec()).unwrap();
    a.write_npy(std::fs::File::create(path).unwrap()).unwrap();
}

/// Writes int64 labels as a 1-D .npy file.
pub fn write_npy_i64(path: &std::path::Path, data: &[i64]) {
    use ndarray_npy::WriteNpyExt;
    let a = incept::ndarray::Array1::from_vec(data.to_vec());
    a.write_npy(std::fs::File::create(path).unwrap()).unwrap();
}

/// A fresh directory under the system temp dir, removed (with its contents) when dropped, so test
/// runs leave nothing behind.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// Creates `incept-<name>-<pid>`, emptying it if a crashed run left it behind.
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("incept-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
