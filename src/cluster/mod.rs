//! Cluster membership by gossip (chitchat). This is the only module that imports chitchat; the
//! rest of the node sees a `watch` of [`ClusterView`]s.
//!
//! Each node gossips a few small key-values about itself (never rooms or connections, which
//! travel over the internode protocol): its advertised HTTP and cluster addresses, its live
//! connection count, whether it is draining, its version, and (apart from the view) its
//! dashboard numbers. Seeds are `host:port` strings,
//! resolved by DNS and re-resolved periodically by chitchat, so one DNS name that lists many
//! nodes works as the seed.
//!
//! Failure detection: chitchat's phi-accrual detector declares a node dead when the time since
//! its last heartbeat exceeds `phi_threshold` mean heartbeat intervals. We set the threshold to
//! `failure_timeout / gossip_interval`, so a silent node is reported not live after about
//! `failure_timeout` (default 5 s, ~300 ms gossip). A restarted node gets a new generation id
//! (start time in nanoseconds); peers key members by node id and keep the highest generation.

pub mod secret;
pub mod transport;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
    spawn_chitchat,
};
use tokio::sync::watch;

use crate::ids::NodeId;
use crate::metrics as m;
pub use secret::ClusterSecret;

/// Gossip keys.
const KEY_HTTP: &str = "http";
const KEY_CLUSTER: &str = "cluster";
const KEY_CONNS: &str = "conns";
const KEY_DRAINING: &str = "draining";
const KEY_VERSION: &str = "version";
const KEY_READY: &str = "ready";
const KEY_WS: &str = "ws";
/// A node's headline numbers for the dashboard (`crate::status`), JSON, rewritten every
/// second. Kept out of [`Member`] so that numbers changing every second never make a new
/// view (views drive ownership).
const KEY_STATS: &str = "stats";

/// One member as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub generation: u64,
    /// Advertised HTTP address (`host:port`).
    pub http: String,
    /// Advertised cluster address (`host:port`; gossip UDP and internode TCP).
    pub cluster: String,
    /// The WebSocket URL clients should use for this node (reconnect hints).
    pub ws: String,
    pub live: bool,
    /// The node has met the cluster and may own rooms.
    pub ready: bool,
    pub draining: bool,
    pub connections: u64,
    pub version: String,
}

/// This node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub me: NodeId,
    /// Every known member (live and recently dead), sorted by id, one entry per node id.
    pub members: Vec<Member>,
}

impl ClusterView {
    /// A view with only this node (before the first gossip round).
    pub fn alone(me: Member) -> ClusterView {
        ClusterView {
            me: me.id.clone(),
            members: vec![me],
        }
    }

    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.members
            .binary_search_by(|m| m.id.cmp(id))
            .ok()
            .map(|i| &self.members[i])
    }

    pub fn live(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.live)
    }

    /// Live members that may own rooms: ready and not draining.
    pub fn eligible_owners(&self) -> Vec<NodeId> {
        self.live()
            .filter(|m| m.ready && !m.draining)
            .map(|m| m.id.clone())
            .collect()
    }

    /// The least-loaded other member clients can be sent to (live, ready, not draining).
    pub fn reconnect_target(&self) -> Option<&Member> {
        self.live()
            .filter(|m| m.id != self.me && m.ready && !m.draining)
            .min_by_key(|m| (m.connections, m.id.clone()))
    }
}

/// What membership needs to start.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    pub node_id: NodeId,
    pub cluster_id: String,
    /// The address peers use to reach this node's gossip (and internode) port.
    pub advertise: SocketAddr,
    /// Advertised HTTP address.
    pub http: String,
    /// WebSocket URL for clients (reconnect hints).
    pub ws: String,
    pub seeds: Vec<String>,
    pub gossip_interval: Duration,
    pub failure_timeout: Duration,
    pub secret: Option<ClusterSecret>,
}

/// Why membership could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start gossip: {0}")]
pub struct MembershipError(String);

/// A running membership.
pub struct Membership {
    handle: ChitchatHandle,
    view: watch::Receiver<Arc<ClusterView>>,
    generation: u64,
}

