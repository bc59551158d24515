//! Interactive mode: one local listener on 127.0.0.1, `ssh` pointed at it, tunnels
//! relayed until ssh exits.
//!
//! The tunnel is opened before ssh starts, so a refusal costs no ssh run and its message
//! is ours alone. The listener is bound once and kept (no pick-a-port-and-rebind race);
//! ssh's first connection gets the tunnel already open, any later one a fresh tunnel.

use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hakuriver_tunnel::protocol::TaskRef;
use hakuriver_tunnel::relay;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinSet;

use crate::error::ClientError;
use crate::tunnel::{Connector, Opened};

/// How long relays may still flush after ssh exited (ssh is gone, so this only lets a
/// closing handshake reach the VPS; it never delays a working session).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// What the session needs besides the connector.
#[derive(Debug, Clone)]
pub struct SshCommand {
    /// The ssh program.
    pub program: String,
    /// Login user.
    pub user: String,
    /// Local port to listen on (0 = any).
    pub local_port: u16,
    /// The user's extra ssh arguments, passed after the destination.
    pub extra_args: Vec<String>,
}

impl SshCommand {
    /// The argument list for a listener on `port`: options first, then the destination,
    /// then the user's arguments (ssh parses options after the destination too, so `-v`
    /// or `-i key` there work, and the first non-option starts the remote command).
    pub fn args(&self, task: &TaskRef, port: u16) -> Vec<String> {
        let mut args = vec![
            "-p".to_owned(),
            port.to_string(),
            "-o".to_owned(),
            format!("HostKeyAlias={}", host_alias(task)),
            format!("{}@127.0.0.1", self.user),
        ];
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// The name one VPS goes by in known_hosts and ssh_config: `hakuriver-<id>` (or
/// `hakuriver-<name>`, with anything but letters, digits, `.`, `_` and `-` as `_`, since
/// ssh splits option values on spaces).
pub fn host_alias(task: &TaskRef) -> String {
    match task {
        TaskRef::Id(id) => format!("hakuriver-{id}"),
        TaskRef::Name(name) => {
            let clean: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            format!("hakuriver-{clean}")
        }
    }
}

/// Opens the tunnel, runs ssh through it and returns the exit status to report.
pub async fn run(connector: Connector, task: TaskRef, ssh: SshCommand) -> Result<u8, ClientError> {
    let first = connector.open_any(&task).await?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, ssh.local_port))
        .await
        .map_err(|source| ClientError::LocalListen {
            port: ssh.local_port,
            source,
        })?;
    let port = listener
        .local_addr()
        .map_err(|source| ClientError::LocalListen {
            port: ssh.local_port,
            source,
        })?
        .port();
    let args = ssh.args(&task, port);
    tracing::info!(program = %ssh.program, ?args, "starting ssh");
    let mut child = Command::new(&ssh.program)
        .args(&args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| ClientError::SpawnSsh {
            program: ssh.program.clone(),
            source,
        })?;
    let child_pid = child.id();

    let connector = Arc::new(connector);
    let mut first = Some(first);
    let mut relays = JoinSet::new();
    let mut signals = Signals::new();
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            accepted = listener.accept() => match accepted {
                Ok((local, peer)) => {
                    tracing::debug!(%peer, "local connection");
                    let tunnel = first.take();
                    let connector = Arc::clone(&connector);
                    relays.spawn(serve_local(local, tunnel, connector, task.clone()));
                }
                Err(e) => {
                    // Only resource exhaustion gets here; do not spin on it.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(signo) = signals.next() => {
                // ssh owns the terminal and decides how to end; it usually got the same
                // signal from the terminal already, and a repeat is harmless.
                tracing::debug!(signo = signo.as_raw(), "forwarding signal to ssh");
                if let Some(pid) = child_pid {
                    forward_signal(pid, signo);
                }
            }
        }
    };
    drop(listener);
    let status = status.map_err(|source| ClientError::SpawnSsh {
        program: ssh.program.clone(),
        source,
    })?;
    tracing::info!(%status, "ssh exited");
    let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
        while relays.join_next().await.is_some() {}
    })
    .await;
    relays.abort_all();
    Ok(exit_code(status))
}

