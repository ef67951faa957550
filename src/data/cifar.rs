//! CIFAR-10 in its binary form (`cifar-10-batches-bin`): `data_batch_1.bin` ... `data_batch_5.bin` for
//! training and `test_batch.bin` for testing, each a run of 3073-byte records: one label byte (0-9), then
//! the 32×32 red, green and blue planes, row by row. Every file is checked: it must exist, hold a whole
//! number of records, and every label must be a class.

use std::path::{Path, PathBuf};

use super::Dataset;
use crate::error::{Error, Result};

/// Classes of CIFAR-10.
pub const CLASSES: usize = 10;
/// Side of a CIFAR-10 image.
pub const SIZE: usize = 32;
const PIXELS: usize = 3 * SIZE * SIZE;
const RECORD: usize = 1 + PIXELS;

/// The training files, in the order their images are concatenated.
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test file.
pub const TEST_FILE: &str = "test_batch.bin";

/// Reads the training and test sets from `dir` (or from its `cifar-10-batches-bin` subdirectory, as the
/// official archive unpacks).
pub fn read_dir(dir: &Path) -> Result<(Dataset, Dataset)> {
    let nested = dir.join("cifar-10-batches-bin");
    let dir = if !dir.join(TEST_FILE).exists() && nested.join(TEST_FILE).exists() {
        nested
    } else {
        dir.to_path_buf()
    };
    let paths = |names: &[&str]| names.iter().map(|n| dir.join(n)).collect::<Vec<PathBuf>>();
    let (train, test) = (paths(&TRAIN_FILES), paths(&[TEST_FILE]));
    let missing: Vec<String> = train
        .iter()
        .chain(&test)
        .filter(|p| !p.exists())
        .map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned())
        .collect();
    if !missing.is_empty() {
        return Err(Error::file(
            dir.display(),
            format!(
                "a CIFAR-10 binary directory (data_batch_1.bin ... data_batch_5.bin, test_batch.bin), but {} missing",
                missing.join(", ")
            ),
        ));
    }
    Ok((read_files(&train)?, read_files(&test)?))
}

/// Reads and concatenates CIFAR-10 binary files.
pub fn read_files(paths: &[PathBuf]) -> Result<Dataset> {
    let mut data = Dataset {
        images: Vec::new(),
        labels: Vec::new(),
        shape: [3, SIZE, SIZE],
        from_bytes: true,
    };
    for path in paths {
        let bytes = std::fs::read(path).map_err(|e| Error::file(path.display(), e))?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(Error::file(
                path.display(),
                format!(
                    "CIFAR-10 records of {RECORD} bytes (1 label + 3x32x32 pixels), but its {} bytes are not a whole number of them",
                    bytes.len()
                ),
            ));
        }
        for (k, record) in bytes.chunks_exact(RECORD).enumerate() {
            let label = record[0] as usize;
            if label >= CLASSES {
                return Err(Error::file(
                    path.display(),
                    format!("record {k}: label {label}, expected 0 to {}", CLASSES - 1),
                ));
            }
            data.labels.push(label);
            data.images.extend(record[1..].iter().map(|&b| b as f32 / 255.0));
        }
    }
    Ok(data)
}
