//! Node configuration: one documented struct, layered and validated once at start-up.
//!
//! Every option can come from four places; a later layer overrides an earlier one:
//! 1. built-in defaults ([`Config::default`]),
//! 2. a TOML file given by `--config FILE` (keys are the option names with `_`),
//! 3. environment variables `ROOMCAST_<OPTION>` (upper case, `_`),
//! 4. command-line flags `--<option>` (with `-`).
//!
//! Layering is done by `figment`; flags are parsed by `clap` into [`ServeArgs`], whose unset
//! fields are skipped so they do not override lower layers. Any bad value — unknown key,
//! ill-typed value, out-of-range limit — becomes a [`ConfigError`] that names the option and
//! where the value came from; `main` prints it and exits with status 2.
//! `cluster-config/node.example.toml` documents every key and must be kept in step with this file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::auth::AuthMode;
use crate::ids::NodeId;

/// Output format of the logs (stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The complete, validated configuration of one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's id, unique in the cluster. Default: `HOSTNAME-PID`.
    #[serde(deserialize_with = "string_like")]
    pub node_id: String,
    /// HTTP and WebSocket listen address.
    pub listen: SocketAddr,
    /// Cluster listen address: gossip over UDP and the internode protocol over TCP, same port.
    pub cluster_listen: SocketAddr,
    /// Host (IP or DNS name) peers and clients should use to reach this node when it differs
    /// from the listen address (containers, NAT). The listen ports are kept.
    #[serde(deserialize_with = "opt_string_like")]
    pub advertise: Option<String>,
    /// WebSocket URL clients should use to reach this node, sent in reconnect hints when
    /// another node drains (default `ws://ADVERTISED_HTTP/ws`, `wss://` with TLS).
    #[serde(deserialize_with = "opt_string_like")]
    pub public_url: Option<String>,
    /// Where the demo and dashboard pages load their static files from: a CDN origin such as
    /// `https://cdn.example.com` that pulls `/assets/...` from the nodes. Default: the node
    /// itself (`/assets/...`).
    #[serde(deserialize_with = "opt_string_like")]
    pub asset_base_url: Option<String>,
    /// Seed addresses (`host:port` of other nodes' cluster ports). Repeatable; in env and TOML
    /// a comma-separated string or a list.
    #[serde(deserialize_with = "string_or_list")]
    pub seed: Vec<String>,
    /// Nodes with another cluster id never mix with this one.
    #[serde(deserialize_with = "string_like")]
    pub cluster_id: String,
    /// File holding the shared cluster secret (authenticates gossip and internode traffic).
    pub cluster_secret_file: Option<PathBuf>,
    /// Allow a non-loopback cluster address without a secret.
    pub insecure: bool,
    /// With a cluster secret: encrypt internode frames (ChaCha20-Poly1305) as well as
    /// authenticate them (`true`), or only authenticate them (`false`: sent in clear with a
    /// Poly1305 tag). Every node must have the same value. No effect without a secret (frames
    /// are then in clear and unauthenticated).
    pub internode_encryption: bool,
    /// Gossip interval of the membership protocol.
    #[serde(with = "humantime_serde")]
    pub gossip_interval: Duration,
    /// Time after which a silent node is reported not live (the failure detector is tuned to it).
    #[serde(with = "humantime_serde")]
    pub failure_timeout: Duration,

    /// Hard limit on one incoming WebSocket message; larger closes the connection with 1009.
    pub max_frame_bytes: usize,
    /// Limit on a publish's `data`, serialised; larger gets `too_large`.
    pub max_data_bytes: usize,
    /// Rooms one connection may have joined at once.
    pub max_rooms_per_conn: usize,
    /// Connections this node accepts at once; more get HTTP 503.
    pub max_connections: usize,
    /// Connections (WebSocket and SSE) one client IP address may hold at once; more get HTTP
    /// 429. 0 = unlimited (behind a load balancer every client has its address).
    pub max_connections_per_ip: usize,
    /// HTTP connections not yet upgraded to a WebSocket or SSE stream (handshakes in
    /// progress, plain requests); past it, upgrades are refused with HTTP 503.
    pub max_pending_handshakes: usize,
    /// Time a new HTTP connection has to send its request head (the WebSocket handshake)
    /// before it is closed.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Rooms this node may own (sequence) before it refuses to create more (`room_limit`);
    /// split evenly over the shards. Rooms that move here with their state are never refused.
    pub max_rooms: usize,
    /// New room names one connection may address per minute (token bucket: this many per
    /// minute, bursts of as many); past it, `rate_limited`. 0 = unlimited.
    pub max_new_rooms_per_minute: u32,
    /// Sustained publishes per second per connection (token bucket refill); 0 = unlimited.
    pub publish_rate: u32,
    /// Publishes a connection may burst above the rate (token bucket size).
    pub publish_burst: u32,
    /// Outbound queue limit per connection, in messages; past it the client is closed with 1013.
    pub outbound_max_messages: usize,
    /// Outbound queue limit per connection, in bytes; past it the client is closed with 1013.
    pub outbound_max_bytes: usize,
    /// History kept per room, in messages.
    pub history_max_messages: usize,
    /// History kept per room, by age.
    #[serde(with = "humantime_serde")]
    pub history_max_age: Duration,
    /// History kept per room, in bytes of encoded events.
    pub history_max_bytes: usize,
    /// Copies of each room kept on other nodes besides its owner (the next members in the
    /// room's rendezvous order); a message is acknowledged once every copy holds it.
    pub room_replicas: usize,
    /// Presence entries kept per room at most; past it a join with `presence` is served
    /// without an entry (counted in `roomcast_presence_refused_total`).
    pub presence_max_per_room: usize,
    /// WebSocket ping interval (also announced to clients as `heartbeat_ms`).
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Heartbeat intervals without any frame from the client before it is closed.
    pub heartbeat_max_missed: u32,
    /// How long a request waits for the room's owner node before `unavailable`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Bound on the whole shutdown: clients are closed with 1001 and the process exits by then.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// When draining, how long clients get to follow the reconnect hint before 1001.
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    /// HTTP worker threads (each runs its connections' actors). 0 = number of CPUs.
    pub workers: usize,
    /// Room shards (each owns the routing state of its rooms). 0 = number of CPUs.
    pub shards: usize,

    /// Client authentication (docs/protocol.md, "Authentication"): `off` — anyone may do
    /// anything; `optional` — a token is checked when one is given (its claims then bound the
    /// connection), a connection without one is anonymous with every right; `required` — every
    /// connection authenticates (`?token=` or an `auth` op within `auth_timeout`).
    pub auth: AuthMode,
    /// HS256 secret for client tokens (the file's bytes, trailing whitespace trimmed; ≥ 32).
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM public key (RSA → RS256, EC P-256 → ES256) for client tokens.
    pub jwt_public_key_file: Option<PathBuf>,
    /// JSON Web Key Set with several keys (`kid`s), for rotation.
    pub jwks_file: Option<PathBuf>,
    /// Keys of the HTTP server API (`Authorization: Bearer KEY`), one per line.
    pub api_keys_file: Option<PathBuf>,
    /// TLS for clients: PEM certificate chain (leaf first). With `tls_key_file`, `listen`
    /// serves `https://` and `wss://` only; the files are read again on SIGHUP.
    pub tls_cert_file: Option<PathBuf>,
    /// TLS for clients: PEM private key of the certificate (PKCS#8, RSA or EC).
    pub tls_key_file: Option<PathBuf>,
    /// With `auth = required`, how long a connection without a token in its URL has to send
    /// `auth` before it is closed with 4401.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,

    /// Log filter: a level (`info`) or tracing directives (`info,roomcast=debug`; spaces
    /// around the commas are allowed). Read by [`log_filter`].
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: default_node_id(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            cluster_listen: SocketAddr::from(([127, 0, 0, 1], 7946)),
            advertise: None,
            public_url: None,
            asset_base_url: None,
            seed: Vec::new(),
            cluster_id: "roomcast".to_string(),
            cluster_secret_file: None,
            insecure: false,
            internode_encryption: true,
            gossip_interval: Duration::from_millis(300),
            failure_timeout: Duration::from_secs(5),
            max_frame_bytes: 1024 * 1024,
            max_data_bytes: 64 * 1024,
            max_rooms_per_conn: 100,
            max_connections: 100_000,
            max_connections_per_ip: 10_000,
            max_pending_handshakes: 10_000,
            handshake_timeout: Duration::from_secs(5),
            max_rooms: 100_000,
            max_new_rooms_per_minute: 120,
            publish_rate: 1_000,
            publish_burst: 2_000,
            outbound_max_messages: 10_000,
            outbound_max_bytes: 16 * 1024 * 1024,
            history_max_messages: 1_000,
            history_max_age: Duration::from_secs(600),
            history_max_bytes: 8 * 1024 * 1024,
            room_replicas: 1,
            presence_max_per_room: 1_000,
            heartbeat_interval: Duration::from_secs(15),
            heartbeat_max_missed: 2,
            request_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(20),
            drain_grace: Duration::from_secs(5),
            workers: 0,
            shards: 0,
            auth: AuthMode::Off,
            jwt_secret_file: None,
            jwt_public_key_file: None,
            jwks_file: None,
            api_keys_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            auth_timeout: Duration::from_secs(10),
            log_level: "info".to_string(),
            log_format: LogFormat::Text,
        }
    }
}

