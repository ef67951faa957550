//! `incept predict` on image files: a PNG of a Fashion-MNIST test image gets the probabilities the
//! dataset's own pipeline gives (IDX bytes resized and normalized as training does them, through the
//! library's executor with the saved weights); an RGB
//! JPEG of a grey image gets the same answer as its PNG (grey conversion); the class names the run
//! recorded are printed, top-k in order; and bad input is refused with a message naming the file.

mod common;

use std::path::Path;

use common::TempDir;
use common::cli::{SLICE, fails_with, incept, ok, trained_on_slice};
use incept::data::idx;
use incept::data::transforms::{Normalization, resize_bilinear};
use incept::graph::{Executor, Mode};
use incept::io::checkpoint::TensorFile;
use incept::models::{self, Model};
use incept::tensor::Images;

/// One image's answer: its file, and (class name, index, probability) most likely first.
type Answer = (String, Vec<(String, usize, f64)>);

/// Parses `--json` output, one answer per image.
fn parse(stdout: &str) -> Vec<Answer> {
    stdout
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let top = v["top"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["class"].as_str().unwrap().to_string(),
                        c["index"].as_u64().unwrap() as usize,
                        c["probability"].as_f64().unwrap(),
                    )
                })
                .collect();
            (v["file"].as_str().unwrap().to_string(), top)
        })
        .collect()
}

#[test]
fn images_get_the_probabilities_of_the_dataset_pipeline_with_the_runs_class_names() {
    let dir = TempDir::new("predict_images");
    let weights = trained_on_slice(&dir, 4);
    let (_, test) = idx::read_dir(Path::new(SLICE)).unwrap();
    // Three test images as 28×28 grey PNGs, and the first also as a 3-channel JPEG-free RGB PNG.
    let mut files = Vec::new();
    for i in 0..3 {
        let bytes: Vec<u8> = test.images[i * 784..(i + 1) * 784]
            .iter()
            .map(|&v| (v * 255.0).round() as u8)
            .collect();
        let path = dir.join(format!("test{i}.png"));
        image::GrayImage::from_raw(28, 28, bytes.clone())
            .unwrap()
            .save(&path)
            .unwrap();
        files.push(path);
        if i == 0 {
            let rgb: Vec<u8> = bytes.iter().flat_map(|&b| [b, b, b]).collect();
            let path = dir.join("test0_rgb.png");
            image::RgbImage::from_raw(28, 28, rgb).unwrap().save(&path).unwrap();
            files.push(path);
        }
    }
    let file_args: Vec<&str> = files.iter().map(|f| f.to_str().unwrap()).collect();
    let mut args = vec!["predict", "--weights", &weights, "--json", "--top-k", "10"];
    args.extend(&file_args);
    let answers = parse(&ok(incept(&args)));
    assert_eq!(answers.len(), 4, "one answer per image");

    // The reference: the same images as training prepares them (resized from the IDX bytes, normalized
    // with the statistics the run recorded), through the library's executor with the saved weights.
    let mut x = vec![0.0; 3 * 32 * 32];
    for i in 0..3 {
        let src = &test.images[i * 784..(i + 1) * 784];
        resize_bilinear(src, 1, [28, 28], &mut x[i * 1024..(i + 1) * 1024], [32, 32], true);
    }
    let file = TensorFile::read(Path::new(&weights)).unwrap();
    let normalization = Normalization::from_metadata(&file.metadata["normalization"]).unwrap();
    x.chunks_exact_mut(1024).for_each(|img| normalization.apply(img));
    let config = models::ModelConfig {
        size: [32, 32],
        ..models::config_from_weights("googlenet-d2l", &file).unwrap()
    };
    let graph = models::build("googlenet-d2l", config).unwrap();
    let params = file.params_for(&graph, Path::new(&weights)).unwrap();
    let mut exec = Executor::new(Model { graph, params }, 3).unwrap();
    exec.forward(Images::dense(&x, 3, 1024), Mode::Eval).unwrap();
    let logits = incept::ndarray::Array2::from_shape_vec([3, 10], exec.output_vec()).unwrap();
    let names = incept::data::FASHION_MNIST_CLASSES;
    for (k, (file, top)) in answers.iter().enumerate() {
        // The RGB copy of image 0 must get image 0's answer.
        let i = [0, 0, 1, 2][k];
        assert!(
            file.ends_with(["test0.png", "test0_rgb.png", "test1.png", "test2.png"][k]),
            "{file}"
        );
        let row: Vec<f64> = logits.row(i).iter().map(|&v| v as f64).collect();
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = row.iter().map(|v| (v - max).exp()).sum();
        assert_eq!(top.len(), 10, "--top-k 10 of 10 classes");
        for (rank, (name, index, p)) in top.iter().enumerate() {
            let expected = (row[*index] - max).exp() / total;
            assert!(
                (p - expected).abs() <= 1e-6,
                "{file}: class {index} probability {p} vs {expected} from the executor"
            );
            assert_eq!(name, names[*index], "the class names the run recorded");
            if rank > 0 {
                assert!(top[rank - 1].2 >= *p, "{file}: most likely first");
            }
        }
    }

    // A directory gives its images sorted by name; text output lists top-k lines per image.
    let text = ok(incept(&[
        "predict",
        "--weights",
        &weights,
        "--top-k",
        "3",
        dir.to_str().unwrap(),
    ]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4 * 4, "{text}");
    assert!(
        lines[0].ends_with("test0.png") && lines[4].ends_with("test0_rgb.png"),
        "{text}"
    );
    assert!(lines[1].contains('%'), "{text}");
}

#[test]
fn bad_images_and_flags_are_refused_naming_the_file() {
    let dir = TempDir::new("predict_bad_images");
    let weights = trained_on_slice(&dir, 4);
    let missing = dir.join("missing.png");
    fails_with(
        incept(&["predict", "--weights", &weights, missing.to_str().unwrap()]),
        &["missing.png", "no such file"],
    );
    let not_image = dir.join("notes.png");
    std::fs::write(&not_image, b"not an image").unwrap();
    fails_with(
        incept(&["predict", "--weights", &weights, not_image.to_str().unwrap()]),
        &["notes.png", "cannot be decoded"],
    );
    let empty = dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    fails_with(
        incept(&["predict", "--weights", &weights, empty.to_str().unwrap()]),
        &["empty", "has none"],
    );
    let good = dir.join("good.png");
    image::GrayImage::new(28, 28).save(&good).unwrap();
    fails_with(
        incept(&["predict", "--weights", &weights, "--top-k", "0", good.to_str().unwrap()]),
        &["--top-k must be at least 1"],
    );
    let three = dir.join("three.txt");
    std::fs::write(&three, "a\nb\nc\n").unwrap();
    fails_with(
        incept(&[
            "predict",
            "--weights",
            &weights,
            "--classes",
            three.to_str().unwrap(),
            good.to_str().unwrap(),
        ]),
        &["three.txt names 3 classes, the model has 10"],
    );
    fails_with(
        incept(&["predict", "--weights", &weights]),
        &["give image files or directories"],
    );
}
