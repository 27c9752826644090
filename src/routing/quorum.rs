//! The partition rule: a node sequences only while it sees a majority of the cluster's last
//! *stable* membership.
//!
//! Why. Replication makes an owner wait for its replicas before it acknowledges anything, but
//! a node cut off from the rest of the cluster sees the others as dead: its view holds only
//! the nodes on its side, so it owns every room, its replica set is whatever is on its side
//! (possibly nothing) and it would commit alone — while the other side promotes the same
//! rooms' replicas and commits too. Two messages with one `(epoch, seq)`. So sequencing needs
//! a quorum, the way Raft needs a majority of its configuration.
//!
//! The rule. The *stable membership* is the live set once it has stayed unchanged for
//! [`STABLE_AFTER_US`] while the node had a quorum (and the first view a node gets). A node
//! has a quorum when it sees (itself included) more than half of the stable membership, or
//! exactly half including the stable membership's lowest node id (the tie-break that lets a
//! 2-node cluster keep one side). Since only a node with a quorum moves the stable membership,
//! a minority can never vote itself a majority: after a partition only one side keeps one.
//! A member that announced it was draining and then left is removed from the stable
//! membership at once (it left on purpose; scaling in by draining never costs the quorum).
//!
//! Without a quorum a node is *fenced*: it forgets the rooms it owned and the replica copies it
//! held (the other side has taken them over, or — if it still sees this node — gets them back
//! from their replicas when the partition heals, in the same epoch), refuses owner-bound
//! requests, and answers its clients' joins, publishes and history reads with `unavailable`.
//! Subscribers stay connected; their feeds resync when the views heal. A fenced node's
//! messages that were sequenced and not committed were never acknowledged. On heal it adopts
//! the majority's state through the ordinary handoff and replication paths.
//!
//! What it costs: a cluster loses its quorum when more than half of its stable membership
//! fails at once (2 of 3, 3 of 5); a 2-node cluster survives losing its higher-id node only.

use super::{Action, PeerError, PeerMsg, Router};
use crate::ids::NodeId;

/// How long the live set must stay unchanged before it becomes the stable membership.
pub const STABLE_AFTER_US: u64 = 10_000_000;

/// Whether a node that sees `live` (sorted; empty = before any view) has a quorum of
/// `stable` (sorted; empty = no stable membership yet).
pub(super) fn has_quorum(stable: &[NodeId], live: &[NodeId], me: &NodeId) -> bool {
    if stable.is_empty() || live.is_empty() {
        return true;
    }
    let seen = stable
        .iter()
        .filter(|n| *n == me || live.binary_search(n).is_ok())
        .count();
    let n = stable.len();
    2 * seen > n
        || (2 * seen == n && {
            let lowest = &stable[0];
            lowest == me || live.binary_search(lowest).is_ok()
        })
}

impl<H: Clone> Router<H> {
    /// Whether this node may sequence now (see the module note).
    pub fn has_quorum(&self) -> bool {
        self.quorum
    }

    /// The cluster's last stable membership as this node knows it.
    pub fn stable_membership(&self) -> &[NodeId] {
        &self.stable
    }

    /// After a view change: members that announced a drain and left leave the stable
    /// membership at once; the first view with owners in it is stable at once.
    pub(super) fn view_changed_quorum(
        &mut self,
        left_draining: &[NodeId],
        out: &mut Vec<Action<H>>,
    ) {
        if self.quorum {
            self.stable.retain(|n| !left_draining.contains(n));
        }
        // The first stable membership is the view in which this node itself may own rooms: a
        // node becomes eligible only once its view has settled, so it is the whole cluster (a
        // starting node's first views list members one by one).
        if self.stable.is_empty() && self.members.binary_search(&self.me).is_ok() {
            self.stable = self.live_and_me();
        }
        self.check_quorum(out);
    }

