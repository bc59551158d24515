//! Child processes the tests own: signal them, wait for them with a deadline, and kill
//! them when dropped, without racing the kernel's reuse of their pid.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{
    Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Output, Stdio,
};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct State {
    child: Child,
    status: Option<ExitStatus>,
}

/// A spawned child. A waiter thread blocks in `waitid(WNOWAIT)` and reaps the child
/// only under the lock that `signal` takes, so a signal never reaches a recycled pid.
pub struct Process {
    name: String,
    pid: Pid,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl Process {
    /// Spawns `cmd`; `name` labels error messages.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Process> {
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        let pid = Pid::from_raw(i32::try_from(child.id())?);
        let state = Arc::new((
            Mutex::new(State {
                child,
                status: None,
            }),
            Condvar::new(),
        ));
        let waiter = Arc::clone(&state);
        thread::Builder::new()
            .name(format!("wait-{name}"))
            .spawn(move || {
                // Block until the child is a zombie, without reaping it.
                while let Err(Errno::EINTR) =
                    waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
                {
                }
                let (lock_, cond) = &*waiter;
                let mut st = lock(lock_);
                if let Ok(status) = st.child.wait() {
                    st.status = Some(status);
                }
                cond.notify_all();
            })?;
        Ok(Process {
            name: name.to_string(),
            pid,
            state,
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw().unsigned_abs()
    }

    /// Takes the child's stdin pipe (once).
    pub fn take_stdin(&self) -> Option<ChildStdin> {
        lock(&self.state.0).child.stdin.take()
    }

    /// Takes the child's stdout pipe (once).
    pub fn take_stdout(&self) -> Option<ChildStdout> {
        lock(&self.state.0).child.stdout.take()
    }

    /// Takes the child's stderr pipe (once).
    pub fn take_stderr(&self) -> Option<ChildStderr> {
        lock(&self.state.0).child.stderr.take()
    }

    /// Sends `sig` unless the child has already been reaped (then it is a no-op).
    pub fn signal(&self, sig: Signal) -> Result<()> {
        let st = lock(&self.state.0);
        if st.status.is_none() {
            kill(self.pid, sig).with_context(|| format!("kill -{sig} {}", self.name))?;
        }
        Ok(())
    }

    /// The exit status if the child has exited.
    pub fn try_status(&self) -> Option<ExitStatus> {
        lock(&self.state.0).status
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<ExitStatus> {
        let (lock_, cond) = &*self.state;
        let st = lock(lock_);
        let (st, _) = cond
            .wait_timeout_while(st, timeout, |st| st.status.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        st.status.ok_or_else(|| {
            anyhow!(
                "{} (pid {}) still running after {timeout:?}",
                self.name,
                self.pid
            )
        })
    }

    /// Sends `sig` and waits up to `timeout` for the exit.
    pub fn signal_and_wait(&self, sig: Signal, timeout: Duration) -> Result<ExitStatus> {
        self.signal(sig)?;
        self.wait_timeout(timeout)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.signal(Signal::SIGKILL);
        let _ = self.wait_timeout(Duration::from_secs(10));
    }
}

#[derive(Default)]
struct Log {
    text: String,
    eof: bool,
}

/// Text a child writes to a pipe, drained by a thread (so the child never blocks on a
/// full pipe) and inspectable while it runs.
#[derive(Clone)]
pub struct LogBuffer {
    inner: Arc<(Mutex<Log>, Condvar)>,
}

impl LogBuffer {
    /// Starts draining `pipe` into a new buffer; `echo_prefix` (if any) also copies each
    /// line to the test's stderr, which libtest shows for failing tests.
    pub fn drain<R: Read + Send + 'static>(pipe: R, echo_prefix: Option<String>) -> LogBuffer {
        let buf = LogBuffer {
            inner: Arc::new((Mutex::new(Log::default()), Condvar::new())),
        };
        let writer = buf.clone();
        let spawned = thread::Builder::new().name("drain".into()).spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = reader.read_until(b'\n', &mut line).unwrap_or(0);
                let (lock_, cond) = &*writer.inner;
                let mut log = lock(lock_);
                if n == 0 {
                    log.eof = true;
                    cond.notify_all();
                    return;
                }
                let text = String::from_utf8_lossy(&line);
                if let Some(prefix) = &echo_prefix {
                    eprint!("{prefix}{text}");
                }
                log.text.push_str(&text);
                cond.notify_all();
            }
        });
        if spawned.is_err() {
            lock(&buf.inner.0).eof = true;
        }
        buf
    }

    /// Everything read so far.
    pub fn text(&self) -> String {
        lock(&self.inner.0).text.clone()
    }

    /// Whether the writer closed the pipe.
    pub fn is_eof(&self) -> bool {
        lock(&self.inner.0).eof
    }

    /// Waits until `check(text so far)` returns `Some`, failing on timeout or when the
    /// pipe closes first (the child died). The error includes the text.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let (lock_, cond) = &*self.inner;
        let mut log = lock(lock_);
        loop {
            if let Some(found) = check(&log.text) {
                return Ok(found);
            }
            if log.eof {
                bail!("output closed before {what}; output was:\n{}", log.text);
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}; output so far:\n{}",
                    log.text
                );
            }
            log = cond
                .wait_timeout(log, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits until the text contains `needle`.
    pub fn wait_for_text(&self, needle: &str, timeout: Duration) -> Result<()> {
        self.wait_for(timeout, &format!("{needle:?}"), |t| {
            t.contains(needle).then_some(())
        })
    }

    /// Waits until the writer closes the pipe; returns the whole text.
    pub fn wait_eof(&self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let (lock_, cond) = &*self.inner;
        let mut log = lock(lock_);
        while !log.eof {
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for end of output; so far:\n{}",
                    log.text
                );
            }
            log = cond
                .wait_timeout(log, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(log.text.clone())
    }
}

fn collect<R: Read + Send + 'static>(pipe: Option<R>) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut out);
        }
        let _ = tx.send(out);
    });
    rx
}

/// Runs `cmd` to completion with `input` on its stdin, collecting stdout and stderr, and
/// kills it if it takes longer than `timeout` (an error that shows what it printed).
pub fn run(cmd: &mut Command, input: &[u8], timeout: Duration) -> Result<Output> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let name = cmd.get_program().to_string_lossy().into_owned();
    let proc_ = Process::spawn(&name, cmd)?;
    let deadline = Instant::now() + timeout;
    let stdin = proc_.take_stdin();
    let input = input.to_vec();
    thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(&input);
        }
    });
    let stdout = collect(proc_.take_stdout());
    let stderr = collect(proc_.take_stderr());
    let status = match proc_.wait_timeout(timeout) {
        Ok(status) => status,
        Err(e) => {
            let _ = proc_.signal_and_wait(Signal::SIGKILL, Duration::from_secs(5));
            let err = stderr
                .recv_timeout(Duration::from_secs(2))
                .unwrap_or_default();
            return Err(e.context(format!("stderr: {}", String::from_utf8_lossy(&err))));
        }
    };
    // Pipes can outlive the child when it left grandchildren holding them.
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(2));
    let stdout = stdout
        .recv_timeout(left)
        .context("stdout still open after exit")?;
    let stderr = stderr
        .recv_timeout(Duration::from_secs(2))
        .context("stderr still open after exit")?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}
