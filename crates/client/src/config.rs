//! The client's settings: HakuRiver's own `config.toml` (read unchanged), our optional
//! `[ssh_client]` section, and command-line overrides, resolved into one [`Settings`].
//!
//! Precedence: flags, then the file, then the defaults below. The file is `--config`,
//! else `$HAKURIVER_CONFIG`, else `~/.hakuriver/config.toml`. A file named explicitly
//! (flag or variable) must exist; the default one may be missing when `--host` is given.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hakuriver_tunnel::config::{locate, Located, NetworkSection, Seconds, DEFAULT_PROXY_PORT};
use hakuriver_tunnel::net::strip_brackets;
use serde::Deserialize;

use crate::error::ClientError;

/// User `ssh` logs in as: HakuRiver injects the submitted key for root.
pub const DEFAULT_USER: &str = "root";
/// The OpenSSH client, looked up in `PATH`.
pub const DEFAULT_SSH_PROGRAM: &str = "ssh";
/// Limit for the TCP connect (and TLS handshake) to the Host proxy.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Limit for the proxy's reply; it answers only after its own runner connect (15 s in
/// HakuRiver), so this must be longer than that.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// KohakuRiver's client variable for the Host address, used when no HakuRiver config
/// names one.
pub const KOHAKURIVER_HOST_ENV: &str = "KOHAKURIVER_HOST";
/// KohakuRiver's client variable for the SSH proxy port, used when no HakuRiver config
/// names one.
pub const KOHAKURIVER_PORT_ENV: &str = "KOHAKURIVER_SSH_PROXY_PORT";
/// Where `trust` and `--trust-on-first-use` store fingerprints, relative to `$HOME`.
pub const KNOWN_PROXIES_FILE: &str = ".hakuriver/known_proxies";

/// The whole file as we read it: HakuRiver's sections we use, ours, and nothing else
/// (HakuRiver's other sections and keys are ignored).
#[derive(Debug, Default, Deserialize)]
struct FileConfig {
    #[serde(default)]
    network: NetworkSection,
    #[serde(default)]
    ssh_client: SshClientSection,
}

/// `[ssh_client]`: ours, so misspelt keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshClientSection {
    /// Login user inside the VPS.
    pub user: Option<String>,
    /// The ssh program to run.
    pub ssh_program: Option<String>,
    /// Limit for reaching the Host proxy.
    pub connect_timeout_secs: Option<Seconds>,
    /// Limit for the proxy's reply.
    pub response_timeout_secs: Option<Seconds>,
    /// Ask for resumable tunnels (default true).
    pub resume: Option<bool>,
    /// `[ssh_client.tls]`.
    #[serde(default)]
    pub tls: TlsSection,
}

/// `[ssh_client.tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Speak TLS to the proxy.
    pub enable: Option<bool>,
    /// PEM file with the CA(s) that sign the proxy's certificate.
    pub ca_file: Option<PathBuf>,
    /// Accepted certificate fingerprints (`sha256:...`); when set, the CA is not consulted.
    #[serde(default)]
    pub fingerprints: Vec<String>,
    /// Name expected in the certificate (default: the host address).
    pub server_name: Option<String>,
    /// Trust store written by `trust` / `--trust-on-first-use`.
    pub known_proxies_file: Option<PathBuf>,
}

