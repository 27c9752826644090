//! Coverage-guided fuzzing of roomcast's decoders of hostile input with `cargo afl` (AFL++ on
//! stable Rust): the targets live in `targets.rs`, which `cargo test` at the root also compiles
//! (tests/fuzz.rs) to replay the committed corpora; each binary in `src/bin/` runs one of them.
//! How to run: docs/FUZZING.md.

mod seeds;
mod targets;

pub use seeds::{dict_line, dictionaries, seeds};
pub use targets::*;
