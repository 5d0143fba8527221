//! Who is calling: bearer JWTs verified by this process.
//!
//! A token carries `sub` (the caller's id: a customer's orders are the ones placed under
//! it), `roles` (`customer`, `staff`), and `exp`, `iss`, `aud` (and `nbf` when present),
//! all checked. Production verifies RS256 or EdDSA signatures with the public keys of a
//! JWKS file (`auth.jwks_file`); local development and tests may verify HS256 with a shared
//! secret (`auth.hs256_secret`, or a fixed development secret when unset), which production
//! refuses. The keys are read once, at start-up; a request costs one signature check (about
//! 2 µs of CPU for HS256, 40 µs for EdDSA, 64 µs for RS256: `benches/token_verification.rs`).
//! Instead of a file, the key set may come from the identity provider's URL
//! (`auth.jwks_url`; its certificate checked against the system's roots and the CA of
//! `auth.jwks_ca_file`): fetched at start-up (without usable keys, an untrusted
//! certificate say, the process does not start), used for `auth.jwks_max_age_secs`, then
//! fetched again; a token naming a key id the set lacks (the provider rotated its keys) fetches it
//! again at once, but no fetch follows another within `auth.jwks_refetch_secs`, so tokens
//! with made-up key ids cannot make this process hammer the provider.
//!
//! Routes declare who may call them with `module_api::RouteAccess`; this verifier is what the
//! host installs for them (`module_api::Authenticate`).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::future::BoxFuture;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use module_api::{Authenticate, Caller, Role};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::config::Settings;

/// The HS256 secret local development and tests use when `auth.hs256_secret` is unset.
/// Production never accepts HS256 (see [`crate::config::Settings::check`]).
const DEVELOPMENT_SECRET: &str = "shop-local-development-secret-never-used-in-production";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    iss: String,
    aud: String,
    iat: u64,
}

/// Why a token was refused. Only the kind reaches the caller; the detail is logged.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token's key id or algorithm matches no configured key")]
    UnknownKey,
    #[error("{0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
}

struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

/// Verifies bearer tokens with the keys configuration names, decoded once, and those of the
/// key set URL, cached.
pub struct Authenticator {
    keys: Vec<Key>,
    remote: Option<RemoteKeys>,
}

/// The key set of `auth.jwks_url` and when it was fetched.
struct RemoteKeys {
    url: String,
    max_age: Duration,
    refetch: Duration,
    client: reqwest::Client,
    validation: Validation,
    state: std::sync::Mutex<Fetched>,
    /// One fetch at a time; the others wait for it and use what it brought.
    fetching: tokio::sync::Mutex<()>,
}

struct Fetched {
    keys: std::sync::Arc<Vec<Key>>,
    /// When the keys in hand were fetched.
    at: Option<std::time::Instant>,
    /// When a fetch was last tried, whether it worked or not.
    tried: Option<std::time::Instant>,
}

impl RemoteKeys {
    fn keys(&self) -> std::sync::Arc<Vec<Key>> {
        self.lock().keys.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Fetched> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a fetch may start now: none was tried within the refetch interval.
    fn may_fetch(&self) -> bool {
        self.lock()
            .tried
            .is_none_or(|t| t.elapsed() >= self.refetch)
    }

    fn is_stale(&self) -> bool {
        self.lock().at.is_none_or(|t| t.elapsed() >= self.max_age)
    }

    /// Fetches the set again unless one was tried within the refetch interval. Keeps the
    /// keys in hand when the fetch fails.
    async fn refresh(&self) {
        let _one = self.fetching.lock().await;
        if !self.may_fetch() {
            return;
        }
        self.lock().tried = Some(std::time::Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                let mut state = self.lock();
                state.keys = std::sync::Arc::new(keys);
                state.at = Some(std::time::Instant::now());
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = format!("{e:#}"), "fetching the JWK set failed; the keys in hand stay");
            }
        }
    }

    async fn fetch(&self) -> anyhow::Result<Vec<Key>> {
        let reply = self
            .client
            .get(&self.url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("auth.jwks_url: cannot fetch {}", self.url))?;
        let text = reply
            .text()
            .await
            .with_context(|| format!("auth.jwks_url: cannot read {}", self.url))?;
        let keys = usable_keys(&text, &format!("auth.jwks_url: {}", self.url))?;
        Ok(keys
            .into_iter()
            .map(|(kid, algorithm, key)| {
                let mut validation = self.validation.clone();
                validation.algorithms = vec![algorithm];
                Key {
                    kid,
                    algorithm,
                    key,
                    validation,
                }
            })
            .collect())
    }
}