/// The internode frame limit after the handshake (`internode::codec::MAX_FRAME`, which is
/// checked to equal this): a room's whole state must fit one frame, since replicas and new
/// owners receive it in one (`ReplicaSync`, handoffs).
pub const INTERNODE_MAX_FRAME: usize = 64 * 1024 * 1024;

/// An upper bound on a room's state as one internode frame: the history's event bytes, a
/// per-entry overhead (room name, epoch, seq, time, publish key), the remembered publish keys
/// and a full presence set (each entry's user, connection and `info` ≤ 1 KiB), plus slack for
/// the rest of the frame.
pub fn largest_room_state(c: &Config) -> usize {
    const ENTRY_OVERHEAD: usize = 512;
    const KEYS: usize = 1_024 * 160;
    const PRESENCE_ENTRY: usize = 1_536;
    const SLACK: usize = 64 * 1024;
    c.history_max_bytes
        .saturating_add(c.history_max_messages.saturating_mul(ENTRY_OVERHEAD))
        .saturating_add(c.presence_max_per_room.saturating_mul(PRESENCE_ENTRY))
        .saturating_add(KEYS + SLACK)
}

fn default_node_id() -> String {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "node".to_string());
    // Keep only id characters so a hostname with odd characters still gives a valid id.
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
        .take(40)
        .collect();
    let host = if host.is_empty() {
        "node".to_string()
    } else {
        host
    };
    format!("{}-{}", host, std::process::id())
}

