//! The WebSocket connection: one actix actor per connection.
//!
//! The actor owns the socket's read half (it reads and decodes client frames itself, through
//! [`Reader`]; it is created on the worker thread that accepted the connection), validates each
//! request, enforces per-connection limits (rooms joined, publish rate, new rooms addressed per
//! minute, error budget, heartbeat) and hands room work to the room shards. Everything
//! outbound goes through the connection's [`Outbox`], drained by the writer task
//! ([`writer::run`]) that owns the write half, which keeps frames in order and bounds what a
//! slow client can cost.
//!
//! A connection ends for exactly one [`CloseReason`], sent as the WebSocket close code and
//! reason text, and counted. Closing: when the client sends a close frame, the writer answers
//! it (after what is queued) and the actor lets the read half go at once, so TCP closes as soon
//! as the answer is written. When the server closes, the writer sends what is queued, the
//! close frame and FIN; the actor keeps reading (and ignoring requests) until the client
//! answers, hangs up, or [`LINGER`] passes — closing a socket with unread input would reset it
//! and could destroy frames still on their way to the client. Bad input ends at most this
//! connection; nothing here panics on client input.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, AsyncContext, Handler, StreamHandler};
use bytes::BytesMut;

use crate::auth::{AuthMode, CLOCK_LEEWAY_S, Claims, Failure, Right};
use crate::conn::{CloseNow, ConnHandle, JoinDone, send_reply};
use crate::ids::{ConnId, ConnName, RoomId, UserId};
use crate::metrics as m;
use crate::node::NodeContext;
use crate::protocol::CloseReason;
use crate::protocol::encode::{self, Reply};
use crate::protocol::{ErrorCode, Op, ParseLimits, ReqId, parse_request};
use crate::rooms::Shards;
use crate::routing::{Input, JoinPresence};
use crate::socket::frame;
use crate::socket::outbox::{self, Frame, FrameKind, Outbox};
use crate::socket::reader::{Message as WsMessage, ReadError, Reader};
use crate::socket::writer;

