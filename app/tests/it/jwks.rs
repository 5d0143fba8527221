//! The identity provider's JWK set over HTTPS: served on 127.0.0.1 behind a TLS front whose
//! certificate a CA of the test signed. Given that CA's file (`auth.jwks_ca_file`), the app
//! fetches the keys at start-up and lets in tokens the provider signed; when no trusted CA
//! signed the certificate, the app does not start and says why, and an app whose provider
//! later shows an untrusted certificate keeps the keys it has and lets in nothing new.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpResponse, HttpServer, web};
use reqwest::Method;
use runtime::config::Settings;
use runtime::host::Hooks;
use testkit::tls::{HttpsFront, TestCa};
use testkit::{Backend, Spawn, TestApp, TestDatabase, json, test_settings};

/// A throwaway Ed25519 key made for these tests (PKCS#8 DER, hex), and its public half as a
/// JWK `x`. It signs nothing outside them.
const IDP_PKCS8: &str = "302e020100300506032b657004220420967ee2e793e0ab16e53652dc3481330b10deb9deed7604d02c5858252c2afb3b";
const IDP_X: &str = "YO0rrtKISsTRaTXbEr-b8ZHHK37RgDOus1s4powKPA0";
const KID: &str = "idp-1";

/// The provider's JWK set (key `idp-1`) over plain HTTP on 127.0.0.1, each answer closing
/// its connection so every fetch makes a new TLS handshake at the front.
fn serve_key_set() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let socket = listener.local_addr().expect("an address");
    let set =
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": KID, "x": IDP_X, "use": "sig"}]})
            .to_string();
    let server = HttpServer::new(move || {
        let set = set.clone();
        App::new().route(
            "/.well-known/jwks.json",
            web::get().to(move || {
                let set = set.clone();
                async move {
                    HttpResponse::Ok()
                        .content_type("application/json")
                        .force_close()
                        .body(set)
                }
            }),
        )
    })
    .workers(1)
    .listen(listener)
    .expect("listen")
    .run();
    tokio::spawn(server);
    socket
}

/// A customer token signed by the provider's key, under key id `kid`.
fn provider_token(settings: &Settings, kid: &str) -> String {
    let der: Vec<u8> = (0..IDP_PKCS8.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&IDP_PKCS8[i..i + 2], 16).expect("hex"))
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = json!({"sub": "ada", "roles": ["customer"], "iat": now, "exp": now + 600,
                        "iss": settings.auth.issuer, "aud": settings.auth.audience});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_der(&der),
    )
    .expect("signed")
}

/// The key set's URL at `front`.
fn jwks_url(front: &HttpsFront) -> Option<String> {
    Some(format!("{}/.well-known/jwks.json", front.url))
}

async fn orders_as(app: &TestApp, token: &str) -> u16 {
    app.send(Method::GET, "/api/checkout/orders", Some(token), None)
        .await
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_fetched_over_https_from_a_provider_behind_a_private_ca_let_its_tokens_in() {
    let ca = TestCa::new("the identity provider's CA");
    let dir = tempfile::tempdir().expect("a directory");
    let ca_file = ca.write_pem(dir.path(), "idp-ca.pem");
    let front = HttpsFront::start(&ca, serve_key_set()).await;
    let app = Spawn::new(Backend::Sqlite, app::modules())
        .configure(|s| {
            s.auth.jwks_url = jwks_url(&front);
            s.auth.jwks_ca_file = Some(ca_file);
            s.auth.jwks_refetch_secs = 1;
        })
        .start()
        .await;
    let token = provider_token(&app.settings, KID);
    assert_eq!(orders_as(&app, &token).await, 200, "the provider's token");
    let unknown = provider_token(&app.settings, "idp-9");
    assert_eq!(
        orders_as(&app, &unknown).await,
        401,
        "a key id the set lacks"
    );

    // The provider now shows a certificate no trusted CA signed (say, someone in the
    // middle): fetching again fails, the keys in hand stay, and nothing new gets in.
    front.reissue(&TestCa::new("an impostor's CA"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        orders_as(&app, &provider_token(&app.settings, "idp-2")).await,
        401,
        "a rotated key id cannot be fetched from an untrusted server"
    );
    assert_eq!(orders_as(&app, &token).await, 200, "the keys in hand stay");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_set_whose_certificate_no_trusted_ca_signed_stops_start_up_saying_why() {
    let dir = tempfile::tempdir().expect("a directory");
    let another = TestCa::new("another CA").write_pem(dir.path(), "another.pem");
    let front =
        HttpsFront::start(&TestCa::new("the identity provider's CA"), serve_key_set()).await;
    // Without a CA file only the system's roots are trusted; with another CA's, only those
    // and that one.
    for ca_file in [None, Some(another)] {
        let mut settings = test_settings();
        settings.modules.enabled = vec!["catalog".into()];
        settings.bus.instance = format!("test-{}", uuid::Uuid::new_v4().simple());
        settings.auth.jwks_url = jwks_url(&front);
        settings.auth.jwks_ca_file = ca_file.clone();
        let db = TestDatabase::create(Backend::Sqlite, &mut settings).await;
        let refused = match TestApp::start_on(settings, app::modules(), Hooks::default(), db).await
        {
            Ok(_) => panic!("the app started on keys from an untrusted server ({ca_file:?})"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            refused.contains("auth.jwks_url") && refused.contains("invalid peer certificate"),
            "{ca_file:?}: {refused}"
        );
    }
}
