//! roomcast: a horizontally scalable real-time WebSocket server with rooms and no broker.
//!
//! Map of the crate (one module per concept; docs/ARCHITECTURE.md tells the whole story):
//!
//! * [`cli`] — the command line (`roomcast serve`, the default; `roomcast bench`,
//!   `roomcast soak`).
//! * [`bench`] — the load generator and delivery checker behind `roomcast bench`.
//! * [`soak`] — the long run behind `roomcast soak`: a churning client population, witnesses
//!   that check no acknowledged message is lost, and a sampler that checks nothing grows.
//! * [`config`] — the node's options: defaults → TOML file → `ROOMCAST_*` env → flags.
//! * [`ids`] — newtypes for rooms, nodes, connections and epochs.
//! * [`protocol`] — the client protocol's wire types, validation and encoders (no I/O).
//! * [`routing`] — the pure routing state machine: room ownership by rendezvous hashing,
//!   interests, sequencing, history, resync. No sockets, no clocks.
//! * [`cluster`] — membership by gossip (the only user of chitchat), gossip authentication.
//! * [`internode`] — the binary internode protocol: handshake, frames, peer links, listener.
//! * [`rooms`] — room shards: tasks that each own a `Router` and carry out its actions.
//! * [`socket`] — the WebSocket socket layer: handshake on actix-http's upgrade path, frame
//!   encoding, the reader, each connection's bounded outbox and its vectored writer.
//! * [`conn`] — what the node holds of a connection (`ConnHandle`) and the messages it sends one.
//! * [`delivery`] — room shards hand deliveries to connection worker threads in batches.
//! * [`node`] — what a running node is for the layers that serve clients (`NodeContext`).
//! * [`session`] — the WebSocket connection actor: client protocol, per-connection limits,
//!   authentication (tokens, rights, expiry).
//! * [`sse`] — the SSE transport: room events as Server-Sent Events, resumable by
//!   `Last-Event-ID`.
//! * [`api`] — the server API's work: backends' publishes and history reads enter the room
//!   shards like a client's.
//! * [`status`] — what people see: the `/cluster` report and the dashboard's live feed, from
//!   numbers every node samples and gossips each second.
//! * [`assets`] — the demo and dashboard pages and their files: embedded, fingerprinted,
//!   gzipped once, ready for a CDN.
//! * [`admission`] — who may connect: connections per client IP, handshakes in progress.
//! * [`http`] — routes only: `/ws`, `/healthz`, `/readyz`, `/metrics`, `/cluster`, `/api/…`.
//! * [`metrics`] — every metric name and help text, and the Prometheus recorder.
//! * [`auth`] — JWT verification (HS256 secret, PEM key, JWKS), room rights from the `rooms`
//!   claim, API keys for the server API. Reads key files; no I/O beyond that.
//! * [`server`] — wiring: runtimes, shards, HTTP server, signals and shutdown.
//!
//! Imports point down only: `server` → `http` → `session`, `api`, `status` → `node` → `rooms`, `internode`,
//! `cluster` → `delivery` → `conn` → `socket`, `routing` → `metrics` → `protocol` → `ids`.
//! `auth` and `assets` import nothing from the crate; the layers that admit clients call
//! `auth`, the node holds the built `assets`.

pub mod admission;
pub mod api;
pub mod assets;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod delivery;
pub mod http;
pub mod ids;
pub mod internode;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod rooms;
pub mod routing;
pub mod server;
pub mod session;
pub mod soak;
pub mod socket;
pub mod sse;
pub mod status;
pub mod tls;

/// Wall-clock time in unix microseconds (event timestamps, history age, latency).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
