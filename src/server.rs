//! Wiring of one node: runtimes, room shards, the HTTP server, signals and shutdown.
//!
//! Threads: the actix system runs on the main thread and starts `workers` HTTP worker threads
//! (each a single-threaded runtime running its connections' actors and writers). Room shards
//! run on a separate multi-threaded tokio runtime ("core"), so routing work and, later, cluster
//! I/O never wait behind busy connection actors. The two sides talk through bounded channels.
//!
//! Shutdown (SIGTERM or SIGINT): `/readyz` turns 503 and `/ws` refuses upgrades (HTTP is still
//! served so probes get an answer), every client is closed with 1001, and the process exits 0 once they are
//! gone or `shutdown_timeout` has passed, whichever comes first.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Recipient;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Config;
use crate::ids::{ConnId, NodeId};
use crate::metrics as m;
use crate::rooms::{NoPeers, Shards};
use crate::routing::{HistoryLimits, RouterConfig};
use crate::session::{CloseNow, CloseReason, Outbox};

/// The live connections of this node: for the connection count, `max_connections` and
/// closing everyone on shutdown. Touched on connect and disconnect only.
#[derive(Default)]
pub struct ConnRegistry {
    conns: Mutex<HashMap<ConnId, (Recipient<CloseNow>, Outbox)>>,
    count: AtomicUsize,
}

impl ConnRegistry {
    pub fn register(&self, id: ConnId, actor: Recipient<CloseNow>, outbox: Outbox) {
        let mut g = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        g.insert(id, (actor, outbox));
        self.count.store(g.len(), Ordering::Release);
        m::connections(1.0);
    }

    pub fn unregister(&self, id: ConnId) {
        let mut g = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if g.remove(&id).is_some() {
            m::connections(-1.0);
        }
        self.count.store(g.len(), Ordering::Release);
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts closing every connection with `reason`.
    pub fn close_all(&self, reason: CloseReason) {
        let g = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        for (actor, outbox) in g.values() {
            outbox.close(reason);
            actor.do_send(CloseNow(reason));
        }
    }
}

/// Everything a request handler or connection actor needs from its node.
pub struct NodeContext {
    pub node_id: NodeId,
    pub config: Arc<Config>,
    pub shards: Shards,
    pub conns: ConnRegistry,
    /// False once shutdown began: `/readyz` says 503 and `/ws` refuses upgrades.
    pub accepting: AtomicBool,
    pub metrics: PrometheusHandle,
    /// The HTTP address actually bound (differs from the config with port 0).
    pub http_addr: Mutex<Option<SocketAddr>>,
    pub started: Instant,
}

impl NodeContext {
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    /// The HTTP address peers and clients should use for this node.
    pub fn advertised_http(&self) -> String {
        let bound = self
            .http_addr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(self.config.listen);
        match &self.config.advertise {
            Some(host) => format!("{}:{}", host, bound.port()),
            None => bound.to_string(),
        }
    }
}

/// Why the node could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("metrics recorder: {0}")]
    Metrics(String),
    #[error("cannot start the core runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// Runs a node until it is told to stop (SIGTERM/SIGINT). Blocks the calling thread.
pub fn run(config: Config) -> Result<(), ServerError> {
    let config = Arc::new(config);
    let metrics = m::install().map_err(ServerError::Metrics)?;
    let node_id = config.node_id();
    let core = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.shard_count().clamp(1, 4))
        .thread_name("roomcast-core")
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    let router_cfg = RouterConfig {
        history: HistoryLimits {
            max_messages: config.history_max_messages,
            max_age_ms: config.history_max_age.as_millis() as u64,
            max_bytes: config.history_max_bytes,
        },
        request_timeout_us: config.request_timeout.as_micros() as u64,
    };
    let shards = Shards::start(
        config.shard_count(),
        node_id.clone(),
        router_cfg,
        core.handle(),
        Arc::new(NoPeers),
    );
    let node = Arc::new(NodeContext {
        node_id: node_id.clone(),
        config: config.clone(),
        shards,
        conns: ConnRegistry::default(),
        accepting: AtomicBool::new(true),
        metrics,
        http_addr: Mutex::new(None),
        started: Instant::now(),
    });

    let system = actix_web::rt::System::new();
    let result = system.block_on(serve_http(node.clone()));
    core.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve_http(node: Arc<NodeContext>) -> Result<(), ServerError> {
    let cfg = node.config.clone();
    let app_node = node.clone();
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(actix_web::web::Data::from(app_node.clone()))
            .configure(crate::http::routes)
    })
    .workers(cfg.worker_threads())
    .backlog(4096)
    .max_connections(cfg.max_connections.max(1))
    .disable_signals()
    .shutdown_timeout(cfg.shutdown_timeout.as_secs().max(1))
    .bind(cfg.listen)
    .map_err(|source| ServerError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let bound = server.addrs().first().copied().unwrap_or(cfg.listen);
    *node.http_addr.lock().unwrap_or_else(|p| p.into_inner()) = Some(bound);
    tracing::info!(
        node = %node.node_id,
        http = %bound,
        workers = cfg.worker_threads(),
        shards = node.shards.len(),
        "listening"
    );
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(shutdown_on_signal(node, handle));
    server.await.map_err(ServerError::Http)
}

async fn shutdown_on_signal(node: Arc<NodeContext>, server: actix_web::dev::ServerHandle) {
    wait_for_signal().await;
    let timeout = node.config.shutdown_timeout;
    tracing::info!(connections = node.conns.len(), ?timeout, "shutting down");
    let deadline = Instant::now() + timeout;
    // Keep accepting HTTP so probes get a clean 503 from /readyz; /ws refuses upgrades now.
    node.accepting.store(false, Ordering::Release);
    node.conns.close_all(CloseReason::Shutdown);
    while !node.conns.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give writers a moment to put the close frames on the wire.
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::sleep(left.min(Duration::from_millis(200))).await;
    tracing::info!(remaining = node.conns.len(), "stopped");
    server.stop(false).await;
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
