//! The shared cluster secret and the HMAC-SHA256 tags made with it.
//!
//! One secret authenticates both channels between nodes: every gossip datagram carries a tag
//! over its bytes and a timestamp (so a node with another secret never becomes a member, and a
//! captured datagram cannot be replayed later: `transport.rs`), and every internode TCP
//! connection starts with a challenge-response proof in both directions, from which both ends
//! derive the keys that authenticate (and by default encrypt) every later frame
//! (`internode/seal.rs`). Each use has its own domain prefix so a tag made for one purpose is
//! never valid for another.

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of an HMAC-SHA256 tag.
pub const TAG_LEN: usize = 32;
/// Shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

/// The cluster secret (its bytes never appear in logs or `Debug`).
#[derive(Clone)]
pub struct ClusterSecret(Vec<u8>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

/// Why a secret file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read cluster secret file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "cluster secret in {path} is {len} bytes after trimming whitespace; at least {MIN_SECRET_LEN} are required"
    )]
    TooShort { path: String, len: usize },
}

impl ClusterSecret {
    /// Reads the secret from `path`; surrounding whitespace (a trailing newline) is ignored.
    pub fn from_file(path: &Path) -> Result<ClusterSecret, SecretError> {
        let shown = path.display().to_string();
        let raw = std::fs::read(path).map_err(|source| SecretError::Read {
            path: shown.clone(),
            source,
        })?;
        let trimmed = raw.trim_ascii();
        if trimmed.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort {
                path: shown,
                len: trimmed.len(),
            });
        }
        Ok(ClusterSecret(trimmed.to_vec()))
    }

    /// A secret from bytes (tests).
    pub fn from_bytes(b: &[u8]) -> ClusterSecret {
        ClusterSecret(b.to_vec())
    }

    fn mac(&self, domain: &[u8], parts: &[&[u8]]) -> HmacSha256 {
        // HMAC accepts keys of any length; new_from_slice cannot fail for it.
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        m.update(domain);
        for p in parts {
            // Length-prefix each part so concatenations cannot collide.
            m.update(&(p.len() as u32).to_be_bytes());
            m.update(p);
        }
        m
    }

    /// The tag of `parts` under `domain`.
    pub fn tag(&self, domain: &[u8], parts: &[&[u8]]) -> [u8; TAG_LEN] {
        let out = self.mac(domain, parts).finalize().into_bytes();
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(&out);
        t
    }

    /// Checks `tag` in constant time.
    pub fn verify(&self, domain: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
        self.mac(domain, parts).verify_slice(tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_verify_and_are_domain_separated() {
        let s = ClusterSecret::from_bytes(b"0123456789abcdef");
        let t = s.tag(b"gossip", &[b"hello"]);
        assert!(s.verify(b"gossip", &[b"hello"], &t));
        assert!(!s.verify(b"internode", &[b"hello"], &t));
        assert!(!s.verify(b"gossip", &[b"hellO"], &t));
        assert!(!s.verify(b"gossip", &[b"hel", b"lo"], &t));
        let other = ClusterSecret::from_bytes(b"fedcba9876543210");
        assert!(!other.verify(b"gossip", &[b"hello"], &t));
    }

    #[test]
    fn short_secrets_are_refused() {
        let dir = std::env::temp_dir().join(format!("rc-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s");
        std::fs::write(&f, "short\n").unwrap();
        assert!(matches!(
            ClusterSecret::from_file(&f),
            Err(SecretError::TooShort { len: 5, .. })
        ));
        std::fs::write(&f, "  a-long-enough-secret\n").unwrap();
        assert!(ClusterSecret::from_file(&f).is_ok());
        std::fs::remove_dir_all(&dir).ok();
    }
}