impl Authenticator {
    /// The verifier the settings describe. Refuses a JWKS file that cannot be read or holds
    /// no usable key.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Authenticator> {
        let auth = &settings.auth;
        let mut keys = Vec::new();
        let validation = |algorithm: Algorithm| {
            let mut v = Validation::new(algorithm);
            v.set_issuer(&[&auth.issuer]);
            v.set_audience(&[&auth.audience]);
            v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            v.validate_nbf = true;
            v.leeway = auth.leeway_secs;
            v
        };
        if let Some(file) = &auth.jwks_file {
            for (kid, algorithm, key) in read_jwks(file)? {
                keys.push(Key {
                    kid,
                    algorithm,
                    key,
                    validation: validation(algorithm),
                });
            }
        }
        if let Some(secret) = shared_secret(settings) {
            keys.push(Key {
                kid: None,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.as_bytes())
                    .context("auth.hs256_secret is not a usable key")?,
                validation: validation(Algorithm::HS256),
            });
        }
        let remote = match &auth.jwks_url {
            Some(url) => Some(RemoteKeys {
                url: url.clone(),
                max_age: Duration::from_secs(auth.jwks_max_age_secs),
                refetch: Duration::from_secs(auth.jwks_refetch_secs),
                client: module_api::tls::client_builder(auth.jwks_ca_file.as_deref())
                    .context("auth.jwks_ca_file")?
                    .timeout(Duration::from_secs(5))
                    .build()
                    .context("auth.jwks_url: no HTTP client")?,
                validation: validation(Algorithm::RS256),
                state: std::sync::Mutex::new(Fetched {
                    keys: Default::default(),
                    at: None,
                    tried: None,
                }),
                fetching: tokio::sync::Mutex::new(()),
            }),
            None => None,
        };
        anyhow::ensure!(
            !keys.is_empty() || remote.is_some(),
            "auth: no key to verify tokens with (set auth.jwks_file or auth.jwks_url)"
        );
        Ok(Authenticator { keys, remote })
    }

    /// Fetches the key set of `auth.jwks_url`, if one is set: start-up refuses to go on
    /// without usable keys.
    pub async fn fetch_keys(&self) -> anyhow::Result<()> {
        if let Some(remote) = &self.remote {
            let keys = remote.fetch().await?;
            let mut state = remote.lock();
            state.keys = std::sync::Arc::new(keys);
            state.at = Some(std::time::Instant::now());
            state.tried = state.at;
        }
        Ok(())
    }

    /// Verifies a token, fetching the URL's key set again when it is older than its
    /// maximum age, or when the token names a key id it lacks (at most once per refetch
    /// interval).
    pub async fn verify_fresh(&self, token: &str) -> Result<Caller, TokenError> {
        let Some(remote) = &self.remote else {
            return self.verify(token);
        };
        if remote.is_stale() && remote.may_fetch() {
            remote.refresh().await;
        }
        match self.verify(token) {
            Err(TokenError::UnknownKey) if remote.may_fetch() => {
                remote.refresh().await;
                self.verify(token)
            }
            verified => verified,
        }
    }

    /// Verifies a token with the keys in hand: signature, `exp`, `nbf`, `iss`, `aud`.
    pub fn verify(&self, token: &str) -> Result<Caller, TokenError> {
        let header = jsonwebtoken::decode_header(token)?;
        let remote = self.remote.as_ref().map(|r| r.keys());
        let key = self
            .keys
            .iter()
            .chain(remote.iter().flat_map(|keys| keys.iter()))
            .find(|k| {
                k.algorithm == header.alg
                    && (header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
            })
            .ok_or(TokenError::UnknownKey)?;
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)?;
        let roles = data.claims.roles.iter().filter_map(|r| Role::parse(r));
        Ok(Caller::new(data.claims.sub, roles))
    }
}