/// Env values that look like numbers or booleans arrive typed; string options take them as text.
#[derive(Deserialize)]
#[serde(untagged)]
enum StringLike {
    S(String),
    U(u64),
    I(i64),
    F(f64),
    B(bool),
}

impl StringLike {
    fn into_string(self) -> String {
        match self {
            StringLike::S(s) => s,
            StringLike::U(v) => v.to_string(),
            StringLike::I(v) => v.to_string(),
            StringLike::F(v) => v.to_string(),
            StringLike::B(v) => v.to_string(),
        }
    }
}

fn string_like<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    StringLike::deserialize(d).map(StringLike::into_string)
}

fn opt_string_like<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<StringLike>::deserialize(d).map(|o| o.map(StringLike::into_string))
}

/// Accepts `"a:1,b:2"` or `["a:1", "b:2"]` (env vars can only carry the first form).
fn string_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Either::deserialize(d)? {
        Either::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        Either::Many(v) => v,
    })
}

/// Command-line flags of `roomcast serve`. Every field is optional so that an absent flag leaves
/// the lower layers (env, file, defaults) in force.
#[derive(Debug, Default, Clone, Serialize, clap::Args)]
pub struct ServeArgs {
    /// TOML config file (see cluster-config/node.example.toml).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// This node's id, unique in the cluster [default: HOSTNAME-PID].
    #[arg(long, value_name = "ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// HTTP/WebSocket listen address [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Cluster listen address, UDP gossip and TCP internode [default: 127.0.0.1:7946].
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_listen: Option<SocketAddr>,
    /// Host peers and clients should use to reach this node, if not the listen address.
    #[arg(long, value_name = "HOST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// WebSocket URL clients should use for this node in reconnect hints [default: ws://ADVERTISED_HTTP/ws, wss:// with TLS].
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Origin (e.g. a CDN) the pages load their static files from [default: this node].
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asset_base_url: Option<String>,
    /// Seed node cluster address host:port (repeatable; a DNS name may list many nodes).
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub seed: Vec<String>,
    /// Cluster id; nodes of another cluster id never mix [default: roomcast].
    #[arg(long, value_name = "ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// File holding the shared cluster secret.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Allow a non-loopback cluster address without a secret.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// With a cluster secret: encrypt internode frames (true) or only authenticate them (false); same on every node [default: true].
    #[arg(long, value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internode_encryption: Option<bool>,
    /// Gossip interval, e.g. 300ms [default: 300ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub gossip_interval: Option<Duration>,
    /// A silent node is reported not live after about this long [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub failure_timeout: Option<Duration>,
    /// Hard limit on one incoming WebSocket message in bytes; over it closes with 1009 [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_frame_bytes: Option<usize>,
    /// Limit on a publish's serialised data in bytes; over it gets too_large [default: 65536].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_data_bytes: Option<usize>,
    /// Rooms one connection may join at once [default: 100].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rooms_per_conn: Option<usize>,
    /// Connections accepted at once; more get HTTP 503 [default: 100000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Connections one client IP may hold at once, 0 = unlimited [default: 10000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<usize>,
    /// HTTP connections not yet a WebSocket or SSE stream, at most [default: 10000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending_handshakes: Option<usize>,
    /// Time a new connection has to send its handshake request [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub handshake_timeout: Option<Duration>,
    /// Rooms this node may own before new rooms get room_limit, split over shards [default: 100000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rooms: Option<usize>,
    /// New room names a connection may address per minute, 0 = unlimited [default: 120].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_new_rooms_per_minute: Option<u32>,
    /// Publishes per second per connection, 0 = unlimited [default: 1000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_rate: Option<u32>,
    /// Publish burst per connection [default: 2000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_burst: Option<u32>,
    /// Outbound queue limit per connection in messages [default: 10000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_max_messages: Option<usize>,
    /// Outbound queue limit per connection in bytes [default: 16777216].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_max_bytes: Option<usize>,
    /// History kept per room in messages [default: 1000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_max_messages: Option<usize>,
    /// History kept per room by age, e.g. 10m [default: 10m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub history_max_age: Option<Duration>,
    /// History kept per room in bytes [default: 8388608].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_max_bytes: Option<usize>,
    /// Copies of each room on other nodes besides its owner, 0-4 [default: 1].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_replicas: Option<usize>,
    /// Presence entries kept per room at most [default: 1000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_max_per_room: Option<usize>,
    /// WebSocket ping interval [default: 15s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub heartbeat_interval: Option<Duration>,
    /// Silent heartbeat intervals before a client is closed [default: 2].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_max_missed: Option<u32>,
    /// How long a request waits for the room's owner node [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub request_timeout: Option<Duration>,
    /// Bound on the whole shutdown (drain included) [default: 20s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub shutdown_timeout: Option<Duration>,
    /// When draining, time clients get to follow the reconnect hint before 1001 [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub drain_grace: Option<Duration>,
    /// HTTP worker threads, 0 = CPUs [default: 0].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Room shards, 0 = CPUs [default: 0].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
    /// Client authentication: off, optional or required [default: off].
    #[arg(long, value_name = "MODE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthMode>,
    /// HS256 secret file for client tokens.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM public key file (RS256 or ES256) for client tokens.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// JWKS file (several keys by kid) for client tokens.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// Server API keys file, one key per line.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_keys_file: Option<PathBuf>,
    /// TLS certificate chain (PEM) for https:// and wss:// on --listen; reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// TLS private key (PEM) of --tls-cert-file.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// With auth=required, time a connection has to authenticate [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub auth_timeout: Option<Duration>,
    /// Log level or tracing directives [default: info].
    #[arg(long, value_name = "FILTER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Log format [default: text].
    #[arg(long, value_name = "FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 15s, 10m)"))
}

