//! Sealing of internode frames after the handshake: every frame carries a ChaCha20-Poly1305
//! (RFC 8439) tag, and by default its payload is encrypted.
//!
//! Why: the handshake proves that both ends know the cluster secret, but it authenticates
//! only the handshake. Without a tag on every later frame, anyone on the path could inject or
//! alter frames on an established connection — an `Event`'s frame text is written straight
//! into client sockets — or replay frames captured earlier. So, with a cluster secret:
//!
//! ```text
//! frame  := length:u32be sealed
//! sealed := ciphertext ‖ tag[16]     internode_encryption = true (default): the bincode
//!                                     payload, encrypted; the tag covers it
//!         | plaintext  ‖ tag[16]     internode_encryption = false: the payload in clear; the
//!                                     tag is ChaCha20-Poly1305's over an empty message with
//!                                     the payload as associated data
//! nonce  := 0u32 ‖ counter:u64le     12 bytes, implicit: never sent
//! ```
//!
//! Keys: each direction of each connection has its own 256-bit key, derived in the handshake
//! ([`super::codec::session_key`]) from the cluster secret, the cluster id, both node ids, both
//! handshake nonces (fresh random values from each side, so every connection gets new keys)
//! and the mode, under a domain per direction. [`SessionKeys`] is what the handshake hands the
//! I/O code.
//!
//! Nonces: a per-direction counter starting at 0, incremented for every frame. The receiver
//! expects exactly the next value, so a replayed, reordered, dropped, truncated or altered
//! frame — or one sealed with the other direction's key, or another connection's — fails its
//! tag. The receiver then ends the connection (counted as
//! `roomcast_internode_rejected_total{reason="frame_auth"}`); the link resets as for any other
//! loss. A counter that would wrap ends the link instead of ever reusing a nonce (2^64 frames:
//! never in practice, but never silently).
//!
//! Sealing and opening work in place, in the buffer the frame is encoded into or was read
//! into: no copy and no allocation per frame beyond the 16-byte tag.
//!
//! Without a cluster secret (loopback, or `--insecure`) there are no keys and frames are sent
//! in clear, unauthenticated, as before: nothing here is used.

use bytes::BytesMut;
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce, Tag};

/// Bytes of a Poly1305 tag, appended to every sealed frame.
pub const TAG_LEN: usize = 16;
/// Bytes of a direction key.
pub const KEY_LEN: usize = 32;

/// The keys of one connection, as seen from one side: `send` seals what this side writes,
/// `recv` opens what it reads. The client's `send` is the server's `recv` (the
/// client-to-server key) and vice versa.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    pub send: [u8; KEY_LEN],
    pub recv: [u8; KEY_LEN],
    /// true: encrypt and authenticate; false: authenticate only.
    pub encrypt: bool,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionKeys {{ encrypt: {}, .. }}", self.encrypt)
    }
}

impl SessionKeys {
    /// The sealer of this side's writes.
    pub fn sealer(&self) -> Sealer {
        Sealer(Direction::new(&self.send, self.encrypt))
    }

    /// The opener of this side's reads.
    pub fn opener(&self) -> Opener {
        Opener(Direction::new(&self.recv, self.encrypt))
    }
}

/// Why a frame could not be sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The tag does not verify (altered, replayed, reordered, dropped, truncated, another key)
    /// or the frame is shorter than a tag.
    #[error("frame authentication failed")]
    Auth,
    /// The frame counter would wrap: the connection must end rather than reuse a nonce.
    #[error("frame counter exhausted")]
    Exhausted,
}

/// One direction's cipher and counter.
struct Direction {
    cipher: ChaCha20Poly1305,
    /// The counter of the next frame.
    next: u64,
    encrypt: bool,
    /// Set after a failure: every later call fails too.
    broken: bool,
}

impl Direction {
    fn new(key: &[u8; KEY_LEN], encrypt: bool) -> Direction {
        Direction {
            cipher: ChaCha20Poly1305::new(&Key::from(*key)),
            next: 0,
            encrypt,
            broken: false,
        }
    }

    /// The nonce of the next frame (the counter is advanced by the caller on success). The
    /// last counter value is never used, so the counter never wraps.
    fn nonce(&self) -> Result<Nonce, SealError> {
        if self.broken {
            return Err(SealError::Auth);
        }
        if self.next == u64::MAX {
            return Err(SealError::Exhausted);
        }
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.next.to_le_bytes());
        Ok(Nonce::from(n))
    }
}

/// Seals the frames one side writes, in order.
pub struct Sealer(Direction);

