//! The OAuth strategies against a real authorization server (oidc-provider).

use std::time::Duration;

use shiftkey_auth::strategies::{
    ClientAuth, JwtAlgorithm, OAuthClient, OAuthPassword, OAuthRefresh, PrivateKeyJwt,
    ServiceAccount,
};
use shiftkey_auth::timing::RefreshConfig;
use shiftkey_auth::{AuthError, AuthStrategy, LifetimeSource, PermanentKind, TokenManager};
use shiftkey_tests::oidc::OidcServer;

fn client(server: &OidcServer, id: &str, auth: ClientAuth) -> OAuthClient {
    OAuthClient::new(reqwest::Client::new(), server.token_url(), id, auth)
}

fn app(server: &OidcServer) -> OAuthClient {
    client(server, "app", ClientAuth::SecretBasic("app-secret".into())).with_scopes([
        "openid",
        "offline_access",
        "api",
    ])
}

fn refreshing(server: &OidcServer) -> OAuthRefresh {
    let app = app(server);
    OAuthRefresh::new(app.clone()).with_fallback(OAuthPassword::new(
        app,
        "alice",
        "wonderland".into(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_with_basic_and_post_secrets() {
    let server = OidcServer::start(600);
    let http = reqwest::Client::new();
    for (id, auth) in [
        (
            "svc-basic",
            ClientAuth::SecretBasic("svc-basic-secret".into()),
        ),
        ("svc-post", ClientAuth::SecretPost("svc-post-secret".into())),
    ] {
        let token = ServiceAccount::new(client(&server, id, auth))
            .acquire(None)
            .await
            .unwrap();
        assert_eq!(token.lifetime, Duration::from_secs(600), "{id}");
        assert_eq!(token.lifetime_source, LifetimeSource::ExpiresIn);
        assert!(token.refresh_token.is_none());
        assert!(token.server_date.is_some(), "Date header read for skew");
        assert!(
            server.is_active(&http, token.access_token.expose()).await,
            "{id}"
        );
    }
    // Basic is sent as a header, post in the body: the server saw each client authenticate.
    assert_eq!(server.successes("client_credentials", 2).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_with_private_key_jwt_uses_a_fresh_assertion_each_time() {
    let server = OidcServer::start(600);
    let pem = std::fs::read(server.jwt_key_path()).unwrap();
    let signer = PrivateKeyJwt::from_pem(&pem, JwtAlgorithm::ES256)
        .unwrap()
        .with_kid("svc-jwt-key");
    let strategy = ServiceAccount::new(client(
        &server,
        "svc-jwt",
        ClientAuth::PrivateKeyJwt(signer.clone()),
    ));
    // oidc-provider refuses a replayed assertion (same jti), so two successes prove freshness.
    for _ in 0..2 {
        strategy.acquire(None).await.unwrap();
    }
    assert_eq!(server.successes("client_credentials", 2).await, 2);

    // The assertion's claims: iss = sub = client, aud = token endpoint, exp - iat <= 5 min, random jti.
    let clock = shiftkey_auth::TokioClock::new();
    let claims = |a: &str| -> serde_json::Value {
        use base64::Engine as _;
        let payload = a.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    };
    let a = claims(
        signer
            .assertion("svc-jwt", server.token_url().as_str(), &clock)
            .unwrap()
            .expose(),
    );
    let b = claims(
        signer
            .assertion("svc-jwt", server.token_url().as_str(), &clock)
            .unwrap()
            .expose(),
    );
    assert_eq!(a["iss"], "svc-jwt");
    assert_eq!(a["sub"], "svc-jwt");
    assert_eq!(a["aud"], server.token_url().as_str());
    let lifetime = a["exp"].as_u64().unwrap() - a["iat"].as_u64().unwrap();
    assert!(lifetime > 0 && lifetime <= 300, "{lifetime}");
    assert_ne!(a["jti"], b["jti"]);

    // A key the server does not know is refused permanently.
    let other = PrivateKeyJwt::from_pem(&pem, JwtAlgorithm::ES256).unwrap();
    let wrong_client = ServiceAccount::new(client(
        &server,
        "svc-basic",
        ClientAuth::PrivateKeyJwt(other),
    ));
    let err = wrong_client.acquire(None).await.unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::Permanent {
                kind: PermanentKind::InvalidClient,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_the_rotated_token_is_kept() {
    let server = OidcServer::start(600);
    let strategy = refreshing(&server);
    let first = strategy.acquire(None).await.unwrap();
    assert_eq!(
        server.successes("password", 1).await,
        1,
        "no refresh token yet: fell back to the password grant"
    );
    let second = strategy.acquire(Some(&first)).await.unwrap();
    let third = strategy.acquire(Some(&second)).await.unwrap();
    assert_eq!(server.successes("refresh_token", 2).await, 2);
    assert_eq!(
        server.successes("password", 1).await,
        1,
        "refresh, not re-login"
    );
    let (r1, r2, r3) = (
        first.refresh_token.unwrap(),
        second.refresh_token.unwrap(),
        third.refresh_token.unwrap(),
    );
    assert_ne!(r1, r2, "rotated");
    assert_ne!(r2, r3, "rotated again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_a_rotated_refresh_token_is_permanent_and_revokes_the_family() {
    let server = OidcServer::start(600);
    let login = OAuthPassword::new(app(&server), "alice", "wonderland".into());
    let first = login.acquire(None).await.unwrap();
    let plain = OAuthRefresh::new(app(&server));
    let second = plain.acquire(Some(&first)).await.unwrap();

    // A sibling still holding the old refresh token presents it: invalid_grant, permanent.
    let err = plain.acquire(Some(&first)).await.unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::Permanent {
                kind: PermanentKind::InvalidGrant,
                ..
            }
        ),
        "{err}"
    );
    // The server revoked the whole grant: the newest refresh token is dead too.
    let err = plain.acquire(Some(&second)).await.unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::Permanent {
                kind: PermanentKind::InvalidGrant,
                ..
            }
        ),
        "{err}"
    );
    let reused = |events: &[serde_json::Value]| {
        events
            .iter()
            .any(|e| e["detail"] == "refresh token already used")
    };
    assert!(reused(&server.wait_events(reused).await));

    // With a fallback configured, the strategy re-authenticates instead of giving up.
    let healed = refreshing(&server).acquire(Some(&second)).await.unwrap();
    assert!(healed.refresh_token.is_some());
    assert_eq!(server.successes("password", 2).await, 2);
}

// One thread, so that time can be paused at the end (`tokio::time::pause`).
#[tokio::test]
async fn wrong_secret_and_wrong_password_are_permanent() {
    let server = OidcServer::start(600);
    let bad = ServiceAccount::new(client(
        &server,
        "svc-basic",
        ClientAuth::SecretBasic("nope".into()),
    ));
    let err = bad.acquire(None).await.unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::Permanent {
                kind: PermanentKind::InvalidClient,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        !format!("{err:?}").contains("nope"),
        "the secret never appears in an error"
    );

    let login = OAuthPassword::new(app(&server), "alice", "not-her-password".into());
    let err = login.acquire(None).await.unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::Permanent {
                kind: PermanentKind::BadCredentials,
                ..
            }
        ),
        "{err}"
    );

    // The manager stops after a permanent error instead of hammering the server.
    let manager = TokenManager::builder(bad).build().unwrap();
    assert!(manager.token().await.unwrap_err().is_permanent());
    // Paused from here, so an hour passes at once: a manager that tried again would have by then.
    tokio::time::pause();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(manager.stats().acquires, 1);
}

// Real time: the tokens expire on oidc-provider's clock, in another process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_second_tokens_are_refreshed_proactively_and_never_sent_expired() {
    let server = OidcServer::start(4);
    let http = reqwest::Client::new();
    let manager = TokenManager::builder(refreshing(&server))
        .config(RefreshConfig::default())
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut checked = 0;
    let mut generations = std::collections::BTreeSet::new();
    while started.elapsed() < Duration::from_secs(11) {
        let token = manager.token().await.unwrap();
        generations.insert(token.generation());
        // Every token we would send is one the server still accepts.
        assert!(
            server.is_active(&http, token.access_token.expose()).await,
            "generation {} sent after the server expired it (age {:?})",
            token.generation(),
            token.age(tokio::time::Instant::now())
        );
        checked += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let stats = manager.stats();
    assert!(checked > 20, "{checked}");
    assert!(stats.proactive >= 3, "{stats:?}");
    assert!(
        stats.waits <= 1,
        "only the first call (no token yet) may wait; refresh ran ahead of expiry: {stats:?}"
    );
    assert_eq!(stats.failures, 0);
    assert!(generations.len() >= 4, "{generations:?}");
    assert!(server.successes("refresh_token", 3).await >= 3);
    assert_eq!(
        server.successes("password", 1).await,
        1,
        "one login, then only refreshes"
    );
}
