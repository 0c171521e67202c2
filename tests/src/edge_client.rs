//! The HTTP/1.1 client the edge tests send with: one keep-alive connection
//! bound to any loopback address (127.0.0.2 is another source), requests
//! with or without `Content-Length`, chunked, or written byte for byte.

use std::io::{self, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use crate::upstream::{header, header_all, read_message};

/// A request for [`Client`].
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send the body with `Transfer-Encoding: chunked` (no Content-Length).
    pub chunked: bool,
    /// Send this Content-Length but none of the body: tests that the answer
    /// comes from the headers alone.
    pub declared_length_only: Option<u64>,
}

impl Request {
    pub fn get(path: &str) -> Request {
        Request {
            method: "GET".into(),
            path: path.into(),
            ..Request::default()
        }
    }

    /// A POST of `body` as `application/json`.
    pub fn post_json(path: &str, body: impl Into<Vec<u8>>) -> Request {
        Request {
            method: "POST".into(),
            path: path.into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
            ..Request::default()
        }
    }

    pub fn method(mut self, method: &str) -> Request {
        self.method = method.into();
        self
    }

    /// Adds a header (several of the same name are all sent).
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Removes every header `name`.
    pub fn without(mut self, name: &str) -> Request {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    pub fn chunked(mut self) -> Request {
        self.chunked = true;
        self
    }

    fn encode_head(&self, addr: SocketAddr) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\nhost: {addr}\r\n", self.method, self.path);
        for (n, v) in &self.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        if let Some(len) = self.declared_length_only {
            head.push_str(&format!("content-length: {len}\r\n"));
        } else if self.chunked {
            head.push_str("transfer-encoding: chunked\r\n");
        } else if !self.body.is_empty() || self.method == "POST" || self.method == "PUT" {
            head.push_str(&format!("content-length: {}\r\n", self.body.len()));
        }
        head.push_str("\r\n");
        head.into_bytes()
    }
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        header_all(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {}", self.text()))
    }
}

/// An HTTP/1.1 client over one keep-alive connection (reopened when the
/// server closes it), bound to a chosen local address.
pub struct Client {
    from: IpAddr,
    to: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    /// Connections opened so far.
    pub connections: u32,
    pub timeout: Duration,
}

impl Client {
    /// From 127.0.0.1.
    pub fn new(to: SocketAddr) -> Client {
        Client::from_addr(IpAddr::V4(Ipv4Addr::LOCALHOST), to)
    }

    /// From `from` (any 127.0.0.0/8 address works on Linux loopback).
    pub fn from_addr(from: IpAddr, to: SocketAddr) -> Client {
        Client {
            from,
            to,
            conn: None,
            connections: 0,
            timeout: Duration::from_secs(10),
        }
    }

    fn connect(&mut self) -> io::Result<BufReader<TcpStream>> {
        let domain = if self.to.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let socket = Socket::new(domain, Type::STREAM, None)?;
        socket.bind(&SocketAddr::new(self.from, 0).into())?;
        socket.connect_timeout(&self.to.into(), self.timeout)?;
        let stream: TcpStream = socket.into();
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        self.connections += 1;
        Ok(BufReader::new(stream))
    }

    /// Sends `req`; panics on transport errors.
    pub fn send(&mut self, req: &Request) -> Response {
        self.try_send(req)
            .unwrap_or_else(|e| panic!("{} {} via {}: {e}", req.method, req.path, self.to))
    }

    /// Sends `req`. A write error while sending the body (the server
    /// answered early and closed) still reads the answer. A reused
    /// connection that turns out closed is reopened once.
    pub fn try_send(&mut self, req: &Request) -> io::Result<Response> {
        let reused = self.conn.is_some();
        match self.exchange(req) {
            Err(e) if reused => {
                let _ = e;
                self.conn = None;
                self.exchange(req)
            }
            other => other,
        }
    }

    /// Writes `raw` (a whole request, byte for byte) on a new connection and
    /// reads the answer: for requests [`Request`] cannot spell (bytes that
    /// are not UTF-8 in a header value, say).
    pub fn send_raw(&mut self, raw: &[u8]) -> Response {
        let mut conn = self.connect().expect("connect");
        conn.get_mut().write_all(raw).expect("write raw request");
        let msg = read_message(&mut conn, true, false)
            .expect("read response")
            .expect("a response");
        let status = msg
            .start_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {:?}", msg.start_line));
        Response {
            status,
            headers: msg.headers,
            body: msg.body,
        }
    }

    fn exchange(&mut self, req: &Request) -> io::Result<Response> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect()?,
        };
        let head = req.encode_head(self.to);
        let stream = conn.get_mut();
        stream.write_all(&head)?;
        if req.declared_length_only.is_none() {
            let written = if req.chunked {
                write_chunked(stream, &req.body)
            } else {
                stream.write_all(&req.body)
            };
            // The server may answer (and close) before taking the whole body.
            if let Err(e) = written {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) {
                    return Err(e);
                }
            }
        }
        let no_body = req.method == "HEAD";
        let msg = read_message(&mut conn, true, no_body)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no response"))?;
        let status = msg
            .start_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad status line {:?}", msg.start_line),
                )
            })?;
        let close = msg
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let delimited = msg.header("content-length").is_some()
            || msg.header("transfer-encoding").is_some()
            || no_body;
        if !close && delimited && req.declared_length_only.is_none() {
            self.conn = Some(conn);
        }
        Ok(Response {
            status,
            headers: msg.headers,
            body: msg.body,
        })
    }
}

fn write_chunked(stream: &mut TcpStream, body: &[u8]) -> io::Result<()> {
    for chunk in body.chunks(1024) {
        stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
        stream.write_all(chunk)?;
        stream.write_all(b"\r\n")?;
    }
    stream.write_all(b"0\r\n\r\n")
}