/// A configuration problem. Its message names the option and, where known, the layer the bad
/// value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid value for option `{option}`{origin}: {message}")]
    Invalid {
        option: String,
        origin: String,
        message: String,
    },
    #[error("invalid configuration: {0}")]
    Other(String),
}

fn invalid(option: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        option: option.to_string(),
        origin: String::new(),
        message: message.into(),
    }
}

impl Config {
    /// Builds the configuration from defaults, the file named by `--config`, the environment
    /// (`ROOMCAST_*`) and the flags, then validates it.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        Self::load_from(args, Env::prefixed("ROOMCAST_"))
    }

    /// The option names (keys of the TOML file, suffixes of the env vars).
    pub fn keys() -> Vec<String> {
        match serde_json::to_value(Config::default()) {
            Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    fn load_from(args: &ServeArgs, env: Env) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                // Check it ourselves so a missing file is an error (figment would skip it).
                std::fs::read_to_string(path).map_err(|source| ConfigError::File {
                    path: path.clone(),
                    source,
                })?;
                Some(Toml::file_exact(path))
            }
            None => None,
        };
        // Only env vars that name an option are read: platforms inject others with our prefix
        // (Kubernetes adds ROOMCAST_SERVICE_HOST, ROOMCAST_PORT... for a Service named roomcast).
        let keys = Self::keys();
        let env = env.filter(move |k| keys.iter().any(|o| o.eq_ignore_ascii_case(k.as_str())));
        for (k, v) in env.iter() {
            check_env_value(k.as_str(), &v)?;
        }
        Self::load_layers(args, file, env)
    }

    /// The layers after the file was found and the env vars chosen: merged, extracted, checked.
    fn load_layers(
        args: &ServeArgs,
        file: Option<figment::providers::Data<Toml>>,
        env: impl figment::Provider,
    ) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            fig = fig.merge(file);
        }
        let fig = fig.merge(env).merge(Serialized::defaults(args));
        let config: Config = fig.extract().map_err(|e| figment_error(&fig, e))?;
        config.validate()?;
        Ok(config)
    }

    /// [`Config::load`] from TOML text and environment pairs (`(OPTION, value)`, without the
    /// `ROOMCAST_` prefix; pairs that name no option are ignored) instead of a file and the
    /// process environment. For the fuzz tests, which must not touch the process environment.
    #[doc(hidden)]
    pub fn load_from_text(toml: &str, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let keys = Self::keys();
        let mut dict = figment::value::Dict::new();
        for (k, v) in env {
            let k = k.trim();
            if !keys.iter().any(|o| o.eq_ignore_ascii_case(k)) {
                continue;
            }
            check_env_value(k, v)?;
            // As figment's `Env` reads a value: parsed like a TOML value, else a string.
            let v: figment::value::Value = v.parse().unwrap_or_else(|e| match e {});
            dict.insert(k.to_ascii_lowercase(), v);
        }
        let env = Serialized::defaults(dict);
        Self::load_layers(&ServeArgs::default(), Some(Toml::string(toml)), env)
    }

    /// Checks ranges and relations between options. Called once by [`Config::load`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        NodeId::new(&self.node_id).map_err(|e| invalid("node_id", e.to_string()))?;
        if self.cluster_id.is_empty() || self.cluster_id.len() > 64 {
            return Err(invalid("cluster_id", "must be 1-64 characters"));
        }
        let positive: [(&str, usize); 12] = [
            ("presence_max_per_room", self.presence_max_per_room),
            ("max_frame_bytes", self.max_frame_bytes),
            ("max_data_bytes", self.max_data_bytes),
            ("max_rooms_per_conn", self.max_rooms_per_conn),
            ("max_connections", self.max_connections),
            ("max_pending_handshakes", self.max_pending_handshakes),
            ("max_rooms", self.max_rooms),
            ("outbound_max_messages", self.outbound_max_messages),
            ("outbound_max_bytes", self.outbound_max_bytes),
            ("history_max_messages", self.history_max_messages),
            ("history_max_bytes", self.history_max_bytes),
            ("heartbeat_max_missed", self.heartbeat_max_missed as usize),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(invalid(name, "must be greater than 0"));
            }
        }
        if self.room_replicas > 4 {
            return Err(invalid("room_replicas", "must be 0 to 4"));
        }
        if self.max_data_bytes >= self.max_frame_bytes {
            return Err(invalid(
                "max_data_bytes",
                format!(
                    "must be smaller than max_frame_bytes ({})",
                    self.max_frame_bytes
                ),
            ));
        }
        if self.max_frame_bytes > 64 * 1024 * 1024 {
            return Err(invalid("max_frame_bytes", "must be at most 64 MiB"));
        }
        // A join with `since` replays up to a whole room history into the connection's queue;
        // the queue must hold it, or resuming clients would be cut as slow consumers.
        if self.outbound_max_messages <= self.history_max_messages {
            return Err(invalid(
                "outbound_max_messages",
                format!(
                    "must be greater than history_max_messages ({}): a resume replays up to a whole history",
                    self.history_max_messages
                ),
            ));
        }
        if self.outbound_max_bytes <= self.history_max_bytes {
            return Err(invalid(
                "outbound_max_bytes",
                format!(
                    "must be greater than history_max_bytes ({}): a resume replays up to a whole history",
                    self.history_max_bytes
                ),
            ));
        }
        if self.cluster_listen.ip().is_unspecified() && self.advertise.is_none() {
            return Err(invalid(
                "advertise",
                format!(
                    "must be set when cluster_listen is {} (all interfaces): peers need an address to reach this node",
                    self.cluster_listen
                ),
            ));
        }
        let state = largest_room_state(self);
        if state > INTERNODE_MAX_FRAME {
            return Err(invalid(
                "history_max_bytes",
                format!(
                    "a room's state (history, keys and presence) could reach {state} bytes, over \
                     the internode frame limit ({INTERNODE_MAX_FRAME}) that carries it to replicas \
                     and new owners: lower history_max_bytes, history_max_messages or \
                     presence_max_per_room"
                ),
            ));
        }
        if self.publish_rate > 0 && self.publish_burst == 0 {
            return Err(invalid(
                "publish_burst",
                "must be greater than 0 when publish_rate is set",
            ));
        }
        let durations = [
            ("history_max_age", self.history_max_age),
            ("heartbeat_interval", self.heartbeat_interval),
            ("request_timeout", self.request_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
            ("drain_grace", self.drain_grace),
            ("gossip_interval", self.gossip_interval),
            ("failure_timeout", self.failure_timeout),
            ("auth_timeout", self.auth_timeout),
            ("handshake_timeout", self.handshake_timeout),
        ];
        for (name, d) in durations {
            if d.is_zero() {
                return Err(invalid(name, "must be longer than 0"));
            }
        }
        if self.failure_timeout < self.gossip_interval * 2 {
            return Err(invalid(
                "failure_timeout",
                "must be at least twice gossip_interval",
            ));
        }
        if self.workers > 1024 {
            return Err(invalid("workers", "must be at most 1024"));
        }
        if self.shards > 1024 {
            return Err(invalid("shards", "must be at most 1024"));
        }
        for s in &self.seed {
            if !s.contains(':') {
                return Err(invalid("seed", format!("{s:?} is not host:port")));
            }
        }
        if !self.cluster_listen.ip().is_loopback()
            && self.cluster_secret_file.is_none()
            && !self.insecure
        {
            return Err(invalid(
                "cluster_listen",
                format!(
                    "{} is reachable from other hosts, and no cluster_secret_file is set: \
                     anyone who can reach it could join the cluster. Set cluster_secret_file, \
                     or pass --insecure to run unauthenticated anyway",
                    self.cluster_listen
                ),
            ));
        }
        if let Some(u) = &self.public_url
            && !(u.starts_with("ws://") || u.starts_with("wss://"))
        {
            return Err(invalid(
                "public_url",
                format!("{u:?} is not a ws:// or wss:// URL"),
            ));
        }
        let origin_like = |u: &str| {
            (u.starts_with("https://") || u.starts_with("http://"))
                && !u.ends_with('/')
                && !u.contains(['"', '\'', '<', '>', ' ', '?', '#'])
        };
        if let Some(u) = &self.asset_base_url
            && !origin_like(u)
        {
            return Err(invalid(
                "asset_base_url",
                format!(
                    "{u:?} is not an http:// or https:// origin without a trailing slash, \
                     query or fragment (e.g. https://cdn.example.com)"
                ),
            ));
        }
        if self.drain_grace >= self.shutdown_timeout {
            return Err(invalid(
                "drain_grace",
                format!(
                    "must be shorter than shutdown_timeout ({})",
                    humantime::format_duration(self.shutdown_timeout)
                ),
            ));
        }
        if let Some(a) = &self.advertise
            && (a.is_empty() || a.contains('/') || a.contains(' '))
        {
            return Err(invalid(
                "advertise",
                format!("{a:?} is not a host name or IP"),
            ));
        }
        let keys = [
            &self.jwt_secret_file,
            &self.jwt_public_key_file,
            &self.jwks_file,
        ];
        if self.auth != AuthMode::Off && keys.iter().all(|k| k.is_none()) {
            return Err(invalid(
                "auth",
                format!(
                    "is {} but no key to verify tokens with: set jwt_secret_file, \
                     jwt_public_key_file or jwks_file",
                    self.auth
                ),
            ));
        }
        crate::tls::files_from(self.tls_cert_file.as_deref(), self.tls_key_file.as_deref())
            .map_err(|e| invalid("tls_cert_file", e))?;
        log_filter(&self.log_level).map_err(|e| invalid("log_level", e.to_string()))?;
        Ok(())
    }

    /// The validated node id.
    pub fn node_id(&self) -> NodeId {
        // validate() checked it; Config is only handed out after validation.
        NodeId::new(&self.node_id).unwrap_or_else(|_| unreachable!("node_id validated at load"))
    }

    /// HTTP worker threads to start.
    pub fn worker_threads(&self) -> usize {
        if self.workers == 0 {
            cpus()
        } else {
            self.workers
        }
    }

    /// Room shards to start.
    pub fn shard_count(&self) -> usize {
        if self.shards == 0 {
            cpus()
        } else {
            self.shards
        }
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// The log filter of `spec` (`log_level`, or the bench's `ROOMCAST_BENCH_LOG`): tracing
/// directives separated by commas. Two defences, both found by fuzzing the config loader:
///
/// - Each directive is trimmed before tracing-subscriber parses it. tracing-subscriber 0.3.23
///   walks a directive's trimmed text but slices the untrimmed one, so a directive after `", "`
///   was misread (`info, roomcast=debug` refused) and one with a non-ASCII character after
///   leading whitespace panicked: a `log_level` of `"x,\n0é={"` crashed the node at start-up
///   instead of printing a config error.
/// - Field values (`[span{field=value}]`) match the field's `Debug` text literally, not as
///   regular expressions: building the automaton of a short pattern can take minutes (a
///   49-character `log_level` stalled start-up for 2 minutes), and tracing-subscriber itself
///   advises turning regexes off for filters from outside the program.
pub fn log_filter(
    spec: &str,
) -> Result<tracing_subscriber::EnvFilter, tracing_subscriber::filter::ParseError> {
    let directives: Vec<&str> = spec.split(',').map(str::trim).collect();
    tracing_subscriber::EnvFilter::builder()
        .with_regex(false)
        .parse(directives.join(","))
}

/// Refuses an env value that figment 0.10.19 cannot parse safely: its unescaping of a quoted
/// string (`figment/src/value/escape.rs`) takes a character index for a byte index, so a
/// backslash after a non-ASCII character in a quoted value panics (`"¡\0"`, found by fuzzing)
/// or silently drops characters (`"¡¡\n"`). The check is wider than the bug — a `"`, then a
/// non-ASCII character, then a `\` anywhere after them — so every affected value is caught
/// before figment parses it (also inside arrays and tables); the few others it refuses read
/// the same from the config file, whose TOML parser is not affected.
fn check_env_value(key: &str, value: &str) -> Result<(), ConfigError> {
    let affected = value.find('"').is_some_and(|q| {
        let rest = &value[q..];
        rest.find(|c: char| !c.is_ascii())
            .is_some_and(|n| rest[n..].contains('\\'))
    });
    if affected {
        return Err(ConfigError::Invalid {
            option: key.to_ascii_lowercase(),
            origin: format!(" (from env ROOMCAST_{})", key.to_ascii_uppercase()),
            message: "a quoted value with a backslash after a non-ASCII character cannot be \
                      read from the environment (figment 0.10 misreads it): escape the non-ASCII \
                      characters too (\\u00e9), drop the quotes, or set the option in the \
                      config file"
                .to_string(),
        });
    }
    Ok(())
}

/// Turns figment's error into one that names the option and the layer it came from.
fn figment_error(fig: &Figment, e: figment::Error) -> ConfigError {
    let option = e.path.join(".");
    let origin = match e.metadata.as_ref() {
        Some(m) if m.name.contains("environment") => {
            if option.is_empty() {
                " (from the environment)".to_string()
            } else {
                format!(" (from env ROOMCAST_{})", option.to_uppercase())
            }
        }
        Some(m) if m.name.contains("ServeArgs") => " (from the command line)".to_string(),
        Some(m) => match &m.source {
            Some(figment::Source::File(p)) => format!(" (from {})", p.display()),
            _ => String::new(),
        },
        None => String::new(),
    };
    let _ = fig;
    let message = match &e.kind {
        figment::error::Kind::UnknownField(field, _) => {
            return ConfigError::Invalid {
                // A TOML file may have an empty key (`"" = 1`, found by fuzzing): name it.
                option: if field.is_empty() {
                    "\"\"".to_string()
                } else {
                    field.clone()
                },
                origin,
                message: "unknown option".to_string(),
            };
        }
        kind => kind.to_string(),
    };
    if option.is_empty() {
        return ConfigError::Other(format!("{message}{origin}"));
    }
    ConfigError::Invalid {
        option,
        origin,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: ServeArgs, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        // A private env namespace per test so tests can run in parallel.
        let prefix = format!("RCTEST{}_", std::process::id() ^ rand_suffix());
        for (k, v) in env {
            // SAFETY-free: set_var is unsafe in edition 2024 because of concurrent getenv in
            // other threads; our keys are unique to this test, and figment reads them below.
            unsafe { std::env::set_var(format!("{prefix}{k}"), v) };
        }
        let r = Config::load_from(&args, Env::prefixed(&prefix));
        for (k, _) in env {
            unsafe { std::env::remove_var(format!("{prefix}{k}")) };
        }
        r
    }

    fn rand_suffix() -> u32 {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(1);
        N.fetch_add(1, Ordering::Relaxed) << 16
    }

    #[test]
    fn defaults_are_valid() {
        let c = load(ServeArgs::default(), &[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.cluster_listen.to_string(), "127.0.0.1:7946");
        assert_eq!(c.history_max_messages, 1000);
        assert_eq!(c.history_max_age, Duration::from_secs(600));
        assert_eq!(c.max_data_bytes, 65536);
        assert_eq!(c.max_frame_bytes, 1 << 20);
    }

    /// tracing-subscriber 0.3.23 panics on a directive with leading whitespace and a non-ASCII
    /// character (found by fuzzing): `log_level` directives are trimmed first, so such a value
    /// is read (or refused) like the same value without the whitespace.
    #[test]
    fn log_level_directives_are_trimmed() {
        for ok in [
            "info, roomcast=debug",
            " warn ,\troomcast=trace\n",
            "\n0\u{e9}=info",
            "",
        ] {
            let c = load(ServeArgs::default(), &[("LOG_LEVEL", ok)]);
            assert!(c.is_ok(), "{ok:?}: {:?}", c.err());
        }
        for bad in ["\n0\u{e9}={", "x,\n0\u{fffd}=]", "info, roomcast=loud"] {
            let e = load(ServeArgs::default(), &[("LOG_LEVEL", bad)]).unwrap_err();
            assert!(e.to_string().contains("log_level"), "{bad:?}: {e}");
        }
        // Trimmed, the directives mean what they say.
        let f = log_filter(" info , roomcast=debug ").unwrap().to_string();
        assert!(f.contains("roomcast=debug"), "{f}");
    }

    /// A field value in a `log_level` directive is matched literally, not compiled as a
    /// regular expression: fuzzing found short values whose automaton took minutes to build
    /// (the node hung at start-up). With regexes, the first took 2 minutes here.
    #[test]
    fn log_level_field_values_are_not_regexes() {
        let dots = ".".repeat(17);
        let found = format!("e,[ {{TISE=-|\u{fffd}{dots}lic_key_filet=%1\u{e}}}\n");
        let valid = format!("info,[{{f=-|\u{fffd}{dots}x}}]=debug");
        for (spec, ok) in [(found, false), (valid, true)] {
            let start = std::time::Instant::now();
            let r = load(ServeArgs::default(), &[("LOG_LEVEL", &spec)]);
            let took = start.elapsed();
            assert!(took < Duration::from_secs(1), "{spec:?} took {took:?}");
            assert_eq!(r.is_ok(), ok, "{spec:?}: {:?}", r.err());
        }
    }

    #[test]
    fn an_empty_toml_key_is_named() {
        let e = Config::load_from_text("\"\" = \"\"\n", &[]).unwrap_err();
        let ConfigError::Invalid { option, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(option, "\"\"", "{e}");
    }

    /// figment 0.10.19 panics on a backslash after a non-ASCII character in a quoted env value
    /// (found by fuzzing): such a value is a config error naming the option, and the ways
    /// around it the message suggests read as meant.
    #[test]
    fn a_quoted_env_value_figment_would_misread_is_a_config_error() {
        for v in ["\"\u{a1}\\0\"", "\"\u{a1}\u{a1}\\n\"", "[\"\u{e9}\\t\"]"] {
            let e = load(ServeArgs::default(), &[("CLUSTER_ID", v)]).unwrap_err();
            let ConfigError::Invalid { option, origin, .. } = &e else {
                panic!("{e}")
            };
            assert_eq!(option, "cluster_id", "{e}");
            assert!(origin.contains("ROOMCAST_CLUSTER_ID"), "{e}");
        }
        for (v, want) in [
            ("\"\\u00e9\\u00e9-\"", "\u{e9}\u{e9}-"),
            ("\u{e9}\\\u{e9}", "\u{e9}\\\u{e9}"),
            ("\"\u{e9}\"", "\u{e9}"),
        ] {
            let c = load(ServeArgs::default(), &[("CLUSTER_ID", v)]).unwrap();
            assert_eq!(c.cluster_id, want);
        }
    }

    #[test]
    fn a_room_state_that_could_outgrow_an_internode_frame_is_refused_at_start() {
        assert_eq!(INTERNODE_MAX_FRAME, crate::internode::codec::MAX_FRAME);
        let c = load(ServeArgs::default(), &[]).unwrap();
        assert!(largest_room_state(&c) < INTERNODE_MAX_FRAME / 4);
        let e = load(
            ServeArgs::default(),
            &[
                ("HISTORY_MAX_BYTES", "66000000"),
                ("OUTBOUND_MAX_BYTES", "100000000"),
            ],
        )
        .unwrap_err();
        assert!(e.to_string().contains("history_max_bytes"), "{e}");
        assert!(e.to_string().contains("internode frame limit"), "{e}");
        // A big presence set counts too.
        let e = load(
            ServeArgs::default(),
            &[
                ("HISTORY_MAX_BYTES", "50000000"),
                ("OUTBOUND_MAX_BYTES", "100000000"),
                ("PRESENCE_MAX_PER_ROOM", "20000"),
            ],
        )
        .unwrap_err();
        assert!(e.to_string().contains("history_max_bytes"), "{e}");
    }

    #[test]
    fn precedence_flags_over_env_over_file() {
        let dir = std::env::temp_dir().join(format!("roomcast-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1000\"\nmax_rooms_per_conn = 7\nhistory_max_age = \"1m\"\nseed = [\"a:1\", \"b:2\"]\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            listen: Some("127.0.0.1:3000".parse().unwrap()),
            ..Default::default()
        };
        let c = load(
            args,
            &[
                ("LISTEN", "127.0.0.1:2000"),
                ("MAX_ROOMS_PER_CONN", "8"),
                ("SEED", "c:3,d:4"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:3000"); // flag wins
        assert_eq!(c.max_rooms_per_conn, 8); // env over file
        assert_eq!(c.history_max_age, Duration::from_secs(60)); // file over default
        assert_eq!(c.seed, vec!["c:3", "d:4"]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_values_name_the_option() {
        let e = load(ServeArgs::default(), &[("LISTEN", "nonsense")]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("`listen`"), "{msg}");
        assert!(msg.contains("ROOMCAST_LISTEN"), "{msg}");

        let e = load(ServeArgs::default(), &[("MAX_ROOMS_PER_CONN", "0")]).unwrap_err();
        assert!(e.to_string().contains("max_rooms_per_conn"), "{e}");

        let e = load(ServeArgs::default(), &[("HEARTBEAT_INTERVAL", "soon")]).unwrap_err();
        assert!(e.to_string().contains("heartbeat_interval"), "{e}");

        let e = load(ServeArgs::default(), &[("NODE_ID", "a b")]).unwrap_err();
        assert!(e.to_string().contains("node_id"), "{e}");
    }

    #[test]
    fn relations_between_options_are_checked() {
        let e = load(ServeArgs::default(), &[("OUTBOUND_MAX_MESSAGES", "500")]).unwrap_err();
        assert!(e.to_string().contains("history_max_messages"), "{e}");
        let e = load(ServeArgs::default(), &[("HISTORY_MAX_BYTES", "99999999")]).unwrap_err();
        assert!(e.to_string().contains("outbound_max_bytes"), "{e}");
        let e = load(
            ServeArgs::default(),
            &[("CLUSTER_LISTEN", "0.0.0.0:7946"), ("INSECURE", "true")],
        )
        .unwrap_err();
        assert!(e.to_string().contains("`advertise`"), "{e}");
        let e = load(
            ServeArgs::default(),
            &[
                ("CLUSTER_LISTEN", "10.1.2.3:7946"),
                ("ADVERTISE", "10.1.2.3"),
            ],
        )
        .unwrap_err();
        assert!(e.to_string().contains("cluster_secret_file"), "{e}");
    }

    #[test]
    fn unknown_file_key_is_an_error() {
        let dir = std::env::temp_dir().join(format!("roomcast-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("b.toml");
        std::fs::write(&file, "lisen = \"127.0.0.1:1\"\n").unwrap();
        let e = load(
            ServeArgs {
                config: Some(file),
                ..Default::default()
            },
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("`lisen`"), "{e}");
        assert!(e.to_string().contains("unknown option"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn missing_file_is_an_error() {
        let e = load(
            ServeArgs {
                config: Some("/nonexistent/roomcast.toml".into()),
                ..Default::default()
            },
            &[],
        )
        .unwrap_err();
        assert!(matches!(e, ConfigError::File { .. }));
    }

    #[test]
    fn unrelated_env_vars_with_the_prefix_are_ignored() {
        let c = load(
            ServeArgs::default(),
            &[("SERVICE_HOST", "10.0.0.1"), ("PORT", "tcp://x")],
        );
        assert!(c.is_ok(), "{c:?}");
    }

    #[test]
    fn internode_encryption_defaults_on_and_can_be_turned_off_by_each_layer() {
        assert!(
            load(ServeArgs::default(), &[])
                .unwrap()
                .internode_encryption
        );
        let c = load(ServeArgs::default(), &[("INTERNODE_ENCRYPTION", "false")]).unwrap();
        assert!(!c.internode_encryption);
        let args = ServeArgs {
            internode_encryption: Some(true),
            ..Default::default()
        };
        let c = load(args, &[("INTERNODE_ENCRYPTION", "false")]).unwrap();
        assert!(c.internode_encryption, "the flag wins");
        let e = load(ServeArgs::default(), &[("INTERNODE_ENCRYPTION", "maybe")]).unwrap_err();
        assert!(e.to_string().contains("internode_encryption"), "{e}");
    }

    #[test]
    fn numeric_node_id_from_env_is_a_string() {
        let c = load(ServeArgs::default(), &[("NODE_ID", "12")]).unwrap();
        assert_eq!(c.node_id, "12");
    }
}
