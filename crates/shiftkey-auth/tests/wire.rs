//! Token endpoints as real networks and real identity providers behave: numeric strings, redirects,
//! oversized answers, clear-text URLs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use shiftkey_auth::strategies::{
    BearerLogin, BearerLoginConfig, ClientAuth, OAuthClient, OAuthRefresh, ServiceAccount,
};
use shiftkey_auth::{AuthError, AuthStrategy, PermanentKind, credential_client};

/// A token endpoint on loopback with one route per behaviour, and a second server that counts
/// what reaches it (where a redirect points).
async fn serve() -> (url::Url, Arc<AtomicUsize>) {
    let stolen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&stolen);
    let thief = Router::new().fallback(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async {
            (
                StatusCode::OK,
                r#"{"access_token":"stolen","expires_in":60}"#,
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let thief_at = format!("http://{}/collect", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, thief).await.unwrap() });

    let app = Router::new()
        .route(
            "/string",
            post(|| async {
                (
                    StatusCode::OK,
                    r#"{"access_token":"a1","token_type":"bearer","expires_in":"3599","refresh_token":"r2","scope":"api"}"#,
                )
            }),
        )
        .route(
            "/no-refresh-token",
            post(|| async {
                (
                    StatusCode::OK,
                    r#"{"access_token":"a2","token_type":"Bearer","expires_in":3599.0}"#,
                )
            }),
        )
        .route(
            "/huge-lifetime",
            post(|| async {
                (
                    StatusCode::OK,
                    r#"{"access_token":"a3","token_type":"Bearer","expires_in":9223372036854775808}"#,
                )
            }),
        )
        .route(
            "/redirect",
            post(move || {
                let to = thief_at.clone();
                async move {
                    let mut h = HeaderMap::new();
                    h.insert(header::LOCATION, to.parse().unwrap());
                    (StatusCode::TEMPORARY_REDIRECT, h).into_response()
                }
            }),
        )
        .route(
            "/huge",
            post(|| async { (StatusCode::OK, "x".repeat(2 * 1024 * 1024)) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/").parse().unwrap(), stolen)
}

fn client(base: &url::Url, path: &str) -> OAuthClient {
    OAuthClient::new(
        credential_client().build().unwrap(),
        base.join(path).unwrap(),
        "plant-sync",
        ClientAuth::SecretBasic("s3cret".into()),
    )
}

#[tokio::test]
async fn expires_in_as_a_numeric_string_is_a_lifetime() {
    let (base, _) = serve().await;
    let token = ServiceAccount::new(client(&base, "string"))
        .acquire(None)
        .await
        .unwrap();
    assert_eq!(token.lifetime, Duration::from_secs(3599));
    assert_eq!(token.token_type, "Bearer");
    assert_eq!(token.scope.as_deref(), Some("api"));
}

#[tokio::test]
async fn a_refresh_answer_without_a_refresh_token_keeps_the_old_one() {
    let (base, _) = serve().await;
    let strategy =
        OAuthRefresh::new(client(&base, "no-refresh-token")).with_refresh_token("r1".into());
    let token = strategy.acquire(None).await.unwrap();
    assert_eq!(token.refresh_token.as_ref().map(|r| r.expose()), Some("r1"));
    assert_eq!(token.lifetime, Duration::from_secs(3599));
}

#[tokio::test]
async fn an_expires_in_of_2_pow_63_is_a_year_not_a_panic() {
    let (base, _) = serve().await;
    let token = ServiceAccount::new(client(&base, "huge-lifetime"))
        .acquire(None)
        .await
        .unwrap();
    assert_eq!(token.lifetime, shiftkey_auth::MAX_LIFETIME);
    assert!(token.expires_at() > token.issued_at);
}

#[tokio::test]
async fn a_redirect_from_the_token_endpoint_is_an_error_and_the_secret_stays_home() {
    let (base, stolen) = serve().await;
    let err = OAuthRefresh::new(client(&base, "redirect"))
        .with_refresh_token("r1".into())
        .acquire(None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            AuthError::Permanent {
                kind: PermanentKind::Configuration,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("307"), "{err}");
    let mut cfg = BearerLoginConfig::new(
        base.join("redirect").unwrap(),
        vec![("password".to_owned(), "pa55".into())],
    );
    cfg.default_lifetime = Duration::from_secs(60);
    let err = BearerLogin::new(credential_client().build().unwrap(), cfg)
        .unwrap()
        .acquire(None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("redirect"), "{err}");
    assert_eq!(
        stolen.load(Ordering::SeqCst),
        0,
        "credentials followed a redirect"
    );
}

#[tokio::test]
async fn an_oversized_answer_is_an_error_naming_the_limit() {
    let (base, _) = serve().await;
    let err = ServiceAccount::new(client(&base, "huge"))
        .acquire(None)
        .await
        .unwrap_err();
    assert!(err.is_transient());
    assert!(err.to_string().contains("1024 KiB limit"), "{err}");
    assert!(err.to_string().contains("/huge"), "{err}");
}

#[tokio::test]
async fn clear_text_credential_urls_are_refused_unless_loopback_or_allowed() {
    let remote: url::Url = "http://idp.plant.invalid/token".parse().unwrap();
    let oauth = OAuthClient::new(
        credential_client().build().unwrap(),
        remote.clone(),
        "plant-sync",
        ClientAuth::SecretPost("s3cret".into()),
    );
    let err = ServiceAccount::new(oauth).acquire(None).await.unwrap_err();
    assert!(
        matches!(
            &err,
            AuthError::Permanent {
                kind: PermanentKind::Configuration,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("allow_insecure_http"), "{err}");

    let cfg = BearerLoginConfig::new(remote.clone(), vec![]);
    let err = BearerLogin::new(reqwest::Client::new(), cfg).unwrap_err();
    assert_eq!(err.field, "login_url");
    let mut cfg = BearerLoginConfig::new(remote, vec![]);
    cfg.allow_insecure_http = true;
    assert!(BearerLogin::new(reqwest::Client::new(), cfg).is_ok());
}

/// A clock that records every wait it is asked for and returns at once.
#[derive(Debug, Default)]
struct RecordingClock {
    waits: std::sync::Mutex<Vec<Duration>>,
}

impl shiftkey_auth::Clock for RecordingClock {
    fn now(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }

    fn wall(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + Duration::from_secs(1_767_571_200)
    }

    fn sleep(&self, duration: Duration) -> shiftkey_auth::Sleep {
        self.waits.lock().unwrap().push(duration);
        Box::pin(async {})
    }
}

#[tokio::test]
async fn a_device_login_with_interval_zero_still_waits_between_polls() {
    use shiftkey_auth::strategies::DeviceLogin;
    // RFC 8628 §3.2 lets `interval` be any number; 0 must not make the client poll without pause.
    let polls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&polls);
    let app = Router::new()
        .route(
            "/device",
            post(|| async {
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    r#"{"device_code":"d1","user_code":"ABCD-EFGH","verification_uri":"http://127.0.0.1/device","expires_in":600,"interval":0}"#,
                )
            }),
        )
        .route(
            "/token",
            post(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 3 {
                        (
                            StatusCode::BAD_REQUEST,
                            [(header::CONTENT_TYPE, "application/json")],
                            r#"{"error":"authorization_pending"}"#,
                        )
                    } else {
                        (
                            StatusCode::OK,
                            [(header::CONTENT_TYPE, "application/json")],
                            r#"{"access_token":"a1","token_type":"Bearer","expires_in":3600,"refresh_token":"r1"}"#,
                        )
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let base: url::Url = format!("http://{addr}/").parse().unwrap();
    let clock = Arc::new(RecordingClock::default());
    let oauth = OAuthClient::new(
        credential_client().build().unwrap(),
        base.join("token").unwrap(),
        "plant-sync",
        ClientAuth::None,
    )
    .with_clock(Arc::clone(&clock) as Arc<dyn shiftkey_auth::Clock>);
    let login = DeviceLogin::start(&oauth, &base.join("device").unwrap())
        .await
        .unwrap();
    let token = login.finish(&oauth).await.unwrap();
    assert_eq!(token.access_token.expose(), "a1");
    assert_eq!(polls.load(Ordering::SeqCst), 4);
    let waits = clock.waits.lock().unwrap().clone();
    assert!(
        waits.len() >= 3 && waits.iter().all(|w| *w >= Duration::from_secs(1)),
        "waits between polls: {waits:?}"
    );
}

/// Log lines written while `f` runs, at every level.
async fn logged<T>(f: impl std::future::Future<Output = T>) -> (T, String) {
    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = {
        let _guard = tracing::subscriber::set_default(subscriber);
        f.await
    };
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

/// The first fetch of a fresh store has no refresh token: the fallback logs in, and the log says
/// what is true (no warning, no "permanent failure"). Without a fallback the error says what to do.
#[tokio::test(flavor = "current_thread")]
async fn the_first_fetch_without_a_refresh_token_logs_in_with_the_fallback_quietly() {
    let (base, _) = serve().await;
    let fallback =
        shiftkey_auth::testing::ScriptedStrategy::new(Duration::from_secs(3600), Duration::ZERO);
    let strategy = OAuthRefresh::new(client(&base, "string")).with_fallback(fallback.clone());
    let (token, log) = logged(strategy.acquire(None)).await;
    assert_eq!(token.unwrap().access_token.expose(), "tok-1");
    assert_eq!(fallback.calls(), 1);
    assert!(log.contains("no refresh token yet"), "{log}");
    assert!(!log.contains("WARN") && !log.contains("permanent"), "{log}");
    let e = OAuthRefresh::new(client(&base, "string"))
        .acquire(None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            AuthError::Permanent {
                kind: PermanentKind::NoRefreshToken,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("logs in once first"), "{e}");
}
