//! The trust-on-first-use store `~/.hakuriver/known_proxies` and the `trust` command.
//!
//! One line per trusted certificate: `<host>:<port> sha256:<hex>`; `#` starts a comment.
//! Several lines for one proxy are all accepted (certificate rotation).

use std::fs;
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use hakuriver_tunnel::tls::{Fingerprint, FingerprintParseError};

use crate::cli::Cli;
use crate::config;
use crate::dial::Target;
use crate::error::ClientError;
use crate::transport;

/// Why the store could not be read or written; `Display` names the file (and line).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but cannot be read.
    #[error("cannot read {}: {reason}", path.display())]
    Read {
        /// The store file.
        path: PathBuf,
        /// The system's reason.
        reason: io::Error,
    },
    /// A line is not `<host>:<port> sha256:<hex>`.
    #[error("{} line {line}: expected `<host>:<port> sha256:<hex>`", path.display())]
    Syntax {
        /// The store file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// A line's fingerprint does not parse.
    #[error("{} line {line}: {reason}", path.display())]
    Fingerprint {
        /// The store file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: FingerprintParseError,
    },
    /// The file or its directory cannot be written.
    #[error("cannot write {}: {reason}", path.display())]
    Write {
        /// The store file.
        path: PathBuf,
        /// The system's reason.
        reason: io::Error,
    },
}

/// Trust on first use: records the certificate the proxy at `target` presented in its
/// first handshake, and tells the user once (on stderr) how to check it. Runs right
/// after the handshake, before anything about the task is sent.
pub fn remember_first_use(
    store: &KnownProxies,
    target: &crate::dial::Target,
    fingerprint: Fingerprint,
) -> Result<(), crate::error::ClientError> {
    let added = store
        .add(&target.to_string(), fingerprint)
        .map_err(crate::error::ClientError::TrustStore)?;
    if added {
        eprintln!(
            "hakuriver-ssh: trusting the proxy at {target} on first use: {fingerprint} \
             (saved in {}); compare with `hakuriver-ssh-proxy fingerprint` on the Host",
            store.path().display()
        );
    }
    Ok(())
}

/// The store file.
#[derive(Debug, Clone)]
pub struct KnownProxies {
    path: PathBuf,
}

impl KnownProxies {
    /// The store at `path` (created on first write).
    pub fn new(path: PathBuf) -> Self {
        KnownProxies { path }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fingerprints stored for `proxy` (`host:port`); none when the file is missing.
    pub fn lookup(&self, proxy: &str) -> Result<Vec<Fingerprint>, StoreError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(reason) => {
                return Err(StoreError::Read {
                    path: self.path.clone(),
                    reason,
                })
            }
        };
        let mut found = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(name), Some(fp), None) = (words.next(), words.next(), words.next()) else {
                return Err(StoreError::Syntax {
                    path: self.path.clone(),
                    line: n + 1,
                });
            };
            if name == proxy {
                found.push(fp.parse().map_err(|reason| StoreError::Fingerprint {
                    path: self.path.clone(),
                    line: n + 1,
                    reason,
                })?);
            }
        }
        Ok(found)
    }

    /// Records `fingerprint` for `proxy`; `false` when it was already there.
    pub fn add(&self, proxy: &str, fingerprint: Fingerprint) -> Result<bool, StoreError> {
        if self.lookup(proxy)?.contains(&fingerprint) {
            return Ok(false);
        }
        let write_error = |reason: io::Error| StoreError::Write {
            path: self.path.clone(),
            reason,
        };
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(write_error)?;
        }
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(write_error)?;
        writeln!(file, "{proxy} {fingerprint}").map_err(write_error)?;
        Ok(true)
    }
}

/// Asks on the terminal whether to trust `fingerprint`; `true` without asking when
/// stdin is not a terminal (running `trust` is the consent then).
pub fn confirm(proxy: &str, fingerprint: Fingerprint) -> bool {
    let stdin = io::stdin();
    if !stdin.is_terminal() {
        return true;
    }
    eprint!(
        "The proxy at {proxy} presents certificate {fingerprint}.\n\
         Compare it with `hakuriver-ssh-proxy fingerprint` on the Host. Trust it? [y/N] "
    );
    let _ = io::stderr().flush();
    let mut answer = String::new();
    if stdin.lock().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes")
}

/// `trust [FINGERPRINT]`: fetch the proxy's certificate fingerprint, check it against
/// the expected one (or ask), and store it.
pub fn command(cli: &Cli, expected: Option<&str>) -> Result<u8, ClientError> {
    let settings = config::resolve(&cli.conn)?;
    let target = Target {
        host: settings.host.clone(),
        port: settings.port,
    };
    let expected = expected
        .map(|fp| {
            fp.parse::<hakuriver_tunnel::tls::Fingerprint>()
                .map_err(|reason| ClientError::BadFingerprint {
                    text: fp.to_owned(),
                    reason,
                })
        })
        .transpose()?;
    let store = settings
        .tls
        .known_proxies_file
        .clone()
        .map(KnownProxies::new)
        .ok_or(ClientError::NoTrustStore)?;
    let runtime = crate::runtime()?;
    let fetched = runtime.block_on(transport::fetch_fingerprint(
        &target,
        settings.tls.server_name.as_deref(),
        settings.connect_timeout,
    ));
    runtime.shutdown_background();
    let fingerprint = fetched?;
    match expected {
        Some(want) if want != fingerprint => {
            return Err(ClientError::FingerprintMismatch {
                target: target.to_string(),
                got: fingerprint,
                want,
            })
        }
        Some(_) => {}
        None => {
            if !confirm(&target.to_string(), fingerprint) {
                return Err(ClientError::NotTrusted);
            }
        }
    }
    let added = store
        .add(&target.to_string(), fingerprint)
        .map_err(ClientError::TrustStore)?;
    let state = if added { "saved in" } else { "already in" };
    eprintln!(
        "{target} {fingerprint} ({state} {}); connect with --tls",
        store.path().display()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_finds_fingerprints_per_proxy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = KnownProxies::new(dir.path().join("sub/known_proxies"));
        assert_eq!(store.lookup("h:1").expect("empty"), vec![]);
        let a = Fingerprint::from_bytes([1; 32]);
        let b = Fingerprint::from_bytes([2; 32]);
        assert!(store.add("h:1", a).expect("add"));
        assert!(!store.add("h:1", a).expect("again"));
        assert!(store.add("h:1", b).expect("rotation"));
        assert!(store.add("[::1]:1", b).expect("other"));
        assert_eq!(store.lookup("h:1").expect("read"), vec![a, b]);
        assert_eq!(store.lookup("[::1]:1").expect("read"), vec![b]);
        assert_eq!(store.lookup("h:2").expect("read"), vec![]);
        fs::write(store.path(), "# comment\nh:1 nonsense\n").expect("write");
        assert!(store.lookup("h:1").is_err());
    }
}