impl Sealer {
    /// Seals `buf[start..]` (one frame's payload) in place and appends its tag.
    pub fn seal(&mut self, buf: &mut BytesMut, start: usize) -> Result<(), SealError> {
        let d = &mut self.0;
        let nonce = d.nonce()?;
        let tag = if d.encrypt {
            d.cipher
                .encrypt_inout_detached(&nonce, &[], (&mut buf[start..]).into())
        } else {
            d.cipher
                .encrypt_inout_detached(&nonce, &buf[start..], (&mut [][..]).into())
        };
        // ChaCha20-Poly1305 refuses only messages over 256 GiB; frames are at most 64 MiB.
        let tag = tag.map_err(|_| SealError::Auth)?;
        buf.extend_from_slice(&tag);
        d.next += 1;
        Ok(())
    }

    /// A sealer whose counter starts at `next` (tests of exhaustion).
    #[cfg(test)]
    fn starting_at(mut self, next: u64) -> Sealer {
        self.0.next = next;
        self
    }
}

/// Opens the frames one side reads, in order.
pub struct Opener(Direction);

impl Opener {
    /// Verifies (and, when encrypted, decrypts in place) one sealed frame; returns its
    /// payload, a prefix of `frame`. After a failure every later frame fails too.
    pub fn open<'a>(&mut self, frame: &'a mut [u8]) -> Result<&'a [u8], SealError> {
        let d = &mut self.0;
        let nonce = d.nonce()?;
        let Some(len) = frame.len().checked_sub(TAG_LEN) else {
            d.broken = true;
            return Err(SealError::Auth);
        };
        let (msg, tag) = frame.split_at_mut(len);
        let tag = Tag::try_from(&*tag).map_err(|_| SealError::Auth)?;
        let ok = if d.encrypt {
            d.cipher
                .decrypt_inout_detached(&nonce, &[], (&mut *msg).into(), &tag)
        } else {
            d.cipher
                .decrypt_inout_detached(&nonce, msg, (&mut [][..]).into(), &tag)
        };
        if ok.is_err() {
            d.broken = true;
            return Err(SealError::Auth);
        }
        d.next += 1;
        Ok(msg)
    }

    /// An opener whose counter starts at `next` (tests of exhaustion).
    #[cfg(test)]
    fn starting_at(mut self, next: u64) -> Opener {
        self.0.next = next;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(encrypt: bool) -> (SessionKeys, SessionKeys) {
        let c2s = [1u8; KEY_LEN];
        let s2c = [2u8; KEY_LEN];
        (
            SessionKeys {
                send: c2s,
                recv: s2c,
                encrypt,
            },
            SessionKeys {
                send: s2c,
                recv: c2s,
                encrypt,
            },
        )
    }

    /// Seals `payload` behind a 4-byte prefix, as the link codec does; returns the sealed part.
    fn sealed(s: &mut Sealer, payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::from(&b"LLLL"[..]);
        b.extend_from_slice(payload);
        s.seal(&mut b, 4).unwrap();
        assert_eq!(&b[..4], b"LLLL", "the prefix is untouched");
        b.split_off(4)
    }

    #[test]
    fn frames_round_trip_in_both_modes() {
        for encrypt in [true, false] {
            let (client, server) = keys(encrypt);
            let (mut s, mut o) = (client.sealer(), server.opener());
            for (i, payload) in [&b"hello"[..], b"", &[7u8; 5000][..]].iter().enumerate() {
                let mut f = sealed(&mut s, payload);
                assert_eq!(f.len(), payload.len() + TAG_LEN);
                if encrypt && !payload.is_empty() {
                    assert_ne!(&f[..payload.len()], *payload, "encrypted");
                } else {
                    assert_eq!(&f[..payload.len()], *payload, "in clear");
                }
                assert_eq!(o.open(&mut f).unwrap(), *payload, "frame {i}");
            }
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_fails() {
        for encrypt in [true, false] {
            let (client, server) = keys(encrypt);
            let f = sealed(&mut client.sealer(), b"{\"frame\":\"text\"}");
            for i in 0..f.len() {
                let mut bad = f.clone();
                bad[i] ^= 0x01;
                assert_eq!(
                    server.opener().open(&mut bad),
                    Err(SealError::Auth),
                    "byte {i}"
                );
            }
            assert!(server.opener().open(&mut f.clone()).is_ok());
        }
    }

    #[test]
    fn a_replayed_frame_fails_and_so_does_everything_after() {
        let (client, server) = keys(true);
        let mut s = client.sealer();
        let one = sealed(&mut s, b"one");
        let two = sealed(&mut s, b"two");
        let mut o = server.opener();
        assert!(o.open(&mut one.clone()).is_ok());
        assert_eq!(o.open(&mut one.clone()), Err(SealError::Auth));
        // The connection is over: even the right next frame is refused now.
        assert_eq!(o.open(&mut two.clone()), Err(SealError::Auth));
    }

    #[test]
    fn reordered_or_dropped_frames_fail() {
        let (client, server) = keys(true);
        let mut s = client.sealer();
        let one = sealed(&mut s, b"one");
        let two = sealed(&mut s, b"two");
        // Reordered.
        assert_eq!(server.opener().open(&mut two.clone()), Err(SealError::Auth));
        // Dropped: after `one` was lost, `two` arrives first — the same as reordered; and a
        // frame repeated in place of the lost one fails too.
        let mut o = server.opener();
        assert!(o.open(&mut one.clone()).is_ok());
        assert!(o.open(&mut two.clone()).is_ok());
        assert_eq!(o.open(&mut two.clone()), Err(SealError::Auth));
    }

    #[test]
    fn truncated_frames_fail() {
        let (client, server) = keys(true);
        let f = sealed(&mut client.sealer(), b"a payload");
        for n in 0..f.len() {
            let mut short = f.clone();
            short.truncate(n);
            assert_eq!(
                server.opener().open(&mut short),
                Err(SealError::Auth),
                "{n} bytes"
            );
        }
    }

    #[test]
    fn the_wrong_direction_or_session_key_fails() {
        let (client, server) = keys(true);
        let f = sealed(&mut client.sealer(), b"to the server");
        // The client's own opener uses the server-to-client key.
        assert_eq!(client.opener().open(&mut f.clone()), Err(SealError::Auth));
        // The server's sealer writes with the other key: the server cannot open its own.
        let g = sealed(&mut server.sealer(), b"to the client");
        assert_eq!(server.opener().open(&mut g.clone()), Err(SealError::Auth));
        assert!(client.opener().open(&mut g.clone()).is_ok());
        // Another session (other keys), same counter.
        let other = SessionKeys {
            send: [9; KEY_LEN],
            recv: [1; KEY_LEN].map(|b| b ^ 0x80),
            encrypt: true,
        };
        assert_eq!(other.opener().open(&mut f.clone()), Err(SealError::Auth));
    }

    #[test]
    fn the_modes_do_not_open_each_other() {
        let (c_enc, s_enc) = keys(true);
        let (c_auth, s_auth) = keys(false);
        let f = sealed(&mut c_enc.sealer(), b"payload");
        assert_eq!(s_auth.opener().open(&mut f.clone()), Err(SealError::Auth));
        let g = sealed(&mut c_auth.sealer(), b"payload");
        assert_eq!(s_enc.opener().open(&mut g.clone()), Err(SealError::Auth));
    }

    #[test]
    fn the_counter_never_wraps() {
        let (client, server) = keys(true);
        let mut s = client.sealer().starting_at(u64::MAX - 1);
        let mut o = server.opener().starting_at(u64::MAX - 1);
        let mut f = sealed(&mut s, b"last");
        assert_eq!(o.open(&mut f).unwrap(), b"last");
        let mut b = BytesMut::from(&b"next"[..]);
        assert_eq!(s.seal(&mut b, 0), Err(SealError::Exhausted));
        assert_eq!(&b[..], b"next", "nothing sealed");
        assert_eq!(o.open(&mut [0u8; 20]), Err(SealError::Exhausted));
    }

    /// The cost of sealing and opening one frame of an `Event`'s size, per mode (run with
    /// `cargo test --release --lib seal::tests::cost -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn cost_per_frame() {
        for size in [64usize, 300, 1500, 16 * 1024] {
            for encrypt in [true, false] {
                let (client, server) = keys(encrypt);
                let (mut s, mut o) = (client.sealer(), server.opener());
                let payload = vec![b'x'; size];
                let mut buf = BytesMut::with_capacity(size + TAG_LEN);
                let n = 200_000usize.min(200_000_000 / size);
                let t = std::time::Instant::now();
                for _ in 0..n {
                    buf.clear();
                    buf.extend_from_slice(&payload);
                    s.seal(&mut buf, 0).unwrap();
                    std::hint::black_box(o.open(&mut buf).unwrap());
                }
                let ns = t.elapsed().as_nanos() as f64 / n as f64;
                println!(
                    "{size:>6} B, {}: {ns:>8.0} ns per frame (seal + open)",
                    if encrypt { "encrypt" } else { "auth   " }
                );
            }
        }
    }

    #[test]
    fn keys_never_show_in_debug() {
        let (client, _) = keys(true);
        let s = format!("{client:?}");
        assert!(!s.contains('1'), "{s}");
    }
}
