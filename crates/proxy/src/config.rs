//! Configuration: HakuRiver's Host `config.toml` unchanged, plus our optional
//! `[ssh_proxy]` section, resolved with command-line overrides into [`Settings`]
//! (no `Option`s left where a default exists).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hakuriver_tunnel::config::{NetworkSection, Seconds, DEFAULT_PROXY_PORT};
use hakuriver_tunnel::net::{HostPort, HostPortError};
pub use hakuriver_tunnel::tls::CertSource;
use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;

/// HakuRiver's default `[network] host_bind_ip`.
pub const DEFAULT_BIND_IP: &str = "0.0.0.0";
/// HakuRiver's default database location.
pub const DEFAULT_DB_FILE: &str = "/var/lib/hakuriver/hakuriver.db";
/// Where the proxy keeps state (the self-signed certificate) unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/hakuriver-ssh-proxy";
/// System-wide config file, read when neither `--config`, `$HAKURIVER_CONFIG` nor
/// `~/.hakuriver/config.toml` exists.
pub const SYSTEM_CONFIG: &str = "/etc/hakuriver/config.toml";
/// Time a client has to send its request line (HakuRiver: 10 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the runner has to accept the TCP connection (HakuRiver: 15 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Time a TLS client has to finish its handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time open tunnels get to finish after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Concurrent connections, all clients together.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Concurrent connections from one client address.
pub const MAX_CONNECTIONS_PER_IP: usize = 256;
/// Task lookups one client address may make per minute (a burst of this many, then
/// refilled evenly): far above what people opening SSH sessions need, far below what
/// enumerating task IDs needs.
pub const LOOKUPS_PER_MINUTE_PER_IP: u32 = 600;

/// How long a task list fetched from the Host's HTTP API is used without asking again.
pub const HTTP_CACHE: Duration = Duration::from_secs(2);
/// How long the last task list is still served while the Host's HTTP API is unreachable.
pub const HTTP_STALE: Duration = Duration::from_secs(60);

/// `[database]`: HakuRiver's `db_file`, plus our keys for a directory over HTTP.
/// Misspelt keys are errors (HakuRiver's own section has `db_file` only).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabaseSection {
    db_file: Option<PathBuf>,
    kind: Option<DirectoryKind>,
    url: Option<String>,
    api: Option<HostApi>,
    token_file: Option<PathBuf>,
    cache_secs: Option<Seconds>,
    stale_secs: Option<Seconds>,
}

/// `[database] kind`: where the task directory comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DirectoryKind {
    /// The Host's SQLite file (`db_file`), read directly.
    #[default]
    Sqlite,
    /// The Host's HTTP API (`url`).
    Http,
}

/// `[database] api`: which Host serves the HTTP API, so which routes it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostApi {
    /// HakuRiver 0.3.0 and KohakuRiver 0.4: routes at the root, no token.
    #[default]
    Hakuriver,
    /// KohakuRiver 1.0: routes under `/api`, a bearer token when its auth is on.
    Kohakuriver,
}

/// The task directory over the Host's HTTP API, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpDirectorySettings {
    /// `host:port` of the Host's API (plain HTTP only).
    pub authority: String,
    /// Path prefix of the routes: empty, or `/api` for KohakuRiver 1.0 (and any path
    /// given in `url`).
    pub prefix: String,
    /// The bearer token read from `token_file`, if one is set. Never logged.
    pub token: Option<String>,
    /// How long a fetched list is used without asking again.
    pub cache: Duration,
    /// How long the last list is served while the Host is unreachable.
    pub stale: Duration,
}

/// Where the task directory comes from, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DirectorySettings {
    /// The SQLite file at [`Settings::db_path`].
    #[default]
    Sqlite,
    /// The Host's HTTP API.
    Http(HttpDirectorySettings),
}

/// Resolves `[database] kind = "http"` and its keys.
fn resolve_http(d: &DatabaseSection) -> Result<HttpDirectorySettings, ConfigError> {
    let bad = |text: String| ConfigError::Database(text);
    let url = d.url.as_deref().ok_or_else(|| {
        bad("[database] kind = \"http\" needs url = \"http://host:8000\"".to_owned())
    })?;
    let Some(rest) = url.trim().strip_prefix("http://") else {
        return Err(ConfigError::Database(format!(
            "[database] url {url:?} must start with http:// (plain HTTP only)"
        )));
    };
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, format!("/{}", p.trim_end_matches('/'))),
        None => (rest, String::new()),
    };
    let path = if path == "/" { String::new() } else { path };
    if authority.is_empty() || authority.contains('@') {
        return Err(ConfigError::Database(format!(
            "[database] url {url:?} needs a host (and no user)"
        )));
    }
    let has_port = match authority.rfind(']') {
        Some(end) => authority[end..].contains(':'),
        None => authority.contains(':'),
    };
    let authority = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let prefix = match d.api.unwrap_or_default() {
        HostApi::Hakuriver => path,
        HostApi::Kohakuriver => format!("{path}/api"),
    };
    let token = match &d.token_file {
        None => None,
        Some(file) => {
            let text = std::fs::read_to_string(file).map_err(|e| {
                bad(format!(
                    "cannot read [database] token_file {}: {e}",
                    file.display()
                ))
            })?;
            let token = text.trim().to_owned();
            if token.is_empty() || token.chars().any(|c| c.is_control() || c == ' ') {
                return Err(ConfigError::Database(format!(
                    "[database] token_file {} must hold one token on one line",
                    file.display()
                )));
            }
            Some(token)
        }
    };
    let positive = |name: &str, value: Option<Seconds>, default: Duration| {
        let value = value.map_or(default, |s| s.0);
        if value.is_zero() {
            return Err(bad(format!("[database] {name} must be greater than 0")));
        }
        Ok(value)
    };
    Ok(HttpDirectorySettings {
        authority,
        prefix,
        token,
        cache: positive("cache_secs", d.cache_secs, HTTP_CACHE)?,
        stale: d.stale_secs.map_or(HTTP_STALE, |s| s.0),
    })
}