/// What the command line says about where and how to connect: declared once here and
/// flattened into the CLI (`cli::Cli::conn`); `ssh-config` freezes the same fields into
/// its ProxyCommand.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Config file [default: $HAKURIVER_CONFIG, else ~/.hakuriver/config.toml]
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,

    /// Host address of the proxy [default: network.host_reachable_address]
    #[arg(long, value_name = "HOST", global = true)]
    pub host: Option<String>,

    /// Port of the Host SSH proxy [default: network.host_ssh_proxy_port, else 8002]
    #[arg(long, value_name = "PORT", global = true)]
    pub proxy_port: Option<u16>,

    /// KohakuRiver API token file (the token alone, or KohakuRiver's auth.json)
    /// [default: $KOHAKURIVER_TOKEN, else ~/.kohakuriver/auth.json]; sent only over TLS
    #[arg(long, value_name = "PATH", global = true)]
    pub token_file: Option<PathBuf>,

    /// Speak TLS to the proxy [default: [ssh_client.tls] enable]
    #[arg(long, global = true, overrides_with = "no_tls", help_heading = "TLS")]
    pub tls: bool,

    /// Plain TCP even if the config enables TLS
    #[arg(long, global = true, overrides_with = "tls", help_heading = "TLS")]
    pub no_tls: bool,

    /// Verify the proxy's certificate against the CA(s) in this PEM file
    #[arg(long, value_name = "PATH", global = true, help_heading = "TLS")]
    pub ca_file: Option<PathBuf>,

    /// Accept the proxy's certificate iff its SHA-256 fingerprint is FP (repeatable;
    /// `hakuriver-ssh-proxy fingerprint` prints it)
    #[arg(
        long = "fingerprint",
        value_name = "FP",
        global = true,
        help_heading = "TLS"
    )]
    pub fingerprints: Vec<String>,

    /// Name expected in the certificate [default: the host address]
    #[arg(long, value_name = "NAME", global = true, help_heading = "TLS")]
    pub server_name: Option<String>,

    /// Accept and remember an unknown proxy certificate (in ~/.hakuriver/known_proxies)
    #[arg(long, global = true, help_heading = "TLS")]
    pub trust_on_first_use: bool,

    /// Log in as this user inside the VPS [default: root, or ssh_client.user]
    #[arg(long, value_name = "USER", global = true)]
    pub user: Option<String>,

    /// Do not ask for a resumable tunnel (one that survives a dropped connection to the
    /// Host) [default: ssh_client.resume, else ask]
    #[arg(long, global = true)]
    pub no_resume: bool,
}

impl Overrides {
    /// `--tls` (`Some(true)`), `--no-tls` (`Some(false)`, the later one wins), or neither.
    pub fn tls_enable(&self) -> Option<bool> {
        match (self.tls, self.no_tls) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

/// TLS settings after merging file and flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// Speak TLS at all.
    pub enable: bool,
    /// CA file, if any.
    pub ca_file: Option<PathBuf>,
    /// Pinned fingerprints as written (parsed when connecting).
    pub fingerprints: Vec<String>,
    /// Name to verify (default: the host address).
    pub server_name: Option<String>,
    /// The trust-on-first-use store.
    pub known_proxies_file: Option<PathBuf>,
}

/// Everything needed to reach the proxy and run ssh. No `Option`s for things that have
/// a default.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Host address of the proxy (name, IPv4 or IPv6, no brackets).
    pub host: String,
    /// Host proxy port.
    pub port: u16,
    /// Login user for ssh.
    pub user: String,
    /// The ssh program.
    pub ssh_program: String,
    /// TCP connect (and TLS handshake) limit.
    pub connect_timeout: Duration,
    /// Reply limit.
    pub response_timeout: Duration,
    /// Ask for resumable tunnels.
    pub resume: bool,
    /// TLS, when enabled.
    pub tls: TlsSettings,
}

/// The config file in effect and whether the user named it: `--config`, else
/// `$HAKURIVER_CONFIG`, else `~/.hakuriver/config.toml` ([`locate`]).
pub type ConfigSource = Located;

/// The config file as named in messages.
fn shown(source: &ConfigSource) -> String {
    match &source.path {
        Some(p) => p.display().to_string(),
        None => "~/.hakuriver/config.toml".to_owned(),
    }
}

/// Reads the file (if any) and merges the overrides.
pub fn resolve(overrides: &Overrides) -> Result<Settings, ClientError> {
    let source = locate(overrides.config.as_deref());
    let file = load(&source)?;
    merge(file, overrides, &source)
}