impl Membership {
    /// Starts gossip on `socket` (already bound to the cluster port). Must run on the core
    /// runtime: chitchat's loop is spawned on the current runtime.
    pub async fn start(
        cfg: MembershipConfig,
        socket: std::net::UdpSocket,
    ) -> Result<Membership, MembershipError> {
        let generation = crate::now_us().saturating_mul(1000);
        let listen_addr = socket
            .local_addr()
            .map_err(|e| MembershipError(e.to_string()))?;
        let id = ChitchatId::new(cfg.node_id.as_str(), generation, cfg.advertise);
        let gossip_ms = cfg.gossip_interval.as_secs_f64().max(0.001);
        let config = ChitchatConfig {
            chitchat_id: id,
            cluster_id: cfg.cluster_id.clone(),
            gossip_interval: cfg.gossip_interval,
            listen_addr,
            seed_nodes: cfg.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: (cfg.failure_timeout.as_secs_f64() / gossip_ms).max(2.0),
                sampling_window_size: 1000,
                max_interval: cfg.failure_timeout,
                initial_interval: cfg.gossip_interval,
                dead_node_grace_period: Duration::from_secs(600),
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: Some(Box::new(|state| {
                state.get(KEY_HTTP).is_some() && state.get(KEY_CLUSTER).is_some()
            })),
            protocol_version: ProtocolVersion::V0,
        };
        let kvs = vec![
            (KEY_HTTP.to_string(), cfg.http.clone()),
            (KEY_CLUSTER.to_string(), cfg.advertise.to_string()),
            (KEY_CONNS.to_string(), "0".to_string()),
            (KEY_DRAINING.to_string(), "false".to_string()),
            (KEY_READY.to_string(), "false".to_string()),
            (KEY_WS.to_string(), cfg.ws.clone()),
            (
                KEY_VERSION.to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
        ];
        let transport = transport::AuthUdpTransport::new(socket, cfg.secret.clone());
        let handle = spawn_chitchat(config, kvs, &transport)
            .await
            .map_err(|e| MembershipError(format!("{e:#}")))?;
        let me = Member {
            id: cfg.node_id.clone(),
            generation,
            http: cfg.http.clone(),
            cluster: cfg.advertise.to_string(),
            ws: cfg.ws.clone(),
            live: true,
            ready: false,
            draining: false,
            connections: 0,
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let (tx, view) = watch::channel(Arc::new(ClusterView::alone(me)));
        tokio::spawn(watch_views(handle.chitchat(), cfg, tx));
        Ok(Membership {
            handle,
            view,
            generation,
        })
    }

    /// Member views; the latest is always available, and `changed()` wakes on every change.
    pub fn views(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Publishes this node's live connection count.
    pub async fn set_connections(&self, n: usize) {
        self.set(KEY_CONNS, n.to_string()).await;
    }

    /// Publishes this node's dashboard numbers (opaque here; `crate::status` writes them).
    pub async fn set_stats(&self, stats: String) {
        self.set(KEY_STATS, stats).await;
    }

    /// Every member's last gossiped dashboard numbers (newest incarnation per node id).
    pub async fn member_stats(&self) -> BTreeMap<NodeId, String> {
        self.handle
            .with_chitchat(|c| {
                let mut by_id: BTreeMap<NodeId, (u64, String)> = BTreeMap::new();
                for (cid, state) in c.node_states() {
                    let (Ok(id), Some(stats)) = (NodeId::new(&cid.node_id), state.get(KEY_STATS))
                    else {
                        continue;
                    };
                    if by_id.get(&id).is_none_or(|(g, _)| *g < cid.generation_id) {
                        by_id.insert(id, (cid.generation_id, stats.to_string()));
                    }
                }
                by_id.into_iter().map(|(id, (_, s))| (id, s)).collect()
            })
            .await
    }

    /// Publishes that this node has met the cluster and may own rooms.
    pub async fn set_ready(&self, ready: bool) {
        self.set(KEY_READY, ready.to_string()).await;
    }

    /// Publishes whether this node is draining.
    pub async fn set_draining(&self, draining: bool) {
        self.set(KEY_DRAINING, draining.to_string()).await;
    }

    async fn set(&self, key: &str, value: String) {
        self.handle
            .with_chitchat(|c| {
                let state = c.self_node_state();
                if state.get(key) != Some(value.as_str()) {
                    state.set(key, value.clone());
                }
            })
            .await;
    }

    /// Stops gossiping (peers then see this node as dead after their failure timeout).
    pub async fn shutdown(&self) {
        let _ = self.handle.initiate_shutdown();
    }
}

/// Rebuilds the view when chitchat reports a change, and at least every gossip interval (dead
/// nodes and key-value updates are not all notified), publishing it when it differs.
async fn watch_views(
    chitchat: Arc<tokio::sync::Mutex<chitchat::Chitchat>>,
    cfg: MembershipConfig,
    tx: watch::Sender<Arc<ClusterView>>,
) {
    let mut live_watch = chitchat.lock().await.live_nodes_watcher();
    let mut tick = tokio::time::interval(cfg.gossip_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Nodes chitchat lists as dead before they were ever live here are not members yet.
    let mut seen_live: std::collections::HashSet<NodeId> = std::collections::HashSet::new();
    loop {
        tokio::select! {
            r = live_watch.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
        let mut view = {
            let c = chitchat.lock().await;
            build_view(&c, &cfg.node_id)
        };
        for mbr in view.live() {
            seen_live.insert(mbr.id.clone());
        }
        view.members
            .retain(|mbr| mbr.live || seen_live.contains(&mbr.id));
        let old = tx.borrow().clone();
        if *old != view {
            log_changes(&old, &view);
            let live = view.live().count();
            metrics::gauge!(m::CLUSTER_MEMBERS, "state" => "live").set(live as f64);
            metrics::gauge!(m::CLUSTER_MEMBERS, "state" => "dead")
                .set((view.members.len() - live) as f64);
            if tx.send(Arc::new(view)).is_err() {
                return;
            }
        }
    }
}

fn build_view(c: &chitchat::Chitchat, me: &NodeId) -> ClusterView {
    // Highest generation per node id wins; it is live if that incarnation is live.
    let mut by_id: BTreeMap<NodeId, Member> = BTreeMap::new();
    let mut consider = |cid: &ChitchatId, live: bool| {
        let Ok(id) = NodeId::new(&cid.node_id) else {
            return;
        };
        let Some(state) = c.node_state(cid) else {
            return;
        };
        let (Some(http), Some(cluster)) = (state.get(KEY_HTTP), state.get(KEY_CLUSTER)) else {
            return; // Not fully announced yet.
        };
        let member = Member {
            id: id.clone(),
            generation: cid.generation_id,
            http: http.to_string(),
            cluster: cluster.to_string(),
            ws: state.get(KEY_WS).unwrap_or("").to_string(),
            live,
            ready: state.get(KEY_READY) == Some("true"),
            draining: state.get(KEY_DRAINING) == Some("true"),
            connections: state
                .get(KEY_CONNS)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            version: state.get(KEY_VERSION).unwrap_or("").to_string(),
        };
        match by_id.get(&id) {
            Some(old)
                if old.generation > member.generation
                    || (old.generation == member.generation && old.live) => {}
            _ => {
                by_id.insert(id, member);
            }
        }
    };
    for cid in c.live_nodes() {
        consider(cid, true);
    }
    for cid in c.dead_nodes() {
        consider(cid, false);
    }
    ClusterView {
        me: me.clone(),
        members: by_id.into_values().collect(),
    }
}

fn log_changes(old: &ClusterView, new: &ClusterView) {
    for m in &new.members {
        match old.member(&m.id) {
            None if m.live => {
                tracing::info!(member = %m.id, http = %m.http, cluster = %m.cluster, "member joined")
            }
            Some(o) if o.generation != m.generation && m.live => {
                tracing::info!(member = %m.id, "member restarted (new generation)")
            }
            Some(o) if o.live && !m.live => {
                tracing::warn!(member = %m.id, "member is not live (failure detected)")
            }
            Some(o) if !o.live && m.live => tracing::info!(member = %m.id, "member is live again"),
            None => {}
            Some(o) if !o.draining && m.draining => {
                tracing::info!(member = %m.id, "member is draining")
            }
            _ => {}
        }
    }
    for o in &old.members {
        if new.member(&o.id).is_none() {
            tracing::info!(member = %o.id, "member forgotten");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, live: bool, draining: bool) -> Member {
        Member {
            id: NodeId::new(id).unwrap(),
            generation: 1,
            http: String::new(),
            cluster: String::new(),
            ws: String::new(),
            live,
            ready: true,
            draining,
            connections: 0,
            version: String::new(),
        }
    }

    #[test]
    fn eligible_owners_are_live_and_not_draining() {
        let v = ClusterView {
            me: NodeId::new("a").unwrap(),
            members: vec![
                member("a", true, false),
                member("b", true, true),
                member("c", false, false),
                member("d", true, false),
            ],
        };
        let ids: Vec<String> = v.eligible_owners().iter().map(|n| n.to_string()).collect();
        assert_eq!(ids, vec!["a", "d"]);
        assert!(v.member(&NodeId::new("c").unwrap()).is_some());
        assert_eq!(v.live().count(), 3);
    }
}
