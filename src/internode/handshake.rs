//! The internode handshake as two pure state machines: frames in, frames out, a verdict at the
//! end. No sockets, no clock, no randomness (the nonce is given), so every path — wrong
//! cluster, a node claiming our own id, a missing or wrong secret on either side, another
//! encryption mode, frames out of order — is tested without a network (`tests` below), and the
//! I/O code in `link.rs` and `inbound.rs` only moves frames and enforces the timeout and
//! frame-size limits.
//!
//! ```text
//! client                                   server
//!   Hello{cluster, node, gen, addr, nc, enc} ─►  checks cluster id, node ≠ server, and (with a
//!                                                secret) enc = its own internode_encryption
//!   ◄─ Challenge{node, gen, ns, proof_s, enc}    proof_s = HMAC(secret, "server", cluster, c, s, nc, ns)
//!   checks node = the peer it dialled,
//!   checks proof_s and enc (with a secret)
//!   Proof{proof_c} ─►                            proof_c = HMAC(secret, "client", cluster, c, s, ns, nc)
//!   ◄─ Accept                                    checks proof_c
//! ```
//!
//! With a secret, both sides then derive the session keys (`codec::session_keys`: HMAC of the
//! secret, cluster, both ids, both nonces and the mode, one domain per direction) and return
//! them with the peer's identity ([`PeerInfo::keys`]); every later frame is sealed with them
//! (`seal.rs`). The mode is part of the key derivation too, so even a mode mismatch that
//! slipped through would fail the first frame's tag instead of being misread. Without a secret
//! there are no keys (frames stay in clear) and the mode is not compared.
//!
//! Either side answers a failure with `Reject { reason }` where the protocol lets it, and the
//! server counts every refusal in `roomcast_internode_rejected_total{reason}`.

use super::InternodeConfig;
use super::codec::{self, Frame, NONCE_LEN};
use super::seal::SessionKeys;
use crate::ids::NodeId;

/// Why a handshake failed: the `roomcast_internode_rejected_total` reason (the client counts
/// only secret mismatches), a detail for the log, and the frame to send before closing.
#[derive(Debug, PartialEq)]
pub struct Failure {
    pub reason: Option<&'static str>,
    pub detail: String,
    /// What to tell the peer before closing (boxed: a `Frame` is large, failures are rare).
    pub reply: Option<Box<Frame>>,
}

fn fail(reason: Option<&'static str>, detail: impl Into<String>) -> Failure {
    Failure {
        reason,
        detail: detail.into(),
        reply: None,
    }
}

fn reject(reason: &'static str, detail: impl Into<String>, told: &str) -> Failure {
    Failure {
        reason: Some(reason),
        detail: detail.into(),
        reply: Some(Box::new(Frame::Reject {
            reason: told.to_string(),
        })),
    }
}

/// The other side, once the handshake succeeded.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerInfo {
    pub node: NodeId,
    pub generation: u64,
    /// The cluster address the client advertised (server side only).
    pub cluster_addr: Option<String>,
    /// The connection's keys, from this side's point of view (with a secret only).
    pub keys: Option<SessionKeys>,
}

/// Both directions' keys of a connection, as seen by the client (`client_side`) or the server.
fn keys(
    cfg: &InternodeConfig,
    client_side: bool,
    client: &NodeId,
    server: &NodeId,
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
) -> Option<SessionKeys> {
    let secret = cfg.secret.as_ref()?;
    let (c2s, s2c) = codec::session_keys(
        secret,
        cfg.encryption,
        &cfg.cluster_id,
        client,
        server,
        client_nonce,
        server_nonce,
    );
    let (send, recv) = if client_side { (c2s, s2c) } else { (s2c, c2s) };
    Some(SessionKeys {
        send,
        recv,
        encrypt: cfg.encryption,
    })
}

fn mode(encrypt: bool) -> &'static str {
    if encrypt {
        "internode_encryption = true"
    } else {
        "internode_encryption = false"
    }
}

