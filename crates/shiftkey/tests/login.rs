//! `shiftkey token login` against a real OAuth server (oidc-provider): the device grant and the
//! browser with PKCE seed a `refresh_token` token, which then renews unattended.
//!
//! The person's part (sign in, consent) is played through the test server's own routes, which
//! end an interaction exactly as its pages would; everything shiftkey sends is the real protocol.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::path::{Path, PathBuf};

use common::{Daemon, KEY, shiftkey, temp_dir, text};
use shiftkey_tests::oidc::OidcServer;

fn write_config(dir: &Path, oidc: &OidcServer, extra: &str) -> PathBuf {
    let issuer = oidc.issuer().as_str().trim_end_matches('/');
    let cfg = dir.join("shiftkey.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\ndir = \"{dir}/store\"\nkey = {{ env = \"SK_KEY\" }}\n\
             [tokens.op]\nkind = \"refresh_token\"\nissuer = \"{issuer}\"\n\
             token_url = \"{issuer}/token\"\nclient_id = \"login-app\"\nclient_auth = \"none\"\n\
             scopes = [\"openid\", \"offline_access\", \"api\"]\n{extra}\
             [broker]\nsocket = \"{dir}/run/broker.sock\"\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    cfg
}

/// The device code in the login's instructions ("... enter the code ABCD-EFGH.").
fn user_code(line: &str) -> String {
    let after = line.split("enter the code ").nth(1).unwrap();
    after
        .trim_end_matches(['.', ')'])
        .split(|c: char| c.is_whitespace() || c == ')' || c == '.')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_login_seeds_a_refresh_token_that_then_renews_unattended() {
    let oidc = OidcServer::start(60);
    let http = reqwest::Client::new();
    let dir = temp_dir("login-device");
    let cfg = write_config(&dir, &oidc, "");
    let c = cfg.to_str().unwrap();
    let env = [("SK_KEY", KEY)];

    // Before any login: no token, and the error says what a person must run.
    let out = shiftkey(&["token", "get", "op", "-c", c], &env);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("shiftkey token login op"),
        "{}",
        text(&out)
    );

    // A refused login stores nothing and says why.
    let mut refused = Daemon::spawn(&["token", "login", "op", "-c", c], &env);
    let line = refused.wait_for("enter the code").await;
    oidc.decide_device(&http, &user_code(&line), false).await;
    let (status, log) = refused.wait_exit().await;
    assert!(!status.success(), "{log}");
    assert!(log.contains("access_denied"), "{log}");
    assert!(!dir.join("store/op.token").exists(), "nothing stored");

    // The device grant: the person approves; the token is stored, never shown.
    let mut login = Daemon::spawn(&["token", "login", "op", "-c", c], &env);
    let line = login.wait_for("enter the code").await;
    assert!(
        line.contains(oidc.issuer().as_str().trim_end_matches('/')),
        "{line}"
    );
    oidc.decide_device(&http, &user_code(&line), true).await;
    let (status, log) = login.wait_exit().await;
    assert!(status.success(), "{log}");
    assert_eq!(
        oidc.successes("urn:ietf:params:oauth:grant-type:device_code", 1)
            .await,
        1
    );

    // From the store: an access token the server considers active, and no secret on screen.
    let out = shiftkey(&["token", "get", "op", "-c", c], &env);
    assert!(out.status.success(), "{}", text(&out));
    let access = String::from_utf8(out.stdout.clone())
        .unwrap()
        .trim()
        .to_owned();
    assert!(oidc.is_active(&http, &access).await);
    assert!(!log.contains(&access), "the login never prints the token");

    // Unattended from here: a refresh uses the stored refresh token (rotated by the server).
    let out = shiftkey(&["token", "refresh", "op", "-c", c], &env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("generation 1 → 2"), "{}", text(&out));
    assert_eq!(oidc.successes("refresh_token", 1).await, 1);
    let out = shiftkey(&["token", "get", "op", "-c", c], &env);
    let renewed = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_ne!(renewed, access);
    assert!(oidc.is_active(&http, &renewed).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_login_with_pkce_seeds_the_token_when_asked_for() {
    let oidc = OidcServer::start(60);
    let http = reqwest::Client::new();
    let dir = temp_dir("login-browser");
    let cfg = write_config(&dir, &oidc, "");
    let c = cfg.to_str().unwrap();
    let env = [("SK_KEY", KEY)];

    let mut login = Daemon::spawn(
        &["token", "login", "op", "-c", c, "--flow", "browser"],
        &env,
    );
    login.wait_for("open this address in a browser").await;
    let issuer = oidc.issuer().as_str().trim_end_matches('/').to_owned();
    let line = login.wait_for(&format!("{issuer}/")).await;
    let url = line.trim();
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    assert!(
        url.contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A"),
        "{url}"
    );
    assert!(oidc.browse_login(url).await.is_success());
    let (status, log) = login.wait_exit().await;
    assert!(status.success(), "{log}");
    assert_eq!(oidc.successes("authorization_code", 1).await, 1);

    let out = shiftkey(&["token", "get", "op", "-c", c], &env);
    assert!(out.status.success(), "{}", text(&out));
    let access = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(oidc.is_active(&http, &access).await);
}

#[test]
fn login_is_refused_for_other_kinds_and_a_public_client_for_them() {
    let dir = temp_dir("login-kinds");
    let cfg = dir.join("shiftkey.toml");
    let c = cfg.to_str().unwrap();
    // A client_credentials token, authenticating as `auth` says.
    let write = |auth: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[store]\ndir = \"{dir}/store\"\nkey = {{ env = \"SK_KEY\" }}\n\
                 [tokens.svc]\nkind = \"client_credentials\"\ntoken_url = \"http://127.0.0.1:9/token\"\n\
                 client_id = \"svc\"\n{auth}\n",
                dir = dir.display()
            ),
        )
        .unwrap();
    };
    write("client_secret = { env = \"SVC\" }");
    let out = shiftkey(
        &["token", "login", "svc", "-c", c],
        &[("SK_KEY", KEY), ("SVC", "x")],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("refresh_token"), "{}", text(&out));

    write("client_auth = \"none\"");
    let out = shiftkey(&["config", "check", "-c", c], &[("SK_KEY", KEY)]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("tokens.svc.client_auth"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_signs_with_the_configured_algorithm() {
    let oidc = OidcServer::start(60);
    let dir = temp_dir("jwt-algs");
    let token_url = oidc.token_url();
    let section = |name: &str, client: &str, alg: &str, key: &Path| {
        format!(
            "[tokens.{name}]\nkind = \"client_credentials\"\ntoken_url = \"{token_url}\"\n\
             client_id = \"{client}\"\nclient_auth = \"private_key_jwt\"\nsigning_alg = \"{alg}\"\n\
             private_key = {{ file = \"{}\" }}\n",
            key.display()
        )
    };
    let rsa = oidc.rsa_key_path();
    let ec = oidc.jwt_key_path().to_owned();
    let env = [("SK_KEY", KEY)];
    // One config per token (a command about one token builds only that one, but each case
    // stands alone this way).
    let get = |name: &str, client: &str, alg: &str, key: &Path| {
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[store]\ndir = \"{dir}/store\"\nkey = {{ env = \"SK_KEY\" }}\n{}",
                section(name, client, alg, key),
                dir = dir.display()
            ),
        )
        .unwrap();
        shiftkey(&["token", "get", name, "-c", cfg.to_str().unwrap()], &env)
    };
    for (name, client, alg, key) in [
        ("rs", "svc-jwt-rs256", "RS256", &rsa),
        ("ps", "svc-jwt-ps256", "PS256", &rsa),
        ("es", "svc-jwt", "ES256", &ec),
    ] {
        let out = get(name, client, alg, key);
        assert!(out.status.success(), "{name}: {}", text(&out));
    }
    assert_eq!(oidc.successes("client_credentials", 3).await, 3);
    // The server's client wants PS256: an RS256 assertion from the same key is refused.
    let out = get("wrong_alg", "svc-jwt-ps256", "RS256", &rsa);
    assert!(!out.status.success());
    assert!(text(&out).contains("invalid_client"), "{}", text(&out));
    // An RSA key cannot sign ES256: refused before any request, naming the field.
    let out = get("wrong_key", "svc-jwt", "ES256", &rsa);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("tokens.wrong_key.private_key"),
        "{}",
        text(&out)
    );

    // A command about one token reads only that token's secrets: a broken neighbour (its key
    // file missing) does not stop it.
    let cfg = dir.join("two.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\ndir = \"{dir}/store\"\nkey = {{ env = \"SK_KEY\" }}\n{}{}",
            section("es", "svc-jwt", "ES256", &ec),
            section("broken", "svc-jwt", "ES256", &dir.join("missing.pem")),
            dir = dir.display()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let out = shiftkey(&["token", "get", "es", "-c", c], &env);
    assert!(out.status.success(), "{}", text(&out));
    let out = shiftkey(&["token", "get", "broken", "-c", c], &env);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("tokens.broken.private_key"),
        "{}",
        text(&out)
    );
}
