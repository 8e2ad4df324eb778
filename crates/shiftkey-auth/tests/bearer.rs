//! The bearer login strategy against a small login endpoint on loopback.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use base64::Engine as _;
use shiftkey_auth::strategies::{BearerLogin, BearerLoginConfig, BodyFormat};
use shiftkey_auth::{AuthError, AuthStrategy, LifetimeSource, PermanentKind, TransientKind};

async fn json_login(body: axum::Json<HashMap<String, String>>) -> impl IntoResponse {
    if body.get("username").map(String::as_str) == Some("svc")
        && body.get("password").map(String::as_str) == Some("pa55")
    {
        (
            StatusCode::OK,
            r#"{"data":{"token":"tok-json","ttl":"120"}}"#,
        )
            .into_response()
    } else {
        (StatusCode::UNAUTHORIZED, "bad credentials").into_response()
    }
}

async fn form_login(body: axum::Form<HashMap<String, String>>) -> impl IntoResponse {
    if body.get("api_key").map(String::as_str) == Some("k3y") {
        (
            StatusCode::OK,
            r#"{"access_token":"tok-form","expires_in":90}"#,
        )
            .into_response()
    } else {
        (StatusCode::FORBIDDEN, "").into_response()
    }
}

async fn jwt_login() -> impl IntoResponse {
    let payload =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"iat":1000,"exp":1300}"#);
    (
        StatusCode::OK,
        format!(r#"{{"access_token":"e30.{payload}.sig"}}"#),
    )
}

async fn busy() -> impl IntoResponse {
    let mut h = HeaderMap::new();
    h.insert("retry-after", "30".parse().unwrap());
    (StatusCode::TOO_MANY_REQUESTS, h, "slow down")
}

async fn broken() -> impl IntoResponse {
    (StatusCode::OK, "<html>maintenance</html>")
}

async fn no_token() -> impl IntoResponse {
    (StatusCode::OK, r#"{"data":{}}"#)
}

async fn serve() -> url::Url {
    let app = Router::new()
        .route("/json", post(json_login))
        .route("/form", post(form_login))
        .route("/jwt", post(jwt_login))
        .route("/busy", post(busy))
        .route("/broken", post(broken))
        .route("/empty", post(no_token));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/").parse().unwrap()
}

fn creds(pairs: &[(&str, &str)]) -> Vec<(String, shiftkey_auth::Secret)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).into()))
        .collect()
}

fn strategy(
    base: &url::Url,
    path: &str,
    fields: &[(&str, &str)],
    f: impl FnOnce(&mut BearerLoginConfig),
) -> BearerLogin {
    let mut cfg = BearerLoginConfig::new(base.join(path).unwrap(), creds(fields));
    f(&mut cfg);
    BearerLogin::new(reqwest::Client::new(), cfg).unwrap()
}

#[tokio::test]
async fn reads_token_and_lifetime_from_configured_fields() {
    let base = serve().await;
    let s = strategy(
        &base,
        "json",
        &[("username", "svc"), ("password", "pa55")],
        |c| {
            c.token_pointer = "/data/token".into();
            c.lifetime_pointer = Some("/data/ttl".into());
        },
    );
    let t = s.acquire(None).await.unwrap();
    assert_eq!(t.access_token.expose(), "tok-json");
    assert_eq!(t.lifetime, Duration::from_secs(120));
    assert_eq!(t.lifetime_source, LifetimeSource::ExpiresIn);

    let s = strategy(&base, "form", &[("api_key", "k3y")], |c| {
        c.format = BodyFormat::Form
    });
    let t = s.acquire(None).await.unwrap();
    assert_eq!(
        (t.access_token.expose(), t.lifetime),
        ("tok-form", Duration::from_secs(90))
    );
}

#[tokio::test]
async fn falls_back_to_the_jwt_exp_then_the_default() {
    let base = serve().await;
    let t = strategy(&base, "jwt", &[], |_| {})
        .acquire(None)
        .await
        .unwrap();
    assert_eq!(
        (t.lifetime, t.lifetime_source),
        (Duration::from_secs(300), LifetimeSource::JwtClaims)
    );
    let t = strategy(&base, "form", &[("api_key", "k3y")], |c| {
        c.format = BodyFormat::Form;
        c.lifetime_pointer = None;
        c.default_lifetime = Duration::from_secs(42);
    })
    .acquire(None)
    .await
    .unwrap();
    assert_eq!(
        (t.lifetime, t.lifetime_source),
        (Duration::from_secs(42), LifetimeSource::Default)
    );
}

#[tokio::test]
async fn classifies_failures_and_never_echoes_the_password() {
    let base = serve().await;
    let err = strategy(
        &base,
        "json",
        &[("username", "svc"), ("password", "WRONG-pa55")],
        |_| {},
    )
    .acquire(None)
    .await
    .unwrap_err();
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
    assert!(!format!("{err} {err:?}").contains("WRONG-pa55"));

    let err = strategy(&base, "busy", &[], |_| {})
        .acquire(None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::Transient {
                kind: TransientKind::RateLimited,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));

    let err = strategy(&base, "broken", &[], |_| {})
        .acquire(None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::Transient {
                kind: TransientKind::InvalidResponse,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("not JSON"), "{err}");

    let err = strategy(&base, "empty", &[], |c| {
        c.token_pointer = "/data/token".into()
    })
    .acquire(None)
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("/data/token"),
        "names the missing field: {err}"
    );

    // Nothing listens on port 9 of loopback: a network error, transient.
    let err = strategy(&"http://127.0.0.1:9/".parse().unwrap(), "x", &[], |_| {})
        .acquire(None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::Transient {
                kind: TransientKind::Network,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_bad_json_pointer_is_a_config_error() {
    let mut cfg = BearerLoginConfig::new("http://127.0.0.1/login".parse().unwrap(), vec![]);
    cfg.token_pointer = "data.token".into();
    let err = BearerLogin::new(reqwest::Client::new(), cfg).unwrap_err();
    assert_eq!(err.field, "token_pointer");
}