/// What the client does next.
#[derive(Debug, PartialEq)]
pub enum ClientStep {
    Send(Frame),
    /// Accepted: messages may follow.
    Done(PeerInfo),
}

enum ClientState {
    AwaitChallenge,
    AwaitAccept(PeerInfo),
    Over,
}

/// The dialling side.
pub struct Client {
    cfg: InternodeConfig,
    expect: NodeId,
    nonce: [u8; NONCE_LEN],
    state: ClientState,
}

impl Client {
    /// Starts a handshake with `expect` (the node the caller dialled): returns the `Hello` to
    /// send first.
    pub fn start(cfg: InternodeConfig, expect: NodeId, nonce: [u8; NONCE_LEN]) -> (Client, Frame) {
        let hello = Frame::Hello {
            cluster_id: cfg.cluster_id.clone(),
            node_id: cfg.me.clone(),
            generation: cfg.generation,
            cluster_addr: cfg.advertise.clone(),
            nonce,
            encryption: cfg.encryption,
        };
        let c = Client {
            cfg,
            expect,
            nonce,
            state: ClientState::AwaitChallenge,
        };
        (c, hello)
    }

    /// Feeds the next frame from the server.
    pub fn on_frame(&mut self, frame: Frame) -> Result<ClientStep, Failure> {
        let state = std::mem::replace(&mut self.state, ClientState::Over);
        match (state, frame) {
            (_, Frame::Reject { reason }) => Err(fail(None, format!("rejected: {reason}"))),
            (
                ClientState::AwaitChallenge,
                Frame::Challenge {
                    node_id,
                    generation,
                    nonce,
                    proof,
                    encryption,
                },
            ) => {
                if node_id != self.expect {
                    return Err(fail(
                        None,
                        format!("expected node {}, found {node_id}", self.expect),
                    ));
                }
                let cfg = &self.cfg;
                let my_proof = match (&cfg.secret, proof) {
                    (Some(secret), Some(proof)) => {
                        let want = codec::server_proof(
                            secret,
                            &cfg.cluster_id,
                            &cfg.me,
                            &node_id,
                            &self.nonce,
                            &nonce,
                        );
                        if !codec::proof_ok(&want, &proof) {
                            return Err(fail(
                                Some("bad_secret"),
                                "the peer's proof is wrong (another secret)",
                            ));
                        }
                        Some(codec::client_proof(
                            secret,
                            &cfg.cluster_id,
                            &cfg.me,
                            &node_id,
                            &self.nonce,
                            &nonce,
                        ))
                    }
                    (None, None) => None,
                    (Some(_), None) => {
                        return Err(fail(Some("bad_secret"), "the peer has no secret"));
                    }
                    (None, Some(_)) => {
                        return Err(fail(Some("bad_secret"), "the peer requires a secret"));
                    }
                };
                if cfg.secret.is_some() && encryption != cfg.encryption {
                    return Err(fail(
                        Some("encryption_mismatch"),
                        format!(
                            "the peer has {}, this node {}: set internode_encryption alike on every node",
                            mode(encryption),
                            mode(cfg.encryption)
                        ),
                    ));
                }
                let keys = keys(cfg, true, &cfg.me, &node_id, &self.nonce, &nonce);
                self.state = ClientState::AwaitAccept(PeerInfo {
                    node: node_id,
                    generation,
                    cluster_addr: None,
                    keys,
                });
                Ok(ClientStep::Send(Frame::Proof { proof: my_proof }))
            }
            (ClientState::AwaitAccept(peer), Frame::Accept) => Ok(ClientStep::Done(peer)),
            (_, other) => Err(fail(None, format!("unexpected {}", frame_name(&other)))),
        }
    }
}

/// What the server does next.
#[derive(Debug, PartialEq)]
pub enum ServerStep {
    Send(Frame),
    /// Send the frame (`Accept`); then messages may follow.
    Accepted(Frame, PeerInfo),
}

