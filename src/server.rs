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

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::auth::{ApiKeys, AuthMode, KeyFiles, Verifier};
use crate::cluster::{ClusterSecret, ClusterView, Membership, MembershipConfig};
use crate::config::Config;
use crate::delivery::Workers;
use crate::ids::NodeId;
use crate::internode::{Control, InternodeConfig, Peers};
use crate::metrics as m;
use crate::node::{ConnRegistry, NodeContext};
use crate::protocol::CloseReason;
use crate::rooms::Shards;
use crate::routing::{HistoryLimits, Input, RouterConfig};
use crate::tls::CertStore;

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
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthConfigError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// A node-wide request from a peer (`internode::Control`).
fn on_control(node: Arc<NodeContext>, from: NodeId, c: Control) {
    match c {
        Control::Disconnect { user, reason } => {
            let n = node.conns.close_user(&user, &reason);
            tracing::info!(%user, connections = n, "disconnected by a peer's request (server API)");
        }
        Control::RoomsQuery {
            id,
            prefix,
            after,
            limit,
        } => {
            let limit = (limit as usize).min(crate::api::MAX_ROOMS_PAGE);
            tokio::spawn(async move {
                let rooms = node.shards.local_rooms(&prefix, &after, limit).await;
                node.peers
                    .send_control(&from, Control::RoomsReply { id, rooms });
            });
        }
        Control::RoomsReply { id, .. } => {
            let waiting = node
                .control_replies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .cloned();
            if let Some(tx) = waiting {
                // Room for one answer per peer asked; more (a peer answering twice) is dropped.
                let _ = tx.try_send((from, c));
            }
        }
    }
}

/// Reads the client token keys and the server API keys the config names.
fn load_auth(config: &Config) -> Result<(Option<Verifier>, Option<ApiKeys>), ServerError> {
    let verifier = match config.auth {
        AuthMode::Off => {
            if !config.listen.ip().is_loopback() {
                tracing::warn!(
                    listen = %config.listen,
                    "auth is off and the node listens beyond loopback: anyone who can reach it may join any room and publish; set auth = required (docs/protocol.md, \"Authentication\")"
                );
            }
            None
        }
        AuthMode::Optional | AuthMode::Required => Some(Verifier::from_files(&KeyFiles {
            jwt_secret_file: config.jwt_secret_file.clone(),
            jwt_public_key_file: config.jwt_public_key_file.clone(),
            jwks_file: config.jwks_file.clone(),
        })?),
    };
    let api_keys = match &config.api_keys_file {
        Some(path) => Some(ApiKeys::from_file(path)?),
        None => None,
    };
    Ok((verifier, api_keys))
}

