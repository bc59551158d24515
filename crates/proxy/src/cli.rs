//! The command line: `serve` (default), `check`, `fingerprint`, `health`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use hakuriver_tunnel::protocol::{self, Response};
use hakuriver_tunnel::{Request, TaskId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{self, DirectorySettings, Overrides, Settings};
use crate::directory::TaskDirectory;
use crate::fdstore::FdStore;
use crate::listener::{self, Bound, Role};
use crate::server::{self, Listener, ProxyState};
use crate::{admin, handover, logging, notify, tls};

/// HakuRiver Host SSH proxy: routes `REQUEST_TUNNEL <task_id>` to the VPS container's sshd.
///
/// Reads HakuRiver's Host config.toml (`[network] host_bind_ip`, `host_ssh_proxy_port`,
/// `[database] db_file`) and the optional `[ssh_proxy]` section; flags override both.
#[derive(Debug, Parser)]
#[command(name = "hakuriver-ssh-proxy", version, about, long_about = None)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options shared by all commands.
    #[command(flatten)]
    pub global: GlobalArgs,
}

/// Options shared by all commands.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Flags that override the config file.
    #[command(flatten)]
    pub overrides: Overrides,
    /// More log output (debug level)
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve tunnels (the default)
    Serve,
    /// Validate the config, open the database, print what would be served
    Check,
    /// Print the SHA-256 fingerprint of the TLS certificate, for clients to pin
    Fingerprint,
    /// Probe a running proxy: a real request for task 0 must be answered "Task 0 not found."
    Health {
        /// Proxy to probe [default: the main listener, on loopback]
        #[arg(long, value_name = "HOST:PORT")]
        addr: Option<String>,
        /// Seconds to wait for the answer
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
    },
}