enum ServerState {
    AwaitHello,
    AwaitProof {
        peer: PeerInfo,
        their_nonce: [u8; NONCE_LEN],
    },
    Over,
}

/// The accepting side.
pub struct Server {
    cfg: InternodeConfig,
    nonce: [u8; NONCE_LEN],
    state: ServerState,
}

impl Server {
    pub fn new(cfg: InternodeConfig, nonce: [u8; NONCE_LEN]) -> Server {
        Server {
            cfg,
            nonce,
            state: ServerState::AwaitHello,
        }
    }

    /// Feeds the next frame from the client.
    pub fn on_frame(&mut self, frame: Frame) -> Result<ServerStep, Failure> {
        let state = std::mem::replace(&mut self.state, ServerState::Over);
        let cfg = &self.cfg;
        match (state, frame) {
            (
                ServerState::AwaitHello,
                Frame::Hello {
                    cluster_id,
                    node_id: client,
                    generation,
                    cluster_addr,
                    nonce: their_nonce,
                    encryption,
                },
            ) => {
                if cluster_id != cfg.cluster_id {
                    return Err(reject(
                        "wrong_cluster",
                        format!("cluster {cluster_id:?} from {client}"),
                        "wrong cluster id",
                    ));
                }
                if client == cfg.me {
                    return Err(reject(
                        "self",
                        client.to_string(),
                        "same node id as the server",
                    ));
                }
                if cfg.secret.is_some() && encryption != cfg.encryption {
                    return Err(reject(
                        "encryption_mismatch",
                        format!("{client} has {}", mode(encryption)),
                        &format!(
                            "internode_encryption differs: this node has {}",
                            mode(cfg.encryption)
                        ),
                    ));
                }
                let proof = cfg.secret.as_ref().map(|s| {
                    codec::server_proof(
                        s,
                        &cfg.cluster_id,
                        &client,
                        &cfg.me,
                        &their_nonce,
                        &self.nonce,
                    )
                });
                let challenge = Frame::Challenge {
                    node_id: cfg.me.clone(),
                    generation: cfg.generation,
                    nonce: self.nonce,
                    proof,
                    encryption: cfg.encryption,
                };
                self.state = ServerState::AwaitProof {
                    peer: PeerInfo {
                        node: client,
                        generation,
                        cluster_addr: Some(cluster_addr),
                        keys: None,
                    },
                    their_nonce,
                };
                Ok(ServerStep::Send(challenge))
            }
            (ServerState::AwaitHello, _) => Err(fail(Some("unexpected_frame"), "expected Hello")),
            (ServerState::AwaitProof { .. }, Frame::Reject { reason }) => Err(fail(
                Some("bad_secret"),
                format!("client refused us: {reason}"),
            )),
            (
                ServerState::AwaitProof {
                    mut peer,
                    their_nonce,
                },
                Frame::Proof { proof },
            ) => {
                let ok = match (&cfg.secret, proof) {
                    (Some(s), Some(p)) => codec::proof_ok(
                        &codec::client_proof(
                            s,
                            &cfg.cluster_id,
                            &peer.node,
                            &cfg.me,
                            &their_nonce,
                            &self.nonce,
                        ),
                        &p,
                    ),
                    (None, None) => true,
                    _ => false,
                };
                if !ok {
                    return Err(reject(
                        "bad_secret",
                        format!("from {}", peer.node),
                        "authentication failed",
                    ));
                }
                peer.keys = keys(cfg, false, &peer.node, &cfg.me, &their_nonce, &self.nonce);
                Ok(ServerStep::Accepted(Frame::Accept, peer))
            }
            (ServerState::AwaitProof { .. }, _) => {
                Err(fail(Some("unexpected_frame"), "expected Proof"))
            }
            (ServerState::Over, _) => Err(fail(
                Some("unexpected_frame"),
                "frame after the handshake ended",
            )),
        }
    }
}

fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello { .. } => "Hello",
        Frame::Challenge { .. } => "Challenge",
        Frame::Proof { .. } => "Proof",
        Frame::Accept => "Accept",
        Frame::Reject { .. } => "Reject",
        Frame::Msg(_) => "Msg",
        Frame::Control(_) => "Control",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterSecret;

    fn cfg(me: &str, cluster: &str, secret: Option<&str>) -> InternodeConfig {
        InternodeConfig {
            me: NodeId::new(me).unwrap(),
            generation: 7,
            cluster_id: cluster.into(),
            advertise: format!("{me}:9000"),
            secret: secret.map(|s| ClusterSecret::from_bytes(s.as_bytes())),
            encryption: true,
        }
    }

    fn with_encryption(mut c: InternodeConfig, encryption: bool) -> InternodeConfig {
        c.encryption = encryption;
        c
    }

    /// Runs a whole handshake between the two machines; returns each side's outcome.
    fn run(
        client: InternodeConfig,
        dial: &str,
        server: InternodeConfig,
    ) -> (Result<PeerInfo, Failure>, Result<PeerInfo, Failure>) {
        run_with_nonces(client, dial, server, [1; NONCE_LEN], [2; NONCE_LEN])
    }

    fn run_with_nonces(
        client: InternodeConfig,
        dial: &str,
        server: InternodeConfig,
        client_nonce: [u8; NONCE_LEN],
        server_nonce: [u8; NONCE_LEN],
    ) -> (Result<PeerInfo, Failure>, Result<PeerInfo, Failure>) {
        let (mut c, hello) = Client::start(client, NodeId::new(dial).unwrap(), client_nonce);
        let mut s = Server::new(server, server_nonce);
        let challenge = match s.on_frame(hello) {
            Ok(ServerStep::Send(f)) => f,
            Ok(other) => panic!("{other:?}"),
            Err(e) => {
                let told = match &e.reply {
                    Some(r) => c.on_frame((**r).clone()).map(|_| unreachable!()),
                    None => Err(fail(None, "closed")),
                };
                return (told, Err(e));
            }
        };
        let proof = match c.on_frame(challenge) {
            Ok(ClientStep::Send(f)) => f,
            Ok(other) => panic!("{other:?}"),
            Err(e) => {
                // The client closes; the server sees the connection end.
                return (Err(e), Err(fail(None, "closed")));
            }
        };
        match s.on_frame(proof) {
            Ok(ServerStep::Accepted(accept, peer)) => {
                let done = match c.on_frame(accept) {
                    Ok(ClientStep::Done(p)) => Ok(p),
                    Ok(other) => panic!("{other:?}"),
                    Err(e) => Err(e),
                };
                (done, Ok(peer))
            }
            Ok(other) => panic!("{other:?}"),
            Err(e) => {
                let told = match &e.reply {
                    Some(r) => c.on_frame((**r).clone()).map(|_| unreachable!()),
                    None => Err(fail(None, "closed")),
                };
                (told, Err(e))
            }
        }
    }

    fn reason<T>(r: &Result<T, Failure>) -> Option<&'static str> {
        r.as_ref().err().and_then(|e| e.reason)
    }

    #[test]
    fn matching_nodes_shake_hands_with_and_without_a_secret() {
        for secret in [None, Some("s3cret-s3cret-s3cret")] {
            let (c, s) = run(cfg("a", "k", secret), "b", cfg("b", "k", secret));
            let c = c.unwrap();
            let s = s.unwrap();
            assert_eq!(c.node.as_str(), "b");
            assert_eq!(c.generation, 7);
            assert_eq!(s.node.as_str(), "a");
            assert_eq!(s.cluster_addr.as_deref(), Some("a:9000"));
        }
    }

    #[test]
    fn another_cluster_or_our_own_id_is_rejected_with_a_reason() {
        let (c, s) = run(cfg("a", "k", None), "b", cfg("b", "other", None));
        assert_eq!(reason(&s), Some("wrong_cluster"));
        assert!(c.unwrap_err().detail.contains("wrong cluster id"));
        let (c, s) = run(cfg("b", "k", None), "b", cfg("b", "k", None));
        assert_eq!(reason(&s), Some("self"));
        assert!(c.is_err());
    }

    #[test]
    fn a_secret_mismatch_fails_on_both_sides_whichever_side_lacks_it() {
        let one = Some("s3cret-s3cret-s3cret");
        let two = Some("another-another-another");
        // Different secrets: the client catches the server's proof.
        let (c, _) = run(cfg("a", "k", one), "b", cfg("b", "k", two));
        assert_eq!(reason(&c), Some("bad_secret"));
        // Only the server has one: the client sees a proof it cannot check.
        let (c, _) = run(cfg("a", "k", None), "b", cfg("b", "k", one));
        assert_eq!(reason(&c), Some("bad_secret"));
        // Only the client has one: the client sees no proof.
        let (c, _) = run(cfg("a", "k", one), "b", cfg("b", "k", None));
        assert_eq!(reason(&c), Some("bad_secret"));
        // A forged client proof is refused by the server.
        let mut s = Server::new(cfg("b", "k", one), [2; NONCE_LEN]);
        let (_, hello) = Client::start(
            cfg("a", "k", one),
            NodeId::new("b").unwrap(),
            [1; NONCE_LEN],
        );
        assert!(matches!(s.on_frame(hello), Ok(ServerStep::Send(_))));
        let e = s
            .on_frame(Frame::Proof {
                proof: Some([0; crate::cluster::secret::TAG_LEN]),
            })
            .unwrap_err();
        assert_eq!(e.reason, Some("bad_secret"));
        assert_eq!(
            e.reply.as_deref(),
            Some(&Frame::Reject {
                reason: "authentication failed".into()
            })
        );
    }

    #[test]
    fn both_sides_derive_the_same_keys_one_per_direction_and_session() {
        let secret = Some("s3cret-s3cret-s3cret");
        for encryption in [true, false] {
            let (c, s) = run(
                with_encryption(cfg("a", "k", secret), encryption),
                "b",
                with_encryption(cfg("b", "k", secret), encryption),
            );
            let ck = c.unwrap().keys.expect("client keys");
            let sk = s.unwrap().keys.expect("server keys");
            assert_eq!(ck.encrypt, encryption);
            assert_eq!(sk.encrypt, encryption);
            // What one side seals, the other opens.
            assert_eq!(ck.send, sk.recv);
            assert_eq!(ck.recv, sk.send);
            // One key per direction.
            assert_ne!(ck.send, ck.recv);
            // A frame sealed by the client opens on the server, and not with the other key.
            let mut b = bytes::BytesMut::from(&b"payload"[..]);
            ck.sealer().seal(&mut b, 0).unwrap();
            assert_eq!(sk.opener().open(&mut b.clone()).unwrap(), b"payload");
            assert!(ck.opener().open(&mut b.clone()).is_err());
        }
        // Another session (other nonces, either side's) has other keys.
        let base = run(cfg("a", "k", secret), "b", cfg("b", "k", secret))
            .0
            .unwrap()
            .keys
            .unwrap();
        for (nc, ns) in [
            ([3; NONCE_LEN], [2; NONCE_LEN]),
            ([1; NONCE_LEN], [4; NONCE_LEN]),
        ] {
            let (c, s) = run_with_nonces(cfg("a", "k", secret), "b", cfg("b", "k", secret), nc, ns);
            let (ck, sk) = (c.unwrap().keys.unwrap(), s.unwrap().keys.unwrap());
            assert_eq!(ck.send, sk.recv);
            assert_ne!(ck.send, base.send);
            assert_ne!(ck.recv, base.recv);
        }
        // The modes derive different keys from the same session.
        let auth = run(
            with_encryption(cfg("a", "k", secret), false),
            "b",
            with_encryption(cfg("b", "k", secret), false),
        )
        .0
        .unwrap()
        .keys
        .unwrap();
        assert_ne!(auth.send, base.send);
        // Another secret, another cluster id: other keys.
        let other = run(
            cfg("a", "k", Some("another-another-another")),
            "b",
            cfg("b", "k", Some("another-another-another")),
        )
        .0
        .unwrap()
        .keys
        .unwrap();
        assert_ne!(other.send, base.send);
        let other = run(cfg("a", "k2", secret), "b", cfg("b", "k2", secret))
            .0
            .unwrap()
            .keys
            .unwrap();
        assert_ne!(other.send, base.send);
    }

    #[test]
    fn without_a_secret_there_are_no_keys_and_the_mode_is_not_compared() {
        let (c, s) = run(
            with_encryption(cfg("a", "k", None), true),
            "b",
            with_encryption(cfg("b", "k", None), false),
        );
        assert_eq!(c.unwrap().keys, None);
        assert_eq!(s.unwrap().keys, None);
    }

    #[test]
    fn an_encryption_mode_mismatch_fails_the_handshake_with_a_reason() {
        let secret = Some("s3cret-s3cret-s3cret");
        for (client, server) in [(true, false), (false, true)] {
            let (c, s) = run(
                with_encryption(cfg("a", "k", secret), client),
                "b",
                with_encryption(cfg("b", "k", secret), server),
            );
            // The server refuses the Hello, counts it and tells the client why.
            assert_eq!(reason(&s), Some("encryption_mismatch"));
            let told = c.unwrap_err().detail;
            assert!(told.contains("internode_encryption differs"), "{told}");
        }
        // A server that (wrongly) answered anyway is caught by the client.
        let (mut c, _) = Client::start(
            with_encryption(cfg("a", "k", secret), true),
            NodeId::new("b").unwrap(),
            [1; NONCE_LEN],
        );
        let s = ClusterSecret::from_bytes(b"s3cret-s3cret-s3cret");
        let (a, b) = (NodeId::new("a").unwrap(), NodeId::new("b").unwrap());
        let e = c
            .on_frame(Frame::Challenge {
                node_id: b.clone(),
                generation: 1,
                nonce: [2; NONCE_LEN],
                proof: Some(codec::server_proof(
                    &s,
                    "k",
                    &a,
                    &b,
                    &[1; NONCE_LEN],
                    &[2; NONCE_LEN],
                )),
                encryption: false,
            })
            .unwrap_err();
        assert_eq!(e.reason, Some("encryption_mismatch"));
        assert!(e.detail.contains("internode_encryption"), "{}", e.detail);
    }

    #[test]
    fn the_dialled_node_must_be_the_one_that_answers() {
        let (c, _) = run(cfg("a", "k", None), "c", cfg("b", "k", None));
        assert!(c.unwrap_err().detail.contains("expected node c"));
    }

    #[test]
    fn frames_out_of_order_end_the_handshake() {
        let mut s = Server::new(cfg("b", "k", None), [2; NONCE_LEN]);
        assert_eq!(
            s.on_frame(Frame::Accept).unwrap_err().reason,
            Some("unexpected_frame")
        );
        let mut s = Server::new(cfg("b", "k", None), [2; NONCE_LEN]);
        let (_, hello) = Client::start(
            cfg("a", "k", None),
            NodeId::new("b").unwrap(),
            [1; NONCE_LEN],
        );
        s.on_frame(hello.clone()).unwrap();
        assert_eq!(
            s.on_frame(hello).unwrap_err().reason,
            Some("unexpected_frame")
        );
        let (mut c, _) = Client::start(
            cfg("a", "k", None),
            NodeId::new("b").unwrap(),
            [1; NONCE_LEN],
        );
        assert!(c.on_frame(Frame::Accept).is_err());
    }
}
