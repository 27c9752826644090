//! JWT verification: which key checks a token, and what a verified token says.
//!
//! Keys are read once, from the files in [`KeyFiles`], into an immutable [`Verifier`] shared by
//! every connection (an `Arc` inside). Each key is test-built at load time, so a bad key stops
//! the node at start-up rather than refusing every client later.
//!
//! Choosing the key is done here, before the signature is checked, because it is where
//! algorithm-confusion attacks live:
//! * the header's `alg` must be HS256, RS256 or ES256 ([`Failure::Algorithm`] otherwise, `none`
//!   included), and a key is only ever used with its own algorithm: the HS256 secret never
//!   checks an RS256 token, whatever the header says;
//! * a header `kid` must name a key of the JWKS file ([`Failure::UnknownKey`] otherwise, also
//!   when no JWKS file is configured), and that key's algorithm must be the header's;
//! * without `kid`, every configured key of the header's algorithm is tried in turn (the
//!   secret for HS256; the PEM key, then the JWKS keys for RS256 and ES256). A key set holds a
//!   handful of keys, so trying them all costs little and lets an issuer drop `kid`.
//!
//! After the signature, `jsonwebtoken`'s validation checks `exp` (required) and `nbf` (if
//! present) with [`CLOCK_LEEWAY_S`] of tolerance; `aud` and `iss` are not checked. Then the
//! claims this server uses are checked here: `sub`, `rooms`, `info` ([`Claims`]). Any other
//! claim is ignored.
//!
//! Every refusal is one [`Failure`]: a fixed metric label and a short message for the client,
//! neither of which repeats anything from the token.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::rights::{Right, RoomRights};
use super::{AuthConfigError, KeyFiles, read_file};

/// Clock skew tolerated on `exp` and `nbf`, in seconds: nodes and the token issuer may not
/// share a clock source, and a token refused for a few seconds of drift is a client that cannot
/// connect. An expired token is accepted for at most this long.
pub const CLOCK_LEEWAY_S: u64 = 30;
/// Longest `sub` claim, in bytes; it ends up in logs and presence lists.
pub const MAX_SUB_BYTES: usize = 128;
/// Longest `info` claim, as serialised in the token; it is copied into presence replies.
pub const MAX_INFO_BYTES: usize = 1024;
/// Shortest HS256 secret, in bytes (RFC 7518 §3.2: a key at least as long as the hash).
pub const MIN_SECRET_BYTES: usize = 32;
/// Smallest RSA modulus accepted, in bits (RFC 7518 §3.3).
pub const MIN_RSA_BITS: usize = 2048;

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Failure {
    /// No token was given.
    #[error("a token is required")]
    Missing,
    /// Not a JWT: not three base64url parts, or a header or payload that is not a JSON object.
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// Past its `exp`, or before its `nbf`.
    #[error("the token has expired or is not valid yet")]
    Expired,
    /// The signature does not verify with any key that could have made it.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// The header's `kid` names no configured key.
    #[error("the token names an unknown key")]
    UnknownKey,
    /// The header's `alg` is not accepted, or no configured key has that algorithm.
    #[error("the token's signing algorithm is not accepted")]
    Algorithm,
    /// A claim is missing, ill-typed or out of bounds (`exp`, `sub`, `rooms`, `info`).
    #[error("the token's claims are invalid")]
    BadClaims,
}

impl Failure {
    /// Every failure, for registering metric labels up front.
    pub const ALL: [Failure; 7] = [
        Failure::Missing,
        Failure::Malformed,
        Failure::Expired,
        Failure::BadSignature,
        Failure::UnknownKey,
        Failure::Algorithm,
        Failure::BadClaims,
    ];

    /// The metric label of this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed => "malformed",
            Failure::Expired => "expired",
            Failure::BadSignature => "bad_signature",
            Failure::UnknownKey => "unknown_key",
            Failure::Algorithm => "algorithm",
            Failure::BadClaims => "bad_claims",
        }
    }
}

/// What a verified token says about its holder.
#[derive(Debug, Clone)]
pub struct Claims {
    /// Who the holder is: 1 to [`MAX_SUB_BYTES`] bytes.
    pub sub: String,
    /// When the token expires, in unix seconds.
    pub exp: u64,
    /// What the holder may do where; `None` (no `rooms` claim) means everything everywhere.
    pub rooms: Option<RoomRights>,
    /// Application data about the holder, any JSON, at most [`MAX_INFO_BYTES`] bytes.
    pub info: Option<Box<RawValue>>,
}