/// Relays one local connection: through the tunnel opened up front, or a new one.
async fn serve_local(
    mut local: TcpStream,
    tunnel: Option<Opened>,
    connector: Arc<Connector>,
    task: TaskRef,
) {
    let _ = local.set_nodelay(true);
    let opened = match tunnel {
        Some(tunnel) => tunnel,
        None => match connector.open_any(&task).await {
            Ok(tunnel) => tunnel,
            Err(e) => {
                tracing::warn!("{}", e.user_line("hakuriver-ssh"));
                return;
            }
        },
    };
    let mut tunnel = match opened {
        Opened::Plain(tunnel) => tunnel,
        // The local connection (and ssh) stay while the tunnel resumes underneath.
        Opened::Resumable(tunnel) => {
            if let Err(e) = crate::resumable::drive(&connector, *tunnel, &mut local).await {
                tracing::warn!("{}", e.user_line("hakuriver-ssh"));
            }
            return;
        }
    };
    let outcome = relay(&mut local, &mut tunnel).await;
    tracing::debug!(
        to_vps = outcome.stats.a_to_b,
        from_vps = outcome.stats.b_to_a,
        result = ?outcome.result,
        "tunnel closed"
    );
}

/// ssh's status as ours: its code, or 128+n when a signal ended it (as shells report it).
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(255),
        (None, Some(signo)) => u8::try_from(128 + signo).unwrap_or(255),
        (None, None) => 255,
    }
}

/// The signals passed on to ssh. A signal whose handler cannot be installed keeps its
/// default action; that only changes how we die, not whether ssh runs.
struct Signals {
    interrupt: Option<Signal>,
    terminate: Option<Signal>,
    hangup: Option<Signal>,
    quit: Option<Signal>,
}

impl Signals {
    fn new() -> Self {
        Signals {
            interrupt: signal(SignalKind::interrupt()).ok(),
            terminate: signal(SignalKind::terminate()).ok(),
            hangup: signal(SignalKind::hangup()).ok(),
            quit: signal(SignalKind::quit()).ok(),
        }
    }

    /// The next signal received.
    async fn next(&mut self) -> Option<rustix::process::Signal> {
        use rustix::process::Signal as S;
        tokio::select! {
            Some(()) = recv(&mut self.interrupt) => Some(S::INT),
            Some(()) = recv(&mut self.terminate) => Some(S::TERM),
            Some(()) = recv(&mut self.hangup) => Some(S::HUP),
            Some(()) = recv(&mut self.quit) => Some(S::QUIT),
            else => None,
        }
    }
}

/// One signal stream; never resolves for a stream that could not be installed.
async fn recv(stream: &mut Option<Signal>) -> Option<()> {
    match stream {
        Some(stream) => stream.recv().await,
        None => std::future::pending().await,
    }
}

/// Sends `signo` to our ssh child, with rustix's `kill(2)` (std and tokio only offer
/// SIGKILL, which would leave the terminal in raw mode). `pid` comes from our own `Child`
/// that has not been reaped yet (we are still waiting on it), so it cannot name another
/// process.
fn forward_signal(pid: u32, signo: rustix::process::Signal) {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let _ = rustix::process::kill_process(pid, signo);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_arguments() {
        let ssh = SshCommand {
            program: "ssh".into(),
            user: "root".into(),
            local_port: 0,
            extra_args: vec!["-i".into(), "k".into(), "uptime".into()],
        };
        let task = TaskRef::parse("42").expect("id");
        assert_eq!(
            host_alias(&TaskRef::parse("my dev/box").expect("name")),
            "hakuriver-my_dev_box"
        );
        assert_eq!(
            ssh.args(&task, 5555),
            [
                "-p",
                "5555",
                "-o",
                "HostKeyAlias=hakuriver-42",
                "root@127.0.0.1",
                "-i",
                "k",
                "uptime"
            ]
        );
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(255 << 8)), 255);
        assert_eq!(
            exit_code(ExitStatus::from_raw(rustix::process::Signal::INT.as_raw())),
            130
        );
        assert_eq!(
            exit_code(ExitStatus::from_raw(rustix::process::Signal::TERM.as_raw())),
            143
        );
    }
}