fn load(source: &ConfigSource) -> Result<FileConfig, ClientError> {
    let Some(path) = &source.path else {
        return Ok(FileConfig::default());
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !source.explicit => {
            return Ok(FileConfig::default())
        }
        Err(e) => {
            return Err(ClientError::Config {
                path: path.clone(),
                reason: e.to_string(),
            })
        }
    };
    parse(&text).map_err(|reason| ClientError::Config {
        path: path.clone(),
        reason,
    })
}

fn parse(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| {
        // toml's message spans several lines (source excerpt); keep the first sentence.
        let message = e.message().trim().to_owned();
        match e.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: {message}")
            }
            None => message,
        }
    })
}

fn merge(
    file: FileConfig,
    overrides: &Overrides,
    source: &ConfigSource,
) -> Result<Settings, ClientError> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let host = overrides
        .host
        .clone()
        .or(file.network.host_reachable_address)
        .or_else(|| env(KOHAKURIVER_HOST_ENV))
        .map(|h| strip_brackets(h.trim()).to_owned())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ClientError::NoHost(shown(source)))?;
    let client = file.ssh_client;
    let tls_file = client.tls;
    let mut fingerprints = overrides.fingerprints.clone();
    if fingerprints.is_empty() {
        fingerprints = tls_file.fingerprints;
    }
    Ok(Settings {
        host,
        port: match overrides.proxy_port.or(file.network.host_ssh_proxy_port) {
            Some(port) => port,
            None => match env(KOHAKURIVER_PORT_ENV) {
                Some(text) => text.trim().parse().map_err(|_| ClientError::Config {
                    path: PathBuf::from(format!("${KOHAKURIVER_PORT_ENV}")),
                    reason: format!("{text:?} is not a port number"),
                })?,
                None => DEFAULT_PROXY_PORT,
            },
        },
        user: overrides
            .user
            .clone()
            .or(client.user)
            .unwrap_or_else(|| DEFAULT_USER.to_owned()),
        ssh_program: client
            .ssh_program
            .unwrap_or_else(|| DEFAULT_SSH_PROGRAM.to_owned()),
        connect_timeout: client.connect_timeout_secs.map_or(CONNECT_TIMEOUT, |s| s.0),
        response_timeout: client
            .response_timeout_secs
            .map_or(RESPONSE_TIMEOUT, |s| s.0),
        resume: !overrides.no_resume && client.resume.unwrap_or(true),
        tls: TlsSettings {
            enable: overrides.tls_enable().or(tls_file.enable).unwrap_or(false),
            ca_file: overrides
                .ca_file
                .clone()
                .or(tls_file.ca_file.map(|p| expand_home(&p))),
            fingerprints,
            server_name: overrides.server_name.clone().or(tls_file.server_name),
            known_proxies_file: tls_file
                .known_proxies_file
                .map(|p| expand_home(&p))
                .or_else(default_known_proxies),
        },
    })
}

/// `~/x` → `$HOME/x`.
pub fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) if !home.is_empty() => PathBuf::from(home).join(rest),
        _ => path.to_owned(),
    }
}

