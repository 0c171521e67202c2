//! A recording HTTP/1.1 upstream: answers every request `200 {}` and keeps
//! what it received (method, path, headers, body), so edge tests can check
//! what got past Envoy and the filter. Also the small HTTP/1.1 message
//! reader the edge client shares (see [`crate::edge_client::Client`]).
//!
//! Thread-per-connection, std only: plenty for tests, and it reads every
//! body completely like a real sidecar would.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Largest message head or body the reader accepts (a test guard).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// One HTTP/1.1 message: the start line, headers in order, the decoded body.
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub start_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Message {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// The first value of header `name` (case-insensitive) in `headers`.
pub fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Every value of header `name` (case-insensitive) in `headers`.
pub fn header_all<'h>(headers: &'h [(String, String)], name: &str) -> Vec<&'h str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// One line, without its CR LF; bytes that are not UTF-8 (allowed in header
/// values) become U+FFFD.
fn read_line(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    if r.read_until(b'\n', &mut line)? == 0 {
        return Ok(None);
    }
    if line.len() > MAX_MESSAGE {
        return Err(invalid("line too long"));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

fn read_chunked(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r)?.ok_or_else(|| invalid("eof in chunk size"))?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while let Some(l) = read_line(r)? {
                if l.is_empty() {
                    break;
                }
            }
            return Ok(body);
        }
        if body.len() + size > MAX_MESSAGE {
            return Err(invalid("chunked body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
    }
}

/// Reads one message. `Ok(None)` on a clean end of stream before it starts.
/// `body_until_eof`: a message with neither `Content-Length` nor chunked
/// encoding has its body up to the end of the stream (responses); else none
/// (requests). `no_body`: the message has no body whatever its headers say
/// (responses to HEAD, 1xx/204/304).
pub fn read_message(
    r: &mut impl BufRead,
    body_until_eof: bool,
    no_body: bool,
) -> io::Result<Option<Message>> {
    let start_line = loop {
        match read_line(r)? {
            None => return Ok(None),
            // Tolerate empty lines before a message (RFC 9112 2.2).
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?.ok_or_else(|| invalid("eof in headers"))?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let chunked = header(&headers, "transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    let body = if no_body {
        Vec::new()
    } else if chunked {
        read_chunked(r)?
    } else if let Some(len) = header(&headers, "content-length") {
        let len: usize = len
            .trim()
            .parse()
            .map_err(|_| invalid(format!("bad content-length {len:?}")))?;
        if len > MAX_MESSAGE {
            return Err(invalid("body too large"));
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        body
    } else if body_until_eof {
        let mut body = Vec::new();
        r.take(MAX_MESSAGE as u64).read_to_end(&mut body)?;
        body
    } else {
        Vec::new()
    };
    Ok(Some(Message {
        start_line,
        headers,
        body,
    }))
}

/// A request the upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Every value of header `name` (case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        header_all(&self.headers, name)
    }
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    arrived: Condvar,
    stop: AtomicBool,
    connections: Mutex<Vec<TcpStream>>,
}

/// The recording upstream; stops (and closes its connections) when dropped.
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// The answer to every request.
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";

impl Upstream {
    /// Listens on a free loopback port.
    pub fn start() -> Upstream {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind upstream");
        let addr = listener.local_addr().expect("upstream address");
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name(format!("upstream-{}", addr.port()))
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    if let Ok(clone) = conn.try_clone() {
                        s.connections.lock().expect("lock").push(clone);
                    }
                    let s = Arc::clone(&s);
                    let _ = std::thread::Builder::new()
                        .name("upstream-conn".into())
                        .spawn(move || serve(conn, &s));
                }
            })
            .expect("spawn upstream");
        Upstream {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("lock").clone()
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        self.shared.received.lock().expect("lock").len()
    }

    /// Waits until at least `n` requests arrived (panics after `timeout`).
    pub fn wait_for_count(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        let mut got = self.shared.received.lock().expect("lock");
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "upstream got {} requests, expected {n} within {timeout:?}",
                got.len()
            );
            got = self.shared.arrived.wait_timeout(got, left).expect("lock").0;
        }
        got.clone()
    }

    /// Forgets what was received.
    pub fn clear(&self) {
        self.shared.received.lock().expect("lock").clear();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for c in self.shared.connections.lock().expect("lock").drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        // Wake the acceptor so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, shared: &Shared) {
    let _ = conn.set_nodelay(true);
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    while let Ok(Some(msg)) = read_message(&mut reader, false, false) {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let mut parts = msg.start_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let close = msg
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        {
            let mut got = shared.received.lock().expect("lock");
            got.push(Received {
                method,
                path,
                headers: msg.headers,
                body: msg.body,
                at: Instant::now(),
            });
            shared.arrived.notify_all();
        }
        if writer.write_all(RESPONSE).is_err() || close {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_content_length_chunked_and_eof_bodies() {
        let raw = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3;x=1\r\nllo\r\n0\r\nT: 1\r\n\r\n\
GET /c HTTP/1.1\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        let a = read_message(&mut r, false, false).unwrap().unwrap();
        assert_eq!(a.start_line, "POST /a HTTP/1.1");
        assert_eq!(a.header("content-length"), Some("3"));
        assert_eq!(a.body, b"abc");
        let b = read_message(&mut r, false, false).unwrap().unwrap();
        assert_eq!(b.body, b"hello");
        let c = read_message(&mut r, false, false).unwrap().unwrap();
        assert!(c.body.is_empty());
        assert!(read_message(&mut r, false, false).unwrap().is_none());

        let resp = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil eof";
        let m = read_message(&mut BufReader::new(&resp[..]), true, false)
            .unwrap()
            .unwrap();
        assert_eq!(m.body, b"until eof");
    }

    #[test]
    fn records_what_it_receives() {
        let up = Upstream::start();
        let mut c = TcpStream::connect(up.addr()).unwrap();
        c.write_all(b"POST /x?y=1 HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 2\r\n\r\nhi")
            .unwrap();
        let got = up.wait_for_count(1, Duration::from_secs(5));
        assert_eq!(got[0].method, "POST");
        assert_eq!(got[0].path, "/x?y=1");
        assert_eq!(got[0].header_all("x-a"), ["1", "2"]);
        assert_eq!(got[0].body, b"hi");
        let mut r = BufReader::new(c);
        let resp = read_message(&mut r, true, false).unwrap().unwrap();
        assert_eq!(resp.start_line, "HTTP/1.1 200 OK");
        assert_eq!(resp.body, b"{}");
        up.clear();
        assert_eq!(up.count(), 0);
    }
}
