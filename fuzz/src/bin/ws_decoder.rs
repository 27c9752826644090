//! AFL target: `roomcast_fuzz::ws_decoder` (what it feeds and checks: fuzz/src/targets.rs).
fn main() {
    afl::fuzz!(|data: &[u8]| roomcast_fuzz::ws_decoder(data));
}
