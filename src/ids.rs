//! Identifier newtypes: rooms, nodes, connections, users and room epochs.
//!
//! Every id that crosses a boundary (client protocol, internode protocol, metrics, logs) has its
//! own type so that a room name can never be passed where a node id is expected. Room and node
//! ids are validated once, when they enter the process; after that they are known to be short
//! and made of characters that never need escaping in JSON, which lets the protocol encoder write
//! them verbatim.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Longest room name, in bytes (= characters, since the alphabet is ASCII).
pub const MAX_ROOM_LEN: usize = 128;
/// Longest node id, in bytes.
pub const MAX_NODE_ID_LEN: usize = 64;

/// True for the characters allowed in room names and node ids: `[A-Za-z0-9_.:-]`.
fn is_id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')
}

/// Why a string is not a valid room name or node id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("is {len} characters long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("may contain only A-Z a-z 0-9 _ . : - (found {found:?})")]
    BadChar { found: char },
    #[error("must not contain control characters (found {found:?})")]
    Control { found: char },
}

fn validate(s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > max {
        return Err(IdError::TooLong {
            len: s.chars().count(),
            max,
        });
    }
    if let Some(found) = s.chars().find(|c| !c.is_ascii() || !is_id_char(*c as u8)) {
        return Err(IdError::BadChar { found });
    }
    Ok(())
}

/// A room name: 1–128 characters of `[A-Za-z0-9_.:-]`. Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoomId(Arc<str>);

impl RoomId {
    pub fn new(s: &str) -> Result<Self, IdError> {
        validate(s, MAX_ROOM_LEN)?;
        Ok(RoomId(Arc::from(s)))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RoomId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        RoomId::new(&s)
    }
}
impl From<RoomId> for String {
    fn from(r: RoomId) -> String {
        r.0.to_string()
    }
}
impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoomId({})", &self.0)
    }
}

/// A node id: 1–64 characters of `[A-Za-z0-9_.:-]`, unique in the cluster.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(Arc<str>);

impl NodeId {
    pub fn new(s: &str) -> Result<Self, IdError> {
        validate(s, MAX_NODE_ID_LEN)?;
        Ok(NodeId(Arc::from(s)))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for NodeId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        NodeId::new(&s)
    }
}
impl From<NodeId> for String {
    fn from(n: NodeId) -> String {
        n.0.to_string()
    }
}
impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", &self.0)
    }
}

/// A connection's number, unique within one node process. On the wire a connection is named
/// `NODE/N` (see [`ConnName`]), which is unique in the cluster.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ConnId(pub u64);

impl ConnId {
    /// A process-wide fresh id.
    pub fn next() -> ConnId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ConnId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Longest user id, in bytes.
pub const MAX_USER_LEN: usize = 128;

/// A user id: the `sub` claim of the token a connection authenticated with — 1 to 128 bytes of
/// text without control characters. Unlike room names it may need escaping in JSON, which the
/// encoder does. Ids decoded from peers are validated.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(Arc<str>);

impl UserId {
    pub fn new(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_USER_LEN {
            return Err(IdError::TooLong {
                len: s.len(),
                max: MAX_USER_LEN,
            });
        }
        if let Some(found) = s.chars().find(|c| c.is_control()) {
            return Err(IdError::Control { found });
        }
        Ok(UserId(Arc::from(s)))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for UserId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        UserId::new(&s)
    }
}
impl From<UserId> for String {
    fn from(u: UserId) -> String {
        u.0.to_string()
    }
}
impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({:?})", &self.0)
    }
}

/// The cluster-wide name of a connection as clients see it (`"from"` in events, `"conn"` in
/// the welcome): `NODE/N`. `/` is not a node-id character, so the name is unambiguous and needs
/// no JSON escaping. Names decoded from peers are validated.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConnName(Arc<str>);

impl TryFrom<String> for ConnName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if ConnName::is_valid(&s) {
            Ok(ConnName(Arc::from(s)))
        } else {
            Err(format!("invalid connection name {s:?}"))
        }
    }
}
impl From<ConnName> for String {
    fn from(c: ConnName) -> String {
        c.0.to_string()
    }
}

