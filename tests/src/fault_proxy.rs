//! A TCP proxy that injects network faults between a component under test
//! and a server it talks to (a Redis node, the API server): delay,
//! blackhole, refuse, and the one retries get wrong, dropping a reply after
//! the server executed the request.
//!
//! [`FaultProxy::start`] listens on a free loopback port and forwards each
//! accepted connection to `upstream` (connected per accepted connection;
//! `upstream` need not run yet). Two threads per connection copy the bytes,
//! one each way, in order. The [`Fault`] mode can be changed at any time
//! and applies to new and existing connections; [`FaultProxy::drop_replies`]
//! arms a one-off fault on top of it. Dropping the proxy closes its listener
//! and every connection, and never waits on a connection's threads.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwards everything (the default).
    Pass,
    /// Holds each chunk sent upstream this long before forwarding it
    /// (replies are not delayed): every request is late by at least this.
    Delay(Duration),
    /// A partition: connections are accepted and their bytes read, but
    /// nothing is forwarded either way and nothing is answered; what was
    /// read is held and flows again, in order, once the mode changes back
    /// to [`Fault::Pass`] or [`Fault::Delay`] (a partition that heals, with
    /// TCP retransmitting). A client gives up by its own timeout.
    Blackhole,
    /// Existing connections are closed (FIN both ways) when this is set,
    /// and new ones are reset as soon as they are accepted.
    Refuse,
    /// Every reply is dropped: the request is forwarded and executed, and
    /// when the server's answer comes the client's connection is reset
    /// instead (the upstream connection is closed).
    DropReplies,
}

/// Which requests arm a reply drop (see [`FaultProxy::drop_replies_when`]).
type Matcher = Box<dyn Fn(&[u8]) -> bool + Send + Sync>;

struct Armed {
    remaining: u64,
    matches: Matcher,
}

/// One proxied connection, as the proxy's threads and `Drop` see it.
struct Conn {
    client: TcpStream,
    upstream: TcpStream,
    /// A request on it armed a reply drop: its next reply is not delivered.
    drop_next_reply: AtomicBool,
}

impl Conn {
    /// Resets the client (RST: SO_LINGER 0, sent when the last handle
    /// closes) and closes the upstream side.
    fn reset(&self) {
        let _ = socket2::SockRef::from(&self.client).set_linger(Some(Duration::ZERO));
        // Shutting down only the reading side wakes the client-side reader
        // without sending a FIN before the RST.
        let _ = self.client.shutdown(Shutdown::Read);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }

    fn close(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }
}

struct Shared {
    upstream: SocketAddr,
    fault: Mutex<Fault>,
    /// Signalled when the fault changes or the proxy closes.
    changed: Condvar,
    closed: AtomicBool,
    armed: Mutex<Option<Armed>>,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    accepted: AtomicU64,
    replies_dropped: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn fault(&self) -> Fault {
        *lock(&self.fault)
    }

    /// Waits while the mode is [`Fault::Blackhole`]; then the mode to apply
    /// (`None`: the proxy is closing).
    fn wait_flowing(&self) -> Option<Fault> {
        let mut fault = lock(&self.fault);
        while *fault == Fault::Blackhole && !self.closed.load(Ordering::SeqCst) {
            fault = self.changed.wait(fault).unwrap_or_else(|p| p.into_inner());
        }
        (!self.closed.load(Ordering::SeqCst)).then_some(*fault)
    }

