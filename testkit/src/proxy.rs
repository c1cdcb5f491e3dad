//! A TCP proxy on a free loopback port that a fault test can cut and heal, for partitions
//! (RELIABILITY.md scenario 4): put it between a process and a server it talks to, and
//! [`LinkProxy::cut`] makes the link a black hole, the way a partition does.
//!
//! A cut drops nothing and refuses nothing. Connections stay open, and new ones are accepted,
//! but no byte crosses the proxy in either direction until [`LinkProxy::heal`]; whatever was
//! sent meanwhile is then delivered, as TCP's retransmissions deliver it after a partition
//! shorter than its give-up time. So what the far side sees is silence, and a client's
//! command and connection timeouts are what notice it, not an error.
//!
//! Plain threads, not tasks: the proxy must keep forwarding whatever a test's runtime is
//! doing, and its blocking reads need no reactor.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

/// The sockets a proxy's threads opened or accepted, shut down when the proxy is dropped.
#[derive(Default)]
pub(crate) struct Sockets {
    closing: AtomicBool,
    open: Mutex<Vec<TcpStream>>,
}

impl Sockets {
    /// Keeps a handle on `socket`, to shut it down with the proxy.
    pub(crate) fn keep(&self, socket: &TcpStream) {
        if let Ok(copy) = socket.try_clone() {
            self.open
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(copy);
        }
    }
}

/// A listener on a free loopback port whose thread hands each accepted connection to a
/// handler; dropping it shuts every kept socket down and ends the accepting thread.
pub(crate) struct Listening {
    port: u16,
    sockets: Arc<Sockets>,
}

impl Listening {
    /// Listens, and runs `handle` on a thread of its own for each connection accepted (kept
    /// in the sockets it is given).
    pub(crate) fn start(
        handle: impl Fn(TcpStream, Arc<Sockets>) + Send + Sync + 'static,
    ) -> std::io::Result<Listening> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let sockets = Arc::new(Sockets::default());
        let accepting = sockets.clone();
        let handle = Arc::new(handle);
        thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.closing.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                accepting.keep(&client);
                let (handle, sockets) = (handle.clone(), accepting.clone());
                thread::spawn(move || handle(client, sockets));
            }
        });
        Ok(Listening { port, sockets })
    }

    /// The port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.sockets.closing.store(true, Ordering::SeqCst);
        for socket in self
            .sockets
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = socket.shutdown(Shutdown::Both);
        }
        // Wakes the accepting thread so that it sees `closing` and returns.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// What the proxy's threads share.
#[derive(Default)]
struct Link {
    /// Whether the link is cut, and whether the proxy is being dropped.
    state: Mutex<LinkState>,
    /// Notified when either changes.
    changed: Condvar,
}

#[derive(Default, Clone, Copy)]
struct LinkState {
    cut: bool,
    closing: bool,
}

impl Link {
    /// Waits while the link is cut; false once the proxy is closing.
    fn wait_open(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while state.cut && !state.closing {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        !state.closing
    }

    fn set(&self, change: impl FnOnce(&mut LinkState)) {
        change(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.notify_all();
    }
}

/// A cuttable TCP proxy to one upstream address; closes every link it carries on drop.
pub struct LinkProxy {
    link: Arc<Link>,
    // Dropped after `drop` below has woken the threads waiting on `link`.
    listening: Listening,
}

impl LinkProxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> std::io::Result<LinkProxy> {
        let link = Arc::new(Link::default());
        let upstream = upstream.to_string();
        let carried = link.clone();
        let listening =
            Listening::start(move |client, sockets| carry(&carried, &sockets, client, &upstream))?;
        Ok(LinkProxy { link, listening })
    }

    /// `127.0.0.1:port`, the address to give the client instead of the upstream's.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.listening.port())
    }

    /// Stops every byte in both directions, on open links and new ones, until [`heal`].
    ///
    /// [`heal`]: LinkProxy::heal
    pub fn cut(&self) {
        self.link.set(|s| s.cut = true);
    }

    /// Lets bytes through again, those held since the cut first.
    pub fn heal(&self) {
        self.link.set(|s| s.cut = false);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        // Connections held by a cut give up; `listening` then shuts every socket down.
        self.link.set(|s| s.closing = true);
    }
}

/// One accepted client: its upstream connection is opened once the link is open, then each
/// direction is pumped by a thread of its own.
fn carry(link: &Arc<Link>, sockets: &Sockets, client: TcpStream, upstream: &str) {
    if !link.wait_open() {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    sockets.keep(&server);
    let (Ok(client_in), Ok(server_in)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let back = link.clone();
    thread::spawn(move || pump(&back, server_in, client));
    pump(link, client_in, server);
}

/// Copies `from` to `to` while the link is open, holding what it read while it is cut; on
/// either side's end, ends both.
fn pump(link: &Link, mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !link.wait_open() || to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An echo server on a free port, answering each connection until it closes.
    fn echo() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
        let address = listener.local_addr().expect("address").to_string();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut reader = stream.try_clone().expect("clone");
                    let mut writer = stream;
                    let _ = std::io::copy(&mut reader, &mut writer);
                });
            }
        });
        address
    }

    fn round_trip(stream: &mut TcpStream, text: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(text)?;
        let mut got = vec![0u8; text.len()];
        stream.read_exact(&mut got)?;
        Ok(got)
    }

    #[test]
    fn a_cut_link_carries_nothing_until_healed_then_delivers_what_was_held() {
        let proxy = LinkProxy::start(&echo()).expect("proxy");
        let mut open = TcpStream::connect(proxy.address()).expect("connects");
        open.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        assert_eq!(round_trip(&mut open, b"before").expect("echoed"), b"before");

        proxy.cut();
        let held = round_trip(&mut open, b"during");
        assert!(held.is_err(), "a cut link answered: {held:?}");
        // A connection made during the cut is accepted and hears nothing either.
        let mut new = TcpStream::connect(proxy.address()).expect("accepted while cut");
        new.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        assert!(round_trip(&mut new, b"new").is_err());

        proxy.heal();
        let mut late = vec![0u8; b"during".len()];
        open.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        open.read_exact(&mut late).expect("held bytes delivered");
        assert_eq!(late, b"during");
        assert_eq!(round_trip(&mut open, b"after").expect("echoed"), b"after");
        new.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut first = vec![0u8; 3];
        new.read_exact(&mut first).expect("held bytes delivered");
        assert_eq!(first, b"new");
    }

    #[test]
    fn dropping_the_proxy_closes_its_links() {
        let proxy = LinkProxy::start(&echo()).expect("proxy");
        let mut open = TcpStream::connect(proxy.address()).expect("connects");
        assert_eq!(round_trip(&mut open, b"x").expect("echoed"), b"x");
        drop(proxy);
        open.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut rest = Vec::new();
        assert!(matches!(open.read_to_end(&mut rest), Ok(0)));
    }
}
