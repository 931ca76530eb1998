//! A TCP proxy on loopback that a test can cut and heal: the network between a drover
//! daemon and its state store (or a standby and its primary), under the test's control.
//!
//! [`TcpProxy::cut`] closes every connection through it and refuses new ones (they are
//! accepted and closed at once, as a firewall that resets them would); [`TcpProxy::heal`]
//! lets connections through again. [`TcpProxy::set_delay`] holds every chunk of bytes
//! for a while before it passes it on (a slow link or server), and
//! [`TcpProxy::set_reply`] answers every new connection with fixed bytes instead of
//! forwarding it (e.g. an HTTP `500`, as a broken load balancer answers). Bytes are
//! copied by two threads per connection.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Default)]
struct State {
    cut: AtomicBool,
    stop: AtomicBool,
    /// Both ends of every open connection, to shut them down on a cut.
    open: Mutex<Vec<TcpStream>>,
    accepted: AtomicU64,
    refused: AtomicU64,
    /// Held before each chunk is passed on, in milliseconds.
    delay_ms: AtomicU64,
    /// Sent to each new connection instead of forwarding it.
    reply: Mutex<Option<Vec<u8>>>,
}

/// A proxy from a free loopback port to `target`.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    target: SocketAddr,
    state: Arc<State>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards each connection to `target`.
    pub fn start(target: SocketAddr) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let st = state.clone();
        std::thread::Builder::new()
            .name("lab-proxy".into())
            .spawn(move || accept_loop(&listener, target, &st))?;
        Ok(TcpProxy { addr, target, state })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Breaks the link: open connections are closed, new ones refused until [`Self::heal`].
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        for s in self.state.open.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }

    /// Holds every chunk of bytes, both ways, this long before passing it on
    /// (`Duration::ZERO`: no delay).
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Answers each new connection with `reply` once it has sent something, then
    /// closes it, instead of forwarding it (`None`: forward again).
    pub fn set_reply(&self, reply: Option<&[u8]>) {
        *self.state.reply.lock().unwrap_or_else(|p| p.into_inner()) = reply.map(<[u8]>::to_vec);
    }

    pub fn is_cut(&self) -> bool {
        self.state.cut.load(Ordering::SeqCst)
    }

    /// Connections forwarded so far, and refused while cut.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.state.accepted.load(Ordering::SeqCst),
            self.state.refused.load(Ordering::SeqCst),
        )
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the accept loop so that it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn accept_loop(listener: &TcpListener, target: SocketAddr, st: &Arc<State>) {
    for conn in listener.incoming() {
        if st.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = conn else { continue };
        if st.cut.load(Ordering::SeqCst) {
            st.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let reply = st.reply.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(reply) = reply {
            st.accepted.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || answer(client, &reply));
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        st.accepted.fetch_add(1, Ordering::SeqCst);
        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        st.open.lock().unwrap_or_else(|p| p.into_inner()).extend([c3, s3]);
        let st2 = st.clone();
        std::thread::spawn(move || pipe(client, s2, &st2));
        let st3 = st.clone();
        std::thread::spawn(move || pipe(server, c2, &st3));
    }
}

/// Reads what the client sends first (a request), answers `reply` and closes.
fn answer(mut client: TcpStream, reply: &[u8]) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 16 * 1024];
    let _ = client.read(&mut buf);
    let _ = client.write_all(reply);
    let _ = client.shutdown(Shutdown::Both);
}

/// Copies bytes from `from` to `to` until either end closes or the link is cut.
fn pipe(mut from: TcpStream, mut to: TcpStream, st: &State) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let delay = st.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if st.cut.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_go_through_until_cut_and_again_after_heal() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            for c in echo.incoming() {
                let Ok(mut c) = c else { continue };
                std::thread::spawn(move || {
                    let mut b = [0u8; 64];
                    while let Ok(n) = c.read(&mut b) {
                        if n == 0 || c.write_all(&b[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let proxy = TcpProxy::start(target).unwrap();
        let roundtrip = |s: &mut TcpStream| -> bool {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut b = [0u8; 4];
            s.write_all(b"ping").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"ping"
        };
        let mut a = TcpStream::connect(proxy.addr()).unwrap();
        assert!(roundtrip(&mut a));
        proxy.cut();
        assert!(!roundtrip(&mut a), "an open connection survived the cut");
        let mut b = TcpStream::connect(proxy.addr()).unwrap();
        assert!(!roundtrip(&mut b), "a new connection went through while cut");
        proxy.heal();
        let mut c = TcpStream::connect(proxy.addr()).unwrap();
        assert!(roundtrip(&mut c));
        assert_eq!(proxy.counts(), (2, 1));
    }

    #[test]
    fn a_set_reply_answers_instead_of_forwarding_and_a_delay_holds_bytes() {
        // Nothing listens on the target: a forwarded connection would just close.
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let proxy = TcpProxy::start(closed).unwrap();
        proxy.set_reply(Some(b"HTTP/1.1 500 Internal Server Error\r\n\r\n"));
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        assert!(got.starts_with("HTTP/1.1 500"), "{got}");

        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Some(Ok(mut c)) = echo.incoming().next() {
                let mut b = [0u8; 4];
                if c.read_exact(&mut b).is_ok() {
                    let _ = c.write_all(&b);
                }
            }
        });
        let slow = TcpProxy::start(target).unwrap();
        slow.set_delay(Duration::from_millis(150));
        let mut s = TcpStream::connect(slow.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = std::time::Instant::now();
        s.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
    }
}
