//! The blocked channel layout the compute core runs on: an image of `c` channels is
//! `[c/16 blocks][h][w][16 lanes]`, channel `16 b + lane` of pixel `(y, x)` at index
//! `((b · h + y) · w + x) · 16 + lane`. The vector runs over 16 channels, so a 3×3 or 6×6 map wastes no
//! lanes. Channel counts are padded to whole blocks with zeros, which every op keeps at zero.
//!
//! An image may carry a zero halo (spatial padding) so a convolution reads its borders without special
//! cases: [`Halo`] says how wide.

use crate::microkernel::LANES;

/// How one image of a node's output (and of its gradient) is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[c][h][w]`, as PyTorch lays it out.
    Nchw,
    /// `[c/16][h][w][16]` ([`crate::blocked`]), channels padded with zeros to whole blocks of 16.
    Blocked,
}

impl Layout {
    /// Values per image of a `[c, h, w]` output in this layout.
    pub fn image_len(self, [c, h, w]: [usize; 3]) -> usize {
        match self {
            Layout::Nchw => c * h * w,
            Layout::Blocked => image_len(c, [h, w], Halo::default()),
        }
    }
}

/// Blocks of 16 that hold `channels` channels.
pub fn blocks(channels: usize) -> usize {
    channels.div_ceil(LANES)
}

/// Zero rows and columns around a blocked image: `[top, bottom, left, right]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Halo(pub [usize; 4]);

impl Halo {
    /// The padded size of an `[h, w]` map.
    pub fn padded(self, [h, w]: [usize; 2]) -> [usize; 2] {
        let [top, bottom, left, right] = self.0;
        [h + top + bottom, w + left + right]
    }
}

/// Values of one blocked image of `channels` channels on an `[h, w]` map with `halo`.
pub fn image_len(channels: usize, map: [usize; 2], halo: Halo) -> usize {
    let [h, w] = halo.padded(map);
    blocks(channels) * h * w * LANES
}

/// Writes one NCHW image (`channels × h × w` values) into `out` as a blocked image with `halo`; the halo
/// and the padding channels are zero.
pub fn from_nchw(x: &[f32], channels: usize, map: [usize; 2], halo: Halo, out: &mut [f32]) {
    let [h, w] = map;
    let [hp, wp] = halo.padded(map);
    let [top, _, left, _] = halo.0;
    debug_assert_eq!(x.len(), channels * h * w);
    debug_assert_eq!(out.len(), image_len(channels, map, halo));
    out.fill(0.0);
    for (c, plane) in x.chunks_exact(h * w).enumerate() {
        let (b, lane) = (c / LANES, c % LANES);
        for (y, row) in plane.chunks_exact(w).enumerate() {
            let start = ((b * hp + y + top) * wp + left) * LANES + lane;
            for (i, &v) in row.iter().enumerate() {
                out[start + i * LANES] = v;
            }
        }
    }
}

/// Copies one blocked image without halo (`out` without `halo`) into `out` with `halo`, which is zero.
pub fn add_halo(x: &[f32], channels: usize, map: [usize; 2], halo: Halo, out: &mut [f32]) {
    debug_assert_eq!(x.len(), image_len(channels, map, Halo::default()));
    debug_assert_eq!(out.len(), image_len(channels, map, halo));
    if halo == Halo::default() {
        out.copy_from_slice(x);
        return;
    }
    let [h, w] = map;
    let [hp, wp] = halo.padded(map);
    let [top, _, left, _] = halo.0;
    out.fill(0.0);
    for (b, plane) in x.chunks_exact(h * w * LANES).enumerate() {
        for (y, row) in plane.chunks_exact(w * LANES).enumerate() {
            out[((b * hp + y + top) * wp + left) * LANES..][..w * LANES].copy_from_slice(row);
        }
    }
}

