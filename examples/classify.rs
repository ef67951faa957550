//! Classify image files with trained weights:
//! `cargo run --release --example classify -- runs/checkpoint.safetensors shoe.png bag.jpg`

fn main() -> Result<(), incept::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (weights, images) = args.split_first().expect("usage: classify WEIGHTS IMAGE...");
    let mut model = incept::classifier::Classifier::from_safetensors(None, weights)?;
    for (image, top) in images.iter().zip(model.predict_images(images, 3)?) {
        let answers: Vec<String> = top
            .iter()
            .map(|p| format!("{} {:.1}%", p.class, 100.0 * p.probability))
            .collect();
        println!("{image}: {}", answers.join(", "));
    }
    Ok(())
}
