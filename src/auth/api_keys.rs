//! API keys: shared secrets that let other servers call the HTTP server API.
//!
//! Keys live in a file, one per line, so that an operator can add a key for a new caller,
//! roll it out, and remove the old one later (several keys are valid at once). Only the
//! SHA-256 digest of each key is kept in memory, and a presented key is compared with every
//! configured digest in constant time, always walking the whole list: neither the time a check
//! takes nor which key matched tells a caller anything about the keys. Hashing first makes the
//! comparison's length fixed, so the length of a key does not leak either.
//!
//! Errors name the file and the line, never the key.

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::AuthConfigError;

/// Shortest API key accepted, in bytes. Keys are meant to be random strings; 16 bytes is the
/// least that still resists guessing over the network.
pub const MIN_KEY_BYTES: usize = 16;

/// The configured API keys (their SHA-256 digests).
#[derive(Clone)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl ApiKeys {
    /// Reads the keys: one per line; blank lines and lines starting with `#` are ignored;
    /// whitespace around a key is trimmed; each key has at least [`MIN_KEY_BYTES`] bytes; the
    /// file holds at least one key.
    pub fn from_file(path: &Path) -> Result<ApiKeys, AuthConfigError> {
        let bytes = super::read_file(path)?;
        let text = String::from_utf8(bytes).map_err(|_| AuthConfigError::Read {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
        })?;
        ApiKeys::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<ApiKeys, AuthConfigError> {
        let mut digests = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let key = line.trim();
            if key.is_empty() || key.starts_with('#') {
                continue;
            }
            if key.len() < MIN_KEY_BYTES {
                return Err(AuthConfigError::ApiKeyTooShort {
                    path: path.to_path_buf(),
                    line: i + 1,
                    min: MIN_KEY_BYTES,
                });
            }
            digests.push(digest(key));
        }
        if digests.is_empty() {
            return Err(AuthConfigError::NoApiKeys {
                path: path.to_path_buf(),
            });
        }
        Ok(ApiKeys { digests })
    }

    /// Number of configured keys.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Always false for a loaded set (a file without keys is refused); here for symmetry.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// True if `presented` is one of the configured keys. Takes the same time whichever key
    /// matches, or none.
    pub fn check(&self, presented: &str) -> bool {
        let d = digest(presented);
        let found = self
            .digests
            .iter()
            .fold(Choice::from(0), |acc, k| acc | k.ct_eq(&d));
        bool::from(found)
    }

    /// Checks an `Authorization` header value of the form `Bearer <key>` (the scheme name is
    /// case-insensitive, as HTTP says). Anything else is refused.
    pub fn check_bearer(&self, header: &str) -> bool {
        const SCHEME: &str = "bearer ";
        match header.get(..SCHEME.len()) {
            Some(scheme) if scheme.eq_ignore_ascii_case(SCHEME) => {
                let key = header[SCHEME.len()..].trim();
                !key.is_empty() && self.check(key)
            }
            _ => false,
        }
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeys({} keys)", self.digests.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "key-a-0123456789abcdef";
    const KEY_B: &str = "key-b-fedcba9876543210";

    /// Writes `text` to a fresh file under the system temp directory.
    fn temp_file(text: &str) -> std::path::PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "roomcast-api-keys-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn load(text: &str) -> Result<ApiKeys, AuthConfigError> {
        let path = temp_file(text);
        let r = ApiKeys::from_file(&path);
        std::fs::remove_file(&path).unwrap();
        r
    }

    #[test]
    fn parses_keys_skipping_comments_and_blanks() {
        let keys = load(&format!(
            "# callers of the server API\n\n  {KEY_A}  \n\t\n# {KEY_B} retired\n{KEY_B}\n"
        ))
        .unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.check(KEY_A));
        assert!(keys.check(KEY_B));
        assert!(!keys.check("# callers of the server API"));
        assert!(!format!("{keys:?}").contains("key-"));
    }

    #[test]
    fn short_key_is_refused_by_line_number_without_the_key() {
        let err = load(&format!("# header\n{KEY_A}\n\nshort-key\n")).unwrap_err();
        match &err {
            AuthConfigError::ApiKeyTooShort { line, .. } => assert_eq!(*line, 4),
            other => panic!("unexpected error {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("line 4"), "{msg}");
        assert!(!msg.contains("short-key"), "{msg}");
    }

    #[test]
    fn file_without_keys_is_refused() {
        for text in ["", "\n\n", "# only a comment\n   \n"] {
            assert!(matches!(load(text), Err(AuthConfigError::NoApiKeys { .. })));
        }
        let missing = std::env::temp_dir().join("roomcast-api-keys-does-not-exist");
        assert!(matches!(
            ApiKeys::from_file(&missing),
            Err(AuthConfigError::Read { .. })
        ));
    }

    #[test]
    fn check_accepts_only_configured_keys() {
        let keys = load(&format!("{KEY_A}\n")).unwrap();
        assert!(keys.check(KEY_A));
        assert!(!keys.check(KEY_B));
        assert!(!keys.check(""));
        assert!(!keys.check(&KEY_A[..KEY_A.len() - 1]));
        assert!(!keys.check(&format!("{KEY_A}x")));
    }

    #[test]
    fn check_bearer_needs_the_scheme() {
        let keys = load(&format!("{KEY_A}\n")).unwrap();
        assert!(keys.check_bearer(&format!("Bearer {KEY_A}")));
        assert!(keys.check_bearer(&format!("bearer {KEY_A}")));
        assert!(!keys.check_bearer(&format!("Bearer {KEY_B}")));
        assert!(!keys.check_bearer(KEY_A));
        assert!(!keys.check_bearer(&format!("Basic {KEY_A}")));
        assert!(!keys.check_bearer(&format!("Bearer{KEY_A}")));
        assert!(!keys.check_bearer("Bearer "));
        assert!(!keys.check_bearer("Beär"));
    }
}