fn default_known_proxies() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(KNOWN_PROXIES_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> ConfigSource {
        ConfigSource {
            path: Some("/x/config.toml".into()),
            explicit: true,
        }
    }

    /// HakuRiver's own client config, as its docs ship it: every section must be accepted.
    const HAKURIVER_CONFIG: &str = r#"
[network]
host_bind_ip = "0.0.0.0"
host_port = 8000
host_ssh_proxy_port = 8002
runner_port = 8001
host_reachable_address = "10.0.0.5"
runner_address = "127.0.0.1"
tailscale_host = ""

[paths]
shared_dir = "/mnt/cluster-share"
local_temp_dir = "/tmp/hakuriver"
numactl_path = ""

[database]
db_file = "/var/lib/hakuriver/hakuriver.db"

[timing]
heartbeat_interval = 5
heartbeat_timeout_factor = 6
cleanup_check_interval = 10

[environment]
container_dir = "/mnt/cluster-share/hakuriver-containers"
default_container_name = "hakuriver-base"
initial_base_image = "python:3.12.10-alpine3.22"
tasks_privileged = false
additional_mounts = []
"#;

    #[test]
    fn reads_hakuriver_config_unchanged() {
        let file = parse(HAKURIVER_CONFIG).expect("parse");
        let s = merge(file, &Overrides::default(), &source()).expect("merge");
        assert_eq!((s.host.as_str(), s.port), ("10.0.0.5", 8002));
        assert_eq!(s.user, "root");
        assert_eq!(s.ssh_program, "ssh");
        assert_eq!(s.connect_timeout, CONNECT_TIMEOUT);
        assert_eq!(s.response_timeout, RESPONSE_TIMEOUT);
        assert!(!s.tls.enable);
    }

    #[test]
    fn our_section_and_flags() {
        let text = format!(
            "{HAKURIVER_CONFIG}\n[ssh_client]\nuser = \"alice\"\nssh_program = \"/opt/ssh\"\n\
             connect_timeout_secs = 2.5\nresponse_timeout_secs = 7\n\
             [ssh_client.tls]\nenable = true\nfingerprints = [\"sha256:ab\"]\nserver_name = \"h\"\n"
        );
        let file = parse(&text).expect("parse");
        let s = merge(file, &Overrides::default(), &source()).expect("merge");
        assert_eq!(s.user, "alice");
        assert_eq!(s.ssh_program, "/opt/ssh");
        assert_eq!(s.connect_timeout, Duration::from_millis(2500));
        assert_eq!(s.response_timeout, Duration::from_secs(7));
        assert!(s.tls.enable);
        assert_eq!(s.tls.fingerprints, vec!["sha256:ab".to_owned()]);

        let flags = Overrides {
            host: Some("[::1]".into()),
            proxy_port: Some(9),
            user: Some("bob".into()),
            no_tls: true,
            ..Overrides::default()
        };
        let s = merge(parse(&text).expect("parse"), &flags, &source()).expect("merge");
        assert_eq!(
            (s.host.as_str(), s.port, s.user.as_str()),
            ("::1", 9, "bob")
        );
        assert!(!s.tls.enable);
    }

    #[test]
    fn unknown_keys_in_our_section_are_named() {
        let err = parse("[ssh_client]\nusr = \"x\"\n").expect_err("must fail");
        assert!(err.contains("usr"), "{err}");
        assert!(err.starts_with("line 2"), "{err}");
        let err = parse("[ssh_client.tls]\nfingerprint = []\n").expect_err("must fail");
        assert!(err.contains("fingerprint"), "{err}");
        // HakuRiver's sections stay open: its future keys must not break us.
        assert!(parse("[network]\nnew_key = 1\n[other]\nx = 1\n").is_ok());
    }

    #[test]
    fn host_is_required() {
        let err =
            merge(FileConfig::default(), &Overrides::default(), &source()).expect_err("no host");
        assert!(err.to_string().contains("--host"), "{err}");
        let flags = Overrides {
            host: Some("example.org".into()),
            ..Overrides::default()
        };
        let s = merge(FileConfig::default(), &flags, &source()).expect("merge");
        assert_eq!(
            (s.host.as_str(), s.port),
            ("example.org", DEFAULT_PROXY_PORT)
        );
    }

    #[test]
    fn explicit_file_must_exist_default_may_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.toml");
        let explicit = ConfigSource {
            path: Some(missing.clone()),
            explicit: true,
        };
        assert!(matches!(load(&explicit), Err(ClientError::Config { .. })));
        let implicit = ConfigSource {
            path: Some(missing),
            explicit: false,
        };
        assert!(load(&implicit).is_ok());
    }
}
