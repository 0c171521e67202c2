//! The fault proxy itself (`signalgate_tests::fault_proxy`), against a real
//! `redis-server`: it passes traffic through, drops exactly the replies it is
//! told to after Redis executed the request, blackholes, delays, refuses,
//! and lets go of everything when dropped.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use signalgate_tests::fault_proxy::{Fault, FaultProxy};
use signalgate_tests::process::wait_for;
use signalgate_tests::redis::RedisServer;

fn proxy_to(redis: &RedisServer) -> FaultProxy {
    FaultProxy::to_port(redis.port())
}

fn connect(proxy: &FaultProxy) -> TcpStream {
    let s = TcpStream::connect(proxy.addr()).expect("connect to the proxy");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    s
}

/// Sends one inline command and reads its reply (`+PONG`, `:1`, a bulk
/// string as `$3 yes`): `Ok(text)`, or the error (an end of stream is
/// `UnexpectedEof`).
fn call(s: &mut TcpStream, line: &str) -> std::io::Result<String> {
    s.write_all(format!("{line}\r\n").as_bytes())?;
    read_reply(s)
}

/// Reads one reply of a simple type or a bulk string.
fn read_reply(s: &mut TcpStream) -> std::io::Result<String> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        if let Some(end) = reply.windows(2).position(|w| w == b"\r\n") {
            let head = String::from_utf8_lossy(&reply[..end]).to_string();
            let body = match head.strip_prefix('$').map(str::parse::<usize>) {
                Some(Ok(len)) if reply.len() >= end + 2 + len + 2 => {
                    Some(String::from_utf8_lossy(&reply[end + 2..end + 2 + len]).to_string())
                }
                Some(Ok(_)) => None,
                _ => return Ok(head),
            };
            if let Some(body) = body {
                return Ok(format!("{head} {body}"));
            }
        }
        match s.read(&mut buf)? {
            0 => return Err(ErrorKind::UnexpectedEof.into()),
            n => reply.extend_from_slice(&buf[..n]),
        }
    }
}

fn is_closed(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
    )
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

#[test]
fn passes_commands_through() {
    let redis = RedisServer::start();
    let proxy = proxy_to(&redis);
    let mut s = connect(&proxy);
    assert_eq!(call(&mut s, "PING").unwrap(), "+PONG");
    assert_eq!(call(&mut s, "SET pass 1").unwrap(), "+OK");
    assert_eq!(call(&mut s, "GET pass").unwrap(), "$1 1");
    assert_eq!(proxy.accepted(), 1);
    assert_eq!(proxy.replies_dropped(), 0);
    assert!(proxy.bytes_up() > 0 && proxy.bytes_down() > 0);
}

#[test]
fn a_dropped_reply_leaves_the_request_executed_and_the_client_reset() {
    let redis = RedisServer::start();
    let proxy = proxy_to(&redis);
    let mut s = connect(&proxy);
    assert_eq!(call(&mut s, "PING").unwrap(), "+PONG");
    proxy.drop_replies(1);
    assert_eq!(proxy.armed(), 1);
    let err = call(&mut s, "SET dropped yes").expect_err("the reply must not arrive");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err:?}");
    assert_eq!(proxy.replies_dropped(), 1);
    assert_eq!(proxy.armed(), 0);
    // Redis ran it all the same.
    assert_eq!(redis.cli(&["GET", "dropped"]).trim(), "yes");
    // One fault only: the next connection is served.
    let mut again = connect(&proxy);
    assert_eq!(call(&mut again, "GET dropped").unwrap(), "$3 yes");
    assert_eq!(proxy.replies_dropped(), 1);
}

#[test]
fn a_reply_drop_can_wait_for_a_matching_request() {
    let redis = RedisServer::start();
    let proxy = proxy_to(&redis);
    let mut s = connect(&proxy);
    proxy.drop_replies_to(1, b"target");
    assert_eq!(call(&mut s, "SET other 1").unwrap(), "+OK");
    assert_eq!(
        proxy.armed(),
        1,
        "a request without the needle is not counted"
    );
    let err = call(&mut s, "SET target 1").expect_err("reply dropped");
    assert!(is_closed(&err), "{err:?}");
    assert_eq!(redis.cli(&["GET", "target"]).trim(), "1");
    assert_eq!(proxy.replies_dropped(), 1);
}