/// The whole file: HakuRiver's sections we read, ours, and nothing else checked.
#[derive(Debug, Default, Deserialize)]
struct HostFile {
    #[serde(default)]
    network: NetworkSection,
    #[serde(default)]
    database: DatabaseSection,
    #[serde(default)]
    ssh_proxy: ProxySection,
}

/// `[ssh_proxy]`: our own settings. Misspelt keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProxySection {
    listen: Option<Vec<String>>,
    request_timeout_secs: Option<Seconds>,
    connect_timeout_secs: Option<Seconds>,
    tls_handshake_timeout_secs: Option<Seconds>,
    shutdown_grace_secs: Option<Seconds>,
    idle_timeout_secs: Option<Seconds>,
    log_format: Option<LogFormat>,
    fd_store: Option<FdStoreMode>,
    state_dir: Option<PathBuf>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    lookups_per_minute_per_ip: Option<u32>,
    allowed_clients: Option<Vec<String>>,
    allow_listing: Option<bool>,
    trusted_proxies: Option<Vec<String>>,
    #[serde(default)]
    tls: TlsSection,
    #[serde(default)]
    auth: AuthSection,
    #[serde(default)]
    admin: AdminSection,
}

/// `[ssh_proxy.auth]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthSection {
    mode: Option<AuthMode>,
}

/// Who may open which tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone who reaches the port reaches every VPS, as HakuRiver's own proxy.
    #[default]
    Off,
    /// Clients prove a KohakuRiver user with an API token (inside TLS) and reach only
    /// the VPS tasks that user owns or is assigned, or any VPS for operators and admins.
    Kohakuriver,
}

impl std::fmt::Display for AuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthMode::Off => "off",
            AuthMode::Kohakuriver => "kohakuriver",
        })
    }
}

/// Access settings: [`AuthMode`] and whether names and lists are answered without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Access {
    /// `[ssh_proxy.auth] mode`.
    pub mode: AuthMode,
    /// `[ssh_proxy] allow_listing`: answer task names and LIST without auth (then
    /// every client sees every VPS task, as HakuRiver's proxy lets it reach every one).
    pub allow_listing: bool,
}

/// `[ssh_proxy.admin]`: the metrics and health listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminSection {
    listen: Option<Vec<String>>,
    allow_remote: Option<bool>,
}

/// `[ssh_proxy.tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    enable: Option<bool>,
    listen: Option<Vec<String>>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    names: Option<Vec<String>>,
}

/// How the daemon writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// journald when stderr is connected to the journal, text otherwise.
    #[default]
    Auto,
    /// Human-readable lines on stderr.
    Text,
    /// One JSON object per line on stderr.
    Json,
    /// Native journald protocol with structured fields.
    Journald,
}

/// Whether open plain tunnels are kept in systemd's file-descriptor store, so they
/// survive a restart or crash of the daemon (`[ssh_proxy] fd_store`, `--fd-store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FdStoreMode {
    /// On when systemd says the unit has a store: `$FDSTORE` > 0 (systemd 254 and
    /// later set it from `FileDescriptorStoreMax=`) and `NOTIFY_SOCKET` set.
    #[default]
    Auto,
    /// On whenever `NOTIFY_SOCKET` is set (older systemd, such as Debian 12's 252,
    /// does not set `$FDSTORE`: the unit must have `FileDescriptorStoreMax=`).
    On,
    /// Never: SIGTERM drains open tunnels for the grace period.
    Off,
}

