//! `generate_family.py`'s hashed weights, which the fixtures' PyTorch side computes too.

/// `generate_family.py`'s `splitmix_uniform`: `n` values in [0, 1) from splitmix64 of (tensor number `p`,
/// flat index), 24 bits each.
pub fn splitmix_uniform(p: usize, n: usize) -> impl Iterator<Item = f64> {
    (0..n as u64).map(move |i| {
        let mut z = i.wrapping_add((p as u64) << 40).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f64 / (1u64 << 24) as f64
    })
}

/// `generate_family.py`'s `hashed_weights` for every parameter of `graph`: He-uniform weights, batch-norm
/// scales in [0.5, 1.5), running variances in [1, 1.5), biases, shifts and running means in ±0.05.
pub fn hashed_params(graph: &incept::graph::Graph) -> Vec<Vec<f32>> {
    graph
        .params
        .iter()
        .enumerate()
        .map(|(p, spec)| hashed_tensor(p, &spec.name, &spec.shape))
        .collect()
}

/// `generate_family.py`'s `hashed_weights(p, name, shape)`: tensor number `p` of a state_dict.
pub fn hashed_tensor(p: usize, name: &str, shape: &[usize]) -> Vec<f32> {
    let u = splitmix_uniform(p, shape.iter().product());
    let values: Vec<f64> = if shape.len() > 1 {
        let bound = (6.0 / shape[1..].iter().product::<usize>() as f64).sqrt();
        u.map(|u| (2.0 * u - 1.0) * bound).collect()
    } else if name.ends_with("running_var") {
        u.map(|u| 1.0 + 0.5 * u).collect()
    } else if name.ends_with(".weight") {
        u.map(|u| 0.5 + u).collect()
    } else {
        u.map(|u| 0.05 * (2.0 * u - 1.0)).collect()
    };
    values.into_iter().map(|v| v as f32).collect()
}