#[test]
fn drop_replies_mode_drops_every_reply_until_switched_back() {
    let redis = RedisServer::start();
    let proxy = proxy_to(&redis);
    proxy.set_fault(Fault::DropReplies);
    for i in 0..3 {
        let mut s = connect(&proxy);
        let err = call(&mut s, "INCR every").expect_err("reply dropped");
        assert!(is_closed(&err), "attempt {i}: {err:?}");
    }
    assert_eq!(proxy.replies_dropped(), 3);
    assert_eq!(redis.cli(&["GET", "every"]).trim(), "3");
    proxy.pass();
    assert_eq!(call(&mut connect(&proxy), "INCR every").unwrap(), ":4");
}

#[test]
fn a_blackhole_answers_nothing_until_it_heals() {
    let redis = RedisServer::start();
    let proxy = proxy_to(&redis);
    let mut s = connect(&proxy);
    assert_eq!(call(&mut s, "PING").unwrap(), "+PONG");
    proxy.set_fault(Fault::Blackhole);
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let err = call(&mut s, "SET held 1").expect_err("no answer in a blackhole");
    assert!(is_timeout(&err), "a read timeout, got {err:?}");
    // A new connection is accepted, and answered nothing either.
    let mut fresh = connect(&proxy);
    fresh
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let err = call(&mut fresh, "PING").expect_err("no answer in a blackhole");
    assert!(is_timeout(&err), "{err:?}");
    assert_eq!(
        redis.cli(&["EXISTS", "held"]).trim(),
        "0",
        "nothing forwarded"
    );
    // Healed: what was held flows, in order.
    proxy.pass();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(read_reply(&mut s).unwrap(), "+OK");
    assert_eq!(redis.cli(&["GET", "held"]).trim(), "1");
    assert_eq!(call(&mut s, "PING").unwrap(), "+PONG");
}

#[test]
fn a_delay_delays_each_request() {
    let redis = RedisServer::start();
    let proxy = proxy_to(&redis);
    let mut s = connect(&proxy);
    let started = Instant::now();
    assert_eq!(call(&mut s, "PING").unwrap(), "+PONG");
    let fast = started.elapsed();
    let delay = Duration::from_millis(400);
    proxy.set_fault(Fault::Delay(delay));
    let started = Instant::now();
    assert_eq!(call(&mut s, "PING").unwrap(), "+PONG");
    let slow = started.elapsed();
    assert!(slow >= delay, "delayed {slow:?}, want at least {delay:?}");
    assert!(fast < delay, "undelayed round trip {fast:?}");
}

#[test]
fn refuse_closes_existing_connections_and_resets_new_ones() {
    let redis = RedisServer::start();
    let proxy = proxy_to(&redis);
    let mut s = connect(&proxy);
    assert_eq!(call(&mut s, "PING").unwrap(), "+PONG");
    proxy.set_fault(Fault::Refuse);
    let err = read_reply(&mut s).expect_err("closed");
    assert!(is_closed(&err), "{err:?}");
    let mut fresh = connect(&proxy);
    let err = call(&mut fresh, "PING").expect_err("refused");
    assert!(
        is_closed(&err) || err.kind() == ErrorKind::BrokenPipe,
        "{err:?}"
    );
    wait_for("no connection open", Duration::from_secs(5), || {
        (proxy.open_connections() == 0).then_some(())
    });
    proxy.pass();
    assert_eq!(call(&mut connect(&proxy), "PING").unwrap(), "+PONG");
}

#[test]
fn reset_connections_resets_open_clients() {
    let redis = RedisServer::start();
    let proxy = proxy_to(&redis);
    let mut s = connect(&proxy);
    assert_eq!(call(&mut s, "PING").unwrap(), "+PONG");
    proxy.reset_connections();
    let err = read_reply(&mut s).expect_err("reset");
    assert!(is_closed(&err), "{err:?}");
}

#[test]
fn dropping_the_proxy_closes_its_connections_without_hanging() {
    let redis = RedisServer::start();
    let proxy = proxy_to(&redis);
    let mut s = connect(&proxy);
    assert_eq!(call(&mut s, "PING").unwrap(), "+PONG");
    // Even with traffic held in a blackhole.
    proxy.set_fault(Fault::Blackhole);
    s.write_all(b"PING\r\n").unwrap();
    let addr = proxy.addr();
    let started = Instant::now();
    drop(proxy);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "drop took {:?}",
        started.elapsed()
    );
    let err = read_reply(&mut s).expect_err("closed with the proxy");
    assert!(is_closed(&err), "{err:?}");
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
        "nothing listens on {addr} any more"
    );
}