/// Command-line values that override the file: declared once here and flattened into
/// the CLI (`cli::GlobalArgs`), so every flag applies to every command.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// HakuRiver config file [default: $HAKURIVER_CONFIG, ~/.hakuriver/config.toml, /etc/hakuriver/config.toml]
    #[arg(short, long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Address of the main listener (overrides network.host_bind_ip) [default: 0.0.0.0]
    #[arg(long, global = true, value_name = "IP")]
    pub bind: Option<String>,
    /// Port of the main listener (overrides network.host_ssh_proxy_port; 0: any) [default: 8002]
    #[arg(long, global = true, value_name = "PORT")]
    pub port: Option<u16>,
    /// HakuRiver's SQLite database (overrides database.db_file)
    #[arg(long, global = true, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// Extra plain listener, ADDR:PORT (repeatable)
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    pub listen: Vec<String>,
    /// Extra TLS listener, ADDR:PORT (repeatable)
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    pub tls_listen: Vec<String>,
    /// The main listener speaks TLS
    #[arg(long, global = true)]
    pub tls: bool,
    /// TLS certificate chain (PEM, leaf first); without it a self-signed one is used
    #[arg(long, global = true, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[arg(long, global = true, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// State directory for the self-signed certificate [default: $STATE_DIRECTORY or /var/lib/hakuriver-ssh-proxy]
    #[arg(long, global = true, value_name = "PATH")]
    pub state_dir: Option<PathBuf>,
    /// Log output [default: auto: journald under systemd, else text]
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Keep open plain tunnels in systemd's fd store across restarts [default: auto: on when $FDSTORE > 0]
    #[arg(long, global = true, value_enum, value_name = "MODE")]
    pub fd_store: Option<FdStoreMode>,
    /// Serve /metrics, /healthz and /readyz on ADDR:PORT (repeatable; loopback unless
    /// [ssh_proxy.admin] allow_remote = true)
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    pub admin_listen: Vec<String>,
}

/// One address to listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenSpec {
    /// Socket address (port 0: the OS picks).
    pub addr: SocketAddr,
    /// Whether connections start with a TLS handshake.
    pub tls: bool,
}

/// Timeouts applied to every connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Request line.
    pub request: Duration,
    /// Runner TCP connect.
    pub connect: Duration,
    /// TLS handshake.
    pub tls_handshake: Duration,
    /// Close a tunnel after this long without a byte either way; `None`: never.
    pub idle: Option<Duration>,
}

/// Connection limits.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Concurrent connections in total.
    pub max_connections: usize,
    /// Concurrent connections per client IP.
    pub max_connections_per_ip: usize,
    /// Task lookups per client IP and minute; 0: unlimited.
    pub lookups_per_minute_per_ip: u32,
    /// Client networks allowed to connect; empty: everyone.
    pub allowed_clients: Vec<Cidr>,
}

/// An IP network such as `10.0.0.0/8` or `2001:db8::/32` (a bare address is a /32 or /128),
/// parsed by `ipnet`.
///
/// IPv4-mapped IPv6 addresses count as IPv4, both in the network (`::ffff:10.0.0.0/104`
/// is `10.0.0.0/8`) and in the addresses tested against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(IpNet);

/// Why an `allowed_clients` entry is not a network; names the setting and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The address part does not parse.
    #[error("allowed_clients: {0:?} is not an IP address or network")]
    Address(String),
    /// The prefix length is not a number or too long for the address family.
    #[error("allowed_clients: {0:?} has an invalid prefix length")]
    Prefix(String),
}

/// Why the configuration is unusable; `Display` is the whole one-line text users see.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {reason}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The system's reason.
        reason: std::io::Error,
    },
    /// The config file is not valid TOML for our schema.
    #[error("invalid config file {}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// toml's message (names the key and its line).
        reason: toml::de::Error,
    },
    /// Config text (no file) is not valid TOML for our schema.
    #[error("{0}")]
    Toml(toml::de::Error),
    /// `host_bind_ip` / `--bind` does not resolve.
    #[error("invalid bind address {text:?}: {reason}")]
    BindAddress {
        /// As written.
        text: String,
        /// Why it does not resolve.
        reason: AddrError,
    },
    /// A listen address lacks a port or has a bad one.
    #[error("listen address {text:?} {reason}")]
    ListenSyntax {
        /// As written.
        text: String,
        /// What is wrong.
        reason: HostPortError,
    },
    /// A listen address's host does not resolve.
    #[error("invalid listen address {text:?}: {reason}")]
    ListenAddress {
        /// As written.
        text: String,
        /// Why it does not resolve.
        reason: AddrError,
    },
    /// The same tunnel address twice.
    #[error("listen address {0} is configured twice")]
    DuplicateListen(SocketAddr),
    /// A timeout of zero.
    #[error("[ssh_proxy] {0} must be greater than 0")]
    ZeroTimeout(&'static str),
    /// A connection limit of zero.
    #[error("[ssh_proxy] max_connections and max_connections_per_ip must be greater than 0")]
    ZeroLimit,
    /// An `allowed_clients` entry is not a network.
    #[error(transparent)]
    AllowedClients(#[from] CidrError),
    /// `[database]` keys that do not fit together, or a token file that cannot be read.
    #[error("{0}")]
    Database(String),
    /// A `trusted_proxies` entry is not a network.
    #[error("trusted_proxies: {0:?} is not an IP address or network")]
    TrustedProxies(String),
    /// An admin address that is not loopback without `allow_remote`.
    #[error("admin listener {0} is not a loopback address; it serves metrics without authentication: set [ssh_proxy.admin] allow_remote = true to expose it")]
    AdminExposed(SocketAddr),
    /// An admin address that is also a tunnel listener.
    #[error("admin address {0} is also a tunnel listener")]
    AdminClash(SocketAddr),
    /// Only one of certificate and key.
    #[error("[ssh_proxy.tls] cert_file and key_file must be given together")]
    CertWithoutKey,
}

/// Why a host name does not give an address.
#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    /// The resolver failed.
    #[error("{0}")]
    Resolve(std::io::Error),
    /// The resolver answered with no address.
    #[error("{0} resolves to no address")]
    NoAddress(String),
}

