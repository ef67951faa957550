//! Bilinear resizing as torchvision's `Resize` followed by `ToTensor`: half-pixel centres
//! (`align_corners=False`), edge pixels clamped; when shrinking, PIL's antialiasing (the triangle
//! filter widened to the shrink factor, so every source pixel counts). Byte images (IDX, CIFAR) go
//! through PIL's own fixed-point arithmetic ([`super::resample`]), as the PIL path of torchvision does,
//! so their bytes are PIL's; other data is resized in floating point with the same filter.

use super::resample::{self, Filter};

/// For one output index along an axis: the source indices and their weights (summing to 1).
type Taps = Vec<(usize, f32)>;

/// Each output index's taps along an axis of `input` values resized to `output`: PIL's bilinear
/// weights ([`resample::weights`]; growing, the two nearest sources; shrinking, the triangle widened
/// to the shrink factor).
fn taps(input: usize, output: usize) -> Vec<Taps> {
    resample::weights(input, output, Filter::Bilinear)
        .into_iter()
        .map(|(first, w)| w.iter().enumerate().map(|(k, &w)| (first + k, w as f32)).collect())
        .collect()
}

/// Resizes `src` (`channels` planes of `h x w`) into `dst` (`channels` planes of `oh x ow`); with
/// `round_to_bytes` the values are bytes / 255 and are resized as PIL resizes a byte image.
pub fn resize_bilinear(
    src: &[f32],
    channels: usize,
    [h, w]: [usize; 2],
    dst: &mut [f32],
    [oh, ow]: [usize; 2],
    round_to_bytes: bool,
) {
    if [h, w] == [oh, ow] {
        dst.copy_from_slice(&src[..channels * h * w]);
        return;
    }
    if round_to_bytes {
        let bytes: Vec<u8> = src[..channels * h * w]
            .iter()
            .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
            .collect();
        let resized = resample::resize(&bytes, channels, [h, w], [oh, ow], Filter::Bilinear);
        dst.iter_mut().zip(resized).for_each(|(d, b)| *d = f32::from(b) / 255.0);
        return;
    }
    let (ty, tx) = (taps(h, oh), taps(w, ow));
    for (plane, out) in src
        .chunks_exact(h * w)
        .zip(dst.chunks_exact_mut(oh * ow))
        .take(channels)
    {
        for (oy, y_taps) in ty.iter().enumerate() {
            for (ox, x_taps) in tx.iter().enumerate() {
                // Each source row's horizontal sum, then the rows' (growing: `top·(1-fy) + bottom·fy`).
                let row = |y: usize| -> f32 { x_taps.iter().map(|&(x, wx)| plane[y * w + x] * wx).sum() };
                let v: f32 = y_taps.iter().map(|&(y, wy)| row(y) * wy).sum();
                out[oy * ow + ox] = v;
            }
        }
    }
}

/// Per-channel normalization `(x - mean) / std`, as torchvision's `Normalize`, with statistics taken
/// from a training set. Checkpoints record it, so `incept eval` and `predict` apply the same one.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    /// Mean per channel.
    pub mean: Vec<f32>,
    /// Standard deviation per channel (a constant channel gets 1, so it is only centred).
    pub std: Vec<f32>,
}

impl Normalization {
    /// The per-channel mean and (population) standard deviation of every pixel of `data`, in f64.
    pub fn of_dataset(data: &super::Dataset) -> Normalization {
        let [c, h, w] = data.shape;
        let plane = h * w;
        let (mut sum, mut squares) = (vec![0f64; c], vec![0f64; c]);
        for image in data.images.chunks_exact(c * plane) {
            for (ch, values) in image.chunks_exact(plane).enumerate() {
                sum[ch] += crate::kernels::sum(values);
                squares[ch] += values.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
            }
        }
        let count = (data.len() * plane).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
        let std = squares
            .iter()
            .zip(&mean)
            .map(|(sq, m)| (sq / count - m * m).max(0.0).sqrt())
            .map(|s| if s > 0.0 { s as f32 } else { 1.0 })
            .collect();
        Normalization {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
        }
    }

    /// Normalizes one image (`channels` planes of any size) in place.
    pub fn apply(&self, image: &mut [f32]) {
        let plane = image.len() / self.mean.len().max(1);
        for ((values, &m), &s) in image.chunks_exact_mut(plane.max(1)).zip(&self.mean).zip(&self.std) {
            crate::kernels::scale_shift_in_place(values, 1.0 / s, -m / s);
        }
    }

    /// `mean,mean,...;std,std,...` for a checkpoint's metadata (each value round-trips exactly).
    pub fn to_metadata(&self) -> String {
        let list = |v: &[f32]| v.iter().map(f32::to_string).collect::<Vec<_>>().join(",");
        format!("{};{}", list(&self.mean), list(&self.std))
    }

