//! The CIFAR-10 binary reader on a small generated CIFAR-format directory (6 files of 8 records): values,
//! labels and file order; the official archive's nested directory; a missing, truncated or mislabelled
//! file reported by name; and `incept train --dataset cifar10` end to end.

mod common;

use std::path::Path;
use std::process::Command;

use common::TempDir;
use incept::data::cifar;

const RECORDS: usize = 8;

/// Record `k` of file `f`: label `(f + k) % 10`, pixel `i` = `(label * 20 + f + i) % 256`.
fn record(f: usize, k: usize) -> Vec<u8> {
    let label = (f + k) % 10;
    let mut bytes = vec![label as u8];
    bytes.extend((0..3 * 32 * 32).map(|i| ((label * 20 + f + i) % 256) as u8));
    bytes
}

fn write_dir(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let names = cifar::TRAIN_FILES.iter().chain([&cifar::TEST_FILE]);
    for (f, name) in names.enumerate() {
        let bytes: Vec<u8> = (0..RECORDS).flat_map(|k| record(f, k)).collect();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn reads_every_file_in_order_with_exact_values() {
    let dir = TempDir::new("cifar-read");
    write_dir(&dir);
    let (train, test) = cifar::read_dir(&dir).unwrap();
    assert_eq!((train.len(), test.len()), (5 * RECORDS, RECORDS));
    assert_eq!(train.shape, [3, 32, 32]);
    for (n, &label) in train.labels.iter().enumerate() {
        let (f, k) = (n / RECORDS, n % RECORDS);
        let expected = record(f, k);
        assert_eq!(label, expected[0] as usize, "training image {n}");
        let image = &train.images[n * 3072..][..3072];
        assert!(
            image.iter().zip(&expected[1..]).all(|(&v, &b)| v == b as f32 / 255.0),
            "training image {n}"
        );
    }
    assert_eq!(test.labels[3], record(5, 3)[0] as usize);
    // The official archive unpacks into cifar-10-batches-bin/: the parent directory works too.
    let parent = TempDir::new("cifar-nested");
    write_dir(&parent.join("cifar-10-batches-bin"));
    assert_eq!(cifar::read_dir(&parent).unwrap().0.labels, train.labels);
}

#[test]
fn missing_truncated_and_mislabelled_files_are_reported_by_name() {
    let dir = TempDir::new("cifar-bad");
    write_dir(&dir);
    std::fs::remove_file(dir.join("data_batch_3.bin")).unwrap();
    std::fs::remove_file(dir.join("test_batch.bin")).unwrap();
    let err = cifar::read_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("data_batch_3.bin, test_batch.bin missing"), "{err}");

    write_dir(&dir);
    let truncated = dir.join("data_batch_2.bin");
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let err = cifar::read_dir(&dir).unwrap_err().to_string();
    assert!(
        err.contains("data_batch_2.bin") && err.contains("3073 bytes") && err.contains("24484"),
        "{err}"
    );

    write_dir(&dir);
    let mut bytes = std::fs::read(dir.join("test_batch.bin")).unwrap();
    bytes[3 * 3073] = 10;
    std::fs::write(dir.join("test_batch.bin"), bytes).unwrap();
    let err = cifar::read_dir(&dir).unwrap_err().to_string();
    assert!(
        err.contains("test_batch.bin") && err.contains("record 3: label 10, expected 0 to 9"),
        "{err}"
    );
}

#[test]
fn incept_trains_inception_tf_cifar_on_cifar_files() {
    let dir = TempDir::new("cifar-cli");
    write_dir(&dir.join("data"));
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_incept")).args(args).output().unwrap();
    let data = dir.join("data");
    let out_dir = dir.join("run");
    let out = run(&[
        "train",
        "--model",
        "inception-tf-cifar",
        "--dataset",
        "cifar10",
        "--data",
        data.to_str().unwrap(),
        "--resize",
        "32",
        "--batch",
        "8",
        "--epochs",
        "1",
        "--quiet",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("test acc"), "{stdout}");
    assert!(out_dir.join("checkpoint.safetensors").exists());
    let out = run(&["train", "--dataset", "cifar10", "--quiet"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--dataset cifar10 needs --data DIR"),
        "{err}"
    );
}