impl Cidr {
    /// Whether `ip` is inside this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, CidrError> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr.trim(), Some(prefix.trim())),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::Address(text.to_owned()))?;
        let net = match prefix {
            None => IpNet::from(addr),
            Some(p) => {
                let len = p
                    .parse::<u8>()
                    .map_err(|_| CidrError::Prefix(text.to_owned()))?;
                IpNet::new(addr, len).map_err(|_| CidrError::Prefix(text.to_owned()))?
            }
        };
        Ok(Cidr(canonical(net)))
    }
}

/// An IPv4-mapped IPv6 network (`::ffff:a.b.c.d/96+n`) as the IPv4 network it maps.
fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        other => other,
    }
}

/// Fully resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file read, if any.
    pub config_path: Option<PathBuf>,
    /// Addresses to bind when not socket-activated.
    pub listeners: Vec<ListenSpec>,
    /// HakuRiver's SQLite database.
    pub db_path: PathBuf,
    /// Where the task directory comes from: that file, or the Host's HTTP API.
    pub directory: DirectorySettings,
    /// Per-connection timeouts.
    pub timeouts: Timeouts,
    /// Drain period after SIGTERM.
    pub shutdown_grace: Duration,
    /// Log output.
    pub log_format: LogFormat,
    /// Whether open plain tunnels go to systemd's fd store.
    pub fd_store: FdStoreMode,
    /// TLS certificate source (used when any listener speaks TLS): PEM files, or the
    /// self-signed certificate in the state directory.
    pub cert: CertSource,
    /// Connection limits.
    pub limits: Limits,
    /// Authorization, names and lists.
    pub access: Access,
    /// The admin (metrics and health) listener.
    pub admin: AdminSettings,
    /// Peers whose connections start with a PROXY protocol header (v1 or v2) naming
    /// the real client; empty: no PROXY protocol.
    pub trusted_proxies: Vec<Cidr>,
}

/// `[ssh_proxy.admin]`, resolved.
#[derive(Debug, Clone, Default)]
pub struct AdminSettings {
    /// Addresses to serve `/metrics`, `/healthz` and `/readyz` on; empty: none.
    pub listen: Vec<SocketAddr>,
    /// Whether a non-loopback admin address is allowed.
    pub allow_remote: bool,
}

impl AdminSettings {
    /// Refuses `addr` unless it is a loopback address or `allow_remote` is set.
    pub fn check_exposure(&self, addr: SocketAddr) -> Result<(), ConfigError> {
        if !self.allow_remote && !addr.ip().to_canonical().is_loopback() {
            return Err(ConfigError::AdminExposed(addr));
        }
        Ok(())
    }
}

impl Settings {
    /// Whether any configured listener speaks TLS.
    pub fn any_tls(&self) -> bool {
        self.listeners.iter().any(|l| l.tls)
    }
}

/// The config file to read: `--config`, `$HAKURIVER_CONFIG`, `~/.hakuriver/config.toml`
/// if present, else `/etc/hakuriver/config.toml` if present, else none (defaults).
pub fn config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    hakuriver_tunnel::config::locate_with_system(explicit, Path::new(SYSTEM_CONFIG)).path
}

/// Reads the config file (if any) and applies the overrides.
pub fn load(overrides: &Overrides) -> Result<Settings, ConfigError> {
    let path = config_path(overrides.config.as_deref());
    let file = match &path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
                path: path.clone(),
                reason,
            })?;
            toml::from_str(&text).map_err(|reason| ConfigError::File {
                path: path.clone(),
                reason,
            })?
        }
        None => HostFile::default(),
    };
    resolve(file, path, overrides)
}

fn parse(text: &str) -> Result<HostFile, ConfigError> {
    // toml's message names the offending key and its line.
    toml::from_str(text).map_err(ConfigError::Toml)
}

/// Parses and resolves config text (used by `check` and tests).
pub fn from_str(text: &str, overrides: &Overrides) -> Result<Settings, ConfigError> {
    resolve(parse(text)?, None, overrides)
}

