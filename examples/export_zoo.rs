//! Writes every model of the zoo as ONNX, float32 and int8 (QDQ), with the ONNX tests' hashed weights
//! and sizes, for
//! `fixtures/generate_onnx.py` to check with `onnx.checker` and run in ONNX Runtime:
//!
//!     cargo run --release --example export_zoo -- DIR

#[path = "../tests/common/hashed.rs"]
mod hashed;
#[allow(dead_code)]
#[path = "../tests/common/onnx_models.rs"]
mod onnx_models;

use hashed::hashed_params;
use onnx_models::{ONNX_MODELS, onnx_int8_model, onnx_model};

fn main() -> incept::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: export_zoo DIR"));
    std::fs::create_dir_all(&dir).map_err(|e| incept::Error::file(dir.display(), e))?;
    for &(name, size) in ONNX_MODELS {
        let model = onnx_model(name, size);
        let metadata = std::collections::HashMap::from([("model".to_string(), name.to_string())]);
        let path = dir.join(format!("{name}.onnx"));
        incept::onnx::write(
            &path,
            &model.graph,
            &model.params,
            &metadata,
            incept::onnx::DEFAULT_OPSET,
        )?;
        println!("{}", path.display());
        // The same weights in int8, written as QDQ.
        let path = dir.join(format!("{name}-int8.onnx"));
        incept::onnx::write_int8(
            &path,
            &onnx_int8_model(name, size),
            &metadata,
            incept::onnx::DEFAULT_OPSET,
        )?;
        println!("{}", path.display());
    }
    Ok(())
}
