//! systemd service notifications (`sd_notify`), only when `NOTIFY_SOCKET` is set.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::server::ProxyState;

/// Shortest interval between two `STATUS=` updates.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        debug!(error = %e, "sd_notify failed");
    }
}

/// `READY=1` with a first status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` with `MONOTONIC_USEC`, as `Type=notify-reload` expects.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// `STOPPING=1` at the start of a drain.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec))
}

/// Sends `STATUS=` when counters change (at most once per [`STATUS_INTERVAL`]) and
/// `WATCHDOG=1` at half the watchdog interval. Both run on the async runtime, so a
/// stuck runtime stops the pings and systemd restarts the daemon.
pub async fn report(state: Arc<ProxyState>, stop: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let watchdog = watchdog_interval().map(|every| every / 2);
    let status = async {
        loop {
            state.stats.changed().await;
            send(&[NotifyState::Status(&state.stats.summary())]);
            tokio::time::sleep(STATUS_INTERVAL).await;
        }
    };
    let pings = async {
        match watchdog {
            Some(every) => {
                let mut ticks = tokio::time::interval(every);
                // After a stall, ping once and keep the cadence; a burst of catch-up pings
                // would tell systemd nothing.
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    send(&[NotifyState::Watchdog]);
                }
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = stop.cancelled() => {}
        () = status => {}
        () = pings => {}
    }
}