/// Reads the client TLS certificate and key when the config names them.
fn load_tls(config: &Config) -> Result<Option<Arc<CertStore>>, ServerError> {
    let files = crate::tls::files_from(
        config.tls_cert_file.as_deref(),
        config.tls_key_file.as_deref(),
    )
    .map_err(crate::tls::TlsError::Config)?;
    Ok(files.map(CertStore::load).transpose()?)
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

    let (verifier, api_keys) = load_auth(&config)?;
    let tls = load_tls(&config)?;
    let ws_scheme = if tls.is_some() { "wss" } else { "ws" };
    let router_cfg = RouterConfig {
        history: HistoryLimits {
            max_messages: config.history_max_messages,
            max_age_ms: config.history_max_age.as_millis() as u64,
            max_bytes: config.history_max_bytes,
        },
        request_timeout_us: config.request_timeout.as_micros() as u64,
        replicas: config.room_replicas,
        presence_max: config.presence_max_per_room,
        // Each shard's router creates rooms up to its even share of the node's limit.
        max_rooms: config.max_rooms.div_ceil(config.shard_count()),
    };
    let node = core.block_on(async {
        let membership = Membership::start(
            MembershipConfig {
                node_id: node_id.clone(),
                cluster_id: config.cluster_id.clone(),
                advertise: gossip_addr,
                http: http_addr.clone(),
                ws: config
                    .public_url
                    .clone()
                    .unwrap_or_else(|| format!("{ws_scheme}://{http_addr}/ws")),
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
                encryption: config.internode_encryption,
            },
            tokio::runtime::Handle::current(),
        );
        let workers = Workers::new(config.worker_threads());
        let shards = Shards::start(
            config.shard_count(),
            node_id.clone(),
            router_cfg,
            &tokio::runtime::Handle::current(),
            Arc::new(peers.clone()),
            workers.clone(),
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
            workers,
            conns: ConnRegistry::default(),
            accepting: AtomicBool::new(true),
            cluster_ready: AtomicBool::new(config.seed.is_empty()),
            metrics,
            http_addr: http_addr.clone(),
            cluster_addr: cluster_addr.clone(),
            views: membership.views(),
            view_nudge: tokio::sync::Notify::new(),
            peers: peers.clone(),
            membership,
            started: Instant::now(),
            verifier,
            api_keys,
            control_replies: Default::default(),
            assets: crate::assets::Assets::build(config.asset_base_url.as_deref()),
            admission: crate::admission::Admission::new(
                config.max_connections_per_ip,
                config.max_pending_handshakes,
            ),
        });
        let weak = Arc::downgrade(&node);
        peers.set_control_hook(Box::new(move |from, c| {
            if let Some(node) = weak.upgrade() {
                on_control(node, from, c);
            }
        }));
        tokio::spawn(follow_membership(node.clone(), peers));
        tokio::spawn(crate::status::run_sampler(node.clone()));
        Ok::<_, ServerError>(node)
    })?;
    tracing::info!(
        node = %node_id,
        http = %http_bound,
        tls = tls.is_some(),
        cluster = %cluster_bound,
        advertise_http = %http_addr,
        advertise_cluster = %cluster_addr,
        workers = config.worker_threads(),
        shards = node.shards.len(),
        "listening"
    );

    let system = actix_web::rt::System::new();
    let result = system.block_on(serve_http(node.clone(), http_listener, tls));
    core.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Feeds membership changes to the links and the routers, and marks the node ready (in
/// gossip too) once it has met the cluster: only ready nodes own rooms, so a node that just
/// started never sequences a room it has not looked up with the others first.
///
/// "Met the cluster" means: other members are live and the live set has not changed for
/// [`settle_time`]. Gossip reveals members one by one; a node that counted itself an owner
/// after seeing only some of them would look for its rooms' state on too few nodes.
async fn follow_membership(node: Arc<NodeContext>, peers: Peers) {
    let mut views = node.views.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let settle = settle_time(node.config.gossip_interval);
    let mut announced = false;
    let mut live_ids: Vec<NodeId> = Vec::new();
    let mut live_since = tokio::time::Instant::now();
    loop {
        let view = views.borrow_and_update().clone();
        peers.update_view(&view);
        let mut ids: Vec<NodeId> = view.live().map(|m| m.id.clone()).collect();
        ids.sort();
        if ids != live_ids {
            live_ids = ids;
            live_since = tokio::time::Instant::now();
        }
        let settled = live_ids.len() > 1 && live_since.elapsed() >= settle;
        if settled {
            node.cluster_ready.store(true, Ordering::Release);
        }
        // The routers learn first, gossip second: once a peer can see this node ready (and
        // send it requests, or ask it for rooms), its own routers already count it an owner.
        apply_view(&node, &view).await;
        if node.cluster_ready.load(Ordering::Acquire) && !announced {
            node.membership.set_ready(true).await;
            announced = true;
        }
        let waiting = !node.cluster_ready.load(Ordering::Acquire);
        tokio::select! {
            r = views.changed() => if r.is_err() { return },
            _ = node.view_nudge.notified() => {}
            // Look again once the live set may have settled.
            _ = tokio::time::sleep_until(live_since + settle), if waiting && live_ids.len() > 1 => {}
            _ = tokio::time::sleep_until(deadline), if waiting => {
                if live_ids.len() <= 1 && !node.config.seed.is_empty() {
                    tracing::warn!("no other cluster member found yet; serving alone");
                }
                node.cluster_ready.store(true, Ordering::Release);
            }
        }
    }
}

/// How long the live set must stay the same before a starting node counts itself an owner.
fn settle_time(gossip_interval: Duration) -> Duration {
    (gossip_interval * 3).max(Duration::from_millis(500))
}

/// Tells the routers who may own rooms now. This node counts while it is ready and not
/// draining, whatever gossip has said about it so far.
async fn apply_view(node: &NodeContext, view: &ClusterView) {
    let mut eligible: Vec<NodeId> = view
        .eligible_owners()
        .into_iter()
        .filter(|n| *n != node.node_id)
        .collect();
    if node.is_ready() {
        eligible.push(node.node_id.clone());
    }
    let live: Vec<NodeId> = view.live().map(|m| m.id.clone()).collect();
    node.shards
        .broadcast(|| Input::View {
            eligible: eligible.clone(),
            live: live.clone(),
        })
        .await;
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

/// Serves HTTP on actix-server: actix-http's HTTP/1 service with the actix-web `App` for the
/// routes and, for WebSocket upgrades, the upgrade service that takes the socket out of the
/// HTTP layer (`http::upgrade`). With a certificate, over TLS (rustls) only: `https://`,
/// `wss://`; the certificate is read again on SIGHUP (`crate::tls`).
async fn serve_http(
    node: Arc<NodeContext>,
    listener: std::net::TcpListener,
    tls: Option<Arc<CertStore>>,
) -> Result<(), ServerError> {
    use actix_service::map_config;
    use actix_web::dev::AppConfig;

    let cfg = node.config.clone();
    let app_node = node.clone();
    // The HTTP service for one worker, over the connection type the listener hands it.
    macro_rules! http_service {
        ($finish:ident) => {{
            let app = actix_web::App::new()
                .app_data(actix_web::web::Data::from(app_node.clone()))
                .configure(crate::http::routes);
            let door = app_node.admission.clone();
            actix_http::HttpService::build()
                // A connection has `handshake_timeout` to send its request head (then 408).
                .client_request_timeout(cfg.handshake_timeout)
                // Counted as pending from accept (after TLS, with TLS) until it becomes a
                // WebSocket or SSE stream.
                .on_connect_ext(move |_: &_, data| {
                    data.insert(door.accepted());
                })
                .upgrade(crate::http::upgrade::WsUpgradeFactory {
                    node: app_node.clone(),
                })
                .$finish(map_config(app, |_| AppConfig::default()))
        }};
    }
    let builder = actix_server::Server::build()
        .workers(cfg.worker_threads())
        // Per worker; WebSocket connections leave actix-server's count once upgraded (the
        // node counts them itself for `max_connections`).
        .max_concurrent_connections(cfg.max_connections.max(1))
        .backlog(4096)
        .disable_signals()
        .shutdown_timeout(cfg.shutdown_timeout.as_secs().max(1));
    let server = match &tls {
        None => builder.listen("http", listener, move || http_service!(h1).tcp()),
        Some(store) => {
            let tls_config = store.server_config()?;
            // TLS handshakes in progress, per worker: the node's share of
            // `max_pending_handshakes` (past it, accepting pauses), each within
            // `handshake_timeout`.
            actix_tls::accept::max_concurrent_tls_connect(
                cfg.max_pending_handshakes
                    .div_ceil(cfg.worker_threads())
                    .max(1),
            );
            let timeout = cfg.handshake_timeout;
            builder.listen("https", listener, move || {
                // `finish` (not `h1`): its TLS service offers ALPN `http/1.1` and takes a
                // handshake timeout. Without the `http2` feature it serves HTTP/1 only.
                http_service!(finish).rustls_0_23_with_config(
                    tls_config.clone(),
                    actix_http::TlsAcceptorConfig::default().handshake_timeout(timeout),
                )
            })
        }
    }
    .map_err(ServerError::Http)?
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(shutdown_on_signal(node, handle));
    actix_web::rt::spawn(reload_on_hangup(tls));
    server.await.map_err(ServerError::Http)
}

/// SIGHUP: reads the TLS certificate and key again. New handshakes present the new pair;
/// connections already open keep theirs. A pair that does not load keeps the old one. Without
/// TLS there is nothing to reload, and SIGHUP does not stop the node either.
async fn reload_on_hangup(store: Option<Arc<CertStore>>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP: the TLS certificate will not be reloaded");
                return;
            }
        };
        while hup.recv().await.is_some() {
            let Some(store) = &store else {
                tracing::info!("SIGHUP: nothing to reload (no tls_cert_file)");
                continue;
            };
            match store.reload() {
                Ok(()) => {
                    m::tls_reload(true);
                    tracing::info!(cert = %store.files().cert.display(), "SIGHUP: TLS certificate reloaded");
                }
                Err(e) => {
                    m::tls_reload(false);
                    tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded; the previous one stays in use");
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = store;
}

async fn shutdown_on_signal(node: Arc<NodeContext>, server: actix_server::ServerHandle) {
    wait_for_signal().await;
    let deadline = Instant::now() + node.config.shutdown_timeout;
    // Stop taking clients; probes get a clean 503 from /readyz, /ws refuses upgrades.
    node.accepting.store(false, Ordering::Release);
    let target = node.views.borrow().reconnect_target().cloned();
    match target {
        Some(t) => drain(&node, &t.ws, deadline).await,
        None => {
            tracing::info!(connections = node.conns.len(), "shutting down");
            // Deliveries the shards already handed to the workers (events of publishes that
            // were acknowledged) reach their outboxes before the close frame.
            let settle = deadline.min(Instant::now() + Duration::from_secs(1));
            wait_for(settle, || node.workers.pending() == 0).await;
            node.conns.close_all(CloseReason::Shutdown);
            wait_for(deadline, || node.conns.is_empty()).await;
        }
    }
    // Give writers a moment to put the close frames on the wire.
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::sleep(left.min(Duration::from_millis(200))).await;
    tracing::info!(remaining = node.conns.len(), "stopped");
    server.stop(false).await;
}

/// Leaves the cluster without a reconnect storm and without losing acknowledged messages:
/// marked draining in gossip (no longer an owner anywhere), rooms handed to their next owners,
/// clients told where to reconnect (the least-loaded other node) and closed with 1001 after
/// `drain_grace` if they did not go, then gossip stops.
async fn drain(node: &NodeContext, url: &str, deadline: Instant) {
    tracing::info!(connections = node.conns.len(), reconnect = %url, "draining");
    // Routers stop owning rooms (this node is not ready any more) and hand them over — before
    // gossip says so: a shard handles its inputs in order, so once a peer can see this node
    // draining (and ask it for a room, or create the room itself), the view is applied here
    // and this node will not create that room too. (The order that made two epochs of a room
    // created as a drain began.)
    let view = node.views.borrow().clone();
    apply_view(node, &view).await;
    node.membership.set_draining(true).await;
    node.view_nudge.notify_one();
    // Let the other nodes see the draining flag before clients arrive there.
    tokio::time::sleep(node.config.gossip_interval * 3 + Duration::from_millis(100)).await;
    node.conns
        .send_all(crate::protocol::encode::reconnect("draining", Some(url)));
    let grace_end = (Instant::now() + node.config.drain_grace).min(deadline);
    wait_for(grace_end, || node.conns.is_empty()).await;
    let settle = deadline.min(Instant::now() + Duration::from_secs(1));
    wait_for(settle, || node.workers.pending() == 0).await;
    node.conns.close_all(CloseReason::Draining);
    wait_for(deadline, || node.conns.is_empty()).await;
    // Every room must be handed over *and confirmed by its new owner* before the links go (a
    // handoff lost in a link reset is re-sent; one on the wire is not yet safe) — unless
    // nobody is left to take them (the whole cluster is stopping).
    wait_for(deadline, || {
        let handed = node.shards.owned_rooms() == 0 && node.shards.unconfirmed_handoffs() == 0;
        handed || node.views.borrow().reconnect_target().is_none()
    })
    .await;
    tracing::info!(
        rooms_left = node.shards.owned_rooms(),
        unconfirmed = node.shards.unconfirmed_handoffs(),
        "rooms handed over; leaving the cluster"
    );
    node.membership.shutdown().await;
}

/// Polls `done` until it holds or `deadline` passes.
async fn wait_for(deadline: Instant, done: impl Fn() -> bool) {
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