impl ConnName {
    pub fn new(node: &NodeId, conn: ConnId) -> ConnName {
        ConnName(Arc::from(format!("{}/{}", node, conn.0)))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// True if the name is `NODE/N` with a valid node id, so it can be written into JSON
    /// without escaping.
    pub fn is_valid(s: &str) -> bool {
        match s.split_once('/') {
            Some((node, n)) => {
                validate(node, MAX_NODE_ID_LEN).is_ok()
                    && !n.is_empty()
                    && n.len() <= 20
                    && n.bytes().all(|b| b.is_ascii_digit())
            }
            None => false,
        }
    }
}
impl fmt::Display for ConnName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for ConnName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnName({})", &self.0)
    }
}

/// A room epoch: an opaque token that changes whenever a room's sequence restarts (the room was
/// dropped and created again, or its owner died with its history). Clients compare epochs for
/// equality only. Made of hex digits and `-`, so it needs no JSON escaping (checked when
/// decoded from a peer).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Epoch(Arc<str>);

impl TryFrom<String> for Epoch {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if Epoch::is_valid(&s) {
            Ok(Epoch(Arc::from(s)))
        } else {
            Err(format!("invalid epoch {s:?}"))
        }
    }
}
impl From<Epoch> for String {
    fn from(e: Epoch) -> String {
        e.0.to_string()
    }
}

impl Epoch {
    /// A fresh epoch for a room created on `node` at `now_ms`: unique because it mixes the node,
    /// the time and a process-wide counter.
    pub fn fresh(node: &NodeId, now_ms: u64) -> Epoch {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let node_hash = fnv1a64(node.as_str().as_bytes());
        Epoch(Arc::from(format!(
            "{:x}-{:x}-{:x}",
            now_ms,
            node_hash & 0xffff_ffff,
            n
        )))
    }
    /// An epoch as the client or a peer wrote it (not validated beyond being a string).
    pub fn from_wire(s: &str) -> Epoch {
        Epoch(Arc::from(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// True if the string could be an epoch (so it can be echoed into JSON unescaped).
    pub fn is_valid(s: &str) -> bool {
        !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
    }
}
impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({})", &self.0)
    }
}

/// FNV-1a, 64 bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert!(RoomId::new("a").is_ok());
        assert!(RoomId::new("chat:lobby-1_x.y").is_ok());
        assert!(RoomId::new(&"a".repeat(128)).is_ok());
        assert_eq!(
            RoomId::new(&"a".repeat(129)),
            Err(IdError::TooLong { len: 129, max: 128 })
        );
        assert_eq!(RoomId::new(""), Err(IdError::Empty));
        assert_eq!(RoomId::new("a b"), Err(IdError::BadChar { found: ' ' }));
        assert_eq!(RoomId::new("a/b"), Err(IdError::BadChar { found: '/' }));
        assert_eq!(RoomId::new("é"), Err(IdError::BadChar { found: 'é' }));
        assert_eq!(RoomId::new("a\"b"), Err(IdError::BadChar { found: '"' }));
    }

    #[test]
    fn conn_names() {
        let n = NodeId::new("node-1").unwrap();
        let c = ConnName::new(&n, ConnId(42));
        assert_eq!(c.as_str(), "node-1/42");
        assert!(ConnName::is_valid(c.as_str()));
        assert!(!ConnName::is_valid("node-1/"));
        assert!(!ConnName::is_valid("node 1/4"));
        assert!(!ConnName::is_valid("x\"/4"));
    }

    #[test]
    fn epochs_are_unique_and_safe() {
        let n = NodeId::new("n").unwrap();
        let a = Epoch::fresh(&n, 1000);
        let b = Epoch::fresh(&n, 1000);
        assert_ne!(a, b);
        assert!(Epoch::is_valid(a.as_str()));
        assert!(!Epoch::is_valid("x\"y"));
    }
}
