//! Real PyTorch checkpoints: a state_dict exactly as torchvision's googlenet / inception_v3
//! (`aux_logits=False`, `transform_input=True`) and timm's inception_v4 / inception_resnet_v2 save it for
//! inference — their own key sets, int64 `num_batches_tracked`, a 1000-class head, no metadata — loads
//! with no flags (the model is recognized from its keys), prepares a real photo as the library's own ImageNet transform does (bytes equal), and
//! gives PyTorch's logits (`fixtures/generate_pretrained.py`).
//!
//! The bar: PyTorch's own float32 logits are 4e-7 to 7e-7 (relative to the largest) from float64 on
//! these inputs; ours are held to 4 times PyTorch's distance (measured: 0.9 to 1.1 times), far inside
//! the 1e-3.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::TempDir;
use common::fixture::Fixture;
use incept::classifier::Classifier;
use incept::io::checkpoint::TensorFile;
use incept::models::{self, Model};
use safetensors::tensor::{Dtype, TensorView};

const PHOTO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/photo.png");
/// Our distance from float64 over PyTorch float32's, at most.
const TIMES_PYTORCH: f64 = 4.0;

/// Writes the state_dict the fixture describes for `model` as torchvision / timm would save it.
fn write_state_dict(f: &Fixture, model: &str, dir: &TempDir) -> PathBuf {
    let path = dir.join(format!("{model}.safetensors"));
    common::write_state_dict(f, model, &path);
    path
}

/// Loads `model`'s state_dict, checks what the classifier made of it, and compares the photo's logits
/// (and, where the fixture holds them, the prepared bytes) with PyTorch's.
fn check_model(model: &str, transform_input: bool, crop_recorded: bool) {
    let f = Fixture::open("pretrained");
    let dir = TempDir::new(model);
    let weights = write_state_dict(&f, model, &dir);
    // No model named: the file's key set says which it is.
    let mut classifier = Classifier::from_safetensors(None, &weights).unwrap();
    assert_eq!(classifier.transform_input(), transform_input, "{model}");
    assert_eq!(classifier.class_names().len(), 1000);
    assert_eq!(
        classifier.class_names()[0],
        "tench",
        "ImageNet's names for a 1000-class head"
    );

    let x = classifier.read_images(&[PHOTO]).unwrap();
    if crop_recorded {
        let (crop, shape) = f.bytes(&format!("{model}/crop"));
        assert_eq!(x.shape()[1..], shape[..], "{model}: crop size");
        let ours: Vec<u8> = x.iter().map(|v| (v * 255.0).round() as u8).collect();
        let differing = ours.iter().zip(&crop).filter(|(a, b)| a != b).count();
        assert_eq!(
            differing,
            0,
            "{model}: {differing} of {} bytes differ from the transform's",
            crop.len()
        );
    }
    let logits = classifier.forward_images(x.view()).unwrap();
    let logits = logits.as_slice().unwrap();
    let reference = f.named_f64(&format!("{model}/logits64"));
    let pytorch = f.named(&format!("{model}/logits32"));
    let floor = common::relative_to_largest(pytorch.as_slice().unwrap(), &reference);
    let error = common::relative_to_largest(logits, &reference);
    eprintln!("{model}: ours {error:.2e}, PyTorch float32 {floor:.2e} (relative to float64)");
    assert!(
        error <= TIMES_PYTORCH * floor.max(2e-7),
        "{model}: logits {error:.2e} from float64 (PyTorch float32: {floor:.2e})"
    );
}

#[test]
fn torchvision_googlenet_without_aux_heads() {
    check_model("googlenet", true, true);
}

#[test]
fn torchvision_inception_v3_without_aux_heads() {
    check_model("inception-v3", true, false);
}

#[test]
fn timm_inception_v4() {
    check_model("inception-v4", false, true);
}

#[test]
fn timm_inception_resnet_v2() {
    check_model("inception-resnet-v2", false, false);
}

/// `incept predict` on the photo with a torchvision state_dict: ImageNet class names, the logits'
/// order, and `--transform-input false` changes the answer (the flag reaches the model).
#[test]
fn predict_names_imagenet_classes() {
    let f = Fixture::open("pretrained");
    let dir = TempDir::new("predict-googlenet");
    let weights = write_state_dict(&f, "googlenet", &dir);
    let run = |extra: &[&str]| -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_incept"))
            .args(["predict", "--weights", weights.to_str().unwrap(), "--json"])
            .args(extra)
            .arg(PHOTO)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let reference = f.named_f64("googlenet/logits64");
    let best = (0..reference.len())
        .max_by(|&a, &b| reference[a].total_cmp(&reference[b]))
        .unwrap();
    let names = models::pretrained::imagenet_classes();
    let answer = run(&[]);
    let json: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let top = &json["top"][0];
    assert_eq!(top["index"], best, "{answer}");
    assert_eq!(top["class"], names[best].as_str(), "{answer}");
    assert_ne!(run(&["--transform-input", "false"]), answer);
}

