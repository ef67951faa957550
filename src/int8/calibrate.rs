//! Calibration: the range of every node's float32 values over calibration images, from which each
//! node's u8 parameters are chosen ([`super::QuantParams::from_range`]).
//!
//! Two methods. [`CalibrationMethod::MinMax`] takes the smallest and largest value seen (ONNX Runtime's
//! default). [`CalibrationMethod::Percentile`] clips the range to a percentile of the values seen (a
//! second pass fills a 2048-bin histogram of each node over its min-max range), so a few outliers do not
//! stretch the step of every other value.

use crate::error::{Error, Result};
use crate::graph::{Executor, Mode};
use crate::tensor::Images;

/// How calibration chooses a node's range from the values it saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CalibrationMethod {
    /// The smallest and largest value.
    MinMax,
    /// The values between the `(100 - p)`-th and the `p`-th percentile (`p` in (50, 100]).
    Percentile(f32),
}

impl std::fmt::Display for CalibrationMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CalibrationMethod::MinMax => write!(f, "minmax"),
            CalibrationMethod::Percentile(p) => write!(f, "percentile-{p}"),
        }
    }
}

impl std::str::FromStr for CalibrationMethod {
    type Err = Error;

    fn from_str(s: &str) -> Result<CalibrationMethod> {
        if s == "minmax" {
            return Ok(CalibrationMethod::MinMax);
        }
        let p = s.strip_prefix("percentile-").and_then(|p| p.parse::<f32>().ok());
        match p {
            Some(p) if p > 50.0 && p <= 100.0 => Ok(CalibrationMethod::Percentile(p)),
            _ => Err(Error::config(
                "calibration",
                format!("expected minmax or percentile-P with 50 < P <= 100 (e.g. percentile-99.99), found {s}"),
            )),
        }
    }
}

/// The calibration a quantized network was made with: the method and how many images it saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// The method.
    pub method: CalibrationMethod,
    /// Images run through the float32 network.
    pub images: usize,
}

/// Each node's range of values, `None` for a node calibration did not see.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ranges(pub Vec<Option<(f32, f32)>>);

const BINS: usize = 2048;

impl Ranges {
    /// Node `id`'s range.
    pub fn get(&self, id: usize) -> Option<(f32, f32)> {
        self.0.get(id).copied().flatten()
    }

    /// Runs `images` (NCHW float32, the network's input as given) through `executor`'s float32 network in
    /// eval mode, in batches of its capacity, and records every node's range by `method`. A NaN or
    /// infinite value is an error naming the node.
    pub fn measure(executor: &mut Executor, images: &[f32], method: CalibrationMethod) -> Result<Ranges> {
        let graph = executor.graph().clone();
        let per_image = graph.nodes[0].image_len();
        if per_image == 0 || images.len() % per_image != 0 || images.is_empty() {
            return Err(Error::shape(
                "calibration images",
                format!("one or more images of {per_image} values"),
                format!("{} values", images.len()),
            ));
        }
        let batch = executor.capacity().max(1) * per_image;
        let nodes = graph.nodes.len();
        let mut ranges = vec![(f32::INFINITY, f32::NEG_INFINITY); nodes];
        for chunk in images.chunks(batch) {
            executor.forward(Images::dense(chunk, chunk.len() / per_image, per_image), Mode::Eval)?;
            for (id, range) in ranges.iter_mut().enumerate() {
                let values = executor.node_output(id);
                for n in 0..values.count() {
                    for &v in values.get(n) {
                        if !v.is_finite() {
                            return Err(Error::config(
                                "calibration",
                                format!("node {} produced {v} on a calibration image", graph.nodes[id].name),
                            ));
                        }
                        *range = (range.0.min(v), range.1.max(v));
                    }
                }
            }
        }
        let CalibrationMethod::Percentile(p) = method else {
            return Ok(Ranges(ranges.into_iter().map(Some).collect()));
        };
        let mut histograms = vec![[0u64; BINS]; nodes];
        for chunk in images.chunks(batch) {
            executor.forward(Images::dense(chunk, chunk.len() / per_image, per_image), Mode::Eval)?;
            for (id, histogram) in histograms.iter_mut().enumerate() {
                let (min, max) = ranges[id];
                let width = (max - min) / BINS as f32;
                let values = executor.node_output(id);
                for n in 0..values.count() {
                    for &v in values.get(n) {
                        let bin = if width > 0.0 { ((v - min) / width) as usize } else { 0 };
                        histogram[bin.min(BINS - 1)] += 1;
                    }
                }
            }
        }
        let clipped = ranges
            .iter()
            .zip(&histograms)
            .map(|(&(min, max), histogram)| {
                let total: u64 = histogram.iter().sum();
                let width = (max - min) / BINS as f32;
                let tail = ((1.0 - f64::from(p) / 100.0) * total as f64).floor() as u64;
                // The lowest bin edge with more than `tail` values below it, and the highest with more
                // than `tail` above.
                let (mut below, mut low) = (0u64, 0);
                while low < BINS && below + histogram[low] <= tail {
                    below += histogram[low];
                    low += 1;
                }
                let (mut above, mut high) = (0u64, BINS);
                while high > 0 && above + histogram[high - 1] <= tail {
                    above += histogram[high - 1];
                    high -= 1;
                }
                Some((min + low as f32 * width, min + high as f32 * width))
            })
            .collect();
        Ok(Ranges(clipped))
    }
}
