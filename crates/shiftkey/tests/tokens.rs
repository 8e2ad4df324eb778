//! `shiftkey token …` and `shiftkey store …` as an operator runs them, against the emulator.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use common::{KEY, shiftkey, temp_dir, text};

fn grants(sim: &shiftkey_sim::Sim) -> u64 {
    sim.stats()
        .grants
        .get("client_credentials")
        .copied()
        .unwrap_or(0)
}

fn write_config(dir: &Path, sim_url: &str) -> std::path::PathBuf {
    let cfg = dir.join("shiftkey.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\ndir = \"{dir}/store\"\nkey = {{ env = \"SK_KEY\" }}\n\
             [tokens.gw]\nkind = \"client_credentials\"\ntoken_url = \"{sim_url}/oauth/token\"\n\
             client_id = \"shiftkey\"\nclient_secret = {{ env = \"GW_SECRET\" }}\n\
             [broker]\nsocket = \"{dir}/run/broker.sock\"\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_store_commands_manage_the_encrypted_store() {
    let sim = common::start_sim(shiftkey_sim::SimConfig::default()).await;
    let dir = temp_dir("tokens");
    let cfg = write_config(&dir, &sim.url());
    let c = cfg.to_str().unwrap().to_owned();
    let env_with = |key: &str| -> Vec<(String, String)> {
        vec![
            ("SK_KEY".into(), key.into()),
            ("GW_SECRET".into(), "shiftkey-secret".into()),
        ]
    };
    let run = |args: &[&str], env: &[(String, String)]| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        shiftkey(args, &env)
    };
    let env = env_with(KEY);

    // store init: the folder (0700) and a new key file (0600), never overwritten.
    let key_file = dir.join("new.key");
    let out = run(
        &[
            "store",
            "init",
            "-c",
            &c,
            "--key-out",
            key_file.to_str().unwrap(),
        ],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join("store")), 0o700);
    assert_eq!(mode(&key_file), 0o600);
    let new_key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(!text(&out).contains(&new_key), "the key is not printed");
    let again = run(
        &[
            "store",
            "init",
            "-c",
            &c,
            "--key-out",
            key_file.to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("must not exist"), "{}", text(&again));
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap().trim(),
        new_key,
        "the existing key file is untouched"
    );
    let other = dir.join("other.key");
    run(
        &[
            "store",
            "init",
            "-c",
            &c,
            "--key-out",
            other.to_str().unwrap(),
        ],
        &env,
    );
    assert_ne!(
        std::fs::read_to_string(&other).unwrap().trim(),
        new_key,
        "every key is fresh"
    );

    // token get without a broker: from the server once, then from the store.
    let first = run(&["token", "get", "gw", "-c", &c], &env);
    assert!(first.status.success(), "{}", text(&first));
    let token = String::from_utf8(first.stdout.clone()).unwrap();
    assert!(token.starts_with("at_"), "{token}");
    assert_eq!(grants(&sim), 1);
    let second = run(&["token", "get", "gw", "-c", &c], &env);
    assert_eq!(String::from_utf8(second.stdout).unwrap(), token);
    assert_eq!(grants(&sim), 1, "the stored token was reused");

    let status = run(&["token", "status", "-c", &c], &env);
    assert!(status.status.success(), "{}", text(&status));
    assert!(
        text(&status).contains("gw: valid, generation 1, expires in 7h 59m"),
        "{}",
        text(&status)
    );
    assert!(
        !text(&status).contains(token.trim()),
        "status never shows the token"
    );

    let refreshed = run(&["token", "refresh", "gw", "-c", &c], &env);
    assert!(refreshed.status.success(), "{}", text(&refreshed));
    assert!(
        text(&refreshed).contains("generation 1 → 2"),
        "{}",
        text(&refreshed)
    );
    assert_eq!(grants(&sim), 2);

    let check = run(&["store", "check", "-c", &c], &env);
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains("gw.token: generation 2"),
        "{}",
        text(&check)
    );

    // rekey: the old key no longer opens the file, the new one does, the token is the same.
    let rekey = run(
        &[
            "store",
            "rekey",
            "-c",
            &c,
            "--new-key-file",
            key_file.to_str().unwrap(),
        ],
        &env,
    );
    assert!(rekey.status.success(), "{}", text(&rekey));
    let old = run(&["store", "check", "-c", &c], &env);
    assert_eq!(old.status.code(), Some(4), "{}", text(&old));
    assert!(text(&old).contains("FAIL"), "{}", text(&old));
    let new_env = env_with(&new_key);
    let check = run(&["store", "check", "-c", &c], &new_env);
    assert!(check.status.success(), "{}", text(&check));
    let after = run(&["token", "get", "gw", "-c", &c], &new_env);
    assert!(after.status.success(), "{}", text(&after));
    assert_eq!(grants(&sim), 2, "the re-encrypted token is still served");

    // A tampered file: reported with its path, exit 4, and left exactly as it was.
    let file = dir.join("store/gw.token");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&file, &bytes).unwrap();
    for args in [
        vec!["store", "check", "-c", &c],
        vec!["token", "status", "-c", &c],
    ] {
        let out = run(&args, &new_env);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("gw.token"), "{args:?}: {}", text(&out));
    }
    assert_eq!(
        std::fs::read(&file).unwrap(),
        bytes,
        "checks change nothing"
    );
    // Truncated, too.
    let truncated = &bytes[..10];
    std::fs::write(&file, truncated).unwrap();
    let out = run(&["store", "check", "-c", &c], &new_env);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("gw.token"), "{}", text(&out));
    // Using the damaged store: the file is kept aside and the credential logs in again.
    let get = run(&["token", "get", "gw", "-c", &c], &new_env);
    assert!(get.status.success(), "{}", text(&get));
    assert_eq!(grants(&sim), 3);
    let aside: Vec<_> = std::fs::read_dir(dir.join("store"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("gw.token.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), truncated, "nothing lost");

    // revoke without revoke_url: deleted locally, and the message says it was not revoked.
    assert!(file.exists());
    let revoke = run(&["token", "revoke", "gw", "-c", &c], &new_env);
    assert!(revoke.status.success(), "{}", text(&revoke));
    assert!(
        text(&revoke).contains("not revoked at the server"),
        "{}",
        text(&revoke)
    );
    assert!(!file.exists());

    // Bad input names what is wrong.
    let out = run(&["token", "get", "nosuch", "-c", &c], &new_env);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out).contains("no token `nosuch`") && text(&out).contains("gw"));
    let out = run(
        &["token", "get", "gw", "-c", &c],
        &[("GW_SECRET".into(), "x".into())],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("store.key"), "{}", text(&out));
    let out = run(
        &["token", "get", "gw", "-c", &c],
        &[
            ("SK_KEY".into(), "c2hvcnQ=".into()),
            ("GW_SECRET".into(), "x".into()),
        ],
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out).contains("32"),
        "a short key is explained: {}",
        text(&out)
    );
    let out = run(
        &["token", "refresh", "gw", "-c", &c],
        &[
            ("SK_KEY".into(), new_key.clone()),
            ("GW_SECRET".into(), "WRONG-secret-9".into()),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(5),
        "refused credentials exit 5: {}",
        text(&out)
    );
    assert!(text(&out).contains("invalid_client"), "{}", text(&out));
    assert!(!text(&out).contains("WRONG-secret-9"), "{}", text(&out));
    let _ = std::fs::remove_dir_all(&dir);
}
