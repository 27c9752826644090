//! Rendezvous (highest random weight) hashing: which live member owns a room.
//!
//! The owner of room `r` among members `M` is the member `m` with the highest
//! `weight(r, m)`; ties (practically impossible) go to the smaller node id. When a member joins
//! or leaves, only the rooms whose highest weight moves change owner (about 1/N of them), and
//! every node computes the same answer from the same member list with no coordination.
//!
//! The weight function is specified here, not borrowed from `std` (whose hasher may change
//! between Rust releases), because nodes built by different compilers must agree:
//! `weight(r, m) = mix64(fnv1a64(r) ^ mix64(fnv1a64(m)))`, with FNV-1a 64 and the SplitMix64
//! finaliser as `mix64`. The ranked list (the order of all members by weight) also names the
//! successor that later issues use as a room's replica.

use crate::ids::{NodeId, RoomId};

pub use crate::ids::fnv1a64;

/// SplitMix64 finaliser: spreads every input bit over the output.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The weight of `node` for `room`.
pub fn weight(room: &RoomId, node: &NodeId) -> u64 {
    mix64(fnv1a64(room.as_str().as_bytes()) ^ mix64(fnv1a64(node.as_str().as_bytes())))
}

/// The owner of `room` among `members`, or `None` if there are none.
pub fn owner<'a>(room: &RoomId, members: &'a [NodeId]) -> Option<&'a NodeId> {
    let rh = fnv1a64(room.as_str().as_bytes());
    members.iter().max_by(|a, b| {
        let wa = mix64(rh ^ mix64(fnv1a64(a.as_str().as_bytes())));
        let wb = mix64(rh ^ mix64(fnv1a64(b.as_str().as_bytes())));
        // Higher weight wins; on a tie the smaller id wins (so it must compare "greater").
        wa.cmp(&wb).then_with(|| b.cmp(a))
    })
}

/// All `members` ranked for `room`, owner first.
pub fn ranked(room: &RoomId, members: &[NodeId]) -> Vec<NodeId> {
    let mut v: Vec<(u64, &NodeId)> = members.iter().map(|m| (weight(room, m), m)).collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    v.into_iter().map(|(_, m)| m.clone()).collect()
}

/// Which shard of this node handles `room` (node-local; not part of the wire contract).
pub fn shard_of(room: &RoomId, shards: usize) -> usize {
    (mix64(fnv1a64(room.as_str().as_bytes())) % shards.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<NodeId> {
        (0..n)
            .map(|i| NodeId::new(&format!("node-{i}")).unwrap())
            .collect()
    }

    #[test]
    fn known_vectors_stay_fixed() {
        // These values are part of the cluster's contract: nodes of different builds must agree.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let r = RoomId::new("lobby").unwrap();
        let n = nodes(3);
        let o = owner(&r, &n).unwrap().clone();
        assert_eq!(ranked(&r, &n)[0], o);
    }

    #[test]
    fn owner_is_independent_of_member_order() {
        let mut n = nodes(5);
        let r = RoomId::new("room-x").unwrap();
        let o1 = owner(&r, &n).cloned();
        n.reverse();
        assert_eq!(owner(&r, &n).cloned(), o1);
    }

    #[test]
    fn spreads_rooms_and_moves_few_on_change() {
        let n = nodes(4);
        let rooms: Vec<RoomId> = (0..4000)
            .map(|i| RoomId::new(&format!("r{i}")).unwrap())
            .collect();
        let mut count = [0usize; 4];
        for r in &rooms {
            let o = owner(r, &n).unwrap();
            count[n.iter().position(|x| x == o).unwrap()] += 1;
        }
        for c in count {
            assert!((700..1300).contains(&c), "unbalanced: {count:?}");
        }
        // Removing one node moves only its rooms.
        let fewer = &n[..3];
        for r in &rooms {
            let before = owner(r, &n).unwrap();
            let after = owner(r, fewer).unwrap();
            if before != &n[3] {
                assert_eq!(before, after);
            }
        }
    }

    #[test]
    fn empty_members_have_no_owner() {
        assert!(owner(&RoomId::new("a").unwrap(), &[]).is_none());
    }
}