    /// Why this node does not sequence now (for its clients' `unavailable`).
    pub(super) fn fenced_reason(&self) -> &'static str {
        if self.members.is_empty() {
            "this node has not joined the cluster yet (no node may own rooms in its view); retry"
        } else {
            "this node cannot reach a majority of the cluster (a network partition?); it does \
             not sequence until it can; retry, or reconnect to another node"
        }
    }

    /// On each tick: a live set unchanged for long enough, seen with a quorum, becomes the
    /// stable membership.
    pub(super) fn tick_quorum(&mut self, out: &mut Vec<Action<H>>) {
        if self.quorum
            && !self.live.is_empty()
            && self.live_and_me() != self.stable
            && self.now_us.saturating_sub(self.view_changed_us) >= STABLE_AFTER_US
        {
            tracing::info!(stable = ?self.live, "stable membership updated");
            self.stable = self.live_and_me();
        }
        self.check_quorum(out);
    }

    /// The live set with this node in it (a starting node may not see itself live yet: it is
    /// a member all the same, or a restarted node would count a majority without itself).
    fn live_and_me(&self) -> Vec<NodeId> {
        let mut v = self.live.clone();
        if let Err(i) = v.binary_search(&self.me) {
            v.insert(i, self.me.clone());
        }
        v
    }

    fn check_quorum(&mut self, out: &mut Vec<Action<H>>) {
        // A node with a view but no node in it that may own rooms (it is starting and has not
        // met the cluster yet) must not sequence either: it would own every room alone.
        let q = if self.stable.is_empty() {
            // Starting: route to the owners in view (this node owns nothing yet); with none in
            // view, wait. Before any view at all: a lone node serves.
            self.live.is_empty() || !self.members.is_empty()
        } else {
            has_quorum(&self.stable, &self.live, &self.me) && !self.members.is_empty()
        };
        if q == self.quorum {
            return;
        }
        self.quorum = q;
        if self.stable.is_empty() {
            // Starting: nothing to lose or resume yet.
            return;
        }
        if q {
            if std::mem::take(&mut self.fence_logged) {
                tracing::warn!(live = ?self.live, stable = ?self.stable, "sequencing resumes");
            }
        } else {
            self.stats.quorum_losses += 1;
            self.fence_logged = true;
            if self.members.is_empty() {
                tracing::warn!(live = ?self.live, "no node may own rooms in this node's view (all draining or not ready): it stops sequencing");
            } else {
                tracing::warn!(live = ?self.live, stable = ?self.stable, "this node sees less than a majority of the cluster: it stops sequencing until the partition heals");
            }
            self.fence(out);
        }
        // Either way the feeds' registrations with owners are in doubt: resync them (while
        // fenced the resyncs are refused and retried on ticks until the partition heals).
        self.resync_all(out);
    }

    /// Stops sequencing: forgets owned rooms and replica copies, refuses what waited for them.
    fn fence(&mut self, out: &mut Vec<Action<H>>) {
        self.replication_changed = true;
        let owned = std::mem::take(&mut self.owned);
        for (_, r) in owned {
            for (from, msg) in r.held {
                self.refuse_msg(from, &msg, PeerError::Unavailable, None, out);
            }
        }
        let pending = std::mem::take(&mut self.pending_owner);
        for (_, p) in pending {
            for (from, msg) in p.queued {
                self.refuse_msg(from, &msg, PeerError::Unavailable, None, out);
            }
        }
        self.copies.clear();
    }

    /// Refuses an owner-bound request while fenced (true: refused).
    pub(super) fn fenced(
        &mut self,
        from: &NodeId,
        msg: &PeerMsg,
        out: &mut Vec<Action<H>>,
    ) -> bool {
        if self.quorum {
            return false;
        }
        // Starting (no owner in view): "not the owner", and the requester waits for the view
        // like for a room that moves; cut off from the majority: unavailable.
        let error = if self.members.is_empty() {
            PeerError::NotOwner
        } else {
            PeerError::Unavailable
        };
        self.refuse_msg(from.clone(), msg, error, None, out);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = v.iter().map(|s| NodeId::new(s).unwrap()).collect();
        v.sort();
        v
    }

    #[test]
    fn majority_of_the_stable_membership_with_a_tie_break_on_the_lowest_id() {
        let me = |s: &str| NodeId::new(s).unwrap();
        let abc = ids(&["a", "b", "c"]);
        assert!(has_quorum(&abc, &ids(&["a", "b", "c"]), &me("a")));
        assert!(has_quorum(&abc, &ids(&["b", "c"]), &me("b")));
        assert!(!has_quorum(&abc, &ids(&["c"]), &me("c")));
        assert!(!has_quorum(&abc, &ids(&["a"]), &me("a")));
        // Two nodes: the side with the lowest id keeps the quorum.
        let ab = ids(&["a", "b"]);
        assert!(has_quorum(&ab, &ids(&["a"]), &me("a")));
        assert!(!has_quorum(&ab, &ids(&["b"]), &me("b")));
        // Four nodes split 2|2: only the side with "a".
        let abcd = ids(&["a", "b", "c", "d"]);
        assert!(has_quorum(&abcd, &ids(&["a", "d"]), &me("d")));
        assert!(!has_quorum(&abcd, &ids(&["b", "c"]), &me("b")));
        // New nodes do not count toward a stable membership they are not in yet.
        assert!(!has_quorum(&abc, &ids(&["c", "x", "y"]), &me("x")));
        // Before any view, or any stable membership: serve.
        assert!(has_quorum(&[], &ids(&["a"]), &me("a")));
        assert!(has_quorum(&abc, &[], &me("a")));
    }
}
