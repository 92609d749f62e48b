//! The gateway's listener against slow, idle and too many clients: a real
//! gateway process on loopback, raw TCP clients.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{LocalGateway, python_function};

fn gateway(tag: &str, extra: &[&str]) -> LocalGateway {
    let f = python_function("hello", "def handler(e, c):\n    return e\n", "");
    LocalGateway::start(tag, &[("hello.yaml", f)], extra)
}

fn connect(gw: &LocalGateway) -> TcpStream {
    let addr = gw.base.trim_start_matches("http://");
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    s
}

/// Reads until the peer closes the connection or `within` passes; returns
/// what was read and whether the peer closed.
fn read_until_closed(s: &mut TcpStream, within: Duration) -> (String, bool) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), true),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), false)
}

const LIMITS: &[&str] = &[
    "--header-read-timeout",
    "1s",
    "--body-read-timeout",
    "1s",
    "--idle-timeout",
    "1s",
];

#[test]
fn a_client_trickling_its_headers_is_cut_off() {
    let gw = gateway("slow-headers", LIMITS);
    let mut s = connect(&gw);
    let started = Instant::now();
    // One byte every 200 ms: the headers would take minutes.
    let head =
        b"GET /live HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut closed = false;
    for b in head {
        if s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        let (_, gone) = read_until_closed(&mut s, Duration::from_millis(200));
        if gone {
            closed = true;
            break;
        }
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    assert!(closed, "still open after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(6));
}

#[test]
fn a_client_trickling_its_body_is_cut_off() {
    let gw = gateway("slow-body", LIMITS);
    let mut s = connect(&gw);
    let started = Instant::now();
    s.write_all(
        b"POST /2015-03-31/functions/hello/invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
    )
    .expect("write");
    let mut closed = false;
    for _ in 0..40 {
        if s.write_all(b" ").is_err() {
            closed = true;
            break;
        }
        let (_, gone) = read_until_closed(&mut s, Duration::from_millis(200));
        if gone {
            closed = true;
            break;
        }
    }
    assert!(closed, "still open after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(6));
}

#[test]
fn an_idle_kept_alive_connection_is_closed() {
    let gw = gateway("idle", LIMITS);
    let mut s = connect(&gw);
    s.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(6));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed, "idle connection still open after 6 s");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[test]
fn connections_beyond_the_cap_wait_for_a_free_one() {
    let mut extra = vec!["--max-connections", "2"];
    extra.extend_from_slice(&["--idle-timeout", "60s"]);
    let gw = gateway("cap", &extra);
    // The harness's own start-up probe may still hold a slot for a moment.
    std::thread::sleep(Duration::from_millis(300));
    let held: Vec<TcpStream> = (0..2).map(|_| connect(&gw)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = connect(&gw);
    third
        .write_all(b"GET /live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let (answer, _) = read_until_closed(&mut third, Duration::from_millis(800));
    assert!(answer.is_empty(), "served beyond the cap: {answer}");
    drop(held);
    let (answer, _) = read_until_closed(&mut third, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}

#[test]
fn an_idle_connection_outlives_the_header_deadline() {
    // The header deadline is for a request that has begun, not for the
    // wait between kept-alive requests.
    let gw = gateway(
        "idle-long",
        &["--header-read-timeout", "1s", "--idle-timeout", "60s"],
    );
    let mut s = connect(&gw);
    s.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(3));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!closed, "closed after the header deadline although idle");
    s.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("reuse");
    let (answer, _) = read_until_closed(&mut s, Duration::from_millis(600));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