    /// Parses [`Normalization::to_metadata`]'s form.
    pub fn from_metadata(text: &str) -> crate::error::Result<Normalization> {
        let bad = || {
            crate::error::Error::config(
                "normalization",
                format!("expected \"mean,...;std,...\", found {text:?}"),
            )
        };
        let (mean, std) = text.split_once(';').ok_or_else(bad)?;
        let parse = |list: &str| {
            list.split(',')
                .map(|v| v.trim().parse::<f32>())
                .collect::<std::result::Result<Vec<_>, _>>()
        };
        let (mean, std) = (parse(mean).map_err(|_| bad())?, parse(std).map_err(|_| bad())?);
        if mean.len() != std.len() || mean.is_empty() || std.iter().any(|&s| s.is_nan() || s <= 0.0) {
            return Err(bad());
        }
        Ok(Normalization { mean, std })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsampling_matches_half_pixel_bilinear() {
        // 2 -> 4 along each axis: source positions -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1).
        let src = [0.0, 1.0, 2.0, 3.0];
        let mut dst = [0.0; 16];
        resize_bilinear(&src, 1, [2, 2], &mut dst, [4, 4], false);
        let row0 = [0.0, 0.25, 0.75, 1.0];
        for (o, &expected) in row0.iter().enumerate() {
            assert!(
                (dst[o] - expected).abs() < 1e-6,
                "row 0 col {o}: {} vs {expected}",
                dst[o]
            );
        }
        // Column 0 moves by 2 per source row: 0, 0.5, 1.5, 2.
        let col0 = [0.0, 0.5, 1.5, 2.0];
        for (o, &expected) in col0.iter().enumerate() {
            assert!(
                (dst[o * 4] - expected).abs() < 1e-6,
                "row {o} col 0: {} vs {expected}",
                dst[o * 4]
            );
        }
        let constant = [0.4; 28 * 28];
        let mut big = vec![0.0; 96 * 96];
        resize_bilinear(&constant, 1, [28, 28], &mut big, [96, 96], false);
        assert!(big.iter().all(|&v| (v - 0.4).abs() < 1e-6));
    }

    #[test]
    fn shrinking_averages_every_source_pixel_as_pil_does() {
        // PIL (`Image.fromarray(a, mode="F").resize((w, 1), Image.BILINEAR)`) gives these: 4 -> 2 weighs
        // sources 0, 1, 2 by 0.75, 0.75, 0.25 (normalized) around the centre 1.0, a triangle of half-width 2.
        let cases: [(&[f32], &[f32]); 2] = [
            (&[0.0, 1.0, 2.0, 3.0], &[0.714_285_73, 2.285_714_4]),
            (
                &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
                &[1.491_525_4, 4.5, 7.508_474_3],
            ),
        ];
        for (src, pil) in cases {
            let mut dst = vec![0.0; pil.len()];
            resize_bilinear(src, 1, [1, src.len()], &mut dst, [1, pil.len()], false);
            for (found, want) in dst.iter().zip(pil) {
                assert!((found - want).abs() < 1e-6, "{dst:?} vs PIL's {pil:?}");
            }
        }
        // A constant image stays constant at any shrink factor.
        let constant = [0.7; 100 * 60];
        let mut small = vec![0.0; 7 * 9];
        resize_bilinear(&constant, 1, [100, 60], &mut small, [7, 9], false);
        assert!(small.iter().all(|&v| (v - 0.7).abs() < 1e-6), "{small:?}");
    }

    #[test]
    fn normalization_uses_the_datasets_channel_statistics_and_round_trips() {
        // Channel 0 holds 1, 3 (mean 2, std 1); channel 1 is constant 5 (std taken as 1).
        let data = crate::data::Dataset {
            images: vec![1.0, 1.0, 5.0, 5.0, 3.0, 3.0, 5.0, 5.0],
            labels: vec![0, 1],
            shape: [2, 1, 2],
            from_bytes: false,
        };
        let n = Normalization::of_dataset(&data);
        assert_eq!((n.mean.clone(), n.std.clone()), (vec![2.0, 5.0], vec![1.0, 1.0]));
        let mut image = vec![1.0, 3.0, 5.0, 6.0];
        n.apply(&mut image);
        assert_eq!(image, vec![-1.0, 1.0, 0.0, 1.0]);
        let odd = Normalization {
            mean: vec![0.4914, 0.1 + 0.2],
            std: vec![0.247, 1.0 / 3.0],
        };
        assert_eq!(Normalization::from_metadata(&odd.to_metadata()).unwrap(), odd);
        assert!(Normalization::from_metadata("1,2;3").is_err());
        assert!(Normalization::from_metadata("1;0").is_err());
    }
}
