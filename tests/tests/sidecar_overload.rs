//! The sidecar over its in-flight limit: 503 before the body is read.

use std::time::Duration;

use signalgate_tests::payloads::{alert, webhook};
use signalgate_tests::process::wait_for;
use signalgate_tests::sidecar::Sidecar;

#[test]
fn requests_over_max_in_flight_are_answered_503_before_their_body_is_read() {
    use std::io::{Read, Write};
    let s = Sidecar::start(&[("SIGNALGATE_MAX_IN_FLIGHT", "2")]);
    let in_flight = || s.metric("signalgate_requests_in_flight");

    // Two requests whose bodies stop halfway hold both places.
    let mut held: Vec<(std::net::TcpStream, Vec<u8>)> = ["p1", "p2"]
        .iter()
        .map(|pod| {
            let body = serde_json::to_vec(&webhook(vec![alert("Held", "shop", pod)])).unwrap();
            let mut conn = std::net::TcpStream::connect(s.api).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            write!(
                conn,
                "POST /api/v1/signals/prometheus HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .unwrap();
            let half = body.len() / 2;
            conn.write_all(&body[..half]).unwrap();
            (conn, body[half..].to_vec())
        })
        .collect();
    wait_for("two requests in flight", Duration::from_secs(10), || {
        (in_flight() == 2.0).then_some(())
    });

    let a = s.post_alerts(&webhook(vec![alert("Turned", "shop", "p3")]));
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.header("retry-after"), Some("1"));
    assert_eq!(
        a.json()["type"],
        "https://signalgate.io/problems/overloaded"
    );
    assert_eq!(
        s.metric("signalgate_errors_total{kind=\"overloaded\"}"),
        1.0
    );

    // The held requests complete normally once their bodies arrive.
    for (conn, rest) in &mut held {
        conn.write_all(rest).unwrap();
        let mut head = [0u8; 12];
        conn.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 201");
    }
    wait_for("no request in flight", Duration::from_secs(10), || {
        (in_flight() == 0.0).then_some(())
    });
    // Nothing of the refused request was recorded; sent again, it is.
    assert_eq!(s.resources().len(), 2);
    let a = s.post_alerts(&webhook(vec![alert("Turned", "shop", "p3")]));
    assert_eq!(a.status, 201, "{}", a.body);
}
