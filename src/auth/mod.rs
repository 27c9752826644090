//! Authentication: JWT verification, room rights carried in tokens, and API keys.
//!
//! Why it looks like this:
//! * Tokens are verified locally, on the node that receives them, with keys read from files at
//!   start-up. No node ever calls the token issuer, so authentication adds no network hop and
//!   no new failure mode to the cluster; an issuer that is down only stops new tokens.
//! * Three kinds of key cover the usual deployments: an HS256 shared secret for a backend that
//!   mints its own tokens, a PEM public key (RS256 or ES256) for an issuer that keeps its
//!   private key to itself, and a JSON Web Key Set with several keys so that an issuer can
//!   rotate keys without a restart of every node at the same instant (tokens name their key
//!   with `kid`). Only HS256, RS256 and ES256 are accepted: fewer algorithms, fewer ways to
//!   confuse one key type with another.
//! * A token's `rooms` claim says what its holder may do where ([`rights`]); checking a right
//!   is a few string comparisons, cheap enough for every subscribe and publish.
//! * API keys authenticate servers (the HTTP server API), not end users: long random strings
//!   in a file, compared in constant time through their SHA-256 digests ([`api_keys`]).
//! * Every way a token can be refused is one [`Failure`] with a fixed metric label, so
//!   refusals can be counted without the token, the subject or the room ever becoming a label.
//!
//! This module reads files and verifies; it does no network I/O and is not wired into the
//! server here. [`Verifier`] and [`ApiKeys`] are immutable: a reload builds a new one and swaps
//! it in.

pub mod api_keys;
pub mod jwt;
pub mod rights;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use api_keys::ApiKeys;
pub use jwt::{CLOCK_LEEWAY_S, Claims, Failure, MAX_INFO_BYTES, MAX_SUB_BYTES, Verifier};
pub use rights::{Pattern, PatternError, Right, Rights, RoomRights};

/// Whether clients must present a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Tokens are neither asked for nor checked.
    #[default]
    Off,
    /// A client without a token is anonymous; a token, if given, must verify.
    Optional,
    /// Every client must present a token that verifies.
    Required,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Off => "off",
            AuthMode::Optional => "optional",
            AuthMode::Required => "required",
        }
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not an [`AuthMode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown auth mode {0:?}; expected off, optional or required")]
pub struct UnknownAuthMode(pub String);

impl FromStr for AuthMode {
    type Err = UnknownAuthMode;
    fn from_str(s: &str) -> Result<Self, UnknownAuthMode> {
        match s {
            "off" => Ok(AuthMode::Off),
            "optional" => Ok(AuthMode::Optional),
            "required" => Ok(AuthMode::Required),
            _ => Err(UnknownAuthMode(s.to_string())),
        }
    }
}

/// Where the JWT verification keys are. Any combination may be given; at least one is needed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFiles {
    /// HS256 shared secret: the file's raw bytes, trailing whitespace trimmed, at least 32 bytes.
    pub jwt_secret_file: Option<PathBuf>,
    /// A PEM public key (`BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`): RSA for RS256 or
    /// EC P-256 for ES256.
    pub jwt_public_key_file: Option<PathBuf>,
    /// A JSON Web Key Set `{"keys": [...]}`: RSA and EC P-256 keys, each with a `kid`.
    pub jwks_file: Option<PathBuf>,
}

/// Why the authentication configuration cannot be used. Messages name the file and what is
/// wrong with it, never a secret or a key.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error(
        "authentication needs at least one JWT key: give jwt_secret_file, jwt_public_key_file \
         or jwks_file"
    )]
    NoKeys,
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: the HS256 secret is {len} bytes long; at least {min} are required", path.display())]
    SecretTooShort {
        path: PathBuf,
        len: usize,
        min: usize,
    },
    #[error("{}: {problem}", path.display())]
    BadPublicKey { path: PathBuf, problem: String },
    #[error("{}: {problem}", path.display())]
    BadJwks { path: PathBuf, problem: String },
    #[error("{} line {line}: the API key is shorter than {min} bytes", path.display())]
    ApiKeyTooShort {
        path: PathBuf,
        line: usize,
        min: usize,
    },
    #[error("{}: no API key (one key per line; blank lines and # comments are ignored)", path.display())]
    NoApiKeys { path: PathBuf },
}

/// Reads a whole key file, naming it in the error.
fn read_file(path: &std::path::Path) -> Result<Vec<u8>, AuthConfigError> {
    std::fs::read(path).map_err(|source| AuthConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_mode_round_trips() {
        for (s, m) in [
            ("off", AuthMode::Off),
            ("optional", AuthMode::Optional),
            ("required", AuthMode::Required),
        ] {
            assert_eq!(s.parse::<AuthMode>().unwrap(), m);
            assert_eq!(m.to_string(), s);
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{s}\""));
            assert_eq!(
                serde_json::from_str::<AuthMode>(&format!("\"{s}\"")).unwrap(),
                m
            );
        }
        assert_eq!(AuthMode::default(), AuthMode::Off);
        assert!("Required".parse::<AuthMode>().is_err());
        assert!(serde_json::from_str::<AuthMode>("\"on\"").is_err());
    }

    #[test]
    fn config_errors_name_the_file() {
        let e = AuthConfigError::ApiKeyTooShort {
            path: PathBuf::from("/etc/keys"),
            line: 3,
            min: 16,
        };
        assert_eq!(
            e.to_string(),
            "/etc/keys line 3: the API key is shorter than 16 bytes"
        );
    }
}
