//! User data as NumPy files: images float32 `[n, c, h, w]`, labels int64 `[n]`; and float32 arrays out.

use std::path::Path;

use ndarray::{Array1, Array2, Array4};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

use super::Dataset;
use crate::error::{Error, Result};

fn open(path: &Path) -> Result<std::io::BufReader<std::fs::File>> {
    std::fs::File::open(path)
        .map(std::io::BufReader::new)
        .map_err(|e| Error::file(path.display(), e))
}

/// Reads images (float32, 4-D, C-order) and labels (int64, 1-D, each in `0..classes`).
pub fn read_pair(images: &Path, labels: &Path, classes: usize) -> Result<Dataset> {
    let x = Array4::<f32>::read_npy(open(images)?)
        .map_err(|e| Error::file(images.display(), format!("a float32 array of shape [n, c, h, w]: {e}")))?;
    let y = Array1::<i64>::read_npy(open(labels)?)
        .map_err(|e| Error::file(labels.display(), format!("an int64 array of shape [n]: {e}")))?;
    let [n, c, h, w] = crate::tensor::dims4(&x);
    if y.len() != n {
        return Err(Error::file(
            labels.display(),
            format!("{n} labels (one per image in {}), found {}", images.display(), y.len()),
        ));
    }
    if let Some((i, &l)) = y.iter().enumerate().find(|&(_, &l)| l < 0 || l as usize >= classes) {
        return Err(Error::file(
            labels.display(),
            format!("labels in 0..{classes}, found {l} at index {i}"),
        ));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::file(
            images.display(),
            format!(
                "finite values, found {} at flat index {i}",
                x.iter().nth(i).copied().unwrap_or(f32::NAN)
            ),
        ));
    }
    Ok(Dataset {
        images: x.as_standard_layout().iter().copied().collect(),
        labels: y.iter().map(|&l| l as usize).collect(),
        shape: [c, h, w],
        from_bytes: false,
    })
}

/// Reads float32 images `[n, c, h, w]` alone (for `predict`).
pub fn read_images(path: &Path) -> Result<Array4<f32>> {
    Array4::<f32>::read_npy(open(path)?)
        .map_err(|e| Error::file(path.display(), format!("a float32 array of shape [n, c, h, w]: {e}")))
}

/// Writes a float32 matrix.
pub fn write_matrix(path: &Path, a: &Array2<f32>) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| Error::file(path.display(), e))?;
    a.write_npy(std::io::BufWriter::new(file))
        .map_err(|e| Error::file(path.display(), e))
}
