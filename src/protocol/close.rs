//! Why a client connection ends: one reason per connection, sent as the WebSocket close code
//! and reason text (docs/protocol.md, "Close codes") and counted by reason. It lives with the
//! client protocol, below every layer that closes connections or counts closes (sessions,
//! room shards, the node, metrics), so none of them has to reach up to another for it.

/// Why a connection was closed, with its WebSocket close code (documented in docs/protocol.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// The client closed, or the socket went away.
    Normal = 0,
    /// The node is shutting down (1001).
    Shutdown = 1,
    /// The node is draining; reconnect elsewhere (1001).
    Draining = 2,
    /// Invalid WebSocket framing (1002).
    Protocol = 3,
    /// A message over the hard frame limit (1009).
    TooBig = 4,
    /// The client did not keep up with its outbound queue (1013).
    SlowConsumer = 5,
    /// No frame from the client for too many heartbeat intervals (4408).
    HeartbeatTimeout = 6,
    /// Too many invalid requests (1008).
    TooManyErrors = 7,
    /// A room lost messages this connection would have had to skip (1013); resume with `since`.
    Gap = 8,
    /// A server fault (1011).
    Internal = 9,
    /// A text message that is not valid UTF-8 (1007).
    InvalidData = 10,
    /// The connection's token expired (not refreshed in time), or `auth = required` and no
    /// valid token came within `auth_timeout`, or the token given was refused (4401).
    Unauthorized = 11,
    /// Disconnected through the server API (`POST /api/disconnect`) (4403).
    Disconnected = 12,
}

impl CloseReason {
    pub const ALL: [CloseReason; 13] = [
        CloseReason::Normal,
        CloseReason::Shutdown,
        CloseReason::Draining,
        CloseReason::Protocol,
        CloseReason::TooBig,
        CloseReason::SlowConsumer,
        CloseReason::HeartbeatTimeout,
        CloseReason::TooManyErrors,
        CloseReason::Gap,
        CloseReason::Internal,
        CloseReason::InvalidData,
        CloseReason::Unauthorized,
        CloseReason::Disconnected,
    ];

    /// Decodes the outbox's close slot (0 = open, else reason + 1).
    pub fn from_u8(v: u8) -> Option<CloseReason> {
        v.checked_sub(1)
            .and_then(|i| Self::ALL.get(usize::from(i)).copied())
    }

    pub fn code(self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::Shutdown | CloseReason::Draining => 1001,
            CloseReason::Protocol => 1002,
            CloseReason::TooBig => 1009,
            CloseReason::SlowConsumer | CloseReason::Gap => 1013,
            CloseReason::HeartbeatTimeout => 4408,
            CloseReason::TooManyErrors => 1008,
            CloseReason::Internal => 1011,
            CloseReason::InvalidData => 1007,
            CloseReason::Unauthorized => 4401,
            CloseReason::Disconnected => 4403,
        }
    }

    /// The reason text (also the `reason` label of `roomcast_disconnects_total`).
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Draining => "draining",
            CloseReason::Protocol => "protocol_error",
            CloseReason::TooBig => "too_big",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::TooManyErrors => "too_many_errors",
            CloseReason::Gap => "resync_required",
            CloseReason::Internal => "internal",
            CloseReason::InvalidData => "invalid_utf8",
            CloseReason::Unauthorized => "unauthorized",
            CloseReason::Disconnected => "disconnected",
        }
    }
}
