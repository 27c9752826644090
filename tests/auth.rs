//! Client authentication against real nodes (issue 11): the auth matrix over WebSocket —
//! missing, malformed, expired, wrong signature, wrong key id, insufficient right, refresh,
//! expiry close — tokens in the URL and in an `auth` frame, per-room tokens on `join`, and the
//! publisher's `user` in events. Tokens are signed here with `jsonwebtoken`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Client, Ended, Node};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

/// Tokens are accepted up to this long past `exp` (clock skew), and connections live as long.
const LEEWAY: u64 = roomcast::auth::CLOCK_LEEWAY_S;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A directory with the HS256 secret file, unique per test.
fn secret_file(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rc-auth-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("secret");
    std::fs::write(&path, SECRET).unwrap();
    path
}

fn hs256(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap()
}

/// A token valid for about `ttl_s` more seconds (its `exp` counts the leeway in).
fn token(sub: &str, ttl_s: u64, rooms: Option<Value>) -> String {
    let mut c = json!({"sub": sub, "exp": now_s() + ttl_s - LEEWAY});
    if let Some(r) = rooms {
        c["rooms"] = r;
    }
    hs256(c)
}

fn start(mode: &str, secret: &Path, extra: &[&str]) -> Node {
    let mut args = vec![
        "--auth",
        mode,
        "--jwt-secret-file",
        secret.to_str().unwrap(),
        "--auth-timeout",
        "1s",
    ];
    args.extend_from_slice(extra);
    Node::start(&args)
}

fn error_code(reply: &Value) -> &str {
    reply["error"]["code"].as_str().unwrap_or("")
}

/// The connection's next frame is an `unauthorized` error, then it is closed with 4401.
async fn refused_with_4401(c: &mut Client) {
    let f = c.recv_frame().await;
    assert_eq!(error_code(&f), "unauthorized", "{f}");
    match c.ended().await {
        Ended::Closed(code, _) => assert_eq!(code, 4401),
        e => panic!("expected close 4401, got {e:?}"),
    }
}

#[tokio::test]
async fn required_auth_matrix_over_the_url_token() {
    let secret = secret_file("matrix");
    let node = start("required", &secret, &[]);
    // Good token: joins what it may, is refused what it may not, and events carry its user.
    let rooms = json!({"chat.*": ["subscribe", "publish", "history"], "news": ["subscribe"]});
    let url = format!(
        "{}?token={}",
        node.ws_url(),
        token("ann", 3600, Some(rooms))
    );
    let mut c = Client::connect(&url).await;
    c.join("chat.lobby").await;
    c.join("news").await;
    let r = c.request(json!({"op":"join","room":"secret"})).await;
    assert_eq!(error_code(&r), "forbidden", "{r}");
    let r = c
        .request(json!({"op":"publish","room":"news","data":1}))
        .await;
    assert_eq!(error_code(&r), "forbidden", "{r}");
    let r = c
        .request(json!({"op":"history","room":"news","since":0}))
        .await;
    assert_eq!(error_code(&r), "forbidden", "{r}");
    c.publish("chat.lobby", json!("hi")).await;
    let ev = c.next_event().await;
    assert_eq!(ev["user"], "ann", "{ev}");
    assert!(ev["from"].is_string());

    // Expired, wrong signature, malformed: refused with `unauthorized`, closed with 4401.
    let expired = hs256(json!({"sub": "ann", "exp": now_s() - LEEWAY - 60}));
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "ann", "exp": now_s() + 3600}),
        &EncodingKey::from_secret(b"another-secret-another-secret-another").unwrap(),
    )
    .unwrap();
    for bad in [expired.as_str(), forged.as_str(), "not.a.jwt", "garbage"] {
        let mut c = Client::connect(&format!("{}?token={bad}", node.ws_url())).await;
        refused_with_4401(&mut c).await;
    }
    // No token: requests get `unauthorized`; after auth_timeout the connection is closed.
    let mut c = Client::connect(&node.ws_url()).await;
    let r = c.request(json!({"op":"join","room":"chat.a"})).await;
    assert_eq!(error_code(&r), "unauthorized", "{r}");
    refused_with_4401(&mut c).await;
    for reason in ["expired", "bad_signature", "malformed", "missing"] {
        let series = format!("roomcast_auth_failures_total{{reason=\"{reason}\"}}");
        node.wait_metric(&series, |v| v >= 1.0).await;
    }
}

