//! AFL target: `roomcast_fuzz::config_loader` (what it feeds and checks: fuzz/src/targets.rs).
fn main() {
    afl::fuzz!(|data: &[u8]| roomcast_fuzz::config_loader(data));
}