impl Authenticate for Authenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, String>> {
        Box::pin(async move { self.verify_fresh(token).await.map_err(|e| e.to_string()) })
    }
}

/// The HS256 secret of local and test environments: the configured one, or the fixed
/// development secret. `None` in production, where configuration checks refuse it.
fn shared_secret(settings: &Settings) -> Option<String> {
    if settings.environment == "production" {
        return None;
    }
    Some(match &settings.auth.hs256_secret {
        Some(secret) => secret.expose_secret().to_owned(),
        None => DEVELOPMENT_SECRET.to_owned(),
    })
}

type UsableKey = (Option<String>, Algorithm, DecodingKey);

/// The usable keys of a JWKS file: RSA keys (RS256) and Ed25519 keys (EdDSA).
fn read_jwks(file: &Path) -> anyhow::Result<Vec<UsableKey>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("auth.jwks_file: cannot read {}", file.display()))?;
    usable_keys(&text, &format!("auth.jwks_file: {}", file.display()))
}

/// The usable keys of a JWK set's text; `source` names where it came from in errors.
fn usable_keys(text: &str, source: &str) -> anyhow::Result<Vec<UsableKey>> {
    let set: JwkSet =
        serde_json::from_str(text).with_context(|| format!("{source} is not a JWK set"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::OctetKeyPair(p), None | Some(KeyAlgorithm::EdDSA))
                if p.curve == EllipticCurve::Ed25519 =>
            {
                Algorithm::EdDSA
            }
            // Other kinds (symmetric keys above all) are not trusted from a key set.
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk).with_context(|| {
            format!(
                "{source}: key {:?} is not usable",
                jwk.common.key_id.as_deref().unwrap_or("(no kid)")
            )
        })?;
        keys.push((jwk.common.key_id.clone(), algorithm, key));
    }
    anyhow::ensure!(!keys.is_empty(), "{source} holds no RS256 or Ed25519 key");
    Ok(keys)
}