/// Adds one NCHW image (`channels × h × w` values) into a blocked one without halo; padding channels
/// get nothing.
pub fn add_nchw_to_blocked(x: &[f32], channels: usize, map: [usize; 2], out: &mut [f32]) {
    let [h, w] = map;
    debug_assert_eq!(x.len(), channels * h * w);
    debug_assert_eq!(out.len(), image_len(channels, map, Halo::default()));
    for (c, plane) in x.chunks_exact(h * w).enumerate() {
        let (b, lane) = (c / LANES, c % LANES);
        let block = &mut out[b * h * w * LANES..][..h * w * LANES];
        for (pixel, &v) in block.chunks_exact_mut(LANES).zip(plane) {
            pixel[lane] += v;
        }
    }
}

/// Reads one blocked image without halo back into NCHW (`channels × h × w` values in `out`).
pub fn to_nchw(x: &[f32], channels: usize, map: [usize; 2], out: &mut [f32]) {
    each_nchw_value(x, channels, map, out, |o, v| *o = v);
}

/// Adds one blocked image without halo into an NCHW one (`channels × h × w` values in `out`).
pub fn add_to_nchw(x: &[f32], channels: usize, map: [usize; 2], out: &mut [f32]) {
    each_nchw_value(x, channels, map, out, |o, v| *o += v);
}

/// Calls `store(out value, blocked value)` for every NCHW value of `out`, in NCHW order.
fn each_nchw_value(x: &[f32], channels: usize, map: [usize; 2], out: &mut [f32], store: impl Fn(&mut f32, f32)) {
    let [h, w] = map;
    debug_assert_eq!(x.len(), image_len(channels, map, Halo::default()));
    debug_assert_eq!(out.len(), channels * h * w);
    for (c, plane) in out.chunks_exact_mut(h * w).enumerate() {
        let (b, lane) = (c / LANES, c % LANES);
        let block = &x[b * h * w * LANES..][..h * w * LANES];
        for (v, pixel) in plane.iter_mut().zip(block.chunks_exact(LANES)) {
            store(v, pixel[lane]);
        }
    }
}

/// A batch of NCHW images (`n × channels × h × w` values) as blocked images with `halo`, one after
/// another.
pub fn batch_from_nchw(x: &[f32], channels: usize, map: [usize; 2], halo: Halo) -> Vec<f32> {
    let (nchw, len) = (channels * map[0] * map[1], image_len(channels, map, halo));
    let mut out = vec![0.0; x.len() / nchw.max(1) * len];
    for (img, o) in x.chunks_exact(nchw.max(1)).zip(out.chunks_exact_mut(len.max(1))) {
        from_nchw(img, channels, map, halo, o);
    }
    out
}

/// A batch of blocked images without halo back in NCHW.
pub fn batch_to_nchw(x: &[f32], channels: usize, map: [usize; 2]) -> Vec<f32> {
    let (nchw, len) = (channels * map[0] * map[1], image_len(channels, map, Halo::default()));
    let mut out = vec![0.0; x.len() / len.max(1) * nchw];
    for (img, o) in x.chunks_exact(len.max(1)).zip(out.chunks_exact_mut(nchw.max(1))) {
        to_nchw(img, channels, map, o);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_halo_and_odd_channels() {
        let (c, map) = (19, [3, 5]);
        let x: Vec<f32> = (0..c * 15).map(|i| i as f32 + 1.0).collect();
        let halo = Halo([1, 2, 0, 1]);
        let mut blocked = vec![f32::NAN; image_len(c, map, halo)];
        from_nchw(&x, c, map, halo, &mut blocked);
        // Channel 17 (block 1, lane 1) at (y 2, x 4) sits at padded (3, 4) of a 6×6 padded map.
        assert_eq!(blocked[((6 + 3) * 6 + 4) * LANES + 1], x[17 * 15 + 2 * 5 + 4]);
        // Everything else is zero: the halo and channels 19..32.
        let nonzero = blocked.iter().filter(|&&v| v != 0.0).count();
        assert_eq!(nonzero, x.len());
        let mut plain = vec![0.0; image_len(c, map, Halo::default())];
        from_nchw(&x, c, map, Halo::default(), &mut plain);
        let mut back = vec![0.0; x.len()];
        to_nchw(&plain, c, map, &mut back);
        assert_eq!(back, x);
    }
}