/// Weights saved without auxiliary heads: eval builds the model without them; training keeps fresh
/// ones (and says so), loading everything else; a file missing a non-auxiliary tensor is still refused.
#[test]
fn auxiliary_heads_are_optional() {
    let dir = TempDir::new("aux");
    let config = models::ModelConfig {
        size: [64, 64],
        ..models::default_config("googlenet").unwrap()
    };
    let trained = Model::init(models::build("googlenet", config).unwrap(), 1);
    assert!(trained.graph.params.iter().any(|p| p.name.starts_with("aux1.")));
    // Saved for inference: everything but aux1.* and aux2.*.
    let kept: Vec<usize> = (0..trained.graph.params.len())
        .filter(|&i| !trained.graph.params[i].name.starts_with("aux"))
        .collect();
    let path = dir.join("no-aux.safetensors");
    let bytes: Vec<Vec<u8>> = kept
        .iter()
        .map(|&i| trained.params[i].iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView)> = kept
        .iter()
        .zip(&bytes)
        .map(|(&i, bytes)| {
            let p = &trained.graph.params[i];
            (
                p.name.clone(),
                TensorView::new(Dtype::F32, p.shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None::<HashMap<String, String>>, &path).unwrap();
    let file = TensorFile::read(&path).unwrap();

    let eval_config = models::ModelConfig {
        size: [64, 64],
        ..models::config_from_weights("googlenet", &file).unwrap()
    };
    assert!(!eval_config.aux_heads);
    let eval_graph = models::build("googlenet", eval_config).unwrap();
    assert_eq!(eval_graph.params.len(), kept.len());
    file.params_for(&eval_graph, &path).unwrap();

    let fresh = Model::init(models::build("googlenet", config).unwrap(), 2);
    let err = file.params_for(&fresh.graph, &path).unwrap_err().to_string();
    assert!(err.contains("missing aux1."), "{err}");
    let prefixes = models::entry("googlenet").unwrap().aux_prefixes;
    let (params, kept_fresh) = file
        .params_or_fresh(&fresh.graph, &path, prefixes, fresh.params.clone())
        .unwrap();
    assert_eq!(kept_fresh, ["aux1.", "aux2."]);
    for (i, spec) in fresh.graph.params.iter().enumerate() {
        let expected = if spec.name.starts_with("aux") {
            &fresh.params[i]
        } else {
            &trained.params[i]
        };
        assert_eq!(&params[i], expected, "{}", spec.name);
    }

    // Only whole heads may be absent: a file with one aux tensor missing is a damaged file.
    let mut partial = file.clone();
    let one = trained
        .graph
        .params
        .iter()
        .position(|p| p.name.starts_with("aux1."))
        .unwrap();
    partial.tensors.insert(
        trained.graph.params[one].name.clone(),
        (trained.graph.params[one].shape.clone(), trained.params[one].clone()),
    );
    let err = partial
        .params_or_fresh(&fresh.graph, &path, prefixes, fresh.params.clone())
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing aux1."), "{err}");
    let missing_stem = {
        let mut damaged = file.clone();
        damaged.tensors.remove("conv1.conv.weight");
        damaged
            .params_for(&eval_graph, Path::new("damaged"))
            .unwrap_err()
            .to_string()
    };
    assert!(missing_stem.contains("missing conv1.conv.weight"), "{missing_stem}");
}

/// Fine-tuning through the library: `train_step` lowers the loss on a batch, and `save` writes a
/// checkpoint that loads back with the same preprocessing, `transform_input`, class names and logits.
#[test]
fn classifier_fine_tunes_and_saves() {
    let f = Fixture::open("pretrained");
    let dir = TempDir::new("fine-tune");
    let weights = write_state_dict(&f, "googlenet", &dir);
    let mut classifier = Classifier::from_safetensors(Some("googlenet"), &weights).unwrap();
    let x = classifier.read_images(&[PHOTO, PHOTO]).unwrap();
    let labels = [7, 7];
    let mut adam = classifier.adam();
    let losses: Vec<f64> = (0..4)
        .map(|_| {
            classifier
                .train_step_images(x.view(), &labels, &mut adam, 1e-3)
                .unwrap()
                .loss
        })
        .collect();
    // Measured: 6.96, 6.09, 5.02, 3.95.
    assert!(
        losses.windows(2).all(|w| w[1] < w[0]) && losses[3] < 0.75 * losses[0],
        "Adam on one batch should fit it: {losses:?}"
    );
    let err = classifier
        .train_step_images(x.view(), &[7], &mut adam, 1e-3)
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 images, 1 labels"), "{err}");

    let saved = dir.join("fine-tuned.safetensors");
    classifier.save(&saved).unwrap();
    let mut reloaded = Classifier::from_safetensors(None, &saved).unwrap();
    assert!(reloaded.transform_input());
    assert_eq!(reloaded.class_names(), classifier.class_names());
    assert_eq!(
        reloaded.read_images(&[PHOTO]).unwrap(),
        classifier.read_images(&[PHOTO]).unwrap()
    );
    let before = classifier.forward_images(x.view()).unwrap();
    assert_eq!(reloaded.forward_images(x.view()).unwrap(), before);
    let original = Classifier::from_safetensors(Some("googlenet"), &weights)
        .unwrap()
        .forward_images(x.view())
        .unwrap();
    assert_ne!(original, before, "the steps changed the weights");
}

/// A state_dict of no known model, given without `--model`, is refused with the models listed.
#[test]
fn weights_of_no_known_model_are_refused() {
    let dir = TempDir::new("unknown");
    let path = dir.join("other.safetensors");
    let bytes = [0u8; 16];
    let views = [(
        "fc.weight".to_string(),
        TensorView::new(Dtype::F32, vec![2, 2], &bytes).unwrap(),
    )];
    safetensors::serialize_to_file(views, None::<HashMap<String, String>>, &path).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_incept"))
        .args(["predict", "--weights", path.to_str().unwrap(), PHOTO])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !err.contains("panicked"), "{err}");
    assert!(
        err.contains("fit none of them") && err.contains("inception-resnet-v2"),
        "{err}"
    );
}