/// A token bucket: `rate` tokens per second up to `burst`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Bucket {
        Bucket {
            tokens: burst,
            rate,
            burst,
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true; // unlimited
        }
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How many of the rooms a connection addressed last are remembered as not new (besides the
/// rooms it has joined): addressing one of them again costs nothing from
/// `max_new_rooms_per_minute`.
const RECENT_ROOMS: usize = 256;

/// The rooms a connection addressed most recently, at most `cap`; the least recently
/// addressed is forgotten first (an LRU: a map of last-use stamps and a log of uses, stale
/// log entries skipped on eviction and compacted away when the log grows).
#[derive(Debug)]
struct RecentRooms {
    cap: usize,
    stamp: u64,
    at: HashMap<RoomId, u64>,
    order: VecDeque<(RoomId, u64)>,
}

impl RecentRooms {
    fn new(cap: usize) -> RecentRooms {
        RecentRooms {
            cap,
            stamp: 0,
            at: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn contains(&self, room: &RoomId) -> bool {
        self.at.contains_key(room)
    }

    /// Marks `room` as addressed now.
    fn touch(&mut self, room: &RoomId) {
        self.stamp += 1;
        let stamp = self.stamp;
        self.at.insert(room.clone(), stamp);
        self.order.push_back((room.clone(), stamp));
        while self.at.len() > self.cap {
            let Some((r, s)) = self.order.pop_front() else {
                break;
            };
            if self.at.get(&r) == Some(&s) {
                self.at.remove(&r);
            }
        }
        if self.order.len() > 4 * self.cap {
            let at = &self.at;
            self.order.retain(|(r, s)| at.get(r) == Some(s));
        }
    }
}

/// A connection's budget for addressing rooms it has not addressed recently
/// (`max_new_rooms_per_minute`): each new name costs a token; joined rooms and the
/// [`RECENT_ROOMS`] most recently addressed ones are free. It bounds the rooms a connection
/// can make nodes create (each request to a room that does not exist creates it).
#[derive(Debug)]
struct NewRooms {
    /// `None`: unlimited.
    bucket: Option<Bucket>,
    recent: RecentRooms,
}

impl NewRooms {
    fn new(per_minute: u32, recent: usize) -> NewRooms {
        let per_minute = f64::from(per_minute);
        NewRooms {
            bucket: (per_minute > 0.0).then(|| Bucket::new(per_minute / 60.0, per_minute)),
            recent: RecentRooms::new(recent),
        }
    }

    /// Whether the connection may address `room` now (`joined`: it has joined it, or is
    /// joining). A refused room is not remembered.
    fn admit(&mut self, room: &RoomId, joined: bool, now: Instant) -> bool {
        let Some(bucket) = &mut self.bucket else {
            return true;
        };
        if !joined && !self.recent.contains(room) && !bucket.take(now) {
            return false;
        }
        self.recent.touch(room);
        true
    }
}

/// Invalid requests a connection may send in a burst, and per second after that, before it is
/// closed with 1008.
const ERROR_BURST: f64 = 100.0;
const ERROR_RATE: f64 = 10.0;

/// How long a connection the server closed waits for the client to answer the close frame
/// (or hang up) before the socket is closed anyway.
pub const LINGER: Duration = Duration::from_secs(1);

/// What a connection may do, from its token (docs/protocol.md, "Authentication").
enum Identity {
    /// `auth = off`, or `optional` without a token: every right, no user.
    Anonymous,
    /// `auth = required` and no valid token yet: only `auth` and `ping`.
    Unauthenticated,
    /// Authenticated: the token's user and claims (rights, expiry).
    User { id: UserId, claims: Claims },
}

/// The connection actor.
pub struct Session {
    id: ConnId,
    name: ConnName,
    node: Arc<NodeContext>,
    handle: Option<ConnHandle>,
    outbox: Outbox,
    rooms: HashSet<RoomId>,
    identity: Identity,
    /// The token from the connection's URL (`?token=`), checked when the actor starts.
    url_token: Option<String>,
    /// Rights granted by per-room tokens given with `join`, for the rooms joined with one
    /// (bounded by `max_rooms_per_conn`).
    room_tokens: HashMap<RoomId, Claims>,
    /// The expiry timer of the current token (cancelled when `refresh` replaces it, so that
    /// refreshing does not pile up timers).
    expiry: Option<actix::SpawnHandle>,
    publish_bucket: Bucket,
    /// Budget for addressing rooms not addressed recently (`max_new_rooms_per_minute`).
    new_rooms: NewRooms,
    error_bucket: Bucket,
    last_seen: Instant,
    /// The server began closing: requests are ignored, the actor stops when the client answers
    /// (or after [`LINGER`]).
    closing: bool,
    /// Resume pacing: joins with `since` not sent to their shard yet, in order.
    resumes: VecDeque<PendingResume>,
    /// The resume sent last whose outcome has not come back (one at a time), and when it
    /// was sent (after `request_timeout` and a second it no longer holds the others back).
    resume_out: Option<(RoomId, Instant)>,
    /// A pacing check is scheduled.
    resume_timer: bool,
    /// This connection's place in its client address's count (`crate::admission`), given
    /// back when the actor stops.
    _ip_slot: Option<crate::admission::IpSlot>,
}

/// A join (with `since`: waiting for its turn).
struct PendingResume {
    id: ReqId,
    room: RoomId,
    since: Option<u64>,
    epoch: Option<crate::ids::Epoch>,
    presence: JoinPresence,
}

/// How often a connection whose queue is too full for the next resume's replay looks again.
const RESUME_RECHECK: Duration = Duration::from_millis(10);

impl Session {
    /// Starts the actor for an accepted WebSocket on the current worker thread (the one that
    /// accepted it), with its writer task. `leftover`: bytes read past the handshake.
    pub fn start(
        node: Arc<NodeContext>,
        stream: crate::socket::stream::ClientStream,
        leftover: BytesMut,
        url_token: Option<String>,
        ip_slot: Option<crate::admission::IpSlot>,
    ) {
        let cfg = &node.config;
        let (rd, wr) = stream.split();
        let reader = Reader::new(rd, leftover, cfg.max_frame_bytes);
        let (outbox, rx) = outbox::outbox(cfg.outbound_max_messages, cfg.outbound_max_bytes);
        let grace = cfg.shutdown_timeout.min(Duration::from_secs(5));
        let id = ConnId::next();
        let name = ConnName::new(&node.node_id, id);
        let publish_bucket = Bucket::new(f64::from(cfg.publish_rate), f64::from(cfg.publish_burst));
        let cfg_new_rooms = cfg.max_new_rooms_per_minute;
        let identity = match cfg.auth {
            AuthMode::Required => Identity::Unauthenticated,
            AuthMode::Off | AuthMode::Optional => Identity::Anonymous,
        };
        let addr = Session::create(move |ctx| {
            ctx.add_stream(reader);
            Session {
                id,
                name,
                node,
                handle: None,
                outbox,
                rooms: HashSet::new(),
                identity,
                url_token,
                room_tokens: HashMap::new(),
                expiry: None,
                publish_bucket,
                new_rooms: NewRooms::new(cfg_new_rooms, RECENT_ROOMS),
                error_bucket: Bucket::new(ERROR_RATE, ERROR_BURST),
                last_seen: Instant::now(),
                closing: false,
                resumes: VecDeque::new(),
                resume_out: None,
                resume_timer: false,
                _ip_slot: ip_slot,
            }
        });
        let actor = addr.recipient::<CloseNow>();
        actix_web::rt::spawn(async move {
            writer::run(wr, rx, grace, move |reason| actor.do_send(CloseNow(reason))).await;
        });
    }

    fn shards(&self) -> &Shards {
        &self.node.shards
    }

    fn conn_handle(&self) -> ConnHandle {
        // Set in `started`, before any message is handled.
        self.handle
            .clone()
            .unwrap_or_else(|| unreachable!("handle set in started()"))
    }

    fn reply(&self, id: &ReqId, reply: &Reply) {
        send_reply(&self.outbox, id, reply);
    }

    fn send_join(&mut self, j: PendingResume) -> bool {
        let PendingResume {
            id,
            room,
            since,
            epoch,
            presence,
        } = j;
        let input = Input::Join {
            conn: self.id,
            handle: self.conn_handle(),
            room: room.clone(),
            since,
            epoch,
            req: id.clone(),
            presence,
        };
        if self.shards().try_send(input).is_err() {
            self.rooms.remove(&room);
            self.reply(
                &id,
                &Reply::error(ErrorCode::Unavailable, "node overloaded; retry"),
            );
            return false;
        }
        true
    }

    /// Sends the next waiting resume when none is outstanding and the queue has room for a
    /// whole history's replay; otherwise looks again shortly.
    fn pump_resumes(&mut self, ctx: &mut <Self as Actor>::Context) {
        if self.closing {
            return;
        }
        if let Some((_, at)) = &self.resume_out
            && at.elapsed() > self.node.config.request_timeout + Duration::from_secs(1)
        {
            self.resume_out = None;
        }
        while !self.resumes.is_empty() {
            let cfg = &self.node.config;
            let (frames, bytes) = self.outbox.room_left();
            if self.resume_out.is_some()
                || frames <= cfg.history_max_messages
                || bytes <= cfg.history_max_bytes
            {
                if !self.resume_timer {
                    self.resume_timer = true;
                    ctx.run_later(RESUME_RECHECK, |act, ctx| {
                        act.resume_timer = false;
                        act.pump_resumes(ctx);
                    });
                }
                return;
            }
            let Some(r) = self.resumes.pop_front() else {
                return;
            };
            let room = r.room.clone();
            if self.send_join(r) {
                self.resume_out = Some((room, Instant::now()));
            }
        }
    }

    /// Charges addressing `room` to the connection's new-room budget; when it is spent,
    /// answers `rate_limited` (not an error of the client's: no error budget) and returns
    /// false — the request is not sent to the room.
    fn admit_room(&mut self, id: &ReqId, room: &RoomId) -> bool {
        let joined = self.rooms.contains(room);
        if self.new_rooms.admit(room, joined, Instant::now()) {
            return true;
        }
        m::protocol_error(ErrorCode::RateLimited);
        m::rooms_refused("connection_rate", 1);
        let max = self.node.config.max_new_rooms_per_minute;
        self.reply(
            id,
            &Reply::error(
                ErrorCode::RateLimited,
                format!("too many new rooms: at most {max} per minute per connection"),
            ),
        );
        false
    }

    /// Replies with an error caused by the client, and closes the connection if it keeps
    /// sending invalid requests.
    fn client_error(
        &mut self,
        ctx: &mut actix::Context<Self>,
        id: &ReqId,
        code: ErrorCode,
        message: &str,
    ) {
        self.reply(id, &Reply::error(code, message));
        if !self.error_bucket.take(Instant::now()) {
            self.close(ctx, CloseReason::TooManyErrors);
        }
    }

    /// Closes from the server side: the writer sends what is queued and the close frame; the
    /// actor waits for the client's answer, at most [`LINGER`].
    fn close(&mut self, ctx: &mut actix::Context<Self>, reason: CloseReason) {
        self.outbox.close(reason);
        if !self.closing {
            self.closing = true;
            ctx.run_later(LINGER, |_, ctx| ctx.stop());
        }
    }

    /// This connection's entry in a presence set: its user and the token's `info`, or its
    /// name when anonymous.
    fn presence_entry(&self) -> crate::protocol::PresenceEntry {
        let (user, info) = match &self.identity {
            Identity::User { id, claims } => (
                Some(id.clone()),
                claims.info.as_ref().map(|i| i.get().to_string()),
            ),
            _ => (None, None),
        };
        crate::protocol::PresenceEntry {
            conn: self.name.clone(),
            user,
            info,
        }
    }

    /// Whether this connection may use `right` in `room`: its connection token's rights, or
    /// those of a room token it joined the room with.
    fn allows(&self, room: &RoomId, right: Right) -> bool {
        match &self.identity {
            Identity::Anonymous => true,
            Identity::Unauthenticated => false,
            Identity::User { claims, .. } => {
                claims.allows(room.as_str(), right)
                    || self
                        .room_tokens
                        .get(room)
                        .is_some_and(|t| t.allows(room.as_str(), right))
            }
        }
    }

    /// Checks that the connection may use `right` in `room`; if not, answers with
    /// `unauthorized` (no token yet) or `forbidden` and returns false.
    fn check_right(
        &mut self,
        ctx: &mut actix::Context<Self>,
        id: &ReqId,
        room: &RoomId,
        right: Right,
    ) -> bool {
        if self.allows(room, right) {
            return true;
        }
        if matches!(self.identity, Identity::Unauthenticated) {
            m::protocol_error(ErrorCode::Unauthorized);
            self.reply(
                id,
                &Reply::error(
                    ErrorCode::Unauthorized,
                    "authenticate first: send {\"op\":\"auth\",\"token\":...}",
                ),
            );
        } else {
            self.client_error(
                ctx,
                id,
                ErrorCode::Forbidden,
                &format!("no {} right in room {room}", right.as_str()),
            );
        }
        false
    }

    /// Verifies a token, counting a failure by its reason; gives the token's user and claims.
    fn verify(&self, token: &str) -> Result<(UserId, Claims), Failure> {
        let Some(v) = &self.node.verifier else {
            return Err(Failure::Missing);
        };
        let checked = v.verify(token).and_then(|c| {
            let user = UserId::new(&c.sub).map_err(|_| Failure::BadClaims)?;
            Ok((user, c))
        });
        checked.inspect_err(|f| m::auth_failure(f.reason()))
    }

    /// Makes `claims` the connection's identity and closes the connection with 4401 when they
    /// expire — at `exp` plus the verifier's clock-skew leeway — unless a `refresh` replaced
    /// them.
    fn set_identity(
        &mut self,
        ctx: &mut actix::Context<Self>,
        (id, claims): (UserId, Claims),
    ) -> Reply {
        let exp = claims.exp;
        if let Some(old) = self.expiry.take() {
            ctx.cancel_future(old);
        }
        // Valid as long as the verifier would still accept it (clock skew tolerance).
        let left = (exp + CLOCK_LEEWAY_S).saturating_sub(crate::now_us() / 1_000_000);
        let timer = ctx.run_later(Duration::from_secs(left), move |act, ctx| {
            if !act.closing {
                m::auth_failure("expired");
                act.reply(
                    &ReqId::NONE,
                    &Reply::error(
                        ErrorCode::Unauthorized,
                        "token expired; reconnect with a new one",
                    ),
                );
                act.close(ctx, CloseReason::Unauthorized);
            }
        });
        self.expiry = Some(timer);
        self.node.conns.set_user(self.id, id.clone());
        self.identity = Identity::User {
            id: id.clone(),
            claims,
        };
        Reply::Authenticated { user: id, exp }
    }

    /// A token that was refused where the connection cannot go on without one: answer
    /// `unauthorized` and close with 4401.
    fn refuse_token(&mut self, ctx: &mut actix::Context<Self>, id: &ReqId, why: &str) {
        m::protocol_error(ErrorCode::Unauthorized);
        self.reply(id, &Reply::error(ErrorCode::Unauthorized, why));
        self.close(ctx, CloseReason::Unauthorized);
    }

    /// Checks the URL's token, or (with `auth = required` and none) gives the client
    /// `auth_timeout` to send `auth`.
    fn start_auth(&mut self, ctx: &mut actix::Context<Self>) {
        let cfg = &self.node.config;
        if cfg.auth == AuthMode::Off {
            return;
        }
        if let Some(token) = self.url_token.take() {
            match self.verify(&token) {
                Ok(claims) => {
                    self.set_identity(ctx, claims);
                }
                Err(f) => {
                    let why = format!("token refused: {f}");
                    self.refuse_token(ctx, &ReqId::NONE, &why);
                }
            }
            return;
        }
        if cfg.auth == AuthMode::Required {
            let timeout = cfg.auth_timeout;
            ctx.run_later(timeout, |act, ctx| {
                if matches!(act.identity, Identity::Unauthenticated) && !act.closing {
                    m::auth_failure("missing");
                    act.refuse_token(ctx, &ReqId::NONE, "no token within auth_timeout");
                }
            });
        }
    }

    fn on_auth(&mut self, ctx: &mut actix::Context<Self>, id: ReqId, token: &str) {
        if self.node.config.auth == AuthMode::Off {
            return self.client_error(
                ctx,
                &id,
                ErrorCode::BadRequest,
                "authentication is off on this node",
            );
        }
        if matches!(self.identity, Identity::User { .. }) {
            return self.client_error(
                ctx,
                &id,
                ErrorCode::BadRequest,
                "already authenticated; use refresh to extend the token",
            );
        }
        match self.verify(token) {
            Ok(claims) => {
                let reply = self.set_identity(ctx, claims);
                self.reply(&id, &reply);
            }
            Err(f) if self.node.config.auth == AuthMode::Required => {
                self.refuse_token(ctx, &id, &f.to_string());
            }
            Err(f) => {
                // Optional: the connection stays anonymous.
                m::protocol_error(ErrorCode::Unauthorized);
                self.reply(&id, &Reply::error(ErrorCode::Unauthorized, f.to_string()));
            }
        }
    }

    fn on_refresh(&mut self, ctx: &mut actix::Context<Self>, id: ReqId, token: &str) {
        let Identity::User { id: user, .. } = &self.identity else {
            m::protocol_error(ErrorCode::Unauthorized);
            return self.reply(
                &id,
                &Reply::error(
                    ErrorCode::Unauthorized,
                    "not authenticated; send auth first",
                ),
            );
        };
        let user = user.clone();
        match self.verify(token) {
            Ok((new, _)) if new != user => self.client_error(
                ctx,
                &id,
                ErrorCode::Forbidden,
                "the new token is for another user",
            ),
            Ok(claims) => {
                let reply = self.set_identity(ctx, claims);
                self.reply(&id, &reply);
            }
            // The current token still holds until it expires.
            Err(f) => {
                m::protocol_error(ErrorCode::Unauthorized);
                self.reply(&id, &Reply::error(ErrorCode::Unauthorized, f.to_string()));
            }
        }
    }

    /// Checks a join's room token; on success its rights apply to the room while joined.
    fn join_token(
        &mut self,
        ctx: &mut actix::Context<Self>,
        id: &ReqId,
        room: &RoomId,
        token: &str,
    ) -> bool {
        if self.node.config.auth == AuthMode::Off {
            return true;
        }
        let (token_user, claims) = match self.verify(token) {
            Ok(c) => c,
            Err(f) => {
                m::protocol_error(ErrorCode::Unauthorized);
                self.reply(id, &Reply::error(ErrorCode::Unauthorized, f.to_string()));
                return false;
            }
        };
        match &self.identity {
            Identity::User { id: user, .. } if *user != token_user => {
                self.client_error(
                    ctx,
                    id,
                    ErrorCode::Forbidden,
                    "the room token is for another user",
                );
                return false;
            }
            Identity::Unauthenticated => {
                // A room token authenticates nothing but its room.
                m::protocol_error(ErrorCode::Unauthorized);
                self.reply(
                    id,
                    &Reply::error(ErrorCode::Unauthorized, "authenticate the connection first"),
                );
                return false;
            }
            _ => {}
        }
        self.room_tokens.insert(room.clone(), claims);
        true
    }

    fn on_text(&mut self, ctx: &mut actix::Context<Self>, text: &str) {
        let limits = ParseLimits {
            max_data_bytes: self.node.config.max_data_bytes,
        };
        let req = match parse_request(text, limits) {
            Ok(r) => r,
            Err(e) => return self.client_error(ctx, &e.id, e.code, &e.message),
        };
        let id = req.id;
        match req.op {
            Op::Ping => self.reply(
                &id,
                &Reply::Pong {
                    ts: crate::now_us() / 1000,
                },
            ),
            Op::Auth { token } => self.on_auth(ctx, id, &token),
            Op::Refresh { token } => self.on_refresh(ctx, id, &token),
            Op::Join {
                room,
                since,
                epoch,
                token,
                presence,
                presence_events,
            } => {
                if self.rooms.contains(&room) {
                    return self.client_error(
                        ctx,
                        &id,
                        ErrorCode::BadRequest,
                        &format!("already joined room {room}"),
                    );
                }
                let max = self.node.config.max_rooms_per_conn;
                if self.rooms.len() >= max {
                    return self.client_error(
                        ctx,
                        &id,
                        ErrorCode::Forbidden,
                        &format!("this connection has joined {max} rooms, the limit"),
                    );
                }
                if let Some(t) = token
                    && !self.join_token(ctx, &id, &room, &t)
                {
                    return;
                }
                if !self.check_right(ctx, &id, &room, Right::Subscribe)
                    || (presence_events && !self.check_right(ctx, &id, &room, Right::Presence))
                {
                    self.room_tokens.remove(&room);
                    return;
                }
                if !self.admit_room(&id, &room) {
                    self.room_tokens.remove(&room);
                    return;
                }
                self.rooms.insert(room.clone());
                let presence = JoinPresence {
                    entry: presence.then(|| self.presence_entry()),
                    events: presence_events,
                };
                let join = PendingResume {
                    id,
                    room,
                    since,
                    epoch,
                    presence,
                };
                if since.is_some() {
                    // A resume replays up to a whole history: paced, one at a time, each when
                    // the queue has room for it, so that many resumes at once do not cut the
                    // connection as a slow consumer by their own replay.
                    self.resumes.push_back(join);
                    self.pump_resumes(ctx);
                    return;
                }
                self.send_join(join);
            }
            Op::Leave { room } => {
                if let Some(i) = self.resumes.iter().position(|r| r.room == room) {
                    // Not sent yet: the join ends here, and so does the room.
                    if let Some(r) = self.resumes.remove(i) {
                        self.reply(
                            &r.id,
                            &Reply::error(
                                ErrorCode::Unavailable,
                                "left before the join was served",
                            ),
                        );
                    }
                    self.rooms.remove(&room);
                    self.room_tokens.remove(&room);
                    return self.reply(&id, &Reply::Left { room });
                }
                if !self.rooms.remove(&room) {
                    return self.client_error(
                        ctx,
                        &id,
                        ErrorCode::BadRequest,
                        &format!("not joined to room {room}"),
                    );
                }
                self.room_tokens.remove(&room);
                let input = Input::Leave {
                    conn: self.id,
                    handle: self.conn_handle(),
                    room: room.clone(),
                    req: id.clone(),
                    reply: true,
                };
                // Not waiting keeps this connection's requests in order; on refusal the client
                // is still joined and may retry.
                if self.shards().try_send(input).is_err() {
                    self.rooms.insert(room);
                    self.reply(
                        &id,
                        &Reply::error(ErrorCode::Unavailable, "node overloaded; retry"),
                    );
                }
            }
            Op::Publish { room, data, key } => {
                if !self.check_right(ctx, &id, &room, Right::Publish) {
                    return;
                }
                if !self.publish_bucket.take(Instant::now()) {
                    m::protocol_error(ErrorCode::RateLimited);
                    return self.reply(
                        &id,
                        &Reply::error(
                            ErrorCode::RateLimited,
                            "publish rate limit exceeded; slow down",
                        ),
                    );
                }
                if !self.admit_room(&id, &room) {
                    return;
                }
                let user = match &self.identity {
                    Identity::User { id, .. } => Some(id.clone()),
                    _ => None,
                };
                let input = Input::Publish {
                    handle: self.conn_handle(),
                    from: self.name.clone(),
                    user,
                    room,
                    data: data.to_string(),
                    key,
                    req: id.clone(),
                };
                if self.shards().try_send(input).is_err() {
                    self.reply(
                        &id,
                        &Reply::error(ErrorCode::Unavailable, "node overloaded; retry"),
                    );
                }
            }
            Op::Presence { room } => {
                if !self.check_right(ctx, &id, &room, Right::Presence)
                    || !self.admit_room(&id, &room)
                {
                    return;
                }
                let input = Input::Presence {
                    handle: self.conn_handle(),
                    room,
                    req: id.clone(),
                };
                if self.shards().try_send(input).is_err() {
                    self.reply(
                        &id,
                        &Reply::error(ErrorCode::Unavailable, "node overloaded; retry"),
                    );
                }
            }
            Op::History { room, since, limit } => {
                if !self.check_right(ctx, &id, &room, Right::History)
                    || !self.admit_room(&id, &room)
                {
                    return;
                }
                let cap = self.node.config.history_max_messages as u64;
                let input = Input::History {
                    handle: self.conn_handle(),
                    room,
                    since,
                    limit: limit.unwrap_or(100).min(cap),
                    req: id.clone(),
                };
                if self.shards().try_send(input).is_err() {
                    self.reply(
                        &id,
                        &Reply::error(ErrorCode::Unavailable, "node overloaded; retry"),
                    );
                }
            }
        }
    }
}

impl Actor for Session {
    type Context = actix::Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.handle = Some(ConnHandle {
            outbox: self.outbox.clone(),
            worker: self.node.workers.current(),
            conn: Some(ctx.address().recipient()),
            reply: None,
        });
        self.node.conns.register(
            self.id,
            Some(ctx.address().recipient()),
            self.outbox.clone(),
        );
        let hb = self.node.config.heartbeat_interval;
        let _ = self.outbox.text(
            &encode::welcome(&self.name, &self.node.node_id, hb.as_millis() as u64),
            FrameKind::Control,
        );
        self.start_auth(ctx);
        let max_silence = hb * self.node.config.heartbeat_max_missed;
        ctx.run_interval(hb, move |act, ctx| {
            if act.closing {
            } else if act.last_seen.elapsed() > max_silence {
                act.close(ctx, CloseReason::HeartbeatTimeout);
            } else {
                let _ = act.outbox.push(Frame {
                    bytes: frame::ping(),
                    kind: FrameKind::Control,
                });
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // The writer counts the disconnect by its reason when it starts closing.
        self.outbox.close(CloseReason::Normal);
        self.node.conns.unregister(self.id);
        if let Some(handle) = self.handle.take() {
            for room in self.rooms.drain() {
                self.node.shards.send_reliable(Input::Leave {
                    conn: self.id,
                    handle: handle.clone(),
                    room,
                    req: ReqId::NONE,
                    reply: false,
                });
            }
        }
    }
}

impl StreamHandler<Result<WsMessage, ReadError>> for Session {
    fn handle(&mut self, item: Result<WsMessage, ReadError>, ctx: &mut Self::Context) {
        self.last_seen = Instant::now();
        if self.closing {
            // Waiting for the client's answer to our close: a close or an error ends it,
            // anything else is ignored.
            if matches!(item, Ok(WsMessage::Close(_)) | Err(_)) {
                ctx.stop();
            }
            return;
        }
        match item {
            Ok(WsMessage::Text(text)) => self.on_text(ctx, &text),
            Ok(WsMessage::Binary(_)) => self.client_error(
                ctx,
                &ReqId::NONE,
                ErrorCode::BadRequest,
                "binary frames are not supported; send JSON text frames",
            ),
            Ok(WsMessage::Ping(b)) => {
                let _ = self.outbox.push(Frame {
                    bytes: frame::pong(&b),
                    kind: FrameKind::Control,
                });
            }
            Ok(WsMessage::Pong(_)) => {}
            Ok(WsMessage::Close(_)) => {
                // The client closes: answer (after what is queued) and let go of the read side
                // now; TCP closes as soon as the writer has written the answer.
                self.outbox.close(CloseReason::Normal);
                ctx.stop();
            }
            Err(ReadError::Io(e)) => {
                tracing::debug!(conn = %self.name, error = %e, "socket read failed");
                self.outbox.close(CloseReason::Normal);
                ctx.stop();
            }
            Err(e) => {
                let reason = match &e {
                    ReadError::TooBig(_) => CloseReason::TooBig,
                    ReadError::InvalidUtf8 => CloseReason::InvalidData,
                    _ => CloseReason::Protocol,
                };
                tracing::debug!(conn = %self.name, error = %e, "closing connection on a protocol error");
                // The client's input is broken: nothing more of it is read.
                self.outbox.close(reason);
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // EOF: the client hung up (or the reader ended after a close or an error).
        ctx.stop();
    }
}

impl Handler<JoinDone> for Session {
    type Result = ();
    fn handle(&mut self, msg: JoinDone, ctx: &mut Self::Context) {
        if !msg.ok {
            self.rooms.remove(&msg.room);
        }
        if self
            .resume_out
            .as_ref()
            .is_some_and(|(r, _)| *r == msg.room)
        {
            self.resume_out = None;
            // Look at the queue on the next check: the replay of this join lands in it
            // from the same shard batch, which may be drained into it just after this.
            if !self.resume_timer && !self.resumes.is_empty() {
                self.resume_timer = true;
                ctx.run_later(Duration::from_millis(1), |act, ctx| {
                    act.resume_timer = false;
                    act.pump_resumes(ctx);
                });
            }
        }
    }
}

impl Handler<CloseNow> for Session {
    type Result = ();
    fn handle(&mut self, msg: CloseNow, ctx: &mut Self::Context) {
        self.close(ctx, msg.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_round_trip_and_have_codes() {
        for r in CloseReason::ALL {
            assert_eq!(CloseReason::from_u8(r as u8 + 1), Some(r));
            assert!(r.code() >= 1000);
        }
        assert_eq!(CloseReason::from_u8(0), None);
        assert_eq!(CloseReason::SlowConsumer.code(), 1013);
        assert_eq!(CloseReason::TooBig.code(), 1009);
        assert_eq!(CloseReason::Shutdown.code(), 1001);
    }

    #[test]
    fn bucket_limits_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, 2.0);
        assert!(b.take(t0));
        assert!(b.take(t0));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(100)));
        let mut unlimited = Bucket::new(0.0, 0.0);
        for _ in 0..1000 {
            assert!(unlimited.take(t0));
        }
    }

    fn room(s: &str) -> RoomId {
        RoomId::new(s).unwrap()
    }

    #[test]
    fn new_rooms_cost_a_token_and_recent_or_joined_ones_are_free() {
        let t0 = Instant::now();
        let mut b = NewRooms::new(3, 4);
        for r in ["a", "b", "c"] {
            assert!(b.admit(&room(r), false, t0), "{r}");
        }
        // The budget is spent: a fourth name is refused (and not remembered)...
        assert!(!b.admit(&room("d"), false, t0));
        assert!(!b.admit(&room("d"), false, t0));
        // ...while the first three, and a joined room, stay free.
        for r in ["a", "b", "c", "a"] {
            assert!(b.admit(&room(r), false, t0), "{r}");
        }
        assert!(b.admit(&room("joined"), true, t0));
        // 3 per minute: one token back after 20 s.
        assert!(b.admit(&room("d"), false, t0 + Duration::from_secs(20)));
        assert!(!b.admit(&room("e"), false, t0 + Duration::from_secs(20)));
        // At most 4 are remembered: "b", addressed least recently, was forgotten ("a" and "c"
        // were touched after it; "joined" and "d" are newer), so it costs a token again.
        let t1 = t0 + Duration::from_secs(120);
        assert!(b.admit(&room("b"), false, t1));
        assert!(b.admit(&room("x"), false, t1));
        assert!(b.admit(&room("y"), false, t1));
        assert!(!b.admit(&room("z"), false, t1));
        // Unlimited: everything passes.
        let mut u = NewRooms::new(0, 4);
        for i in 0..1000 {
            assert!(u.admit(&room(&format!("r{i}")), false, t0));
        }
    }

    #[test]
    fn recent_rooms_forget_the_least_recently_addressed() {
        let mut r = RecentRooms::new(2);
        r.touch(&room("a"));
        r.touch(&room("b"));
        r.touch(&room("a"));
        r.touch(&room("c"));
        assert!(r.contains(&room("a")) && r.contains(&room("c")) && !r.contains(&room("b")));
        // Touching one room again and again keeps the log bounded.
        for _ in 0..100 {
            r.touch(&room("a"));
        }
        assert!(r.order.len() <= 8, "{}", r.order.len());
        assert!(r.contains(&room("a")) && r.contains(&room("c")));
    }
}