impl Claims {
    /// True if the holder has `right` in `room`: always without a `rooms` claim, otherwise if
    /// any pattern that matches the room grants it.
    pub fn allows(&self, room: &str, right: Right) -> bool {
        self.rooms.as_ref().is_none_or(|r| r.allows(room, right))
    }
}

/// Verifies tokens against the configured keys. Cheap to clone; shared by all connections.
#[derive(Clone)]
pub struct Verifier {
    keys: Arc<KeySet>,
}

struct KeySet {
    /// The HS256 secret.
    secret: Option<DecodingKey>,
    /// The PEM public key and the algorithm its type implies.
    public_key: Option<(Algorithm, DecodingKey)>,
    /// The JWKS keys, in file order.
    jwks: Vec<NamedKey>,
    /// One validation per accepted algorithm (`jsonwebtoken` insists they match the key).
    hs256: Validation,
    rs256: Validation,
    es256: Validation,
}

struct NamedKey {
    kid: String,
    alg: Algorithm,
    key: DecodingKey,
}

impl Verifier {
    /// Reads the key files. Any combination may be given; none is [`AuthConfigError::NoKeys`].
    ///
    /// * `jwt_secret_file`: the HS256 secret, the file's raw bytes with trailing whitespace
    ///   (a final newline) trimmed; at least [`MIN_SECRET_BYTES`] bytes.
    /// * `jwt_public_key_file`: a PEM public key, RSA (RS256) or EC P-256 (ES256), told apart
    ///   by the key itself.
    /// * `jwks_file`: a JSON Web Key Set `{"keys": [...]}` of RSA and EC P-256 keys, each with
    ///   a unique `kid`; `alg`, if given, must fit the key (RS256 or ES256).
    pub fn from_files(k: &KeyFiles) -> Result<Verifier, AuthConfigError> {
        if k.jwt_secret_file.is_none() && k.jwt_public_key_file.is_none() && k.jwks_file.is_none() {
            return Err(AuthConfigError::NoKeys);
        }
        let secret = k.jwt_secret_file.as_deref().map(load_secret).transpose()?;
        let public_key = k
            .jwt_public_key_file
            .as_deref()
            .map(load_public_key)
            .transpose()?;
        let jwks = match k.jwks_file.as_deref() {
            Some(path) => load_jwks(path)?,
            None => Vec::new(),
        };
        Ok(Verifier {
            keys: Arc::new(KeySet {
                secret,
                public_key,
                jwks,
                hs256: validation(Algorithm::HS256),
                rs256: validation(Algorithm::RS256),
                es256: validation(Algorithm::ES256),
            }),
        })
    }

    /// Verifies `token` (the compact JWT, without any `Bearer ` prefix) and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, Failure> {
        if token.is_empty() {
            return Err(Failure::Missing);
        }
        let header = peek_header(token)?;
        let keys = &*self.keys;
        let validation = match header.alg {
            Algorithm::HS256 => &keys.hs256,
            Algorithm::RS256 => &keys.rs256,
            _ => &keys.es256,
        };

        if let Some(kid) = &header.kid {
            let named = keys
                .jwks
                .iter()
                .find(|n| n.kid == *kid)
                .ok_or(Failure::UnknownKey)?;
            if named.alg != header.alg {
                return Err(Failure::Algorithm);
            }
            return decode(token, &named.key, validation);
        }

