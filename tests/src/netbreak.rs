//! A network that the test breaks: a TCP relay between client and proxy, in the test
//! process. A break shuts down every connection it carries (both sides see their
//! connection end, as under a network change); the listener stays, so the client
//! reconnects to the same address, with no port to rebind.

// A relay that cannot bind or copy is the test failing: its panics are the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A TCP relay between client and proxy, in the test process: a break shuts down every
/// connection it carries (both sides see their connection end, as under a network
/// change); the listener stays, so the client reconnects to the same address, with no
/// port to rebind. Each generation (the connections accepted between two breaks) keeps
/// what it relayed each way, so a test can read the lines.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    generation: usize,
}

#[derive(Default)]
struct Shared {
    state: Mutex<RelayState>,
}

#[derive(Default)]
struct RelayState {
    generation: usize,
    down: bool,
    open: Vec<TcpStream>,
    up: HashMap<usize, Vec<u8>>,
    down_bytes: HashMap<usize, Vec<u8>>,
}

impl Relay {
    /// Listens on `127.0.0.1:0` and relays every connection to `target`.
    pub fn start(target: SocketAddr, _dir: &Path) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        shared.state.lock().unwrap().generation = 1;
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let mut state = accepting.state.lock().unwrap();
                if state.down {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let generation = state.generation;
                state.open.push(client.try_clone().unwrap());
                state.open.push(server.try_clone().unwrap());
                drop(state);
                pump(
                    &accepting,
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    generation,
                    true,
                );
                pump(&accepting, server, client, generation, false);
            }
        });
        Relay {
            addr,
            shared,
            generation: 1,
        }
    }

    /// Where the client connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shuts down every connection it carries; with `down`, refuses new ones too.
    pub fn cut(&mut self, down: bool) {
        let mut state = self.shared.state.lock().unwrap();
        for stream in state.open.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        state.down = down;
        state.generation += 1;
        self.generation = state.generation;
    }

    /// The network goes away for good.
    pub fn kill(&mut self) {
        self.cut(true);
    }

    /// A break: the connections end, the next ones go through.
    pub fn break_and_restore(&mut self) {
        self.cut(false);
    }

    /// The current generation (connections accepted since the last break).
    pub fn generation(&self) -> usize {
        self.generation
    }

    /// What the client sent in generation `n`.
    pub fn upstream(&self, n: usize) -> Vec<u8> {
        let state = self.shared.state.lock().unwrap();
        state.up.get(&n).cloned().unwrap_or_default()
    }

    /// What the proxy sent back in generation `n`.
    pub fn downstream(&self, n: usize) -> Vec<u8> {
        let state = self.shared.state.lock().unwrap();
        state.down_bytes.get(&n).cloned().unwrap_or_default()
    }
}

/// Copies `from` to `to` on a thread, recording the bytes; EOF is passed on as a write
/// shutdown, an error (a break) ends both.
fn pump(shared: &Arc<Shared>, mut from: TcpStream, mut to: TcpStream, generation: usize, up: bool) {
    let shared = Arc::clone(shared);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) => {
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                }
                Ok(n) => {
                    {
                        let mut state = shared.state.lock().unwrap();
                        let log = if up {
                            state.up.entry(generation).or_default()
                        } else {
                            state.down_bytes.entry(generation).or_default()
                        };
                        // The lines are at the start; bulk bytes need not be kept.
                        if log.len() < 64 * 1024 {
                            log.extend_from_slice(&buf[..n]);
                        }
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        let _ = from.shutdown(Shutdown::Both);
                        return;
                    }
                }
                Err(_) => {
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
    });
}