    /// Sleeps `d`, or less if the proxy closes.
    fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut fault = lock(&self.fault);
        loop {
            let now = Instant::now();
            if now >= until || self.closed.load(Ordering::SeqCst) {
                return;
            }
            fault = self
                .changed
                .wait_timeout(fault, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Whether `request` arms a reply drop (taking one from the count).
    fn take_arm(&self, request: &[u8]) -> bool {
        let mut armed = lock(&self.armed);
        let Some(arm) = armed.as_mut() else {
            return false;
        };
        if !(arm.matches)(request) {
            return false;
        }
        arm.remaining -= 1;
        if arm.remaining == 0 {
            *armed = None;
        }
        true
    }
}

/// A fault-injecting TCP proxy in front of one upstream address.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on a free loopback port, forwarding to `upstream`, in
    /// [`Fault::Pass`] mode.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("fault proxy: bind a loopback port: {e}"));
        let addr = listener.local_addr().expect("fault proxy: local address");
        let shared = Arc::new(Shared {
            upstream,
            fault: Mutex::new(Fault::Pass),
            changed: Condvar::new(),
            closed: AtomicBool::new(false),
            armed: Mutex::new(None),
            conns: Mutex::new(HashMap::new()),
            accepted: AtomicU64::new(0),
            replies_dropped: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("fault-proxy-{}", addr.port()))
                .spawn(move || accept_loop(listener, shared))
                .expect("spawn the fault proxy's acceptor")
        };
        FaultProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Like [`FaultProxy::start`], to `127.0.0.1:port`.
    pub fn to_port(port: u16) -> FaultProxy {
        FaultProxy::start(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Switches the mode, for new and existing connections.
    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.shared.fault) = fault;
        self.shared.changed.notify_all();
        if fault == Fault::Refuse {
            for conn in lock(&self.shared.conns).values() {
                conn.close();
            }
        }
    }

    pub fn fault(&self) -> Fault {
        self.shared.fault()
    }

    /// Back to [`Fault::Pass`] (held bytes of a blackhole flow again).
    pub fn pass(&self) {
        self.set_fault(Fault::Pass);
    }

    /// Drops the replies to the next `n` requests (whatever the mode, which
    /// still applies to everything else): each such request is forwarded
    /// and executed by the server, and when the server's reply comes, the
    /// client's connection is reset instead. Replaces any earlier arming.
    /// A "request" is one chunk the proxy read from a client: a pipeline
    /// written at once is one.
    pub fn drop_replies(&self, n: u64) {
        self.drop_replies_when(n, |_| true);
    }

    /// Like [`FaultProxy::drop_replies`], counting only requests that
    /// contain `needle` (e.g. a Redis key: `sg:{ns}:w`).
    pub fn drop_replies_to(&self, n: u64, needle: &[u8]) {
        let needle = needle.to_vec();
        self.drop_replies_when(n, move |request| contains(request, &needle));
    }

    /// Like [`FaultProxy::drop_replies`], counting only requests for which
    /// `matches` holds.
    pub fn drop_replies_when(
        &self,
        n: u64,
        matches: impl Fn(&[u8]) -> bool + Send + Sync + 'static,
    ) {
        *lock(&self.shared.armed) = (n > 0).then(|| Armed {
            remaining: n,
            matches: Box::new(matches),
        });
    }

    /// Requests still to be matched by the last arming (0: none armed).
    pub fn armed(&self) -> u64 {
        lock(&self.shared.armed).as_ref().map_or(0, |a| a.remaining)
    }

    /// Resets every open connection now (clients see ECONNRESET).
    pub fn reset_connections(&self) {
        for conn in lock(&self.shared.conns).values() {
            conn.reset();
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Replies dropped so far (each reset one client connection).
    pub fn replies_dropped(&self) -> u64 {
        self.shared.replies_dropped.load(Ordering::SeqCst)
    }

    /// Bytes forwarded to the upstream so far.
    pub fn bytes_up(&self) -> u64 {
        self.shared.bytes_up.load(Ordering::SeqCst)
    }

    /// Bytes forwarded to clients so far.
    pub fn bytes_down(&self) -> u64 {
        self.shared.bytes_down.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        // Wakes the acceptor, which sees `closed` and returns.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for conn in lock(&self.shared.conns).drain().map(|(_, c)| c) {
            conn.close();
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut next_id = 0u64;
    for client in listener.incoming() {
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.fault() == Fault::Refuse {
            let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
            continue;
        }
        let _ = client.set_nodelay(true);
        let Ok(upstream) = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(2))
        else {
            // Nothing upstream: the client sees its connection reset.
            let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
            continue;
        };
        let _ = upstream.set_nodelay(true);
        let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
            continue;
        };
        let conn = Arc::new(Conn {
            client,
            upstream,
            drop_next_reply: AtomicBool::new(false),
        });
        next_id += 1;
        let id = next_id;
        lock(&shared.conns).insert(id, conn.clone());
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(f)
                .map(|_| ())
                .is_ok()
        };
        let (s1, k1) = (shared.clone(), conn.clone());
        let (s2, k2) = (shared.clone(), conn);
        let up = spawn(
            format!("fault-proxy-up-{id}"),
            Box::new(move || {
                requests(&s1, &k1, c2);
                finish(&s1, id);
            }),
        );
        let down = spawn(
            format!("fault-proxy-down-{id}"),
            Box::new(move || {
                replies(&s2, &k2, u2);
                finish(&s2, id);
            }),
        );
        if !(up && down) {
            if let Some(conn) = lock(&shared.conns).remove(&id) {
                conn.close();
            }
        }
    }
}

/// A connection's thread is done: it is forgotten (its handles close when
/// both threads have dropped theirs).
fn finish(shared: &Shared, id: u64) {
    lock(&shared.conns).remove(&id);
}

/// Client → upstream.
fn requests(shared: &Shared, conn: &Conn, mut client: TcpStream) {
    let mut upstream = &conn.upstream;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        match shared.wait_flowing() {
            None | Some(Fault::Refuse) => break,
            Some(Fault::Delay(d)) => shared.pause(d),
            Some(_) => {}
        }
        if shared.closed.load(Ordering::SeqCst) {
            break;
        }
        if shared.take_arm(chunk) {
            conn.drop_next_reply.store(true, Ordering::SeqCst);
        }
        if upstream.write_all(chunk).is_err() {
            break;
        }
        shared.bytes_up.fetch_add(n as u64, Ordering::SeqCst);
    }
    // The client is done sending (or gone): so is the upstream's client.
    let _ = conn.upstream.shutdown(Shutdown::Write);
}