        let secret = keys
            .secret
            .iter()
            .filter(|_| header.alg == Algorithm::HS256);
        let public_key = keys
            .public_key
            .iter()
            .filter(|(alg, _)| *alg == header.alg)
            .map(|(_, key)| key);
        let jwks = keys
            .jwks
            .iter()
            .filter(|n| n.alg == header.alg)
            .map(|n| &n.key);
        let mut tried = false;
        for key in secret.chain(public_key).chain(jwks) {
            tried = true;
            match decode(token, key, validation) {
                Err(Failure::BadSignature) => continue,
                done => return done,
            }
        }
        Err(if tried {
            Failure::BadSignature
        } else {
            Failure::Algorithm
        })
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = &*self.keys;
        f.debug_struct("Verifier")
            .field("hs256_secret", &k.secret.is_some())
            .field("public_key", &k.public_key.as_ref().map(|(alg, _)| alg))
            .field(
                "jwks",
                &k.jwks
                    .iter()
                    .map(|n| (n.kid.as_str(), n.alg))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = CLOCK_LEEWAY_S;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp"]);
    v
}

/// The header fields that choose the key, read before any key is touched.
struct Peeked {
    alg: Algorithm,
    kid: Option<String>,
}

/// Reads `alg` and `kid` from the token's header. `jsonwebtoken` refuses an algorithm it does
/// not know as a JSON error, which would make `none` look malformed; reading the header here
/// tells the two apart.
fn peek_header(token: &str) -> Result<Peeked, Failure> {
    #[derive(Deserialize)]
    struct RawHeader {
        alg: String,
        #[serde(default)]
        kid: Option<String>,
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Failure::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| Failure::Malformed)?;
    let raw: RawHeader = serde_json::from_slice(&bytes).map_err(|_| Failure::Malformed)?;
    let alg = match raw.alg.as_str() {
        "HS256" => Algorithm::HS256,
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        _ => return Err(Failure::Algorithm),
    };
    Ok(Peeked { alg, kid: raw.kid })
}

/// The payload as it is decoded: loose types, so that a claim of the wrong type becomes
/// [`Failure::BadClaims`] (checked in [`check_claims`]) rather than a JSON error.
#[derive(Deserialize)]
struct WireClaims {
    #[serde(default)]
    sub: Option<serde_json::Value>,
    #[serde(default)]
    exp: Option<serde_json::Value>,
    #[serde(default)]
    rooms: Option<Box<RawValue>>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
}

/// Checks the signature with one key, then the time claims, then this server's claims.
fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Claims, Failure> {
    let data = jsonwebtoken::decode::<WireClaims>(token, key, validation).map_err(|e| {
        match e.kind() {
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_) => Failure::Malformed,
            ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => Failure::Expired,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::MissingAlgorithm
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::InvalidAlgorithmName => Failure::Algorithm,
            ErrorKind::MissingRequiredClaim(_)
            | ErrorKind::InvalidClaimFormat(_)
            | ErrorKind::InvalidIssuer
            | ErrorKind::InvalidAudience
            | ErrorKind::InvalidSubject => Failure::BadClaims,
            // InvalidSignature, and anything a key or the crypto provider reports: the token
            // does not verify with this key (keys were test-built at load, so this is the
            // token's doing). Failing closed.
            _ => Failure::BadSignature,
        }
    })?;
    check_claims(data.claims)
}

fn check_claims(wire: WireClaims) -> Result<Claims, Failure> {
    let bad = |what: &'static str| {
        tracing::debug!(claim = what, "token refused: bad claim");
        Failure::BadClaims
    };
    let sub = match wire.sub {
        Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= MAX_SUB_BYTES => s,
        _ => return Err(bad("sub")),
    };
    // `jsonwebtoken` validated `exp` as a number it reads as u64 (rounding a float); read it
    // the same way.
    let exp = match &wire.exp {
        Some(serde_json::Value::Number(n)) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
                .map(|f| f.round() as u64)
        }),
        _ => None,
    }
    .ok_or_else(|| bad("exp"))?;
    let rooms = wire
        .rooms
        .map(|raw| serde_json::from_str::<RoomRights>(raw.get()))
        .transpose()
        .map_err(|_| bad("rooms"))?;
    if wire
        .info
        .as_ref()
        .is_some_and(|i| i.get().len() > MAX_INFO_BYTES)
    {
        return Err(bad("info"));
    }
    Ok(Claims {
        sub,
        exp,
        rooms,
        info: wire.info,
    })
}

fn load_secret(path: &Path) -> Result<DecodingKey, AuthConfigError> {
    let bytes = read_file(path)?;
    let len = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    if len < MIN_SECRET_BYTES {
        return Err(AuthConfigError::SecretTooShort {
            path: path.to_path_buf(),
            len,
            min: MIN_SECRET_BYTES,
        });
    }
    DecodingKey::from_secret(&bytes[..len]).map_err(|_| AuthConfigError::SecretTooShort {
        path: path.to_path_buf(),
        len,
        min: MIN_SECRET_BYTES,
    })
}

fn load_public_key(path: &Path) -> Result<(Algorithm, DecodingKey), AuthConfigError> {
    let bad = |problem: &str| AuthConfigError::BadPublicKey {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    };
    let bytes = read_file(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| bad("not a PEM file (not text)"))?;
    let label = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .ok_or_else(|| bad("not a PEM file (no -----BEGIN line)"))?;
    if label.contains("PRIVATE") {
        return Err(bad(
            "holds a private key; give the public key (openssl pkey -pubout)",
        ));
    }
    if label != "PUBLIC KEY" && label != "RSA PUBLIC KEY" {
        return Err(bad(
            "expected a PEM public key (BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY)",
        ));
    }
    let (alg, key) = if let Ok(key) = DecodingKey::from_rsa_pem(&bytes) {
        (Algorithm::RS256, key)
    } else if let Ok(key) = DecodingKey::from_ec_pem(&bytes) {
        (Algorithm::ES256, key)
    } else {
        return Err(bad("not an RSA or EC public key"));
    };
    test_build(&key, alg).map_err(|problem| bad(&problem))?;
    Ok((alg, key))
}

