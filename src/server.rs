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
use tokio::sync::watch;

use crate::cluster::{ClusterSecret, ClusterView, Membership, MembershipConfig};
use crate::config::Config;
use crate::ids::{ConnId, NodeId};
use crate::internode::{InternodeConfig, Peers};
use crate::metrics as m;
use crate::rooms::Shards;
use crate::routing::{HistoryLimits, Input, RouterConfig};
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
    /// True once the node has met the cluster (or waited long enough): `/readyz` needs it.
    pub cluster_ready: AtomicBool,
    pub metrics: PrometheusHandle,
    /// The advertised HTTP address (`host:port`).
    pub http_addr: String,
    /// The advertised cluster address (`host:port`).
    pub cluster_addr: String,
    /// The membership views (this node's own view of the cluster).
    pub views: watch::Receiver<Arc<ClusterView>>,
    pub membership: Membership,
    pub started: Instant,
}

impl NodeContext {
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    pub fn is_ready(&self) -> bool {
        self.is_accepting() && self.cluster_ready.load(Ordering::Acquire)
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
    #[error("cannot resolve the advertised host {host:?}: {detail}")]
    Advertise { host: String, detail: String },
    #[error(transparent)]
    Secret(#[from] crate::cluster::secret::SecretError),
    #[error(transparent)]
    Membership(#[from] crate::cluster::MembershipError),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// Runs a node until it is told to stop (SIGTERM/SIGINT). Blocks the calling thread.
pub fn run(config: Config) -> Result<(), ServerError> {
    let config = Arc::new(config);
    let metrics = m::install().map_err(ServerError::Metrics)?;
    let node_id = config.node_id();
    let secret = config
        .cluster_secret_file
        .as_deref()
        .map(ClusterSecret::from_file)
        .transpose()?;
    let core = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.shard_count().clamp(2, 4))
        .thread_name("roomcast-core")
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;

    let http_listener = bind_tcp(config.listen, 4096)?;
    let http_bound = http_listener
        .local_addr()
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let (cluster_tcp, cluster_udp) = bind_cluster(config.cluster_listen)?;
    let cluster_bound = cluster_udp
        .local_addr()
        .map_err(|source| ServerError::Bind {
            addr: config.cluster_listen,
            source,
        })?;
    let host = advertised_host(&config, http_bound)?;
    let http_addr = join_host_port(&host, http_bound.port());
    let cluster_addr = join_host_port(&host, cluster_bound.port());
    let gossip_addr = resolve(&host, cluster_bound.port())?;

    let router_cfg = RouterConfig {
        history: HistoryLimits {
            max_messages: config.history_max_messages,
            max_age_ms: config.history_max_age.as_millis() as u64,
            max_bytes: config.history_max_bytes,
        },
        request_timeout_us: config.request_timeout.as_micros() as u64,
    };
    let node = core.block_on(async {
        let membership = Membership::start(
            MembershipConfig {
                node_id: node_id.clone(),
                cluster_id: config.cluster_id.clone(),
                advertise: gossip_addr,
                http: http_addr.clone(),
                seeds: config.seed.clone(),
                gossip_interval: config.gossip_interval,
                failure_timeout: config.failure_timeout,
                secret: secret.clone(),
            },
            cluster_udp,
        )
        .await?;
        let peers = Peers::new(
            InternodeConfig {
                me: node_id.clone(),
                generation: membership.generation(),
                cluster_id: config.cluster_id.clone(),
                advertise: cluster_addr.clone(),
                secret,
            },
            tokio::runtime::Handle::current(),
        );
        let shards = Shards::start(
            config.shard_count(),
            node_id.clone(),
            router_cfg,
            &tokio::runtime::Handle::current(),
            Arc::new(peers.clone()),
        );
        peers.set_shards(shards.clone());
        cluster_tcp
            .set_nonblocking(true)
            .map_err(|source| ServerError::Bind {
                addr: config.cluster_listen,
                source,
            })?;
        let listener =
            tokio::net::TcpListener::from_std(cluster_tcp).map_err(|source| ServerError::Bind {
                addr: config.cluster_listen,
                source,
            })?;
        tokio::spawn(crate::internode::serve(listener, peers.clone()));
        let node = Arc::new(NodeContext {
            node_id: node_id.clone(),
            config: config.clone(),
            shards,
            conns: ConnRegistry::default(),
            accepting: AtomicBool::new(true),
            cluster_ready: AtomicBool::new(config.seed.is_empty()),
            metrics,
            http_addr: http_addr.clone(),
            cluster_addr: cluster_addr.clone(),
            views: membership.views(),
            membership,
            started: Instant::now(),
        });
        tokio::spawn(follow_membership(node.clone(), peers));
        tokio::spawn(publish_load(node.clone()));
        Ok::<_, ServerError>(node)
    })?;
    tracing::info!(
        node = %node_id,
        http = %http_bound,
        cluster = %cluster_bound,
        advertise_http = %http_addr,
        advertise_cluster = %cluster_addr,
        workers = config.worker_threads(),
        shards = node.shards.len(),
        "listening"
    );

    let system = actix_web::rt::System::new();
    let result = system.block_on(serve_http(node.clone(), http_listener));
    core.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Feeds membership changes to the links and the routers, and marks the node ready once it
/// has met the cluster.
async fn follow_membership(node: Arc<NodeContext>, peers: Peers) {
    let mut views = node.views.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let view = views.borrow_and_update().clone();
        peers.update_view(&view);
        let mut eligible = view.eligible_owners();
        if !eligible.contains(&node.node_id) && node.is_accepting() {
            eligible.push(node.node_id.clone());
        }
        node.shards
            .broadcast(|| Input::Members(eligible.clone()))
            .await;
        if view.live().count() > 1 {
            node.cluster_ready.store(true, Ordering::Release);
        }
        tokio::select! {
            r = views.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(deadline), if !node.cluster_ready.load(Ordering::Acquire) => {
                tracing::warn!("no other cluster member found yet; serving anyway");
                node.cluster_ready.store(true, Ordering::Release);
            }
        }
    }
}

/// Publishes this node's connection count in gossip (for load-aware clients and dashboards).
async fn publish_load(node: Arc<NodeContext>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        node.membership.set_connections(node.conns.len()).await;
    }
}

/// Binds a TCP listener with a deep accept backlog (connect storms).
fn bind_tcp(addr: SocketAddr, backlog: i32) -> Result<std::net::TcpListener, ServerError> {
    let err = |source| ServerError::Bind { addr, source };
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(err)?;
    sock.set_reuse_address(true).map_err(err)?;
    sock.bind(&addr.into()).map_err(err)?;
    sock.listen(backlog).map_err(err)?;
    Ok(sock.into())
}

/// Binds the cluster port: TCP (internode) and UDP (gossip) on the same port number. With port
/// 0 a free port for both is searched.
fn bind_cluster(
    addr: SocketAddr,
) -> Result<(std::net::TcpListener, std::net::UdpSocket), ServerError> {
    let mut last = None;
    for _ in 0..32 {
        let tcp = bind_tcp(addr, 1024)?;
        let port = tcp
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?
            .port();
        match std::net::UdpSocket::bind(SocketAddr::new(addr.ip(), port)) {
            Ok(udp) => return Ok((tcp, udp)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(source) => return Err(ServerError::Bind { addr, source }),
        }
    }
    Err(ServerError::Bind {
        addr,
        source: last.unwrap_or_else(|| std::io::Error::other("no free port")),
    })
}

/// The host peers and clients should use: `--advertise`, else the listen IP.
fn advertised_host(config: &Config, http: SocketAddr) -> Result<String, ServerError> {
    if let Some(h) = &config.advertise {
        return Ok(h.clone());
    }
    // Config::validate requires --advertise when the cluster listens on all interfaces.
    let _ = http;
    Ok(config.cluster_listen.ip().to_string())
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, ServerError> {
    use std::net::ToSocketAddrs;
    let err = |detail: String| ServerError::Advertise {
        host: host.to_string(),
        detail,
    };
    join_host_port(host, port)
        .to_socket_addrs()
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no address".into()))
}

async fn serve_http(
    node: Arc<NodeContext>,
    listener: std::net::TcpListener,
) -> Result<(), ServerError> {
    let cfg = node.config.clone();
    let app_node = node.clone();
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(actix_web::web::Data::from(app_node.clone()))
            .configure(crate::http::routes)
    })
    .workers(cfg.worker_threads())
    .max_connections(cfg.max_connections.max(1))
    .disable_signals()
    .shutdown_timeout(cfg.shutdown_timeout.as_secs().max(1))
    .listen(listener)
    .map_err(ServerError::Http)?
    .run();
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
