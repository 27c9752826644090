//! Writes the seed corpora and dictionaries (`roomcast_fuzz::seeds`, `dictionaries`) to
//! `fuzz/corpus/<target>/` and `fuzz/dict/<target>.dict`: `cargo afl build --release` in fuzz/,
//! then run the `seeds` binary (or `cargo run --release --bin seeds`).
use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (target, name, bytes) in roomcast_fuzz::seeds() {
        let dir = root.join("corpus").join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(&name), &bytes)?;
        println!("corpus/{target}/{name}: {} bytes", bytes.len());
    }
    std::fs::create_dir_all(root.join("dict"))?;
    for (target, tokens) in roomcast_fuzz::dictionaries() {
        let lines: String = tokens
            .iter()
            .map(|t| roomcast_fuzz::dict_line(t) + "\n")
            .collect();
        std::fs::write(root.join("dict").join(format!("{target}.dict")), lines)?;
        println!("dict/{target}.dict: {} tokens", tokens.len());
    }
    Ok(())
}