#[tokio::test]
async fn auth_frame_refresh_and_expiry_close() {
    let secret = secret_file("refresh");
    let node = start("required", &secret, &[]);
    // Authenticate with a first frame; the token expires in 2 s.
    let mut c = Client::connect(&node.ws_url()).await;
    let r = c
        .request(json!({"op":"auth","token": token("bob", 2, None)}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["user"], "bob");
    c.join("any").await;
    // Refresh with a token of another user: forbidden, the old token still holds.
    let r = c
        .request(json!({"op":"refresh","token": token("eve", 3600, None)}))
        .await;
    assert_eq!(error_code(&r), "forbidden", "{r}");
    // Refresh in time: the connection outlives the first token's expiry.
    let r = c
        .request(json!({"op":"refresh","token": token("bob", 3600, None)}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["exp"].as_u64().unwrap() > now_s() + 3000 - LEEWAY);
    let waited = c.try_recv_frame(Duration::from_secs(4)).await;
    assert_eq!(
        waited,
        Err("timeout".to_string()),
        "still open past the old exp"
    );
    c.publish("any", json!(1)).await;

    // Without a refresh the connection is closed with 4401 when its token expires.
    let mut d = Client::connect(&node.ws_url()).await;
    let r = d
        .request(json!({"op":"auth","token": token("bob", 1, None)}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    refused_with_4401(&mut d).await;
    node.wait_metric("roomcast_auth_failures_total{reason=\"expired\"}", |v| {
        v >= 1.0
    })
    .await;
}

#[tokio::test]
async fn room_tokens_extend_a_connection_for_their_room_only() {
    let secret = secret_file("rooms");
    let node = start("required", &secret, &[]);
    let conn_token = token("cat", 3600, Some(json!({"public.*": ["subscribe"]})));
    let mut c = Client::connect(&format!("{}?token={conn_token}", node.ws_url())).await;
    let r = c.request(json!({"op":"join","room":"vip"})).await;
    assert_eq!(error_code(&r), "forbidden", "{r}");
    // A room token for `vip` (same user) lets the join through.
    let room_token = token("cat", 3600, Some(json!({"vip": ["subscribe", "publish"]})));
    let r = c
        .request(json!({"op":"join","room":"vip","token": room_token}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    c.publish("vip", json!("in")).await;
    // Another user's room token is refused; so is a bad one.
    let other = token("dog", 3600, Some(json!({"*": ["subscribe"]})));
    let r = c
        .request(json!({"op":"join","room":"vip2","token": other}))
        .await;
    assert_eq!(error_code(&r), "forbidden", "{r}");
    let r = c
        .request(json!({"op":"join","room":"vip2","token": "bad"}))
        .await;
    assert_eq!(error_code(&r), "unauthorized", "{r}");
}

#[tokio::test]
async fn optional_auth_lets_anonymous_clients_in_and_binds_token_holders() {
    let secret = secret_file("optional");
    let node = start("optional", &secret, &[]);
    let mut anon = Client::connect(&node.ws_url()).await;
    anon.join("free").await;
    anon.publish("free", json!(1)).await;
    let ev = anon.next_event().await;
    assert!(
        ev.get("user").is_none(),
        "anonymous events carry no user: {ev}"
    );
    // A bad `auth` frame in optional mode is answered, and the connection stays anonymous.
    let r = anon.request(json!({"op":"auth","token":"bad"})).await;
    assert_eq!(error_code(&r), "unauthorized", "{r}");
    anon.publish("free", json!(2)).await;
    let t = token("dan", 3600, Some(json!({"free": ["subscribe"]})));
    let mut dan = Client::connect(&format!("{}?token={t}", node.ws_url())).await;
    dan.join("free").await;
    let r = dan
        .request(json!({"op":"publish","room":"free","data":3}))
        .await;
    assert_eq!(error_code(&r), "forbidden", "{r}");
}

#[tokio::test]
async fn jwks_rotation_and_unknown_key_id() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth");
    let jwks = fixtures.join("jwks.json");
    let node = Node::start(&["--auth", "required", "--jwks-file", jwks.to_str().unwrap()]);
    let keys: Value = serde_json::from_str(&std::fs::read_to_string(&jwks).unwrap()).unwrap();
    let claims = json!({"sub": "eve", "exp": now_s() + 3600});
    // Each key of the set verifies tokens signed with its private key.
    for (kid, pem, alg) in jwks_private_keys(&fixtures, &keys) {
        let mut h = Header::new(alg);
        h.kid = Some(kid.clone());
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let t = encode(&h, &claims, &key).unwrap();
        let mut c = Client::connect(&format!("{}?token={t}", node.ws_url())).await;
        c.join("r").await;
        // The same token under a key id the set does not have: refused.
        let mut h2 = Header::new(alg);
        h2.kid = Some(format!("{kid}-retired"));
        let t = encode(&h2, &claims, &key).unwrap();
        let mut c = Client::connect(&format!("{}?token={t}", node.ws_url())).await;
        refused_with_4401(&mut c).await;
    }
    node.wait_metric(
        "roomcast_auth_failures_total{reason=\"unknown_key\"}",
        |v| v >= 1.0,
    )
    .await;
}

/// The JWKS fixture's keys with their private PEMs (`rsa-1` → `rsa1_private.pem`).
fn jwks_private_keys(dir: &std::path::Path, keys: &Value) -> Vec<(String, Vec<u8>, Algorithm)> {
    keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let kid = k["kid"].as_str().unwrap().to_string();
            let alg = if k["kty"] == "RSA" {
                Algorithm::RS256
            } else {
                Algorithm::ES256
            };
            let file = format!("{}_private.pem", kid.replace('-', ""));
            let pem = std::fs::read(dir.join(file))
                .unwrap_or_else(|e| panic!("private key of {kid}: {e}"));
            (kid, pem, alg)
        })
        .collect()
}

#[tokio::test]
async fn presence_shows_the_token_user_and_info_and_needs_the_presence_right() {
    let secret = secret_file("presence");
    let node = start("required", &secret, &[]);
    let exp = now_s() + 3600;
    let t = hs256(json!({
        "sub": "ann", "exp": exp, "info": {"name": "Ann"},
        "rooms": {"team": ["subscribe", "presence"], "lobby": ["subscribe"]}
    }));
    let mut ann = Client::connect(&format!("{}?token={t}", node.ws_url())).await;
    let r = ann
        .request(json!({"op":"join","room":"team","presence":true,"presence_events":true}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = ann.request(json!({"op":"presence","room":"team"})).await;
    assert_eq!(
        r["members"],
        json!([{"user":"ann","conn":ann.welcome["conn"],"info":{"name":"Ann"}}]),
        "{r}"
    );
    // No presence right in `lobby`: neither the set nor its events.
    let r = ann.request(json!({"op":"presence","room":"lobby"})).await;
    assert_eq!(error_code(&r), "forbidden", "{r}");
    let r = ann
        .request(json!({"op":"join","room":"lobby","presence_events":true}))
        .await;
    assert_eq!(error_code(&r), "forbidden", "{r}");
}
