//! AFL target: `roomcast_fuzz::internode_codec` (what it feeds and checks: fuzz/src/targets.rs).
fn main() {
    afl::fuzz!(|data: &[u8]| roomcast_fuzz::internode_codec(data));
}
