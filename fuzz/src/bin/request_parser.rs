//! AFL target: `roomcast_fuzz::request_parser` (what it feeds and checks: fuzz/src/targets.rs).
fn main() {
    afl::fuzz!(|data: &[u8]| roomcast_fuzz::request_parser(data));
}
