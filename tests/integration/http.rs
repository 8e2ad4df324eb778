//! The HTTP middleware with oidc-provider as the token server and an axum resource server that
//! checks every token at the provider's introspection endpoint.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use shiftkey_auth::TokenManager;
use shiftkey_auth::strategies::{ClientAuth, OAuthClient, OAuthPassword, OAuthRefresh};
use shiftkey_http::AuthMiddleware;
use shiftkey_tests::oidc::OidcServer;

struct Resource {
    oidc: OidcServer,
    http: reqwest::Client,
    /// Tokens this server decided are dead (a restart, a revocation the provider does not know).
    denied: Mutex<HashSet<String>>,
    deny_next: Mutex<bool>,
    served: AtomicUsize,
    expired_seen: AtomicUsize,
    rejected: AtomicUsize,
}

async fn data(
    State(r): State<Arc<Resource>>,
    headers: HeaderMap,
) -> (StatusCode, HeaderMap, &'static str) {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let mut challenge = HeaderMap::new();
    challenge.insert(
        "www-authenticate",
        r#"Bearer error="invalid_token""#.parse().unwrap(),
    );
    {
        let mut deny_next = r.deny_next.lock().unwrap();
        if *deny_next {
            *deny_next = false;
            r.denied.lock().unwrap().insert(token.clone());
        }
    }
    if r.denied.lock().unwrap().contains(&token) {
        r.rejected.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::UNAUTHORIZED, challenge, "revoked");
    }
    if !r.oidc.is_active(&r.http, &token).await {
        r.expired_seen.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::UNAUTHORIZED, challenge, "expired");
    }
    r.served.fetch_add(1, Ordering::SeqCst);
    (StatusCode::OK, HeaderMap::new(), "ok")
}

async fn start(access_ttl: u64) -> (Arc<Resource>, url::Url) {
    let resource = Arc::new(Resource {
        oidc: OidcServer::start(access_ttl),
        http: reqwest::Client::new(),
        denied: Mutex::default(),
        deny_next: Mutex::new(false),
        served: AtomicUsize::new(0),
        expired_seen: AtomicUsize::new(0),
        rejected: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route("/data", get(data))
        .with_state(Arc::clone(&resource));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (resource, format!("http://{addr}/data").parse().unwrap())
}

fn client(oidc: &OidcServer) -> (reqwest_middleware::ClientWithMiddleware, AuthMiddleware) {
    let http = reqwest::Client::new();
    let app = OAuthClient::new(
        http.clone(),
        oidc.token_url(),
        "app",
        ClientAuth::SecretBasic("app-secret".into()),
    )
    .with_scopes(["openid", "offline_access", "api"]);
    let strategy = OAuthRefresh::new(app.clone()).with_fallback(OAuthPassword::new(
        app,
        "alice",
        "wonderland".into(),
    ));
    let manager = TokenManager::builder(strategy).build().unwrap();
    let middleware = AuthMiddleware::builder(manager).build();
    (
        reqwest_middleware::ClientBuilder::new(http)
            .with(middleware.clone())
            .build(),
        middleware,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_killed_by_the_resource_server_is_healed_by_one_real_refresh() {
    let (resource, url) = start(600).await;
    let (client, middleware) = client(&resource.oidc);
    assert_eq!(client.get(url.clone()).send().await.unwrap().status(), 200);
    *resource.deny_next.lock().unwrap() = true;
    let resp = client.get(url.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the caller never sees the 401");
    assert_eq!(resource.rejected.load(Ordering::SeqCst), 1);
    assert_eq!(
        resource.oidc.successes("refresh_token", 1).await,
        1,
        "one refresh, with rotation"
    );
    assert_eq!(resource.oidc.successes("password", 1).await, 1);
    let stats = middleware.stats();
    assert_eq!((stats.recovered, stats.surfaced), (1, 0));
}

// Real time: the tokens expire on oidc-provider's clock, in another process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_never_reach_the_resource_server_expired() {
    let (resource, url) = start(4).await;
    let (client, middleware) = client(&resource.oidc);
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(9) {
        assert_eq!(client.get(url.clone()).send().await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        resource.expired_seen.load(Ordering::SeqCst),
        0,
        "no request carried an expired token"
    );
    assert!(resource.served.load(Ordering::SeqCst) > 20);
    assert!(resource.oidc.successes("refresh_token", 2).await >= 2);
    assert_eq!(middleware.stats().surfaced, 0);
}