/// Runs the parsed command line and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    let result = config::load(&cli.global.overrides)
        .map_err(anyhow::Error::from)
        .and_then(|settings| match cli.command {
            None | Some(Command::Serve) => serve(settings, cli.global.verbose),
            Some(Command::Check) => check(&settings),
            Some(Command::Fingerprint) => fingerprint(&settings),
            Some(Command::Health { addr, timeout }) => health(&settings, addr.as_deref(), timeout),
        });
    match result {
        Ok(code) => code,
        Err(e) => {
            if tracing::dispatcher::has_been_set() {
                tracing::error!("{e:#}");
            }
            eprintln!("hakuriver-ssh-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Keeps glibc's allocator to one arena unless `MALLOC_ARENA_MAX` says otherwise.
///
/// glibc gives threads that contend on malloc arenas of their own (up to 8 per core), and
/// a tunnel's allocations then land in several arenas with free space stranded in each:
/// with one arena an idle tunnel costs ~10% less (BENCHMARKS.md); small allocations
/// still come from per-thread caches without taking the arena lock. Must run before the
/// runtime starts its threads.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn one_malloc_arena() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes allocator tuning; M_ARENA_MAX with a positive value
        // is valid at any time, and no other thread exists yet to race with it.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn serve(settings: Settings, verbose: bool) -> Result<ExitCode> {
    one_malloc_arena();
    logging::init(settings.log_format, verbose);
    // Before the runtime starts threads: this unsets the LISTEN_* variables.
    let passed = listener::from_systemd()?;
    let store = FdStore::from_env(settings.fd_store);
    if store.is_enabled() {
        info!(
            capacity = store.capacity().map(tracing::field::display),
            "open tunnels are kept in systemd's fd store across restarts"
        );
    }
    let (plain, resumable): (Vec<_>, Vec<_>) = passed
        .stored
        .into_iter()
        .partition(|g| g.id.kind == crate::fdstore::PLAIN_TUNNEL);
    let adopted = handover::adopt_all(&store, plain);
    let handed = crate::resume::adopt_all(&store, resumable);
    if !adopted.is_empty() || !handed.is_empty() {
        info!(
            plain = adopted.len(),
            resumable = handed.len(),
            "adopted {} tunnels from the fd store",
            adopted.len() + handed.len()
        );
    }
    let sockets = match passed.listeners {
        Some(sockets) => {
            info!(count = sockets.len(), "using sockets passed by systemd");
            sockets
        }
        None => listener::bind_all(&settings.listeners)?,
    };
    let (mut admin, sockets): (Vec<_>, Vec<_>) =
        sockets.into_iter().partition(|s| s.role == Role::Admin);
    if admin.is_empty() {
        admin = listener::bind_admin(&settings.admin.listen)?;
    }
    for bound in &admin {
        settings.admin.check_exposure(bound.local_addr()?)?;
    }
    let sockets: Vec<Bound> = sockets.into_iter().chain(admin).collect();
    let serving_cert = if sockets.iter().any(|s| s.role == Role::Tls) {
        Some(tls::ServingCert::load(&settings).context("cannot set up TLS")?)
    } else {
        None
    };
    runtime()?.block_on(run(settings, sockets, serving_cert, store, adopted, handed))?;
    Ok(ExitCode::SUCCESS)
}

async fn run(
    settings: Settings,
    sockets: Vec<Bound>,
    serving_cert: Option<tls::ServingCert>,
    store: FdStore,
    adopted: Vec<handover::Adopted>,
    handed: Vec<crate::resume::Handed>,
) -> Result<()> {
    // Before anyone can learn we listen: a SIGTERM right after READY=1 must drain, not kill.
    let signals = Signals::install().context("cannot install signal handlers")?;
    let mut listeners = Vec::with_capacity(sockets.len());
    let mut admin_listeners = Vec::new();
    for bound in sockets {
        let addr = bound.local_addr()?;
        let tcp = tokio::net::TcpListener::from_std(bound.socket)?;
        if bound.role == Role::Admin {
            info!(addr = %addr, "admin listening (/metrics, /healthz, /readyz)");
            admin_listeners.push(tcp);
            continue;
        }
        let listener = if bound.role == Role::Tls {
            let Some(cert) = &serving_cert else {
                anyhow::bail!("{addr}: a TLS listener without a TLS certificate");
            };
            Listener::tls(tcp, cert.acceptor())
        } else {
            Listener::plain(tcp)
        };
        info!(addr = %addr, transport = %listener.kind.name(), "listening");
        listeners.push(listener);
    }
    let directory = match &settings.directory {
        DirectorySettings::Sqlite => TaskDirectory::new(&settings.db_path),
        DirectorySettings::Http(http) => TaskDirectory::over_http(http.clone()),
    };
    if directory.http().is_some() {
        match directory.count_active_async().await {
            Ok(n) => info!(api = %directory.source(), active_vps = n, "Host API readable"),
            Err(e) => warn!(error = %e, "Host API not readable yet; lookups will fail until it is"),
        }
    } else {
        let first_check = {
            let directory = directory.clone();
            tokio::task::spawn_blocking(move || {
                Ok::<_, crate::directory::DbError>((directory.schema()?, directory.count_active()?))
            })
            .await?
        };
        match &first_check {
            Ok((schema, n)) => {
                info!(db = %settings.db_path.display(), schema = %schema, active_vps = n, "database readable")
            }
            Err(e) => warn!(error = %e, "database not readable yet; lookups will fail until it is"),
        }
    }
    if let Some(cert) = &serving_cert {
        info!(fingerprint = %cert.fingerprint(), "TLS certificate loaded");
    }
    let state = Arc::new(
        ProxyState::new(directory, settings.timeouts, settings.limits)
            .with_access(settings.access)
            .with_resume(settings.resume)
            .with_trusted_proxies(settings.trusted_proxies.clone())
            .with_fd_store(store),
    );
    let shutdown = CancellationToken::new();
    let reporting = CancellationToken::new();

    tokio::spawn(handle_signals(
        signals,
        shutdown.clone(),
        Arc::clone(&state),
        serving_cert,
    ));
    tokio::spawn(notify::report(Arc::clone(&state), reporting.clone()));
    let admin_stop = CancellationToken::new();
    let admin = tokio::spawn(admin::serve_admin(
        admin_listeners,
        Arc::clone(&state),
        admin_stop.clone(),
    ));
    notify::ready(&state.stats.summary());

    let cut = server::serve_adopting(
        listeners,
        adopted,
        handed,
        Arc::clone(&state),
        shutdown,
        settings.shutdown_grace,
    )
    .await;
    if state.handing_over() {
        let kept = state.handed_over();
        info!(
            tunnels = kept,
            "handed open tunnels over to the next start (fd store; a stop closes them)"
        );
        notify::stopping(&format!("handed over {kept} tunnels"));
    }
    reporting.cancel();
    admin_stop.cancel();
    let _ = admin.await;
    info!(cut_tunnels = cut, summary = %state.stats.summary(), "stopped");
    Ok(())
}

/// SIGTERM, SIGINT and SIGHUP streams, registered with the runtime.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

async fn handle_signals(
    signals: Signals,
    shutdown: CancellationToken,
    state: Arc<ProxyState>,
    serving_cert: Option<tls::ServingCert>,
) {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    loop {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => {
                notify::reloading();
                match &serving_cert {
                    Some(cert) => match cert.reload() {
                        Ok(fp) => info!(fingerprint = %fp, "TLS certificate reloaded"),
                        Err(e) => warn!(error = %format!("{:#}", anyhow::Error::from(e)), "TLS certificate reload failed; keeping the current one"),
                    },
                    None => info!("SIGHUP: nothing to reload (no TLS listener)"),
                }
                notify::ready(&state.stats.summary());
                continue;
            }
        };
        if state.fd_store().is_enabled() {
            // A restart (or the stop that ends every tunnel with the store): kept
            // tunnels wait in the fd store, nothing drains.
            info!(
                signal = name,
                "shutting down: no new connections; tunnels stay in the fd store"
            );
            state.hand_over();
        } else {
            info!(signal = name, "shutting down: no new connections");
            notify::stopping(&format!("draining: {}", state.stats.summary()));
        }
        shutdown.cancel();
        return;
    }
}

fn check(settings: &Settings) -> Result<ExitCode> {
    match &settings.config_path {
        Some(path) => println!("config:    {}", path.display()),
        None => println!("config:    none (built-in defaults)"),
    }
    for l in &settings.listeners {
        println!(
            "listen:    {} ({})",
            l.addr,
            if l.tls { "tls" } else { "plain" }
        );
    }
    if settings.any_tls() {
        let cert = tls::ServingCert::load(settings)?;
        println!("tls:       {}", cert.fingerprint());
    }
    for addr in &settings.admin.listen {
        println!("admin:     {addr} (/metrics, /healthz, /readyz)");
    }
    for net in &settings.trusted_proxies {
        println!("trusted proxy: {net}");
    }
    if let DirectorySettings::Http(http) = &settings.directory {
        println!(
            "database:  http://{}{} (Host API)",
            http.authority, http.prefix
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("database:  {}", settings.db_path.display());
    let directory = TaskDirectory::new(&settings.db_path);
    let cannot_read = || {
        format!(
            "cannot read the HakuRiver database {}",
            settings.db_path.display()
        )
    };
    let schema = directory.schema().with_context(cannot_read)?;
    println!("schema:    {schema}");
    let active = directory.count_active().with_context(cannot_read)?;
    println!("active VPS tasks: {active}");
    Ok(ExitCode::SUCCESS)
}

fn fingerprint(settings: &Settings) -> Result<ExitCode> {
    println!("{}", tls::ServingCert::load(settings)?.fingerprint());
    Ok(ExitCode::SUCCESS)
}

/// The main listener's address as seen from this host (wildcards become loopback).
fn local_probe_addr(settings: &Settings) -> Result<(SocketAddr, bool)> {
    let main = settings
        .listeners
        .first()
        .context("no listener configured")?;
    let ip = match main.addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok((SocketAddr::new(ip, main.addr.port()), main.tls))
}

fn health(settings: &Settings, addr: Option<&str>, timeout: f64) -> Result<ExitCode> {
    let (default_addr, tls) = local_probe_addr(settings)?;
    let target = addr.map_or_else(|| default_addr.to_string(), str::to_owned);
    let timeout = Duration::try_from_secs_f64(timeout).context("invalid --timeout")?;
    let pin = if tls {
        Some(tls::ServingCert::load(settings)?.fingerprint())
    } else {
        None
    };
    let outcome = runtime()?.block_on(async {
        tokio::time::timeout(timeout, probe(&target, pin))
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "no answer within {}s",
                    timeout.as_secs_f64()
                ))
            })
    });
    match outcome {
        Ok(()) => {
            println!("healthy: {target} answered and read its database");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("unhealthy: {target}: {e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Task 0 never exists (HakuRiver's IDs are snowflakes), so a healthy proxy that can
/// read its database answers `Task 0 not found.`; a database problem gives a
/// different answer.
async fn probe(target: &str, pin: Option<hakuriver_tunnel::tls::Fingerprint>) -> Result<()> {
    let tcp = TcpStream::connect(target).await.context("cannot connect")?;
    match pin {
        None => probe_over(tcp).await,
        Some(pin) => probe_over(tls::connect_pinned(tcp, pin).await?).await,
    }
}

async fn probe_over<S: AsyncRead + AsyncWrite + Unpin>(stream: S) -> Result<()> {
    let request = Request {
        task_id: TaskId::try_from(0)?,
    };
    // The caller bounds the whole probe; this one is only a backstop.
    let (response, _) = protocol::request_tunnel(stream, &request.encode(), Duration::MAX)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    match response {
        Response::Error(msg) if msg == "Task 0 not found." => Ok(()),
        Response::Error(msg) => bail!("unexpected answer: {msg}"),
        Response::Success | Response::Resumable(_) | Response::Resumed(_) => {
            bail!("task 0 unexpectedly routed")
        }
    }
}