/// Builds a verifier for `key` once, so that a key the crypto backend cannot use is found at
/// start-up. Also insists on what the backend lets through: EC keys on P-256 (an uncompressed
/// point of 65 bytes; P-384 keys would parse but are not ES256 keys) and RSA moduli of at least
/// [`MIN_RSA_BITS`].
fn test_build(key: &DecodingKey, alg: Algorithm) -> Result<(), String> {
    if alg == Algorithm::ES256 && key.try_get_as_bytes().map(<[u8]>::len).ok() != Some(65) {
        return Err("the EC key is not on curve P-256 (ES256)".to_string());
    }
    if alg == Algorithm::RS256 {
        let bits = rsa_modulus_bits(key)?;
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
            ));
        }
    }
    jsonwebtoken::crypto::verify("", b"", key, alg)
        .map(|_| ())
        .map_err(|e| match alg {
            Algorithm::RS256 => format!("unusable RSA key: {e}"),
            _ => format!("unusable EC P-256 key: {e}"),
        })
}

/// Size of an RSA key's modulus, in bits.
fn rsa_modulus_bits(key: &DecodingKey) -> Result<usize, String> {
    let unusable = |e: jsonwebtoken::errors::Error| format!("unusable RSA key: {e}");
    let extracted;
    let n: &[u8] = match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, .. } => n,
        DecodingKeyKind::SecretOrDer(der) => {
            let provider = CryptoProvider::try_get_default()
                .ok_or_else(|| "no crypto backend compiled in".to_string())?;
            extracted = (provider.key_utils.rsa_pub_components_from_public_key)(der)
                .map_err(unusable)?
                .0;
            &extracted
        }
    };
    Ok(match n.iter().position(|b| *b != 0) {
        Some(i) => (n.len() - i) * 8 - n[i].leading_zeros() as usize,
        None => 0,
    })
}