/// Mints an HS256 token for local use and tests (`app token`). Refused in production,
/// which holds no signing key.
pub fn mint(
    settings: &Settings,
    roles: &[Role],
    subject: &str,
    ttl: Duration,
) -> anyhow::Result<String> {
    let secret = shared_secret(settings)
        .context("tokens are minted for local development and tests only, not in production")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let claims = Claims {
        sub: subject.to_owned(),
        roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
        exp: now + ttl.as_secs(),
        nbf: Some(now),
        iss: settings.auth.issuer.clone(),
        aud: settings.auth.audience.clone(),
        iat: now,
    };
    let key = EncodingKey::from_secret(secret.as_bytes()).context("the HS256 secret")?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .context("failed to sign the token")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::Sources;

    /// A throwaway Ed25519 key made for these tests (PKCS#8 DER, hex), and its public half as
    /// a JWK `x`. It signs nothing outside this module.
    const TEST_ED25519_PKCS8: &str = "302e020100300506032b657004220420967ee2e793e0ab16e53652dc3481330b10deb9deed7604d02c5858252c2afb3b";
    const TEST_ED25519_X: &str = "YO0rrtKISsTRaTXbEr-b8ZHHK37RgDOus1s4powKPA0";

    fn settings(environment: &str, vars: &[(&str, &str)]) -> Result<Settings, String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        Settings::load(Sources {
            dir: &dir,
            environment,
            env_vars: Some(
                vars.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<HashMap<_, _>>(),
            ),
        })
        .map_err(|e| e.to_string())
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    fn claims(settings: &Settings) -> Claims {
        Claims {
            sub: "ada".into(),
            roles: vec!["customer".into()],
            exp: now() + 600,
            nbf: None,
            iss: settings.auth.issuer.clone(),
            aud: settings.auth.audience.clone(),
            iat: now(),
        }
    }

    fn hs256(claims: &Claims, secret: &str) -> String {
        let key = EncodingKey::from_secret(secret.as_bytes()).expect("key");
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).expect("signed")
    }

    fn ed25519(claims: &Claims, kid: Option<&str>) -> String {
        let der: Vec<u8> = (0..TEST_ED25519_PKCS8.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&TEST_ED25519_PKCS8[i..i + 2], 16).expect("hex"))
            .collect();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&der)).expect("signed")
    }

    fn jwks_file(dir: &Path) -> std::path::PathBuf {
        let file = dir.join("jwks.json");
        let set = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": TEST_ED25519_X, "use": "sig"},
            // A symmetric key in a key set is never trusted.
            {"kty": "oct", "kid": "k2", "k": "c2VjcmV0"}
        ]});
        std::fs::write(&file, set.to_string()).expect("write jwks");
        file
    }

    #[test]
    fn a_minted_token_names_its_caller_and_roles() {
        let s = settings("test", &[]).expect("test settings");
        let auth = Authenticator::from_settings(&s).expect("verifier");
        let token = mint(&s, &[Role::Staff], "bob", Duration::from_secs(60)).expect("token");
        let caller = auth.verify(&token).expect("valid");
        assert_eq!(caller.subject, "bob");
        assert!(caller.has(Role::Staff) && !caller.has(Role::Customer));
    }

    /// Each row: what is wrong with the token. Every one is refused.
    #[test]
    fn tokens_that_fail_any_check_are_refused() {
        let s = settings("test", &[]).expect("test settings");
        let auth = Authenticator::from_settings(&s).expect("verifier");
        let good = claims(&s);
        assert!(auth.verify(&hs256(&good, DEVELOPMENT_SECRET)).is_ok());
        let mut expired = claims(&s);
        expired.exp = now() - 3600;
        let mut early = claims(&s);
        early.nbf = Some(now() + 3600);
        let mut issuer = claims(&s);
        issuer.iss = "someone-else".into();
        let mut audience = claims(&s);
        audience.aud = "another-api".into();
        let unsigned = {
            let token = hs256(&good, DEVELOPMENT_SECRET);
            let mut parts: Vec<&str> = token.split('.').collect();
            // {"alg":"none","typ":"JWT"}
            parts[0] = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
            format!("{}.{}.", parts[0], parts[1])
        };
        let cases: Vec<(&str, String)> = vec![
            ("expired", hs256(&expired, DEVELOPMENT_SECRET)),
            ("not yet valid", hs256(&early, DEVELOPMENT_SECRET)),
            ("another issuer", hs256(&issuer, DEVELOPMENT_SECRET)),
            ("another audience", hs256(&audience, DEVELOPMENT_SECRET)),
            (
                "another secret",
                hs256(&good, "another-secret-another-secret-another"),
            ),
            ("alg none", unsigned),
            ("an EdDSA token with no key for it", ed25519(&good, None)),
            ("garbage", "not.a.token".into()),
            ("empty", String::new()),
        ];
        for (what, token) in cases {
            assert!(auth.verify(&token).is_err(), "{what} must be refused");
        }
    }

    #[test]
    fn production_verifies_eddsa_from_a_jwks_file_and_never_hs256() {
        let dir = tempfile::tempdir().expect("dir");
        let file = jwks_file(dir.path());
        let file = file.to_str().expect("utf-8");
        let s = settings("production", &[("APP__AUTH__JWKS_FILE", file)]).expect("loads");
        let auth = Authenticator::from_settings(&s).expect("verifier");
        let good = claims(&s);
        let caller = auth.verify(&ed25519(&good, Some("k1"))).expect("valid");
        assert_eq!(caller.subject, "ada");
        assert!(auth.verify(&ed25519(&good, None)).is_ok(), "no kid: tried");
        assert!(
            auth.verify(&ed25519(&good, Some("k9"))).is_err(),
            "an unknown kid is refused"
        );
        assert!(
            auth.verify(&hs256(&good, DEVELOPMENT_SECRET)).is_err(),
            "production never accepts the development secret"
        );
        assert!(
            auth.verify(&hs256(&good, "c2VjcmV0")).is_err(),
            "nor a symmetric key from the key set"
        );
        assert!(
            mint(&s, &[Role::Staff], "x", Duration::from_secs(60)).is_err(),
            "production mints no token"
        );
    }

    #[test]
    fn production_refuses_to_start_without_keys_or_with_a_shared_secret() {
        let missing = settings("production", &[]).expect_err("refused");
        assert!(missing.contains("auth.jwks_file"), "{missing}");
        let dir = tempfile::tempdir().expect("dir");
        let file = jwks_file(dir.path());
        let secret = "a-long-enough-shared-secret-for-hs256-tokens";
        let shared = settings(
            "production",
            &[
                ("APP__AUTH__JWKS_FILE", file.to_str().expect("utf-8")),
                ("APP__AUTH__HS256_SECRET", secret),
            ],
        )
        .expect_err("refused");
        assert!(shared.contains("auth.hs256_secret"), "{shared}");
        assert!(!shared.contains(secret), "{shared}");
        let short = settings("local", &[("APP__AUTH__HS256_SECRET", "short")]).expect_err("x");
        assert!(short.contains("auth.hs256_secret"), "{short}");
    }

    /// A JWK set served over HTTP on 127.0.0.1 by a thread of the test, which counts the
    /// fetches; `set` is what it serves now.
    struct JwksServer {
        url: String,
        set: std::sync::Arc<std::sync::Mutex<String>>,
        fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl JwksServer {
        fn start(kids: &[&str]) -> JwksServer {
            use std::io::{Read, Write};
            use std::sync::atomic::Ordering;
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            listener.set_nonblocking(true).expect("non-blocking");
            let url = format!(
                "http://{}/.well-known/jwks.json",
                listener.local_addr().expect("address")
            );
            let server = JwksServer {
                url,
                set: Default::default(),
                fetches: Default::default(),
                stop: Default::default(),
            };
            server.serve(kids);
            let (set, fetches, stop) = (
                server.set.clone(),
                server.fetches.clone(),
                server.stop.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut stream, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    stream.set_nonblocking(false).ok();
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    fetches.fetch_add(1, Ordering::SeqCst);
                    let body = set.lock().expect("set").clone();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    stream.write_all(reply.as_bytes()).ok();
                }
            });
            server
        }

        /// Serves the test key under these key ids from now on.
        fn serve(&self, kids: &[&str]) {
            let keys: Vec<_> = kids
                .iter()
                .map(|kid| {
                    serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
                                       "x": TEST_ED25519_X, "use": "sig"})
                })
                .collect();
            *self.set.lock().expect("set") = serde_json::json!({ "keys": keys }).to_string();
        }

        fn fetches(&self) -> usize {
            self.fetches.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl Drop for JwksServer {
        fn drop(&mut self) {
            self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Keys from `auth.jwks_url`: fetched at start-up and cached; a rotated key id fetches
    /// the set again, at most once per refetch interval; past the maximum age the set is
    /// fetched again and a key the provider dropped is refused.
    #[tokio::test]
    async fn keys_from_a_jwks_url_are_cached_and_fetched_again_on_rotation_and_age() {
        let server = JwksServer::start(&["k1"]);
        let s = settings(
            "production",
            &[
                ("APP__AUTH__JWKS_URL", server.url.as_str()),
                // The test's server speaks plain HTTP on loopback, as a sidecar would.
                ("APP__AUTH__JWKS_ALLOW_HTTP", "true"),
                ("APP__AUTH__JWKS_MAX_AGE_SECS", "3"),
                ("APP__AUTH__JWKS_REFETCH_SECS", "1"),
            ],
        )
        .expect("loads");
        let auth = Authenticator::from_settings(&s).expect("verifier");
        auth.fetch_keys()
            .await
            .expect("the set is fetched at start-up");
        assert_eq!(server.fetches(), 1);
        let good = claims(&s);
        let token = |kid: &str| ed25519(&good, Some(kid));
        for _ in 0..3 {
            auth.verify_fresh(&token("k1")).await.expect("k1 is known");
        }
        assert_eq!(server.fetches(), 1, "the set is cached");

        // The provider adds k2 and signs with it. Right after the last fetch, an unknown key
        // id does not fetch again; once the refetch interval passed, it does, once.
        server.serve(&["k1", "k2"]);
        assert!(auth.verify_fresh(&token("k2")).await.is_err());
        assert_eq!(server.fetches(), 1, "not within the refetch interval");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        auth.verify_fresh(&token("k2"))
            .await
            .expect("the rotated key is fetched");
        assert_eq!(server.fetches(), 2);
        for _ in 0..5 {
            assert!(auth.verify_fresh(&token("k-made-up")).await.is_err());
        }
        assert_eq!(server.fetches(), 2, "made-up key ids fetch nothing more");
        // The provider drops k1: the keys in hand keep it until they are fetched again.
        server.serve(&["k2"]);
        auth.verify_fresh(&token("k1"))
            .await
            .expect("k1 is still in hand until the set is fetched again");
        assert_eq!(server.fetches(), 2);

        // Past the maximum age the set is fetched again: k1 is gone.
        tokio::time::sleep(Duration::from_millis(3100)).await;
        assert!(
            auth.verify_fresh(&token("k1")).await.is_err(),
            "k1 was dropped"
        );
        assert_eq!(server.fetches(), 3);
        auth.verify_fresh(&token("k2")).await.expect("k2 stays");
        assert_eq!(server.fetches(), 3);
    }

    #[tokio::test]
    async fn a_jwks_url_without_usable_keys_stops_start_up() {
        let server = JwksServer::start(&[]);
        let s = settings(
            "production",
            &[
                ("APP__AUTH__JWKS_URL", server.url.as_str()),
                ("APP__AUTH__JWKS_ALLOW_HTTP", "true"),
            ],
        )
        .expect("loads");
        let auth = Authenticator::from_settings(&s).expect("verifier");
        let error = format!("{:#}", auth.fetch_keys().await.expect_err("no keys"));
        assert!(
            error.contains("auth.jwks_url") && error.contains("no RS256 or Ed25519 key"),
            "{error}"
        );
        let both = settings(
            "production",
            &[
                ("APP__AUTH__JWKS_URL", server.url.as_str()),
                ("APP__AUTH__JWKS_FILE", "/etc/shop/jwks.json"),
            ],
        )
        .expect_err("one source of keys");
        assert!(both.contains("auth.jwks_url"), "{both}");
        let bad = settings("local", &[("APP__AUTH__JWKS_URL", "ftp://idp/jwks")]).expect_err("x");
        assert!(bad.contains("auth.jwks_url"), "{bad}");
    }

    #[test]
    fn a_configured_secret_replaces_the_development_one() {
        let secret = "a-long-enough-shared-secret-for-hs256-tokens";
        let s = settings("local", &[("APP__AUTH__HS256_SECRET", secret)]).expect("loads");
        let auth = Authenticator::from_settings(&s).expect("verifier");
        assert!(auth.verify(&hs256(&claims(&s), secret)).is_ok());
        assert!(
            auth.verify(&hs256(&claims(&s), DEVELOPMENT_SECRET))
                .is_err()
        );
    }
}
