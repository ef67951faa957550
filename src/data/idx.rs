//! The IDX format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/): a big-endian header
//! (magic `0x0000_08_0D`, where `08` is unsigned bytes and `D` the number of dimensions, then one u32
//! per dimension) followed by the bytes. Files may be gzip-compressed (`.gz`), which is detected from
//! the content. Every check names the file, what was expected and what was found.

use std::io::Read;
use std::path::Path;

use super::Dataset;
use crate::error::{Error, Result};

/// Reads a whole file, decompressing it if it starts with the gzip magic.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::file(path.display(), e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::file(path.display(), format!("corrupt or truncated gzip data: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX byte array with `dims` dimensions; returns the dimensions and the data bytes.
fn parse(path: &Path, bytes: &[u8], dims: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let expected_magic = 0x0800 | dims as u32;
    let header_len = 4 + 4 * dims;
    if bytes.len() < header_len {
        return Err(Error::file(
            path.display(),
            format!(
                "an IDX header of {header_len} bytes, found a file of {} bytes",
                bytes.len()
            ),
        ));
    }
    let word = |i: usize| u32::from_be_bytes(bytes[4 * i..4 * i + 4].try_into().expect("four bytes"));
    if word(0) != expected_magic {
        return Err(Error::file(
            path.display(),
            format!(
                "IDX magic {expected_magic:#010x} (unsigned bytes, {dims} dimensions), found {:#010x}",
                word(0)
            ),
        ));
    }
    let shape: Vec<usize> = (1..=dims).map(|i| word(i) as usize).collect();
    let count: usize = shape.iter().product();
    let data = &bytes[header_len..];
    if data.len() != count {
        return Err(Error::file(
            path.display(),
            format!(
                "{count} data bytes for shape {shape:?}, found {} (truncated or padded file)",
                data.len()
            ),
        ));
    }
    Ok((shape, data.to_vec()))
}

/// Reads an images file (`[n, h, w]` bytes) and a labels file (`[n]` bytes, each below `classes`).
pub fn read_pair(images: &Path, labels: &Path, classes: usize) -> Result<Dataset> {
    let (shape, pixels) = parse(images, &read_maybe_gz(images)?, 3)?;
    let (label_shape, label_bytes) = parse(labels, &read_maybe_gz(labels)?, 1)?;
    if label_shape[0] != shape[0] {
        return Err(Error::file(
            labels.display(),
            format!(
                "{} labels (one per image of {}), found {}",
                shape[0],
                images.display(),
                label_shape[0]
            ),
        ));
    }
    if let Some((i, &l)) = label_bytes.iter().enumerate().find(|&(_, &l)| l as usize >= classes) {
        return Err(Error::file(
            labels.display(),
            format!("labels below {classes}, found {l} at index {i}"),
        ));
    }
    Ok(Dataset {
        images: pixels.iter().map(|&p| p as f32 / 255.0).collect(),
        labels: label_bytes.iter().map(|&l| l as usize).collect(),
        shape: [1, shape[1], shape[2]],
        from_bytes: true,
    })
}

/// The four files of (Fashion-)MNIST in `dir`, gzip-compressed or not: `(train, test)`.
pub fn read_dir(dir: &Path) -> Result<(Dataset, Dataset)> {
    let find = |stem: &str| -> Result<std::path::PathBuf> {
        let candidates = [dir.join(format!("{stem}.gz")), dir.join(stem)];
        candidates.iter().find(|p| p.exists()).cloned().ok_or_else(|| {
            Error::file(
                dir.join(stem).display(),
                format!("not found (looked for {stem}.gz and {stem})"),
            )
        })
    };
    let train = read_pair(&find("train-images-idx3-ubyte")?, &find("train-labels-idx1-ubyte")?, 10)?;
    let test = read_pair(&find("t10k-images-idx3-ubyte")?, &find("t10k-labels-idx1-ubyte")?, 10)?;
    Ok((train, test))
}

/// Writes `[n, h, w]` bytes and their labels as gzip-compressed IDX files (used to cut test fixtures).
pub fn write_pair(images: &Path, labels: &Path, pixels: &[u8], label_bytes: &[u8], h: usize, w: usize) -> Result<()> {
    use std::io::Write;
    let write = |path: &Path, header: Vec<u32>, data: &[u8]| -> Result<()> {
        let file = std::fs::File::create(path).map_err(|e| Error::file(path.display(), e))?;
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::best());
        let mut bytes: Vec<u8> = header.iter().flat_map(|v| v.to_be_bytes()).collect();
        bytes.extend_from_slice(data);
        gz.write_all(&bytes)
            .and_then(|_| gz.finish().map(|_| ()))
            .map_err(|e| Error::file(path.display(), e))
    };
    let n = label_bytes.len() as u32;
    write(images, vec![0x0803, n, h as u32, w as u32], pixels)?;
    write(labels, vec![0x0801, n], label_bytes)
}
