//! `incept export`: weights as an ONNX model for other engines (ONNX Runtime, OpenVINO, TensorRT).

use std::path::PathBuf;

use incept::classifier::Classifier;
use incept::io::output;
use incept::onnx::{DEFAULT_OPSET, EXPORT_OPSETS};
use incept::{Error, Result};

#[derive(clap::Args)]
pub(crate) struct ExportArgs {
    /// The model (default: the one the checkpoint records, else the one whose state_dict the file holds).
    #[arg(long)]
    model: Option<String>,
    /// The weights: an incept checkpoint, a PyTorch state_dict saved as safetensors, or an ONNX model
    /// (written again as incept runs it).
    #[arg(long)]
    weights: PathBuf,
    /// Where to write the ONNX model.
    #[arg(long)]
    out: PathBuf,
    /// The ONNX opset to write (13 to 22; the ops written mean the same in each).
    #[arg(long, default_value_t = DEFAULT_OPSET)]
    opset: i64,
}

/// `incept export`.
pub(crate) fn export_command(args: ExportArgs) -> Result<()> {
    let ExportArgs {
        model,
        weights,
        out,
        opset,
    } = args;
    output::check_file("--out", &out)?;
    if !EXPORT_OPSETS.contains(&opset) {
        return Err(Error::config(
            "--opset",
            format!(
                "ONNX opset {} to {}, found {opset}",
                EXPORT_OPSETS.start(),
                EXPORT_OPSETS.end()
            ),
        ));
    }
    let classifier = Classifier::from_safetensors(model.as_deref(), &weights)?;
    classifier.export_onnx(&out, opset)?;
    let [c, h, w] = classifier.input_shape();
    println!(
        "wrote {}: {} as ONNX opset {opset}, input [batch, {c}, {h}, {w}], output [batch, {}] (logits); {}",
        out.display(),
        classifier.model_name(),
        classifier.class_names().len(),
        classifier.preprocessing()
    );
    Ok(())
}
