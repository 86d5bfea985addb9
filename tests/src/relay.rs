//! A TCP relay the test controls, between a worker process and PostgreSQL:
//! it forwards until told to go silent, and then forwards nothing and
//! closes nothing (no FIN, no RST), as a failover that moves the primary's
//! address, a partition or a NAT dropping the flow would look to the
//! client. Connections open at the silence stay dead for good; connections
//! made while it is silent get no answer; after [`Relay::resume`] new
//! connections are forwarded again.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// See the module documentation.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: Option<thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct State {
    /// Bumped by each silence: connections of an older epoch are dead.
    epoch: AtomicU64,
    silent: AtomicBool,
    stop: AtomicBool,
    /// Every socket, kept open until the relay is dropped.
    sockets: Mutex<Vec<TcpStream>>,
    /// The local ports of the connections to the server.
    upstream_ports: Mutex<Vec<u16>>,
}

impl Relay {
    /// Listens on a free loopback port and forwards to `target`.
    pub fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let addr = listener.local_addr().expect("the relay's address");
        let state = Arc::new(State::default());
        let accepting = Arc::clone(&state);
        let acceptor = thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                accept(&accepting, client, target);
            }
        });
        Relay {
            addr,
            state,
            acceptor: Some(acceptor),
        }
    }

    /// `url` (a `postgres://` URL) with its host and port replaced by the
    /// relay's.
    pub fn url_for(&self, url: &str) -> String {
        let mut url = url::Url::parse(url).expect("a database URL");
        url.set_host(Some(&self.addr.ip().to_string())).unwrap();
        url.set_port(Some(self.addr.port())).unwrap();
        url.to_string()
    }

    /// Stops forwarding on every open connection, for good, and answers no
    /// new one until [`Relay::resume`].
    pub fn go_silent(&self) {
        self.state.silent.store(true, Ordering::SeqCst);
        self.state.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Forwards new connections again (the old ones stay dead).
    pub fn resume(&self) {
        self.state.silent.store(false, Ordering::SeqCst);
    }

    /// The local ports of the relay's connections to the server, as the
    /// server sees them (`pg_stat_activity.client_port`).
    pub fn upstream_ports(&self) -> Vec<u16> {
        self.state.upstream_ports.lock().unwrap().clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for socket in self.state.sockets.lock().unwrap().drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

fn accept(state: &Arc<State>, client: TcpStream, target: SocketAddr) {
    let keep = |socket: &TcpStream| {
        if let Ok(copy) = socket.try_clone() {
            state.sockets.lock().unwrap().push(copy);
        }
    };
    keep(&client);
    if state.silent.load(Ordering::SeqCst) {
        // Held open, never answered.
        return;
    }
    let Ok(server) = TcpStream::connect(target) else {
        return;
    };
    keep(&server);
    if let Ok(local) = server.local_addr() {
        state.upstream_ports.lock().unwrap().push(local.port());
    }
    let epoch = state.epoch.load(Ordering::SeqCst);
    for (from, to) in [
        (client.try_clone(), server.try_clone()),
        (server.try_clone(), client.try_clone()),
    ] {
        let (Ok(from), Ok(to)) = (from, to) else {
            return;
        };
        let state = Arc::clone(state);
        thread::spawn(move || pump(&state, epoch, from, to));
    }
}

/// Copies `from` to `to` while the connection's epoch is current; after a
/// silence, reads and drops what arrives, and never closes `to`.
fn pump(state: &State, epoch: u64, mut from: TcpStream, mut to: TcpStream) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buffer = [0u8; 16 * 1024];
    while !state.stop.load(Ordering::SeqCst) {
        let alive = state.epoch.load(Ordering::SeqCst) == epoch;
        match from.read(&mut buffer) {
            Ok(0) => {
                if alive {
                    let _ = to.shutdown(Shutdown::Write);
                }
                return;
            }
            Ok(n) => {
                if state.epoch.load(Ordering::SeqCst) == epoch
                    && to.write_all(&buffer[..n]).is_err()
                {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}
