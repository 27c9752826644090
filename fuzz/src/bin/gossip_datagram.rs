//! AFL target: `roomcast_fuzz::gossip_datagram` (what it feeds and checks: fuzz/src/targets.rs).
fn main() {
    afl::fuzz!(|data: &[u8]| roomcast_fuzz::gossip_datagram(data));
}
