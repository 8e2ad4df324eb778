//! The real binary, run as a user would.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_shiftkey");

/// The demo's report and its log are written for people: no Rust debug text in either.
#[test]
fn the_demo_report_and_log_read_as_words() {
    let out = Command::new(BIN)
        .args(["demo", "--hours", "2", "--speed", "2880"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("learned limits"), "{stdout}");
    common::assert_reads_as_words(&stdout, "the demo report");
    common::assert_reads_as_words(&stderr, "the demo's log");
}

#[test]
fn demo_reports_zero_surfaced_401s_and_every_cycle_succeeded() {
    let out = Command::new(BIN)
        .args([
            "--verbose",
            "demo",
            "--hours",
            "6",
            "--speed",
            "2880",
            "--json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["unauthorized"]["surfaced"], 0, "{report:#}");
    assert_eq!(report["cycles"]["failed"], 0, "{report:#}");
    let run = report["cycles"]["run"].as_u64().unwrap();
    assert!(run >= 20, "a cycle every 15 simulated minutes: {run}");
    assert_eq!(report["cycles"]["succeeded"].as_u64(), Some(run));
    assert_eq!(report["process_revisions_in_sink"], 20);
    assert_eq!(report["teamcenter_windows"]["leaked"], 0, "{report:#}");
    assert_eq!(
        report["teamcenter_windows"]["stale_lines_sent"], 0,
        "{report:#}"
    );
    assert!(report["teamcenter_windows"]["opened"].as_u64().unwrap() >= 20);
    assert_eq!(
        report["server_kills"]["restart"], 1,
        "the scripted server restart happened and was survived: {report:#}"
    );
    // The verbose log of the whole run holds no secret.
    assert!(stderr.contains("Teamcenter login"), "the log was captured");
    assert!(
        !stderr.contains("mfg_sync_pw"),
        "the password leaked into the log"
    );
    let leaked: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("JSESSIONID="))
        .collect();
    assert!(
        leaked.is_empty(),
        "a session cookie leaked into the log: {leaked:?}"
    );
}

#[test]
fn bad_arguments_exit_non_zero_with_a_message_naming_them() {
    let check = |args: &[&str], says: &str| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    };
    check(&["demo", "--hours=-3"], "--hours");
    check(&["demo", "--speed", "0"], "--speed");
    check(&["demo", "--bogus"], "--bogus");
    check(&["frobnicate"], "frobnicate");
    check(&["token", "frob"], "frob");
    check(&["store", "init", "--bogus"], "--bogus");
    check(&["doctor", "--max-hours", "0"], "--max-hours");
    check(
        &["broker", "-c", "/nonexistent/shiftkey.toml"],
        "/nonexistent/shiftkey.toml",
    );
    check(
        &["token", "status", "-c", "/nonexistent/shiftkey.toml"],
        "does not exist",
    );
    check(
        &["store", "check", "-c", "/nonexistent/shiftkey.toml"],
        "does not exist",
    );
    // Bad arguments exit 2 everywhere, numbers out of range included.
    for args in [
        &["token", "frob"][..],
        &["demo", "--hours", "0"],
        &["demo", "--hours=-3"],
        &["demo", "--speed", "0"],
        &["demo", "--hours", "NaN"],
        &["doctor", "--max-hours", "0"],
        &["sim", "--time-scale", "0.5"],
    ] {
        let usage = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(
            usage.status.code(),
            Some(2),
            "{args:?}: bad arguments exit 2"
        );
    }
    let config = Command::new(BIN)
        .args(["broker", "-c", "/nonexistent/shiftkey.toml"])
        .output()
        .unwrap();
    assert_eq!(config.status.code(), Some(3), "a missing config exits 3");
    check(
        &["sim", "--config", "/nonexistent/scenario.toml"],
        "/nonexistent/scenario.toml",
    );
}

fn temp(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("shiftkey-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

fn shiftkey(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn the_example_config_loads_and_bad_configs_name_the_key() {
    let example = shiftkey(&["config", "example"], &[]);
    assert!(example.status.success());
    let path = temp("example.toml", &String::from_utf8(example.stdout).unwrap());
    let ok = shiftkey(
        &["config", "check", "-c", path.to_str().unwrap()],
        &[
            ("TC_PASSWORD", "s3cret-value"),
            (
                "SHIFTKEY_STORE_KEY",
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            ),
            ("MES_CLIENT_SECRET", "s3cret-value"),
        ],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&ok.stdout).contains("s3cret-value"),
        "a secret is never printed"
    );

    let check = |name: &str, text: &str, env: &[(&str, &str)], says: &str| {
        let p = temp(name, text);
        let out = shiftkey(&["config", "check", "-c", p.to_str().unwrap()], env);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{name}: a configuration error exits 3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{name}: {stderr}");
        assert!(
            !stderr.contains("hunter2"),
            "{name}: the secret was echoed: {stderr}"
        );
    };
    let base = "[teamcenter]\nurl = \"http://127.0.0.1:9\"\nuser = \"u\"\n";
    check(
        "inline.toml",
        &format!("{base}password = \"hunter2\"\n[sink]\nurl = \"sqlite::memory:\"\n"),
        &[],
        "secrets are never written in the config file",
    );
    check(
        "noenv.toml",
        &format!(
            "{base}password = {{ env = \"SHIFTKEY_TEST_UNSET_VAR\" }}\n[sink]\nurl = \"sqlite::memory:\"\n"
        ),
        &[],
        "SHIFTKEY_TEST_UNSET_VAR",
    );
    check(
        "unknown.toml",
        &format!(
            "{base}password = {{ env = \"X\" }}\ncolour = \"blue\"\n[sink]\nurl = \"sqlite::memory:\"\n"
        ),
        &[("X", "x")],
        "colour",
    );
    check(
        "pgpass.toml",
        &format!(
            "{base}password = {{ env = \"X\" }}\n[sink]\nurl = \"postgres://app:hunter2@db/x\"\n"
        ),
        &[("X", "x")],
        "sink.url_env",
    );
    // The audit's spellings: a password in the query (libpq and sqlx read both keys).
    for (name, url) in [
        ("pgquery.toml", "postgres://app@db/shop?password=hunter2"),
        (
            "pgsslquery.toml",
            "postgres://app@db/shop?sslmode=verify-full&sslpassword=hunter2",
        ),
    ] {
        check(
            name,
            &format!("{base}password = {{ env = \"X\" }}\n[sink]\nurl = \"{url}\"\n"),
            &[("X", "x")],
            "`sink.url` contains a password",
        );
    }
    check(
        "zero.toml",
        &format!(
            "{base}password = {{ env = \"X\" }}\n[sink]\nurl = \"sqlite::memory:\"\n[schedule]\ninterval_minutes = 0\n"
        ),
        &[("X", "x")],
        "interval_minutes",
    );
    // The PostgreSQL store and the leader lease: each key named, no password in the file.
    let tc = format!("{base}password = {{ env = \"X\" }}\n[sink]\nurl = \"sqlite::memory:\"\n");
    let token = "[tokens.gw]\nkind = \"client_credentials\"\ntoken_url = \"http://127.0.0.1:9/t\"\nclient_id = \"c\"\nclient_secret = { env = \"X\" }\n";
    check(
        "pgstore-nourl.toml",
        &format!("{tc}[store]\nbackend = \"postgres\"\nkey = {{ env = \"X\" }}\n{token}"),
        &[("X", "x")],
        "`store.url` and `store.url_env`",
    );
    check(
        "pgstore-dir.toml",
        &format!(
            "{tc}[store]\nbackend = \"postgres\"\ndir = \"/tmp/x\"\nurl_env = \"U\"\nkey = {{ env = \"X\" }}\n{token}"
        ),
        &[("X", "x")],
        "`store.dir` is for",
    );
    check(
        "filestore-nodir.toml",
        &format!("{tc}[store]\nkey = {{ env = \"X\" }}\n{token}"),
        &[("X", "x")],
        "`store.dir` is required",
    );
    check(
        "lease-pass.toml",
        &format!("{tc}[lease]\nurl = \"postgres://app:hunter2@db/x\"\n"),
        &[("X", "x")],
        "lease.url_env",
    );
    check(
        "lease-notc.toml",
        &format!(
            "[lease]\nurl_env = \"U\"\n[store]\ndir = \"/tmp/x\"\nkey = {{ env = \"X\" }}\n{token}"
        ),
        &[("X", "x")],
        "needs a `[teamcenter]` section",
    );
    check(
        "gateway-notoken.toml",
        "[teamcenter]\nurl = \"http://127.0.0.1:9\"\nmode = \"gateway\"\n[sink]\nurl = \"sqlite::memory:\"\n",
        &[],
        "needs `teamcenter.token`",
    );
    check(
        "gateway-unknown.toml",
        "[teamcenter]\nurl = \"http://127.0.0.1:9\"\nmode = \"gateway\"\ntoken = \"nope\"\n[sink]\nurl = \"sqlite::memory:\"\n",
        &[],
        "no `[tokens.nope]`",
    );
    check(
        "session-nopassword.toml",
        "[teamcenter]\nurl = \"http://127.0.0.1:9\"\nuser = \"u\"\n[sink]\nurl = \"sqlite::memory:\"\n",
        &[],
        "`teamcenter.password` are required in session mode",
    );
    check("empty.toml", "", &[], "nothing to do");
    // A secret file lives in a folder only its owner may write (not /tmp itself).
    let secrets = std::env::temp_dir().join(format!("shiftkey-cli-{}-secrets", std::process::id()));
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::set_permissions(
        &secrets,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let secret_file = secrets.join("tc-password");
    std::fs::write(&secret_file, "hunter2\n").unwrap();
    let by_path = |path: &std::path::Path| {
        format!(
            "{base}password = {{ file = \"{}\" }}\n[sink]\nurl = \"sqlite::memory:\"\n",
            path.display()
        )
    };
    // In a folder anyone may write to, another user could swap it: refused.
    let in_tmp = temp("tc-password-in-tmp", "hunter2\n");
    std::fs::set_permissions(&in_tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    check(
        "tmpfile.toml",
        &by_path(&in_tmp),
        &[],
        "may be written by other users",
    );
    // A link is not followed, even to a good file.
    let link = secrets.join("link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&secret_file, &link).unwrap();
    check("linkfile.toml", &by_path(&link), &[], "is a symbolic link");
    // Another user's file (where this test may give one away: as root).
    if rustix_is_root() {
        let theirs = secrets.join("theirs");
        std::fs::write(&theirs, "hunter2\n").unwrap();
        std::fs::set_permissions(&theirs, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        std::os::unix::fs::chown(&theirs, Some(65_534), Some(65_534)).unwrap();
        check(
            "theirfile.toml",
            &by_path(&theirs),
            &[],
            "belongs to uid 65534",
        );
    }
    std::fs::set_permissions(
        &secret_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let by_file = format!(
        "{base}password = {{ file = \"{}\" }}\n[sink]\nurl = \"sqlite::memory:\"\n",
        secret_file.display()
    );
    check("openfile.toml", &by_file, &[], "chmod 600");
    std::fs::set_permissions(
        &secret_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let p = temp("privatefile.toml", &by_file);
    let out = shiftkey(&["config", "check", "-c", p.to_str().unwrap()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let remote = "[teamcenter]\nurl = \"http://tc.plant.example/\"\nuser = \"u\"\npassword = { env = \"X\" }\n[sink]\nurl = \"sqlite::memory:\"\n";
    check(
        "cleartext.toml",
        remote,
        &[("X", "x")],
        "allow_insecure_http",
    );
    let lab = temp("lab.toml", &format!("allow_insecure_http = true\n{remote}"));
    let out = shiftkey(
        &["config", "check", "-c", lab.to_str().unwrap()],
        &[("X", "x")],
    );
    assert!(
        out.status.success(),
        "the lab switch allows it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A grant that can always be obtained again needs no store; a refresh-token chain does.
    let nostore = temp(
        "nostore.toml",
        "[tokens.mes]\nkind = \"client_credentials\"\ntoken_url = \"http://127.0.0.1:9/t\"\nclient_id = \"c\"\nclient_secret = { env = \"X\" }\n",
    );
    let out = shiftkey(
        &["config", "check", "-c", nostore.to_str().unwrap()],
        &[("X", "x")],
    );
    assert!(
        out.status.success(),
        "client credentials without a store: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    check(
        "nostore-chain.toml",
        "[tokens.mes]\nkind = \"refresh_token\"\ntoken_url = \"http://127.0.0.1:9/t\"\nclient_id = \"c\"\nclient_auth = \"none\"\n",
        &[],
        "`tokens.mes` (kind = \"refresh_token\") needs a `[store]` section",
    );
    check(
        "nosecret.toml",
        "[store]\ndir = \"/tmp/x\"\nkey = { env = \"K\" }\n[tokens.mes]\nkind = \"client_credentials\"\ntoken_url = \"http://127.0.0.1:9/t\"\nclient_id = \"c\"\n",
        &[],
        "`tokens.mes.client_secret` is missing",
    );
    check(
        "badkind.toml",
        "[store]\ndir = \"/tmp/x\"\nkey = { env = \"K\" }\n[tokens.mes]\nkind = \"magic\"\ntoken_url = \"http://127.0.0.1:9/t\"\nclient_id = \"c\"\n",
        &[],
        "magic",
    );
    check(
        "baddate.toml",
        "[store]\ndir = \"/tmp/x\"\nkey = { env = \"K\" }\n[tokens.mes]\nkind = \"client_credentials\"\ntoken_url = \"http://127.0.0.1:9/t\"\nclient_id = \"c\"\nclient_secret = { env = \"K\" }\nsecret_expires = \"next tuesday\"\n",
        &[("K", "k")],
        "tokens.mes.secret_expires",
    );
    check(
        "publicbroker.toml",
        &format!(
            "{base}password = {{ env = \"X\" }}\n[broker]\nhttp = \"0.0.0.0:8732\"\n[broker.clients.a]\nsecret = {{ env = \"X\" }}\ntokens = []\n"
        ),
        &[("X", "x")],
        "not a loopback address",
    );
    let proxy = |section: &str| {
        format!(
            "[store]\ndir = \"/tmp/x\"\nkey = {{ env = \"K\" }}\n[tokens.mes]\nkind = \"client_credentials\"\ntoken_url = \"http://127.0.0.1:9/t\"\nclient_id = \"c\"\nclient_secret = {{ env = \"K\" }}\n[proxy.mes]\n{section}"
        )
    };
    for (name, section, named) in [
        (
            "proxypublic.toml",
            "listen = \"0.0.0.0:8181\"\nupstream = \"https://mes.example.com\"\ntoken = \"mes\"\n",
            "`proxy.mes.listen`: 0.0.0.0:8181 is not a loopback address",
        ),
        (
            "proxyboth.toml",
            "listen = \"127.0.0.1:8181\"\nupstream = \"https://mes.example.com\"\ntoken = \"mes\"\nteamcenter = true\n",
            "set exactly one of `token`",
        ),
        (
            "proxynotoken.toml",
            "listen = \"127.0.0.1:8181\"\nupstream = \"https://mes.example.com\"\ntoken = \"erp\"\n",
            "`proxy.mes.token`: there is no `[tokens.erp]` section",
        ),
        (
            "proxyclear.toml",
            "listen = \"127.0.0.1:8181\"\nupstream = \"http://mes.example.com\"\ntoken = \"mes\"\n",
            "`proxy.mes.upstream`",
        ),
        (
            "proxynotc.toml",
            "socket = \"/tmp/x/p.sock\"\nupstream = \"https://tc.example.com\"\nteamcenter = true\n",
            "needs a `[teamcenter]` section in session mode",
        ),
        (
            "proxynoworker.toml",
            "listen = \"127.0.0.1:8181\"\nupstream = \"https://mes.example.com\"\ntoken = \"mes\"\nworkers = 0\n",
            "`proxy.mes.workers` is between 1 and 256",
        ),
        (
            "proxysocketworkers.toml",
            "socket = \"/tmp/x/p.sock\"\nupstream = \"https://mes.example.com\"\ntoken = \"mes\"\nworkers = 2\n",
            "`proxy.mes.workers` applies to a `listen` address",
        ),
        (
            "proxynolisten.toml",
            "upstream = \"https://mes.example.com\"\ntoken = \"mes\"\n",
            "set exactly one of `listen`",
        ),
        (
            "proxynobody.toml",
            "socket = \"/tmp/x/p.sock\"\nupstream = \"https://mes.example.com\"\ntoken = \"mes\"\nusers = []\n",
            "`proxy.mes.users` is empty: the proxy would serve nobody",
        ),
        (
            "proxynouser.toml",
            "socket = \"/tmp/x/p.sock\"\nupstream = \"https://mes.example.com\"\ntoken = \"mes\"\nusers = [\"no-such-user-here\"]\n",
            "`proxy.mes.users`: there is no local user named `no-such-user-here`",
        ),
        (
            "proxylogins.toml",
            "socket = \"/tmp/x/p.sock\"\nupstream = \"https://mes.example.com\"\ntoken = \"mes\"\n[proxy.mes.logins]\na = { env = \"K\" }\n",
            "`proxy.mes.logins`: local logins are for a Teamcenter proxy",
        ),
    ] {
        check(name, &proxy(section), &[("K", "k")], named);
    }
    // A Teamcenter proxy goes where the session lives, and its scripts' secrets are their own.
    let tc_proxy = |section: &str| {
        format!(
            "{base}password = {{ env = \"X\" }}\n[sink]\nurl = \"sqlite::memory:\"\n[proxy.tc]\nsocket = \"/tmp/x/tc.sock\"\nteamcenter = true\n{section}"
        )
    };
    check(
        "proxytcelsewhere.toml",
        &tc_proxy("upstream = \"http://127.0.0.2:9\"\n"),
        &[("X", "x")],
        "`proxy.tc.upstream`: a Teamcenter proxy goes to `teamcenter.url` (http://127.0.0.1:9), not http://127.0.0.2:9",
    );
    check(
        "proxytcshort.toml",
        &tc_proxy("[proxy.tc.logins]\nprinter = { env = \"P\" }\n"),
        &[("X", "x"), ("P", "short")],
        "`proxy.tc.logins.printer`: a local login secret has at least 16 characters",
    );
    let broker = |client: &str| {
        format!(
            "[store]\ndir = \"/tmp/x\"\nkey = {{ env = \"K\" }}\n[tokens.mes]\nkind = \"client_credentials\"\ntoken_url = \"http://127.0.0.1:9/t\"\nclient_id = \"c\"\nclient_secret = {{ env = \"K\" }}\n[broker]\nhttp = \"127.0.0.1:8732\"\n[broker.clients.printer]\n{client}"
        )
    };
    check(
        "shortsecret.toml",
        &broker("secret = { env = \"S\" }\ntokens = [\"mes\"]\n"),
        &[("K", "k"), ("S", "hunter2-is-short")],
        "`broker.clients.printer.secret` is 16 bytes",
    );
    check(
        "unscoped.toml",
        &broker("secret = { env = \"S\" }\ntokens = [\"erp\"]\n"),
        &[("K", "k"), ("S", "x")],
        "`broker.clients.printer.tokens` names `erp`",
    );
    // Other hosts: TLS only, with its certificate and key; clear text stays on loopback.
    let client = "secret = { env = \"S\" }\ntokens = [\"mes\"]\n";
    let s32 = [("K", "k"), ("S", "a-printer-secret-of-32-bytes-0123")];
    check(
        "remotehttp.toml",
        &broker(client).replace("127.0.0.1:8732", "0.0.0.0:8732"),
        &s32,
        "serve other hosts with `broker.https` (TLS)",
    );
    check(
        "httpsnokey.toml",
        &broker(client).replace(
            "[broker.clients.printer]",
            "https = \"0.0.0.0:8733\"\ntls_cert = \"/etc/shiftkey/broker.pem\"\n[broker.clients.printer]",
        ),
        &s32,
        "`broker.https` needs `broker.tls_cert` (the certificate chain, PEM) and `broker.tls_key`",
    );
    check(
        "tlsnohttps.toml",
        &broker(client).replace(
            "[broker.clients.printer]",
            "tls_cert = \"/etc/shiftkey/broker.pem\"\n[broker.clients.printer]",
        ),
        &s32,
        "are for `broker.https`, which is not set",
    );
    let read = |extra: &str| format!("{base}password = {{ env = \"X\" }}\n{extra}");
    check(
        "badfield.toml",
        &read("[teamcenter.read.properties]\nsequence_no = \"bl_sequence_no\"\n"),
        &[("X", "x")],
        "`teamcenter.read.properties.sequence_no` is not a field; the fields are plan_id",
    );
    check(
        "badwindow.toml",
        &read("[teamcenter.read]\nwindow = \"tree\"\n"),
        &[("X", "x")],
        "`teamcenter.read.window`: `tree` is neither",
    );
    check(
        "badunit.toml",
        &read("[teamcenter.read]\nallocated_time_unit = \"ms\"\n"),
        &[("X", "x")],
        "teamcenter.read.allocated_time_unit",
    );
    check(
        "badoffset.toml",
        &read("[teamcenter.read]\nutc_offset_minutes = 1440\n"),
        &[("X", "x")],
        "teamcenter.read.utc_offset_minutes",
    );
    check(
        "nokey.toml",
        &read("[teamcenter.feedback]\ncompleted_count = \"xx4_count\"\n"),
        &[("X", "x")],
        "key_property",
    );
    check(
        "emptykey.toml",
        &read("[teamcenter.feedback]\nkey_property = \" \"\n"),
        &[("X", "x")],
        "`teamcenter.feedback.key_property` is empty",
    );
    // Feedback loses nothing: a field without a property, two fields on one property, and
    // the layouts mixed up are refused, each naming what is wrong.
    let fb = "[teamcenter.feedback]\nkey_property = \"k\"\n";
    for (name, section, says) in [
        (
            "fbnoprop.toml",
            format!("{fb}completed_count = \"c\"\nactual_cycle_time = \"t\"\n"),
            "`deviation` has no property",
        ),
        (
            "fbtwice.toml",
            format!("{fb}completed_count = \"c\"\nactual_cycle_time = \"t\"\ndeviation = \"c\"\n"),
            "`completed_count` and `deviation` both name the property `c`",
        ),
        (
            "fbkeytwice.toml",
            format!("{fb}completed_count = \"k\"\nactual_cycle_time = \"t\"\ndeviation = \"d\"\n"),
            "`key_property` and `completed_count` both name the property `k`",
        ),
        (
            "fbjsonkey.toml",
            "[teamcenter.feedback]\nformat = \"json\"\nkey_property = \"k\"\n".to_owned(),
            "`teamcenter.feedback.key_property` is for format = \"properties\"",
        ),
        (
            "fbjsonfield.toml",
            "[teamcenter.feedback]\nformat = \"json\"\nproperty = \"m\"\ndeviation = \"d\"\n"
                .to_owned(),
            "`deviation` names a property of its own",
        ),
        (
            "fbformat.toml",
            "[teamcenter.feedback]\nformat = \"xml\"\nproperty = \"m\"\n".to_owned(),
            "`teamcenter.feedback.format` = \"xml\"",
        ),
    ] {
        check(name, &read(&section), &[("X", "x")], says);
    }
    check(
        "badlisten.toml",
        &format!("{base}password = {{ env = \"X\" }}\n[ops]\nlisten = \"everywhere\"\n"),
        &[("X", "x")],
        "ops.listen",
    );
    let missing = shiftkey(
        &["config", "check", "-c", "/nonexistent/shiftkey.toml"],
        &[],
    );
    assert!(String::from_utf8_lossy(&missing.stderr).contains("shiftkey config example"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_once_syncs_the_emulator_into_sqlite() {
    let sim = shiftkey_sim::Sim::start(
        shiftkey_sim::SimConfig::default(),
        std::sync::Arc::new(shiftkey_auth::TokioClock::new()),
    )
    .await
    .unwrap();
    let db = std::env::temp_dir().join(format!("shiftkey-cli-sync-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let cfg = temp(
        "sync.toml",
        &format!(
            "[teamcenter]\nurl = \"{}\"\nuser = \"mfg_sync\"\npassword = {{ env = \"TC_PW\" }}\n[sink]\nurl = \"sqlite://{}?mode=rwc\"\n",
            sim.url(),
            db.display()
        ),
    );
    let run = move || {
        shiftkey(
            &["sync", "--once", "-c", cfg.to_str().unwrap()],
            &[("TC_PW", "mfg_sync_pw")],
        )
    };
    let first = tokio::task::spawn_blocking(run.clone()).await.unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("inserted 20"),
        "{}",
        String::from_utf8_lossy(&first.stdout)
    );
    let second = tokio::task::spawn_blocking(run.clone()).await.unwrap();
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("inserted 0"),
        "a second run adds nothing: {}",
        String::from_utf8_lossy(&second.stdout)
    );
    // Every run logs out what it logged in: a cron job holds no server process between runs.
    for _ in 0..4 {
        let more = tokio::task::spawn_blocking(run.clone()).await.unwrap();
        assert!(more.status.success());
    }
    let stats = sim.stats();
    assert_eq!(stats.logins, 6, "{stats:?}");
    assert_eq!(stats.killed.get("logout"), Some(&6), "{stats:?}");
    assert_eq!(sim.live_sessions(), 0, "{stats:?}");
    // The emulator refuses `"body": null` (a validating server): no call of ours sent one.
    assert_eq!(
        stats.exceptions.get("InternalServerException"),
        None,
        "{stats:?}"
    );
    let _ = std::fs::remove_file(&db);
}

/// An error is said once: a refused password and a missing saved query each appear once in
/// the final message (their causes used to repeat once per level of the chain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cause_is_printed_once() {
    let sim = shiftkey_sim::Sim::start(
        shiftkey_sim::SimConfig::default(),
        std::sync::Arc::new(shiftkey_auth::TokioClock::new()),
    )
    .await
    .unwrap();
    for (extra, password, cause, code) in [
        (
            "",
            "not-the-password",
            "Teamcenter refused the credentials",
            5,
        ),
        (
            "[teamcenter.read]\nquery_name = \"Nope...\"\n",
            "mfg_sync_pw",
            "no saved query is named `Nope...`",
            1,
        ),
    ] {
        let cfg = temp(
            &format!("once-{code}.toml"),
            &format!(
                "[teamcenter]\nurl = \"{}\"\nuser = \"mfg_sync\"\npassword = {{ env = \"TC_PW\" }}\n{extra}[sink]\nurl = \"sqlite::memory:\"\n",
                sim.url()
            ),
        );
        let out = tokio::task::spawn_blocking(move || {
            shiftkey(
                &["sync", "--once", "-c", cfg.to_str().unwrap()],
                &[("TC_PW", password)],
            )
        })
        .await
        .unwrap();
        assert_eq!(out.status.code(), Some(code));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .find(|l| l.starts_with("shiftkey: "))
            .unwrap_or_else(|| panic!("{stderr}"));
        assert_eq!(last.matches(cause).count(), 1, "{last}");
    }
    assert_eq!(sim.live_sessions(), 0);
    // A sink that cannot open: what was being done, then the database's own words, once each.
    let cfg = temp(
        "once-sink.toml",
        &format!(
            "[teamcenter]\nurl = \"{}\"\nuser = \"mfg_sync\"\npassword = {{ env = \"TC_PW\" }}\n\
             [sink]\nurl = \"sqlite:///nonexistent-shiftkey-dir/x.db\"\n",
            sim.url()
        ),
    );
    let out = tokio::task::spawn_blocking(move || {
        shiftkey(
            &["sync", "--once", "-c", cfg.to_str().unwrap()],
            &[("TC_PW", "mfg_sync_pw")],
        )
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for said in [
        "shop-floor sink: connect to",
        "unable to open database file",
    ] {
        assert_eq!(stderr.matches(said).count(), 1, "{said}: {stderr}");
    }
}

/// `teamcenter.mode = "gateway"`: the OAuth bearer tokens of a `[tokens.NAME]` against
/// `/tc/RestServices`, no session login; the token is kept in the store for the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_once_through_the_oauth_gateway_with_a_named_token() {
    let sim = shiftkey_sim::Sim::start(
        shiftkey_sim::SimConfig::default(),
        std::sync::Arc::new(shiftkey_auth::TokioClock::new()),
    )
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("shiftkey-cli-gw-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = temp(
        "gateway.toml",
        &format!(
            "[teamcenter]\nurl = \"{url}\"\nmode = \"gateway\"\ntoken = \"tc\"\n[sink]\nurl = \"sqlite://{dir}/shop.db?mode=rwc\"\n[store]\ndir = \"{dir}/store\"\nkey = {{ env = \"SK_KEY\" }}\n[tokens.tc]\nkind = \"client_credentials\"\ntoken_url = \"{url}/oauth/token\"\nclient_id = \"shiftkey\"\nclient_secret = {{ env = \"GW_SECRET\" }}\n",
            url = sim.url(),
            dir = dir.display()
        ),
    );
    let run = move || {
        shiftkey(
            &["sync", "--once", "-c", cfg.to_str().unwrap()],
            &[("SK_KEY", common::KEY), ("GW_SECRET", "shiftkey-secret")],
        )
    };
    let first = tokio::task::spawn_blocking(run.clone()).await.unwrap();
    assert!(
        first.status.success() && String::from_utf8_lossy(&first.stdout).contains("inserted 20"),
        "{}{}",
        String::from_utf8_lossy(&first.stdout),
        String::from_utf8_lossy(&first.stderr)
    );
    let second = tokio::task::spawn_blocking(run).await.unwrap();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let stats = sim.stats();
    assert_eq!(stats.logins, 0, "no session login in gateway mode");
    assert_eq!(
        stats.grants.values().sum::<u64>(),
        1,
        "the second run took the stored token: {:?}",
        stats.grants
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_once_follows_the_site_mapping_and_writes_feedback_where_configured() {
    // A German site with BMIDE feedback properties: the defaults cannot work, the mapping can.
    let mut sim_cfg = shiftkey_sim::SimConfig::default();
    sim_cfg.tc.entry_names.insert("Type".into(), "Typ".into());
    sim_cfg
        .tc
        .entry_names
        .insert("Modified After".into(), "Geändert nach".into());
    // The common site pattern: one free-form MES property for all of the feedback.
    sim_cfg
        .tc
        .site_properties
        .insert("MEOPRevision".into(), vec!["xx4_mes".into()]);
    let sim = shiftkey_sim::Sim::start(
        sim_cfg,
        std::sync::Arc::new(shiftkey_auth::TokioClock::new()),
    )
    .await
    .unwrap();
    let db = std::env::temp_dir().join(format!("shiftkey-cli-site-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let head = format!(
        "[teamcenter]\nurl = \"{}\"\nuser = \"mfg_sync\"\npassword = {{ env = \"TC_PW\" }}\n",
        sim.url()
    );
    let sink = format!("[sink]\nurl = \"sqlite://{}?mode=rwc\"\n", db.display());
    let once = |name: &str, text: String| {
        let cfg = temp(name, &text);
        move || {
            shiftkey(
                &["sync", "--once", "-c", cfg.to_str().unwrap()],
                &[("TC_PW", "mfg_sync_pw")],
            )
        }
    };
    let defaults = tokio::task::spawn_blocking(once("site-default.toml", format!("{head}{sink}")))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&defaults.stderr);
    assert!(!defaults.status.success());
    assert!(
        stderr.contains("`Geändert nach`"),
        "the error lists the site's entries: {stderr}"
    );
    let mapped = format!(
        "{head}[teamcenter.read]\ntype_entry = \"Typ\"\nmodified_after_entry = \"Geändert nach\"\n\
         [teamcenter.feedback]\nformat = \"json\"\nproperty = \"xx4_mes\"\n{sink}"
    );
    let first = tokio::task::spawn_blocking(once("site-mapped.toml", mapped.clone()))
        .await
        .unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("inserted 20"));
    let store =
        shiftkey_shopfloor::SqlSink::connect(&format!("sqlite://{}?mode=rwc", db.display()))
            .await
            .unwrap();
    let op = store.all().await.unwrap()[0].operations[0].uid.clone();
    store.record_feedback(&op, 12, None, "").await.unwrap();
    let second = tokio::task::spawn_blocking(once("site-mapped2.toml", mapped))
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("feedback pushed 1"),
        "{}",
        String::from_utf8_lossy(&second.stdout)
    );
    let doc: serde_json::Value = serde_json::from_str(
        &sim.with_data(|d| d.get(&op).unwrap().get("xx4_mes").map(str::to_owned))
            .expect("the document was written"),
    )
    .unwrap();
    assert_eq!(doc["completed_count"], 12, "{doc}");
    assert_eq!(doc["deviation"], "", "{doc}");
    assert!(doc["actual_cycle_time_s"].is_null(), "{doc}");
    assert_eq!(
        doc["key"],
        format!("shiftkey-feedback-{}", doc["row"]),
        "{doc}"
    );
    let _ = std::fs::remove_file(&db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_syncs_and_stops_gracefully_on_sigterm() {
    let sim = shiftkey_sim::Sim::start(
        shiftkey_sim::SimConfig::default(),
        std::sync::Arc::new(shiftkey_auth::TokioClock::new()),
    )
    .await
    .unwrap();
    let db = std::env::temp_dir().join(format!("shiftkey-cli-run-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let cfg = temp(
        "run.toml",
        &format!(
            "[teamcenter]\nurl = \"{}\"\nuser = \"mfg_sync\"\npassword = {{ env = \"TC_PW\" }}\n[sink]\nurl = \"sqlite://{}?mode=rwc\"\n[ops]\nlisten = \"127.0.0.1:0\"\n",
            sim.url(),
            db.display()
        ),
    );
    let mut daemon = common::Daemon::spawn(
        &["run", "-c", cfg.to_str().unwrap()],
        &[("TC_PW", "mfg_sync_pw")],
    );
    // The first cycle runs at once: wait until the status page lists it (real time, a real
    // process; up to 30 s), then ask politely.
    let ops = daemon.address("ops endpoints on ").await;
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = http
            .get(format!("{ops}/status"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if status.contains("<td class=\"ok\">ok</td>") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no finished cycle in 30 s: {status}\n{}",
            daemon.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        sim.live_sessions(),
        1,
        "the daemon holds its session between cycles"
    );
    let (status, stderr) = daemon.terminate().await;
    assert!(status.success(), "a graceful stop exits 0: {stderr}");
    assert!(stderr.contains("stopped after 1 cycles"), "{stderr}");
    // The stop logs the session out: its server process goes back to the pool.
    assert_eq!(sim.live_sessions(), 0, "{:?}", sim.stats());
    assert_eq!(sim.stats().killed.get("logout"), Some(&1));
    let _ = std::fs::remove_file(&db);
}

/// With `--log-json` a service's stderr is JSON lines only (journald, a log shipper), its own
/// events at info by default; `RUST_LOG` picks what is logged, and a bad one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_json_is_pure_json_lines_and_rust_log_filters() {
    let sim = shiftkey_sim::Sim::start(
        shiftkey_sim::SimConfig::default(),
        std::sync::Arc::new(shiftkey_auth::TokioClock::new()),
    )
    .await
    .unwrap();
    let db = std::env::temp_dir().join(format!("shiftkey-cli-json-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let cfg = temp(
        "json.toml",
        &format!(
            "[teamcenter]\nurl = \"{}\"\nuser = \"mfg_sync\"\npassword = {{ env = \"TC_PW\" }}\n[sink]\nurl = \"sqlite://{}?mode=rwc\"\n[ops]\nlisten = \"127.0.0.1:0\"\n",
            sim.url(),
            db.display()
        ),
    );
    let mut daemon = common::Daemon::spawn(
        &["--log-json", "run", "-c", cfg.to_str().unwrap()],
        &[("TC_PW", "mfg_sync_pw")],
    );
    daemon.wait_for("syncing").await;
    let (status, stderr) = daemon.terminate().await;
    assert!(status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{stderr}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ops endpoints on http://127.0.0.1:")),
        "{stderr}"
    );

    // RUST_LOG=error: the info lines are gone. The sink's database file appears after the ops
    // server would have logged its address: once it exists, the line would be there.
    let db2 = db.with_extension("quiet.db");
    let _ = std::fs::remove_file(&db2);
    let cfg2 = temp(
        "json-quiet.toml",
        &std::fs::read_to_string(&cfg)
            .unwrap()
            .replace(&db.display().to_string(), &db2.display().to_string()),
    );
    let quiet = common::Daemon::spawn(
        &["run", "-c", cfg2.to_str().unwrap()],
        &[("TC_PW", "mfg_sync_pw"), ("RUST_LOG", "error")],
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !db2.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no sink in 30 s: {}",
            quiet.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, stderr) = quiet.terminate().await;
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("ops endpoints on"), "{stderr}");
    let _ = std::fs::remove_file(&db2);

    // A filter that does not parse is a usage error naming it.
    let out = shiftkey(&["config", "example"], &[("RUST_LOG", "shiftkey=loudest")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("RUST_LOG=`shiftkey=loudest`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&db);
}

/// Packaging helpers: shell completions and the manual page come from the same command
/// definition as `--help`.
#[test]
fn completions_and_the_manual_page_describe_every_command() {
    let bash = shiftkey(&["completions", "bash"], &[]);
    assert!(bash.status.success());
    let bash = String::from_utf8(bash.stdout).unwrap();
    assert!(bash.contains("complete -F _shiftkey"), "{bash}");
    for sub in ["run", "broker", "doctor", "token", "store"] {
        assert!(bash.contains(sub), "{sub} missing from the completions");
    }
    let man = shiftkey(&["man"], &[]);
    assert!(man.status.success());
    let man = String::from_utf8(man.stdout).unwrap();
    assert!(man.contains(".TH shiftkey 1"), "{man}");
    assert!(
        man.contains("doctor") && man.contains("Exit codes"),
        "{man}"
    );
    // Every page the main page points to exists (`man --dir`, what the package ships).
    let dir = std::env::temp_dir().join(format!("shiftkey-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = shiftkey(&["man", "--dir", dir.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", common::text(&out));
    let main = std::fs::read_to_string(dir.join("shiftkey.1")).unwrap();
    let referenced: Vec<&str> = main
        .lines()
        .filter_map(|l| l.strip_prefix("shiftkey\\-")?.strip_suffix("(1)"))
        .collect();
    assert!(referenced.len() >= 10, "{main}");
    for page in referenced {
        let file = dir.join(format!("shiftkey-{}.1", page.replace("\\-", "-")));
        assert!(
            file.is_file(),
            "{} is referenced but missing",
            file.display()
        );
    }
    assert!(dir.join("shiftkey-token-get.1").is_file());
    let _ = std::fs::remove_dir_all(&dir);
    let bad = shiftkey(&["completions", "cmd.exe"], &[]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

/// Without `broker.socket` and without XDG_RUNTIME_DIR there is no private place for the socket:
/// the broker says so and exits 3, instead of using a predictable path in the shared temp folder.
#[test]
fn the_broker_wants_a_private_socket_folder() {
    let dir = std::env::temp_dir().join(format!("shiftkey-cli-nosock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\ndir = \"{}/store\"\nkey = {{ env = \"K\" }}\n[tokens.gw]\nkind = \"client_credentials\"\ntoken_url = \"http://127.0.0.1:9/t\"\nclient_id = \"c\"\nclient_secret = {{ env = \"S\" }}\n[ops]\nlisten = \"\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["broker", "-c", cfg.to_str().unwrap()])
        .env_remove("XDG_RUNTIME_DIR")
        .env("K", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
        .env("S", "s")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("broker.socket"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_remote_ops_listen_needs_allow_remote() {
    let dir = std::env::temp_dir().join(format!("shiftkey-cli-remote-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let base = "[teamcenter]\nurl = \"http://127.0.0.1:9\"\nuser = \"u\"\npassword = { env = \"X\" }\n[sink]\nurl = \"sqlite::memory:\"\n";
    let check = |name: &str, ops: &str| {
        let p = dir.join(name);
        std::fs::write(&p, format!("{base}[ops]\n{ops}")).unwrap();
        Command::new(BIN)
            .args(["config", "check", "-c", p.to_str().unwrap()])
            .env("X", "x")
            .output()
            .unwrap()
    };
    let out = check("remote.toml", "listen = \"0.0.0.0:9464\"\n");
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("allow_remote"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = check(
        "allowed.toml",
        "listen = \"0.0.0.0:9464\"\nallow_remote = true\nallowed_hosts = [\"ops.plant.example\"]\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn rustix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .is_some_and(|v| v == "0")
}

/// The process turns core dumps and ptrace attach off at start: its core limit is 0, and (seen
/// where this test can run it as another user, as root) its `/proc` entry belongs to root, which
/// the kernel does for a process that is not dumpable.
#[cfg(target_os = "linux")]
#[test]
fn the_process_cannot_dump_core_or_be_attached() {
    use std::os::unix::fs::MetadataExt as _;
    let mut cmd = if rustix_is_root() {
        // A copy `nobody` may run whatever folder the checkout is in (CI's may be 0700).
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("shiftkey-dump-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.join("shiftkey");
        std::fs::copy(BIN, &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin);
        c
    } else {
        Command::new(BIN)
    };
    let mut child = cmd
        .args(["sim", "--port", "0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Until the limit shows 0 (the process sets it first thing), at most 10 s.
    let mut limits = String::new();
    for _ in 0..100 {
        limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
        // Both limits: the soft one is often 0 already when a shell starts us.
        if limits.lines().any(|l| {
            l.starts_with("Max core file size")
                && l.split_whitespace().skip(4).take(2).eq(["0", "0"])
        }) {
            break;
        }
        #[allow(
            clippy::disallowed_methods,
            reason = "a plain test thread polling another process, no runtime to block"
        )]
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .map(|l| l.split_whitespace().skip(4).take(2).collect::<Vec<_>>());
    let owner = std::fs::metadata(format!("/proc/{pid}/status")).map(|m| m.uid());
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(core, Some(vec!["0", "0"]), "{limits}");
    if rustix_is_root() {
        assert_eq!(
            owner.unwrap(),
            0,
            "a dumpable process's /proc entry would be uid 65534's"
        );
    }
}

/// A taken ops port stops the start with that one message, before any token is fetched: no
/// refresher is started to be torn down ("stopped unexpectedly"), no refresh fails first.
#[test]
fn a_taken_ops_port_says_so_and_nothing_else() {
    let dir = std::env::temp_dir().join(format!("shiftkey-cli-taken-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = dir.join("shiftkey.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\ndir = \"{d}/store\"\nkey = {{ env = \"K\" }}\n[tokens.gw]\nkind = \"client_credentials\"\ntoken_url = \"http://127.0.0.1:9/t\"\nclient_id = \"c\"\nclient_secret = {{ env = \"S\" }}\n[broker]\nsocket = \"{d}/broker.sock\"\n[ops]\nlisten = \"{addr}\"\n",
            d = dir.display(),
            addr = taken.local_addr().unwrap()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["broker", "-c", cfg.to_str().unwrap()])
        .env("K", common::KEY)
        .env("S", "secret")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("`ops.listen`") && stderr.contains("in use"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `config check` finds everything in one run: each problem names its key as written (no
/// internal `default.` prefix), a misspelt key gets a suggestion, a secret reference is explained
/// in plain words, and the store key's form is checked without printing it.
#[test]
fn config_check_reports_every_problem_at_once_in_the_users_words() {
    let run = |name: &str, text: &str, env: &[(&str, &str)]| {
        let p = temp(name, text);
        let out = shiftkey(&["config", "check", "-c", p.to_str().unwrap()], env);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{name}: a configuration error exits 3"
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !stderr.contains("default."),
            "{name}: figment's prefix leaked: {stderr}"
        );
        stderr
    };
    // Three missing secrets: three lines, one run.
    let secrets = run(
        "threesecrets.toml",
        "[teamcenter]\nurl = \"http://127.0.0.1:9\"\nuser = \"u\"\npassword = { env = \"SHIFTKEY_TEST_UNSET_A\" }\n\
         [sink]\nurl = \"sqlite::memory:\"\n\
         [tokens.mes]\nkind = \"client_credentials\"\ntoken_url = \"http://127.0.0.1:9/t\"\nclient_id = \"c\"\nclient_secret = { env = \"SHIFTKEY_TEST_UNSET_B\" }\n\
         [tokens.erp]\nkind = \"client_credentials\"\ntoken_url = \"http://127.0.0.1:9/t\"\nclient_id = \"c\"\nclient_secret = { env = \"SHIFTKEY_TEST_UNSET_C\" }\n",
        &[],
    );
    assert!(secrets.contains("3 problems"), "{secrets}");
    for key in [
        "`teamcenter.password`: environment variable SHIFTKEY_TEST_UNSET_A",
        "`tokens.mes.client_secret`: environment variable SHIFTKEY_TEST_UNSET_B",
        "`tokens.erp.client_secret`: environment variable SHIFTKEY_TEST_UNSET_C",
    ] {
        assert!(secrets.contains(key), "{key} in: {secrets}");
    }
    // Every local login of a proxy, each read once.
    let logins = run(
        "twologins.toml",
        "[teamcenter]\nurl = \"http://127.0.0.1:9\"\nuser = \"u\"\npassword = { env = \"X\" }\n\
         [sink]\nurl = \"sqlite::memory:\"\n[proxy.tc]\nlisten = \"127.0.0.1:8182\"\nteamcenter = true\n\
         [proxy.tc.logins]\na = { env = \"SHIFTKEY_TEST_UNSET_D\" }\nb = { env = \"SHIFTKEY_TEST_UNSET_E\" }\n",
        &[("X", "x")],
    );
    assert!(logins.contains("2 problems"), "{logins}");
    for key in ["`proxy.tc.logins.a`", "`proxy.tc.logins.b`"] {
        assert_eq!(logins.matches(key).count(), 1, "{key} once in: {logins}");
    }
    // Problems of different sections, and a misspelt key with a suggestion.
    let base = "[teamcenter]\nurl = \"http://127.0.0.1:9\"\nuser = \"u\"\npassword = { env = \"X\" }\n[sink]\nurl = \"sqlite::memory:\"\n";
    let sections = run(
        "sections.toml",
        &format!(
            "{base}[schedule]\nbatch = 0\n[proxy.tc]\nlisten = \"127.0.0.1:8182\"\nteamcenter = true\nworkers = 0\n"
        ),
        &[("X", "x")],
    );
    assert!(sections.contains("2 problems"), "{sections}");
    assert!(
        sections
            .contains("`schedule.interval_minutes` and `schedule.batch` must be greater than zero"),
        "{sections}"
    );
    assert!(
        sections.contains("`proxy.tc.workers` is between 1 and 256"),
        "{sections}"
    );
    let misspelt = run(
        "misspelt.toml",
        &format!("{base}[schedule]\nintervall_minutes = 5\n"),
        &[("X", "x")],
    );
    assert!(
        misspelt.contains(
            "`schedule.intervall_minutes` is not a setting; did you mean `interval_minutes`?"
        ),
        "{misspelt}"
    );
    let overridden = run(
        "override.toml",
        base,
        &[("X", "x"), ("SHIFTKEY_SCHEDULE__BATCHES", "5")],
    );
    assert!(
        overridden.contains("`schedule.batches` is not a setting (set by a SHIFTKEY_… environment variable); did you mean `batch`?"),
        "{overridden}"
    );
    // A secret reference in plain words.
    let reference = run(
        "reference.toml",
        "[teamcenter]\nurl = \"http://127.0.0.1:9\"\nuser = \"u\"\npassword = { enV = \"X\" }\n[sink]\nurl = \"sqlite::memory:\"\n",
        &[("X", "x")],
    );
    assert!(
        reference.contains("`teamcenter.password`: `enV` is not a kind of secret reference")
            && reference.contains("did you mean `env`?"),
        "{reference}"
    );
    assert!(!reference.contains("untagged enum"), "{reference}");
    // The store key's form, without its value.
    let key = run(
        "storekey.toml",
        &format!("{base}[store]\ndir = \"/tmp/x\"\nkey = {{ env = \"K\" }}\n"),
        &[("X", "x"), ("K", "not-a-key-hunter2")],
    );
    assert!(key.contains("`store.key` is not standard base64"), "{key}");
    // Not even one character of it, or its place (base64's own message quotes both).
    assert!(
        !key.contains("hunter2") && !key.contains("symbol") && !key.contains("offset"),
        "{key}"
    );
}