/// Upstream → client.
fn replies(shared: &Shared, conn: &Conn, mut upstream: TcpStream) {
    let mut client = &conn.client;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match upstream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let fault = match shared.wait_flowing() {
            None | Some(Fault::Refuse) => break,
            Some(f) => f,
        };
        if fault == Fault::DropReplies || conn.drop_next_reply.swap(false, Ordering::SeqCst) {
            shared.replies_dropped.fetch_add(1, Ordering::SeqCst);
            conn.reset();
            return;
        }
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
        shared.bytes_down.fetch_add(n as u64, Ordering::SeqCst);
    }
    let _ = conn.client.shutdown(Shutdown::Write);
}

/// A [`RedisCluster`](crate::redis::RedisCluster) whose nodes clients reach
/// only through one [`FaultProxy`] each: every node announces its proxy's
/// port (`CLUSTER SLOTS`, `CLUSTER NODES`, `MOVED`/`ASK`), so a cluster
/// client connects to the proxies, seeds and discovered nodes alike. The
/// cluster bus (node to node) is not proxied.
pub struct ProxiedCluster {
    cluster: crate::redis::RedisCluster,
    proxies: Vec<FaultProxy>,
}

impl ProxiedCluster {
    /// A cluster of `masters` masters, each behind its own proxy.
    pub fn start(masters: usize) -> ProxiedCluster {
        let mut proxies = Vec::with_capacity(masters);
        let cluster = crate::redis::RedisCluster::start_announcing(masters, |_, port| {
            let proxy = FaultProxy::to_port(port);
            let announced = proxy.port();
            proxies.push(proxy);
            announced
        });
        ProxiedCluster { cluster, proxies }
    }

    /// `redis+cluster://` with the proxies' addresses.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self.proxies.iter().map(|p| p.addr().to_string()).collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// The cluster itself (`cli` reaches the nodes directly).
    pub fn cluster(&self) -> &crate::redis::RedisCluster {
        &self.cluster
    }

    pub fn proxies(&self) -> &[FaultProxy] {
        &self.proxies
    }

    /// The proxy of the master serving `key`'s slot.
    pub fn proxy_for_key(&self, key: &str) -> &FaultProxy {
        let port = self.cluster.master_port_for_key(key);
        self.proxies
            .iter()
            .find(|p| p.port() == port)
            .unwrap_or_else(|| panic!("no proxy announced as port {port} (for {key:?})"))
    }

    /// The index (for `cluster().cli(i, ..)`) of the master serving `key`.
    pub fn node_for_key(&self, key: &str) -> usize {
        let port = self.proxy_for_key(key).port();
        self.proxies
            .iter()
            .position(|p| p.port() == port)
            .expect("the proxy is one of ours")
    }
}