fn resolve(
    file: HostFile,
    config_path: Option<PathBuf>,
    o: &Overrides,
) -> Result<Settings, ConfigError> {
    let HostFile {
        network,
        database,
        ssh_proxy: p,
    } = file;
    let bind = o
        .bind
        .clone()
        .or(network.host_bind_ip)
        .unwrap_or_else(|| DEFAULT_BIND_IP.to_owned());
    let port = o
        .port
        .or(network.host_ssh_proxy_port)
        .unwrap_or(DEFAULT_PROXY_PORT);
    let main_tls = o.tls || p.tls.enable.unwrap_or(false);

    let mut listeners = vec![ListenSpec {
        addr: resolve_addr(&bind, port).map_err(|reason| ConfigError::BindAddress {
            text: bind.clone(),
            reason,
        })?,
        tls: main_tls,
    }];
    let plain = p
        .listen
        .unwrap_or_default()
        .into_iter()
        .chain(o.listen.iter().cloned());
    let tls = p
        .tls
        .listen
        .unwrap_or_default()
        .into_iter()
        .chain(o.tls_listen.iter().cloned());
    for (text, is_tls) in plain.map(|t| (t, false)).chain(tls.map(|t| (t, true))) {
        let addr = parse_listen(&text)?;
        let spec = ListenSpec { addr, tls: is_tls };
        if addr.port() != 0 && listeners.iter().any(|l| l.addr == addr) {
            return Err(ConfigError::DuplicateListen(addr));
        }
        listeners.push(spec);
    }

    let positive = |name: &'static str, value: Option<Seconds>, default: Duration| {
        let value = value.map_or(default, |s| s.0);
        if value.is_zero() {
            return Err(ConfigError::ZeroTimeout(name));
        }
        Ok(value)
    };
    let timeouts = Timeouts {
        request: positive(
            "request_timeout_secs",
            p.request_timeout_secs,
            REQUEST_TIMEOUT,
        )?,
        connect: positive(
            "connect_timeout_secs",
            p.connect_timeout_secs,
            CONNECT_TIMEOUT,
        )?,
        tls_handshake: positive(
            "tls_handshake_timeout_secs",
            p.tls_handshake_timeout_secs,
            TLS_HANDSHAKE_TIMEOUT,
        )?,
        idle: p.idle_timeout_secs.map(|s| s.0).filter(|d| !d.is_zero()),
    };
    let limits = Limits {
        max_connections: p.max_connections.unwrap_or(MAX_CONNECTIONS),
        max_connections_per_ip: p.max_connections_per_ip.unwrap_or(MAX_CONNECTIONS_PER_IP),
        lookups_per_minute_per_ip: p
            .lookups_per_minute_per_ip
            .unwrap_or(LOOKUPS_PER_MINUTE_PER_IP),
        allowed_clients: p
            .allowed_clients
            .unwrap_or_default()
            .iter()
            .map(|c| c.parse())
            .collect::<Result<_, CidrError>>()?,
    };
    if limits.max_connections == 0 || limits.max_connections_per_ip == 0 {
        return Err(ConfigError::ZeroLimit);
    }
    let admin = AdminSettings {
        listen: p
            .admin
            .listen
            .unwrap_or_default()
            .iter()
            .chain(o.admin_listen.iter())
            .map(|text| parse_listen(text))
            .collect::<Result<_, _>>()?,
        allow_remote: p.admin.allow_remote.unwrap_or(false),
    };
    for addr in &admin.listen {
        admin.check_exposure(*addr)?;
        if addr.port() != 0 && listeners.iter().any(|l| l.addr == *addr) {
            return Err(ConfigError::AdminClash(*addr));
        }
    }
    let trusted_proxies = p
        .trusted_proxies
        .unwrap_or_default()
        .iter()
        .map(|c| {
            c.parse::<Cidr>()
                .map_err(|_| ConfigError::TrustedProxies(c.clone()))
        })
        .collect::<Result<_, _>>()?;
    let state_dir = o
        .state_dir
        .clone()
        .or(p.state_dir)
        .or_else(|| std::env::var_os("STATE_DIRECTORY").map(|v| first_path(&v)))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));

    let cert = match (
        o.tls_cert.clone().or(p.tls.cert_file),
        o.tls_key.clone().or(p.tls.key_file),
    ) {
        (Some(cert), Some(key)) => CertSource::Files { cert, key },
        (None, None) => CertSource::SelfSigned {
            state_dir,
            names: p.tls.names.unwrap_or_else(default_names),
        },
        _ => return Err(ConfigError::CertWithoutKey),
    };

    let directory = match database.kind.unwrap_or_default() {
        DirectoryKind::Sqlite => {
            if database.url.is_some() || database.token_file.is_some() || database.api.is_some() {
                return Err(ConfigError::Database(
                    "[database] url, api and token_file need kind = \"http\"".to_owned(),
                ));
            }
            DirectorySettings::Sqlite
        }
        DirectoryKind::Http => {
            if p.auth.mode == Some(AuthMode::Kohakuriver) {
                return Err(ConfigError::Database("[ssh_proxy.auth] mode = \"kohakuriver\" needs [database] kind = \"sqlite\": the Host API gives no users or tokens".to_owned()));
            }
            DirectorySettings::Http(resolve_http(&database)?)
        }
    };
    Ok(Settings {
        config_path,
        listeners,
        directory,
        db_path: o
            .db
            .clone()
            .or(database.db_file)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DB_FILE)),
        timeouts,
        shutdown_grace: p.shutdown_grace_secs.map_or(SHUTDOWN_GRACE, |s| s.0),
        log_format: o.log_format.or(p.log_format).unwrap_or_default(),
        fd_store: o.fd_store.or(p.fd_store).unwrap_or_default(),
        cert,
        limits,
        access: Access {
            mode: p.auth.mode.unwrap_or_default(),
            allow_listing: p.allow_listing.unwrap_or(false),
        },
        admin,
        trusted_proxies,
    })
}

