//! `shiftkey store init|rekey|check`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use shiftkey_store::{FileStore, KeySource};

use crate::config::{Config, ConfigProblem};
use crate::tokens::{ensure_private_dir, key_source, store_config};

/// `store` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum StoreCommand {
    /// Create the store folder (0700) and, with `--key-out`, a fresh random key in a new 0600
    /// file (point `store.key = { file = "…" }` or a systemd credential at it).
    Init {
        /// The configuration file.
        #[arg(short, long, default_value = "shiftkey.toml")]
        config: PathBuf,
        /// Write a new base64 key here (the file must not exist).
        #[arg(long)]
        key_out: Option<PathBuf>,
    },
    /// Re-encrypt every token file under a new key; then point `store.key` at the new key.
    Rekey {
        /// The configuration file (its `store.key`/`store.passphrase` opens the files now).
        #[arg(short, long, default_value = "shiftkey.toml")]
        config: PathBuf,
        /// The new key: a file holding base64 (from `store init --key-out`).
        #[arg(long, group = "new")]
        new_key_file: Option<PathBuf>,
        /// The new key: an environment variable holding base64.
        #[arg(long, group = "new")]
        new_key_env: Option<String>,
        /// A new passphrase (Argon2id) from this environment variable.
        #[arg(long, group = "new")]
        new_passphrase_env: Option<String>,
    },
    /// Open every token file with the configured key and report each; exits 4 if any is
    /// unreadable, tampered with, too open, or under another key.
    Check {
        /// The configuration file.
        #[arg(short, long, default_value = "shiftkey.toml")]
        config: PathBuf,
    },
}

/// Runs a `store` subcommand.
pub(crate) async fn command(cmd: StoreCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        StoreCommand::Init { config, key_out } => init(&config, key_out.as_deref()),
        StoreCommand::Rekey {
            config,
            new_key_file,
            new_key_env,
            new_passphrase_env,
        } => {
            let new = match (new_key_file, new_key_env, new_passphrase_env) {
                (Some(f), _, _) => KeySource::from_key_file(&f)?,
                (_, Some(v), _) => KeySource::from_env(&v)?,
                (_, _, Some(v)) => KeySource::passphrase(
                    std::env::var(&v)
                        .map(shiftkey_auth::Secret::new)
                        .with_context(|| format!("environment variable {v} is not set"))?,
                ),
                _ => bail!(
                    "give the new key: --new-key-file PATH, --new-key-env VAR or --new-passphrase-env VAR"
                ),
            };
            rekey(&config, new).await
        }
        StoreCommand::Check { config } => check(&config).await,
    }
}

fn init(config: &Path, key_out: Option<&Path>) -> anyhow::Result<ExitCode> {
    if config.exists() {
        let cfg = Config::load(config)?;
        let store = store_config(&cfg).map_err(|e| ConfigProblem(crate::causes(&e)))?;
        ensure_private_dir(store.dir()?)?;
        println!("store folder {} is ready (0700)", store.dir()?.display());
    } else if key_out.is_none() {
        bail!(ConfigProblem(format!(
            "config file {} does not exist; write one with `shiftkey config example`, or give --key-out to only make a key",
            config.display()
        )));
    }
    if let Some(path) = key_out {
        use std::os::unix::fs::OpenOptionsExt as _;
        let key = KeySource::generate_base64();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| {
                format!(
                    "cannot create the key file {} (it must not exist yet)",
                    path.display()
                )
            })?;
        file.write_all(key.expose().as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!(
            "wrote a new 256-bit key to {} (0600); reference it as store.key = {{ file = \"{}\" }} or a systemd credential, and back it up: without it the tokens cannot be read (they can be obtained again by logging in)",
            path.display(),
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The token files in the store folder: configured ones and any other `*.token` there.
fn token_files(cfg: &Config) -> anyhow::Result<Vec<PathBuf>> {
    let store = store_config(cfg)?;
    let mut files: Vec<PathBuf> = cfg
        .tokens
        .keys()
        .map(|n| crate::tokens::store_path(store, n))
        .collect::<anyhow::Result<_>>()?;
    if let Ok(entries) = std::fs::read_dir(store.dir()?) {
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "token") && !files.contains(&p) {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok(files)
}

async fn rekey(config: &Path, new: KeySource) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config)?;
    let key = key_source(store_config(&cfg)?)?;
    let mut done = 0;
    for path in token_files(&cfg)? {
        if !path.exists() {
            continue;
        }
        let store = FileStore::new(&path, key.clone());
        // Open first: a file the current key cannot read is reported, not overwritten.
        store
            .verify()
            .await
            .with_context(|| format!("{} (nothing was changed)", path.display()))?;
        store
            .rekey(new.clone())
            .await
            .with_context(|| format!("re-encrypting {}", path.display()))?;
        println!("{}: re-encrypted", path.display());
        done += 1;
    }
    println!(
        "{done} file(s) re-encrypted; now point `store.key` (or `store.passphrase`) at the new key and restart shiftkey"
    );
    Ok(ExitCode::SUCCESS)
}

async fn check(config: &Path) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config)?;
    let store_cfg = store_config(&cfg)?;
    let key = key_source(store_cfg)?;
    let mut bad = 0;
    let dir = store_cfg.dir()?;
    if let Err(e) = ensure_private_dir_exists(dir) {
        println!("FAIL  {}: {}", dir.display(), crate::causes(&e));
        bad += 1;
    }
    for path in token_files(&cfg)? {
        let store = FileStore::new(&path, key.clone());
        match store.verify().await {
            Ok(Some(t)) => println!(
                "ok    {}: generation {}, refresh token {}",
                path.display(),
                t.generation,
                if t.refresh_token.is_some() {
                    "yes"
                } else {
                    "no"
                }
            ),
            Ok(None) => println!("ok    {}: not created yet", path.display()),
            Err(e) => {
                bad += 1;
                println!("FAIL  {}: {e}", path.display());
            }
        }
    }
    if bad > 0 {
        eprintln!("shiftkey: {bad} problem(s) in the token store; the files were left as they are");
        return Ok(ExitCode::from(crate::EXIT_STORE));
    }
    Ok(ExitCode::SUCCESS)
}

/// Like [`ensure_private_dir`] but never creates the folder.
fn ensure_private_dir_exists(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        bail!("the store folder does not exist (run `shiftkey store init`)");
    }
    ensure_private_dir(dir)
}