fn load_jwks(path: &Path) -> Result<Vec<NamedKey>, AuthConfigError> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<Jwk>,
    }
    #[derive(Deserialize)]
    struct Jwk {
        kty: String,
        kid: Option<String>,
        alg: Option<String>,
        crv: Option<String>,
        n: Option<String>,
        e: Option<String>,
        x: Option<String>,
        y: Option<String>,
    }
    let bad = |problem: String| AuthConfigError::BadJwks {
        path: path.to_path_buf(),
        problem,
    };
    let bytes = read_file(path)?;
    let set: Set = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("not a JSON Web Key Set {{\"keys\": [...]}}: {e}")))?;
    if set.keys.is_empty() {
        return Err(bad("the key set has no keys".to_string()));
    }
    let mut out: Vec<NamedKey> = Vec::with_capacity(set.keys.len());
    for (i, jwk) in set.keys.into_iter().enumerate() {
        let kid = jwk
            .kid
            .ok_or_else(|| bad(format!("key #{} has no \"kid\"", i + 1)))?;
        let at = |problem: &str| bad(format!("key {kid:?}: {problem}"));
        if out.iter().any(|n| n.kid == kid) {
            return Err(at("the kid is used twice"));
        }
        let (alg, key) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
            ("RSA", _) => {
                let (Some(n), Some(e)) = (&jwk.n, &jwk.e) else {
                    return Err(at("an RSA key needs \"n\" and \"e\""));
                };
                let key = DecodingKey::from_rsa_components(n, e)
                    .map_err(|_| at("\"n\" or \"e\" is not base64url"))?;
                (Algorithm::RS256, key)
            }
            ("EC", Some("P-256")) => {
                let (Some(x), Some(y)) = (&jwk.x, &jwk.y) else {
                    return Err(at("an EC key needs \"x\" and \"y\""));
                };
                let key = DecodingKey::from_ec_components(x, y)
                    .map_err(|_| at("\"x\" or \"y\" is not base64url"))?;
                (Algorithm::ES256, key)
            }
            ("EC", _) => return Err(at("only EC keys on curve P-256 are accepted")),
            _ => return Err(at("only RSA and EC keys are accepted")),
        };
        match jwk.alg.as_deref() {
            None => {}
            Some("RS256") if alg == Algorithm::RS256 => {}
            Some("ES256") if alg == Algorithm::ES256 => {}
            Some(_) => {
                return Err(at(match alg {
                    Algorithm::RS256 => "an RSA key's \"alg\" must be RS256",
                    _ => "an EC P-256 key's \"alg\" must be ES256",
                }));
            }
        }
        test_build(&key, alg).map_err(|problem| at(&problem))?;
        out.push(NamedKey { kid, alg, key });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::rights::Right;
    use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
    use serde_json::json;
    use std::path::PathBuf;

    const RSA1_PRIVATE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/auth/rsa1_private.pem"
    ));
    const RSA2_PRIVATE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/auth/rsa2_private.pem"
    ));
    const EC1_PRIVATE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/auth/ec1_private.pem"
    ));
    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-roomcast";
    const OTHER_SECRET: &[u8] = b"fedcba9876543210fedcba9876543210-roomcast";

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/auth")).join(name)
    }

    /// Writes `bytes` to a fresh file under the system temp directory.
    fn temp_file(bytes: &[u8]) -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "roomcast-jwt-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn with_secret(secret: &[u8]) -> Result<Verifier, AuthConfigError> {
        let path = temp_file(secret);
        let v = Verifier::from_files(&KeyFiles {
            jwt_secret_file: Some(path.clone()),
            ..KeyFiles::default()
        });
        std::fs::remove_file(&path).unwrap();
        v
    }

    fn with_public_key(name: &str) -> Verifier {
        Verifier::from_files(&KeyFiles {
            jwt_public_key_file: Some(fixture(name)),
            ..KeyFiles::default()
        })
        .unwrap()
    }

    fn with_jwks() -> Verifier {
        Verifier::from_files(&KeyFiles {
            jwks_file: Some(fixture("jwks.json")),
            ..KeyFiles::default()
        })
        .unwrap()
    }

    /// Claims valid for an hour.
    fn claims() -> serde_json::Value {
        json!({"sub": "user-1", "exp": get_current_timestamp() + 3600})
    }

    fn hs256(secret: &[u8], claims: &serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap()
    }

    fn rs256(pem: &str, kid: Option<&str>, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_string);
        encode(
            &header,
            claims,
            &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn es256(pem: &str, kid: Option<&str>, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_string);
        encode(
            &header,
            claims,
            &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn hs256_ok() {
        let v = with_secret(SECRET).unwrap();
        let c = v.verify(&hs256(SECRET, &claims())).unwrap();
        assert_eq!(c.sub, "user-1");
        assert!(c.exp > get_current_timestamp());
        assert!(c.rooms.is_none() && c.info.is_none());
    }

    #[test]
    fn secret_file_is_trimmed_and_must_be_long_enough() {
        let mut with_newline = SECRET.to_vec();
        with_newline.extend_from_slice(b" \n");
        let v = with_secret(&with_newline).unwrap();
        assert!(v.verify(&hs256(SECRET, &claims())).is_ok());

        let err = with_secret(b"short-secret-but-padded          \n\n").unwrap_err();
        assert!(matches!(
            err,
            AuthConfigError::SecretTooShort { len: 23, .. }
        ));
        assert!(!err.to_string().contains("short-secret"), "{err}");
    }

    #[test]
    fn no_keys_is_an_error() {
        assert!(matches!(
            Verifier::from_files(&KeyFiles::default()),
            Err(AuthConfigError::NoKeys)
        ));
    }

    #[test]
    fn missing_token() {
        let v = with_secret(SECRET).unwrap();
        assert_eq!(v.verify("").unwrap_err(), Failure::Missing);
    }

    #[test]
    fn malformed_tokens() {
        let v = with_secret(SECRET).unwrap();
        let good = hs256(SECRET, &claims());
        let bad = [
            "not a jwt".to_string(),
            "a.b".to_string(),
            format!("{good}.extra"),
            "!!!.e30.c2ln".to_string(),
            format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode("not json")),
            format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT"}"#)),
            // A signature that is not base64url.
            format!("{}.!!!", good.rsplit_once('.').unwrap().0),
        ];
        for t in &bad {
            assert_eq!(v.verify(t).unwrap_err(), Failure::Malformed, "{t}");
        }
        // A payload that is not JSON, correctly signed.
        let header_b64 = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
        let message = format!("{header_b64}.{}", URL_SAFE_NO_PAD.encode("not json"));
        let sig = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(SECRET).unwrap(),
            Algorithm::HS256,
        )
        .unwrap();
        assert_eq!(
            v.verify(&format!("{message}.{sig}")).unwrap_err(),
            Failure::Malformed
        );
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let v = with_secret(SECRET).unwrap();
        let now = get_current_timestamp();
        let expired = json!({"sub": "u", "exp": now - CLOCK_LEEWAY_S - 60});
        assert_eq!(
            v.verify(&hs256(SECRET, &expired)).unwrap_err(),
            Failure::Expired
        );
        let early = json!({"sub": "u", "exp": now + 3600, "nbf": now + CLOCK_LEEWAY_S + 60});
        assert_eq!(
            v.verify(&hs256(SECRET, &early)).unwrap_err(),
            Failure::Expired
        );
        let started = json!({"sub": "u", "exp": now + 3600, "nbf": now - 10});
        assert!(v.verify(&hs256(SECRET, &started)).is_ok());
    }

    #[test]
    fn wrong_signature() {
        let v = with_secret(SECRET).unwrap();
        assert_eq!(
            v.verify(&hs256(OTHER_SECRET, &claims())).unwrap_err(),
            Failure::BadSignature
        );
        let v = with_public_key("rsa1_public.pem");
        assert_eq!(
            v.verify(&rs256(RSA2_PRIVATE, None, &claims())).unwrap_err(),
            Failure::BadSignature
        );
        // A signature of the wrong length.
        let good = rs256(RSA1_PRIVATE, None, &claims());
        let (message, _) = good.rsplit_once('.').unwrap();
        assert_eq!(
            v.verify(&format!("{message}.AAAA")).unwrap_err(),
            Failure::BadSignature
        );
        // Tampered claims under a genuine signature.
        let (_, sig) = good.rsplit_once('.').unwrap();
        let (header, _) = good.split_once('.').unwrap();
        let forged = format!(
            "{header}.{}.{sig}",
            URL_SAFE_NO_PAD.encode(json!({"sub": "admin", "exp": 4_000_000_000u64}).to_string())
        );
        assert_eq!(v.verify(&forged).unwrap_err(), Failure::BadSignature);
    }

    #[test]
    fn unknown_key_id() {
        let v = with_jwks();
        let t = rs256(RSA1_PRIVATE, Some("rsa-9"), &claims());
        assert_eq!(v.verify(&t).unwrap_err(), Failure::UnknownKey);
        // A kid with only a secret configured names no key either.
        let v = with_secret(SECRET).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("hs-1".into());
        let t = encode(
            &header,
            &claims(),
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&t).unwrap_err(), Failure::UnknownKey);
    }

    #[test]
    fn algorithms_not_allowed() {
        let v = with_secret(SECRET).unwrap();
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &claims(),
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&hs384).unwrap_err(), Failure::Algorithm);
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims().to_string())
        );
        assert_eq!(v.verify(&none).unwrap_err(), Failure::Algorithm);
        // An accepted algorithm for which no key is configured.
        assert_eq!(
            v.verify(&rs256(RSA1_PRIVATE, None, &claims())).unwrap_err(),
            Failure::Algorithm
        );
        // A JWKS key used with the other algorithm than its own.
        let v = with_jwks();
        let t = es256(EC1_PRIVATE, Some("rsa-1"), &claims());
        assert_eq!(v.verify(&t).unwrap_err(), Failure::Algorithm);
        // An RS256 key never checks an HS256 token (the classic confusion: the public key
        // used as an HMAC secret).
        let v = with_public_key("rsa1_public.pem");
        let pem = std::fs::read(fixture("rsa1_public.pem")).unwrap();
        assert_eq!(
            v.verify(&hs256(&pem, &claims())).unwrap_err(),
            Failure::Algorithm
        );
    }

    #[test]
    fn rs256_ok_via_pem() {
        let v = with_public_key("rsa1_public.pem");
        let c = v.verify(&rs256(RSA1_PRIVATE, None, &claims())).unwrap();
        assert_eq!(c.sub, "user-1");
    }

    #[test]
    fn es256_ok_via_pem() {
        let v = with_public_key("ec1_public.pem");
        let c = v.verify(&es256(EC1_PRIVATE, None, &claims())).unwrap();
        assert_eq!(c.sub, "user-1");
        assert_eq!(
            v.verify(&rs256(RSA1_PRIVATE, None, &claims())).unwrap_err(),
            Failure::Algorithm
        );
    }

    #[test]
    fn jwks_with_two_keys_verifies_either() {
        let v = with_jwks();
        assert!(
            v.verify(&rs256(RSA1_PRIVATE, Some("rsa-1"), &claims()))
                .is_ok()
        );
        assert!(
            v.verify(&es256(EC1_PRIVATE, Some("ec-1"), &claims()))
                .is_ok()
        );
        // Without kid, every key of the token's algorithm is tried.
        assert!(v.verify(&rs256(RSA1_PRIVATE, None, &claims())).is_ok());
        assert!(v.verify(&es256(EC1_PRIVATE, None, &claims())).is_ok());
        // A kid that names the wrong key of the right algorithm does not verify.
        assert_eq!(
            v.verify(&rs256(RSA2_PRIVATE, Some("rsa-1"), &claims()))
                .unwrap_err(),
            Failure::BadSignature
        );
    }

    #[test]
    fn all_key_kinds_together() {
        let secret = temp_file(SECRET);
        let v = Verifier::from_files(&KeyFiles {
            jwt_secret_file: Some(secret.clone()),
            jwt_public_key_file: Some(fixture("rsa2_public.pem")),
            jwks_file: Some(fixture("jwks.json")),
        })
        .unwrap();
        std::fs::remove_file(&secret).unwrap();
        assert!(v.verify(&hs256(SECRET, &claims())).is_ok());
        // The PEM key is tried first, then the JWKS key of the same algorithm.
        assert!(v.verify(&rs256(RSA2_PRIVATE, None, &claims())).is_ok());
        assert!(v.verify(&rs256(RSA1_PRIVATE, None, &claims())).is_ok());
        assert!(v.verify(&es256(EC1_PRIVATE, None, &claims())).is_ok());
        // With a kid only the named key counts, even though the PEM key would verify.
        assert_eq!(
            v.verify(&rs256(RSA2_PRIVATE, Some("rsa-1"), &claims()))
                .unwrap_err(),
            Failure::BadSignature
        );
        let dbg = format!("{v:?}");
        assert!(
            dbg.contains("rsa-1") && !dbg.contains("0123456789"),
            "{dbg}"
        );
    }

    #[test]
    fn bad_key_files_are_refused() {
        let public = |path: PathBuf| {
            Verifier::from_files(&KeyFiles {
                jwt_public_key_file: Some(path),
                ..KeyFiles::default()
            })
        };
        let jwks = |text: &str| {
            let path = temp_file(text.as_bytes());
            let r = Verifier::from_files(&KeyFiles {
                jwks_file: Some(path.clone()),
                ..KeyFiles::default()
            });
            std::fs::remove_file(&path).unwrap();
            r
        };
        assert!(matches!(
            public(fixture("rsa1_private.pem")),
            Err(AuthConfigError::BadPublicKey { .. })
        ));
        let err = public(fixture("rsa1024_public.pem")).unwrap_err();
        assert!(err.to_string().contains("1024 bits"), "{err}");
        assert!(matches!(
            public(fixture("ec384_public.pem")),
            Err(AuthConfigError::BadPublicKey { .. })
        ));
        assert!(matches!(
            public(fixture("jwks.json")),
            Err(AuthConfigError::BadPublicKey { .. })
        ));
        assert!(matches!(
            public(fixture("does-not-exist.pem")),
            Err(AuthConfigError::Read { .. })
        ));

        let set: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture("jwks.json")).unwrap()).unwrap();
        let rsa = set["keys"][0].clone();
        let ec = set["keys"][1].clone();
        let without = |key: &serde_json::Value, field: &str| {
            let mut k = key.clone();
            k.as_object_mut().unwrap().remove(field);
            k
        };
        let with = |key: &serde_json::Value, field: &str, value: &str| {
            let mut k = key.clone();
            k[field] = json!(value);
            k
        };
        let cases = [
            json!({"keys": []}),
            json!({"keys": [without(&rsa, "kid")]}),
            json!({"keys": [rsa, with(&ec, "kid", "rsa-1")]}),
            json!({"keys": [without(&rsa, "n")]}),
            json!({"keys": [with(&rsa, "alg", "RS512")]}),
            json!({"keys": [with(&ec, "alg", "RS256")]}),
            json!({"keys": [with(&ec, "crv", "P-384")]}),
            json!({"keys": [with(&rsa, "n", "AQAB")]}),
            json!({"keys": [with(&ec, "x", "AAAA")]}),
            json!({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}),
        ];
        for case in &cases {
            let err = jwks(&case.to_string()).unwrap_err();
            assert!(
                matches!(err, AuthConfigError::BadJwks { .. }),
                "{case}: {err:?}"
            );
        }
        assert!(matches!(
            jwks("not json"),
            Err(AuthConfigError::BadJwks { .. })
        ));
    }

    #[test]
    fn claims_missing_or_bad_sub() {
        let v = with_secret(SECRET).unwrap();
        let exp = get_current_timestamp() + 3600;
        let long = "u".repeat(MAX_SUB_BYTES + 1);
        for c in [
            json!({"exp": exp}),
            json!({"sub": "", "exp": exp}),
            json!({"sub": 42, "exp": exp}),
            json!({"sub": long, "exp": exp}),
        ] {
            assert_eq!(
                v.verify(&hs256(SECRET, &c)).unwrap_err(),
                Failure::BadClaims,
                "{c}"
            );
        }
        let c = json!({"sub": "u".repeat(MAX_SUB_BYTES), "exp": exp});
        assert!(v.verify(&hs256(SECRET, &c)).is_ok());
        // `exp` is required.
        assert_eq!(
            v.verify(&hs256(SECRET, &json!({"sub": "u"}))).unwrap_err(),
            Failure::BadClaims
        );
        assert_eq!(
            v.verify(&hs256(SECRET, &json!({"sub": "u", "exp": "soon"})))
                .unwrap_err(),
            Failure::BadClaims
        );
    }

    #[test]
    fn claims_info_is_bounded() {
        let v = with_secret(SECRET).unwrap();
        let exp = get_current_timestamp() + 3600;
        let info = json!({"name": "Ada", "tags": [1, 2, 3]});
        let c = v
            .verify(&hs256(
                SECRET,
                &json!({"sub": "u", "exp": exp, "info": info}),
            ))
            .unwrap();
        let got: serde_json::Value = serde_json::from_str(c.info.unwrap().get()).unwrap();
        assert_eq!(got, info);
        // Exactly at the limit: a JSON string of 1024 bytes with its quotes.
        let at_limit = "x".repeat(MAX_INFO_BYTES - 2);
        assert!(
            v.verify(&hs256(
                SECRET,
                &json!({"sub": "u", "exp": exp, "info": at_limit})
            ))
            .is_ok()
        );
        let over = "x".repeat(MAX_INFO_BYTES - 1);
        assert_eq!(
            v.verify(&hs256(
                SECRET,
                &json!({"sub": "u", "exp": exp, "info": over})
            ))
            .unwrap_err(),
            Failure::BadClaims
        );
    }

    #[test]
    fn claims_bad_rooms() {
        let v = with_secret(SECRET).unwrap();
        let exp = get_current_timestamp() + 3600;
        for rooms in [
            json!({"chat*.x": ["subscribe"]}),
            json!({"*chat": ["subscribe"]}),
            json!({"news": ["subscribe", "admin"]}),
            json!({"news": "subscribe"}),
            json!(["news"]),
        ] {
            let t = hs256(SECRET, &json!({"sub": "u", "exp": exp, "rooms": rooms}));
            assert_eq!(v.verify(&t).unwrap_err(), Failure::BadClaims, "{rooms}");
        }
    }

    #[test]
    fn claims_rooms_grant_rights() {
        let v = with_secret(SECRET).unwrap();
        let exp = get_current_timestamp() + 3600;
        let rooms = json!({
            "chat.*": ["subscribe", "publish"],
            "news": ["subscribe", "history", "presence"],
            "*": ["presence"],
        });
        let c = v
            .verify(&hs256(
                SECRET,
                &json!({"sub": "u", "exp": exp, "rooms": rooms}),
            ))
            .unwrap();
        assert!(c.allows("chat.lobby", Right::Publish));
        assert!(c.allows("chat.lobby", Right::Presence));
        assert!(!c.allows("chat.lobby", Right::History));
        assert!(c.allows("news", Right::History));
        assert!(!c.allows("news", Right::Publish));
        assert!(!c.allows("other", Right::Subscribe));
        assert!(c.allows("other", Right::Presence));

        // No `rooms` claim: every right everywhere.
        let c = v
            .verify(&hs256(SECRET, &json!({"sub": "u", "exp": exp})))
            .unwrap();
        for right in Right::ALL {
            assert!(c.allows("anything", right));
        }
        // An empty `rooms` claim: nothing anywhere.
        let c = v
            .verify(&hs256(
                SECRET,
                &json!({"sub": "u", "exp": exp, "rooms": {}}),
            ))
            .unwrap();
        assert!(Right::ALL.iter().all(|r| !c.allows("news", *r)));
    }

    #[test]
    fn failure_labels_and_messages() {
        let labels: Vec<_> = Failure::ALL.iter().map(Failure::reason).collect();
        assert_eq!(
            labels,
            [
                "missing",
                "malformed",
                "expired",
                "bad_signature",
                "unknown_key",
                "algorithm",
                "bad_claims"
            ]
        );
        for f in Failure::ALL {
            assert!(!f.to_string().is_empty());
        }
    }

    #[test]
    fn verifier_is_shareable() {
        fn assert_send_sync_clone<T: Send + Sync + Clone>() {}
        assert_send_sync_clone::<Verifier>();
    }
}
