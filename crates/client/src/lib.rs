//! `hakuriver-ssh`: reach a HakuRiver VPS task by its ID through the Host SSH proxy,
//! with OpenSSH as it is.
//!
//! # Layout
//! - [`cli`]: the command line (also the source of `--help`, completions and the man page).
//! - [`config`]: HakuRiver's `config.toml` plus our `[ssh_client]` section and the flags,
//!   resolved into [`config::Settings`].
//! - [`dial`]: the proxy's address ([`dial::Target`]) and the TCP connect to it.
//! - [`tunnel`]: connect, request, read the reply; returns the stream with any bytes
//!   that followed `SUCCESS` still buffered.
//! - [`transport`]: what runs over the TCP socket: plain, or TLS verified before the
//!   request is sent.
//! - [`tls_errors`]: one-line explanations of failed TLS handshakes, naming our flags.
//! - [`trust`]: the `~/.hakuriver/known_proxies` store and the `trust` command.
//! - [`token`]: the KohakuRiver API token (`--token-file`, `$KOHAKURIVER_TOKEN`,
//!   `~/.kohakuriver/auth.json`), sent only inside verified TLS.
//! - [`display`]: text from the network made safe to print (escapes shown, long cut).
//! - [`session`]: the interactive mode: local listener, `ssh`, relays, exit status.
//! - [`stdio`]: the ProxyCommand mode (`--stdio`).
//! - [`resumable`]: a resumable tunnel's reconnect-and-resume loop (both modes).
//! - [`ssh_config`]: the `~/.ssh/config` block `ssh-config` prints.
//! - [`list`]: the `list` command: the VPS tasks the proxy says you may reach.
//! - [`error`]: every failure with the one line the user sees.
//!
//! The wire protocol and the relay come from `hakuriver-tunnel`, shared with the proxy.

#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod dial;
pub mod display;
pub mod error;
pub mod list;
pub mod resumable;
pub mod session;
pub mod ssh_config;
pub mod stdio;
pub mod tls_errors;
pub mod token;
pub mod transport;
pub mod trust;
pub mod tunnel;

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;

use clap::CommandFactory;
use hakuriver_tunnel::protocol::TaskRef;

use crate::cli::{Cli, Command};
use crate::error::ClientError;
use crate::transport::Transport;
use crate::tunnel::{Connector, Target};

/// The name used in messages when `argv[0]` says nothing useful.
pub const PROGRAM: &str = "hakuriver-ssh";

/// Runs the client with these arguments (`argv[0]` included) and returns the exit status.
pub fn run<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let program = program_name(args.first());
    let cli = match Cli::parse_args(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return u8::try_from(e.exit_code()).unwrap_or(2);
        }
    };
    init_logging(cli.verbose);
    match dispatch(cli, &program) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", e.user_line(&program));
            e.exit_code()
        }
    }
}

/// `hakuriver-ssh` or `hakuriver.ssh`, as invoked.
fn program_name(argv0: Option<&OsString>) -> String {
    argv0
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| PROGRAM.to_owned())
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_env("HAKURIVER_SSH_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!("hakuriver_ssh={level},hakuriver_tunnel={level}"))
    });
    // Colours only for a person watching; never escape codes into a log file or pipe.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").map_or(true, |v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}

fn dispatch(cli: Cli, program: &str) -> Result<u8, ClientError> {
    match &cli.command {
        Some(Command::Completions { shell }) => {
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), program, &mut out);
            return Ok(write_stdout(&out));
        }
        Some(Command::Man) => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut out)
                .map_err(ClientError::ManPage)?;
            return Ok(write_stdout(&out));
        }
        Some(Command::SshConfig) => return ssh_config::command(&cli),
        Some(Command::List { json }) => return list::command(&cli, *json),
        Some(Command::Trust { expected }) => return trust::command(&cli, expected.as_deref()),
        None => {}
    }
    let Some(raw_id) = cli.task_id.as_deref() else {
        let mut cmd = Cli::command();
        let e = cmd.error(
            clap::error::ErrorKind::MissingRequiredArgument,
            "a TASK_ID is required (or a command: ssh-config, trust, completions, man)",
        );
        let _ = e.print();
        return Ok(2);
    };
    let raw_id = if cli.stdio {
        stdio::task_from_host(raw_id)
    } else {
        raw_id
    };
    // Checked before anything touches the network.
    let task =
        TaskRef::parse(raw_id).ok_or_else(|| ClientError::InvalidTaskId(raw_id.to_owned()))?;
    let token = token::find(cli.conn.token_file.as_deref())?;
    // Names exist only for KohakuRiver users: without a token, a non-number is a typo
    // of an ID, caught here as HakuRiver's own client would.
    if matches!(task, TaskRef::Name(_)) && token.is_none() {
        return Err(ClientError::InvalidTaskId(raw_id.to_owned()));
    }
    if cli.stdio && !cli.ssh_args.is_empty() {
        return Err(ClientError::Arguments(format!(
            "--stdio takes only the task ID, not {:?}",
            cli.ssh_args
        )));
    }
    let (settings, connector) = connector(&cli, token)?;
    let runtime = runtime()?;
    let result = if cli.stdio {
        runtime.block_on(stdio::run(connector, task))
    } else {
        let ssh = session::SshCommand {
            program: settings.ssh_program.clone(),
            user: settings.user.clone(),
            local_port: cli.local_port,
            extra_args: cli.ssh_args.clone(),
        };
        runtime.block_on(session::run(connector, task, ssh))
    };
    // tokio's stdin reader may sit in a blocking read that cannot be cancelled; do not
    // wait for it (main exits the process right after).
    runtime.shutdown_background();
    result
}

/// The settings and a connector for them, with the user's token (if any) attached.
pub(crate) fn connector(
    cli: &Cli,
    token: Option<(hakuriver_tunnel::protocol::Token, token::TokenSource)>,
) -> Result<(config::Settings, Connector), ClientError> {
    let settings = config::resolve(&cli.conn)?;
    let target = Target {
        host: settings.host.clone(),
        port: settings.port,
    };
    let transport = Transport::from_settings(&settings.tls, &target, cli.conn.trust_on_first_use)?;
    let token = match token {
        Some((token, source)) => {
            match transport {
                Transport::Tls(_) => tracing::debug!(%source, "API token found"),
                Transport::Plain => tracing::debug!(
                    %source,
                    "API token found; not sent: the connection to the proxy is plain TCP"
                ),
            }
            Some(token)
        }
        None => None,
    };
    let connector = Connector {
        target,
        transport,
        connect_timeout: settings.connect_timeout,
        response_timeout: settings.response_timeout,
        token,
        resume: settings.resume,
    };
    Ok((settings, connector))
}

/// The client's async runtime (two workers: a relay has two directions).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, ClientError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ClientError::Runtime)
}

/// Writes a helper command's output; a closed pipe (`| head`) is not an error worth a
/// message, but the status says the output is incomplete.
pub(crate) fn write_stdout(bytes: &[u8]) -> u8 {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}