/// systemd's `$STATE_DIRECTORY` may list several directories separated by `:`.
fn first_path(value: &std::ffi::OsStr) -> PathBuf {
    let text = value.to_string_lossy();
    PathBuf::from(text.split(':').next().unwrap_or_default())
}

fn default_names() -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            names.push(host.to_owned());
        }
    }
    names.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
    names
}

/// `host_bind_ip` may be an IP or a name (HakuRiver passes it to asyncio as is).
fn resolve_addr(host: &str, port: u16) -> Result<SocketAddr, AddrError> {
    let host = hakuriver_tunnel::net::strip_brackets(host);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()
        .map_err(AddrError::Resolve)?
        .next()
        .ok_or_else(|| AddrError::NoAddress(host.to_owned()))
}

/// `ip:port`, `[v6]:port` or `host:port`.
fn parse_listen(text: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let HostPort { host, port } =
        HostPort::parse(text).map_err(|reason| ConfigError::ListenSyntax {
            text: text.to_owned(),
            reason,
        })?;
    resolve_addr(&host, port).map_err(|reason| ConfigError::ListenAddress {
        text: text.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_over_http() {
        let o = Overrides::default();
        let s = from_str("", &o).expect("defaults");
        assert_eq!(s.directory, DirectorySettings::Sqlite);
        let s = from_str(
            "[database]\ndb_file = \"/x.db\"\nkind = \"http\"\nurl = \"http://host:8000\"\n",
            &o,
        )
        .expect("http");
        let DirectorySettings::Http(http) = s.directory else {
            panic!("not http");
        };
        assert_eq!(
            (http.authority.as_str(), http.prefix.as_str(), http.token),
            ("host:8000", "", None)
        );
        assert_eq!((http.cache, http.stale), (HTTP_CACHE, HTTP_STALE));
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "abc123\n").expect("write");
        let text = format!(
            "[database]\nkind = \"http\"\nurl = \"http://[::1]/\"\napi = \"kohakuriver\"\ntoken_file = \"{}\"\ncache_secs = 5\nstale_secs = 0\n",
            token.display()
        );
        let DirectorySettings::Http(http) = from_str(&text, &o).expect("1.0").directory else {
            panic!("not http");
        };
        assert_eq!(
            (http.authority.as_str(), http.prefix.as_str()),
            ("[::1]:80", "/api")
        );
        assert_eq!(http.token.as_deref(), Some("abc123"));
        assert_eq!(
            (http.cache, http.stale),
            (Duration::from_secs(5), Duration::ZERO)
        );
        for (bad, says) in [
            ("[database]\nkind = \"http\"\n", "needs url"),
            ("[database]\nkind = \"http\"\nurl = \"https://h:1\"\n", "plain HTTP only"),
            ("[database]\nurl = \"http://h:1\"\n", "need kind"),
            ("[database]\nkind = \"http\"\nurl = \"http://h:1\"\ncache_secs = 0\n", "greater than 0"),
            ("[database]\nkind = \"postgres\"\n", "unknown variant"),
            ("[database]\nkind = \"http\"\nurl = \"http://h:1\"\n[ssh_proxy.auth]\nmode = \"kohakuriver\"\n", "needs [database] kind = \"sqlite\""),
            ("[database]\ndb_fle = \"/x\"\n", "unknown field"),
            ("[database]\nkind = \"http\"\nurl = \"http://h:1\"\ntoken_file = \"/nonexistent/t\"\n", "token_file"),
        ] {
            let err = format!("{:#}", from_str(bad, &o).expect_err(bad));
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    /// A host config as HakuRiver 0.3.0's `hakuriver.init` writes it.
    const HAKURIVER_HOST_CONFIG: &str = r#"
[network]
host_bind_ip = "0.0.0.0"
host_port = 8000
host_ssh_proxy_port = 8002
host_reachable_address = "192.168.1.10"
runner_address = "127.0.0.1"
runner_port = 8001

[paths]
shared_dir = "/mnt/cluster-share"
local_temp_dir = "/tmp/hakuriver"
numactl_path = ""

[database]
db_file = "/mnt/cluster-share/hakuriver-data/hakuriver.db"

[timing]
heartbeat_interval = 5
heartbeat_timeout_factor = 6
cleanup_check_interval = 10

[environment]
runner_user = "hakuriver"

[docker]
container_dir = "hakuriver-containers"
default_container_name = "hakuriver-base"
initial_base_image = "python:3.12-alpine"
tasks_privileged = false
additional_mounts = []
"#;

    #[test]
    fn reads_a_hakuriver_host_config_unchanged() {
        let s = from_str(HAKURIVER_HOST_CONFIG, &Overrides::default()).expect("valid");
        assert_eq!(
            s.listeners,
            vec![ListenSpec {
                addr: "0.0.0.0:8002".parse().expect("addr"),
                tls: false
            }]
        );
        assert_eq!(
            s.db_path,
            PathBuf::from("/mnt/cluster-share/hakuriver-data/hakuriver.db")
        );
        assert_eq!(s.timeouts.request, REQUEST_TIMEOUT);
        assert_eq!(s.timeouts.connect, CONNECT_TIMEOUT);
        assert_eq!(s.timeouts.idle, None);
        assert_eq!(s.log_format, LogFormat::Auto);
        assert_eq!(s.fd_store, FdStoreMode::Auto);
    }

    #[test]
    fn empty_file_gives_hakuriver_defaults() {
        let s = from_str("", &Overrides::default()).expect("valid");
        assert_eq!(s.listeners[0].addr, "0.0.0.0:8002".parse().expect("addr"));
        assert_eq!(s.db_path, PathBuf::from(DEFAULT_DB_FILE));
        assert!(!s.any_tls());
    }

    #[test]
    fn flags_override_the_file() {
        let o = Overrides {
            bind: Some("127.0.0.1".into()),
            port: Some(0),
            db: Some("/tmp/x.db".into()),
            listen: vec!["[::1]:0".into()],
            tls_listen: vec!["127.0.0.1:8443".into()],
            ..Overrides::default()
        };
        let s = from_str(HAKURIVER_HOST_CONFIG, &o).expect("valid");
        assert_eq!(s.db_path, PathBuf::from("/tmp/x.db"));
        let addrs: Vec<_> = s
            .listeners
            .iter()
            .map(|l| (l.addr.to_string(), l.tls))
            .collect();
        assert_eq!(
            addrs,
            [
                ("127.0.0.1:0".into(), false),
                ("[::1]:0".into(), false),
                ("127.0.0.1:8443".into(), true)
            ]
        );
    }

    #[test]
    fn our_section_is_read_and_checked() {
        let text = r#"
[ssh_proxy]
listen = ["[::]:8002"]
request_timeout_secs = 0.5
connect_timeout_secs = 2
shutdown_grace_secs = 0
idle_timeout_secs = 3600
log_format = "json"
fd_store = "on"
max_connections = 10
max_connections_per_ip = 2
lookups_per_minute_per_ip = 0
allowed_clients = ["10.0.0.0/8", "192.168.1.7", "fd00::/8"]
[ssh_proxy.tls]
enable = true
listen = ["0.0.0.0:8443"]
cert_file = "/etc/c.pem"
key_file = "/etc/k.pem"
"#;
        let s = from_str(text, &Overrides::default()).expect("valid");
        assert_eq!(s.access, Access::default());
        let auth = from_str(
            "[ssh_proxy]\nallow_listing = true\n[ssh_proxy.auth]\nmode = \"kohakuriver\"\n",
            &Overrides::default(),
        )
        .expect("valid");
        assert_eq!(
            auth.access,
            Access {
                mode: AuthMode::Kohakuriver,
                allow_listing: true
            }
        );
        assert!(from_str("[ssh_proxy.auth]\nmode = \"ldap\"\n", &Overrides::default()).is_err());
        assert_eq!(s.timeouts.request, Duration::from_millis(500));
        assert_eq!(s.timeouts.connect, Duration::from_secs(2));
        assert_eq!(s.timeouts.idle, Some(Duration::from_secs(3600)));
        assert_eq!(s.shutdown_grace, Duration::ZERO);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.fd_store, FdStoreMode::On);
        assert_eq!(s.limits.max_connections, 10);
        assert_eq!(s.limits.lookups_per_minute_per_ip, 0);
        let allowed = |ip: &str| {
            s.limits
                .allowed_clients
                .iter()
                .any(|c| c.contains(ip.parse().expect("ip")))
        };
        assert!(
            allowed("10.1.2.3")
                && allowed("192.168.1.7")
                && allowed("fd00::1")
                && allowed("::ffff:10.0.0.1")
        );
        assert!(!allowed("11.0.0.1") && !allowed("192.168.1.8") && !allowed("fe80::1"));
        assert_eq!(s.listeners.len(), 3);
        assert!(s.listeners[0].tls && !s.listeners[1].tls && s.listeners[2].tls);
        assert_eq!(
            s.cert,
            CertSource::Files {
                cert: "/etc/c.pem".into(),
                key: "/etc/k.pem".into()
            }
        );
    }

    /// Every config file the repository ships for the proxy must load.
    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("deploy/config") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).expect("read");
                from_str(&text, &Overrides::default())
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 3, "only {seen} configs in {}", dir.display());
    }

    #[test]
    fn misspelt_keys_are_named() {
        let err = from_str("[ssh_proxy]\nrequest_timeout = 3\n", &Overrides::default())
            .expect_err("unknown key");
        assert!(format!("{err:#}").contains("request_timeout"), "{err:#}");
        let err = from_str("[ssh_proxy.tls]\ncert = \"x\"\n", &Overrides::default())
            .expect_err("unknown key");
        assert!(format!("{err:#}").contains("cert"), "{err:#}");
    }

    #[test]
    fn cidr_edges() {
        let any4: Cidr = "0.0.0.0/0".parse().expect("cidr");
        assert!(any4.contains("1.2.3.4".parse().expect("ip")));
        assert!(!any4.contains("::1".parse().expect("ip")));
        let any6: Cidr = "::/0".parse().expect("cidr");
        assert!(any6.contains("2001:db8::1".parse().expect("ip")));
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().expect("cidr");
        assert!(mapped.contains("10.1.2.3".parse().expect("ip")));
        assert!(mapped.contains("::ffff:10.1.2.3".parse().expect("ip")));
        let ten: Cidr = "10.0.0.0/8".parse().expect("cidr");
        assert!(ten.contains("::ffff:10.9.9.9".parse().expect("ip")));
        for (bad, names) in [("10.0.0.0/33", "prefix"), ("example.org", "not an IP")] {
            let err = bad.parse::<Cidr>().expect_err(bad).to_string();
            assert!(
                err.contains("allowed_clients") && err.contains(bad),
                "{err}"
            );
            assert!(err.contains(names), "{err}");
        }
        let one: Cidr = "127.0.0.1".parse().expect("cidr");
        assert!(
            one.contains("127.0.0.1".parse().expect("ip"))
                && !one.contains("127.0.0.2".parse().expect("ip"))
        );
    }

    /// The shipped configs (deploy/config) and the README's examples parse.
    #[test]
    fn shipped_examples_parse() {
        let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut checked = 0;
        for entry in std::fs::read_dir(top.join("deploy/config")).expect("deploy/config") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).expect("read");
                from_str(&text, &Overrides::default())
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                checked += 1;
            }
        }
        let readme = std::fs::read_to_string(top.join("README.md")).expect("README");
        for block in readme.split("```toml\n").skip(1) {
            let block = block.split("```").next().unwrap_or_default();
            if block.contains("[ssh_proxy") || block.contains("[network]") {
                from_str(block, &Overrides::default())
                    .unwrap_or_else(|e| panic!("README example {block:?}: {e:#}"));
                checked += 1;
            }
        }
        assert!(checked >= 3, "only {checked} examples found");
    }

    #[test]
    fn admin_and_trusted_proxies_are_read() {
        let settings = from_str("", &Overrides::default()).expect("defaults");
        assert!(
            settings.admin.listen.is_empty(),
            "admin listener off by default"
        );
        assert!(settings.trusted_proxies.is_empty());
        let text = "[ssh_proxy]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.2\"]\n\
                    [ssh_proxy.admin]\nlisten = [\"127.0.0.1:9102\", \"[::1]:9102\"]\n";
        let o = Overrides {
            admin_listen: vec!["127.0.0.1:9103".to_owned()],
            ..Overrides::default()
        };
        let settings = from_str(text, &o).expect("parses");
        let listen: Vec<String> = settings
            .admin
            .listen
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(listen, ["127.0.0.1:9102", "[::1]:9102", "127.0.0.1:9103"]);
        assert!(!settings.admin.allow_remote);
        assert_eq!(settings.trusted_proxies.len(), 2);
        assert!(settings.trusted_proxies[0].contains("10.9.8.7".parse().expect("ip")));
        assert!(settings.trusted_proxies[1].contains("127.0.0.2".parse().expect("ip")));
        assert!(!settings.trusted_proxies[1].contains("127.0.0.1".parse().expect("ip")));
        let remote = "[ssh_proxy.admin]\nlisten = [\"0.0.0.0:9102\"]\nallow_remote = true\n";
        assert!(from_str(remote, &Overrides::default()).is_ok());
        let err = from_str(
            "[ssh_proxy.admin]\nlisten = [\"0.0.0.0:9102\"]\n",
            &Overrides::default(),
        )
        .expect_err("refused");
        let err = format!("{err:#}");
        assert!(
            err.contains("not a loopback address") && !err.contains('\n'),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_refused() {
        let bad = [
            "[ssh_proxy]\nrequest_timeout_secs = 0\n",
            "[ssh_proxy]\nlisten = [\"nowhere\"]\n",
            "[ssh_proxy]\nlog_format = \"xml\"\n",
            "[ssh_proxy.tls]\ncert_file = \"/c.pem\"\n",
            "[network]\nhost_ssh_proxy_port = 70000\n",
            "[ssh_proxy]\nmax_connections = 0\n",
            "[ssh_proxy]\nallowed_clients = [\"10.0.0.0/33\"]\n",
            "[ssh_proxy]\nallowed_clients = [\"example.org\"]\n",
            "[ssh_proxy.admin]\nlisten = [\"0.0.0.0:9102\"]\n",
            "[ssh_proxy.admin]\nlisten = [\"10.1.2.3:9102\"]\nallow_remote = false\n",
            "[ssh_proxy.admin]\nport = 9102\n",
            "[ssh_proxy]\ntrusted_proxies = [\"10.0.0.0/40\"]\n",
        ];
        for text in bad {
            assert!(from_str(text, &Overrides::default()).is_err(), "{text}");
        }
    }
}
