//! A gateway stopped with SIGTERM under load answers every request a client
//! managed to send: connections already accepted by the kernel, and requests
//! arriving on connections it had not read yet, get their answer; a client
//! that comes later finds the port closed (refused), nothing is lost in
//! between. A real gateway process on loopback, raw TCP clients.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{LocalGateway, python_function};

#[derive(Default)]
struct Tally {
    answered: AtomicUsize,
    refused: AtomicUsize,
    lost: AtomicUsize,
}

/// One request on a fresh connection: answered, refused, or lost (sent, or
/// connected, and no HTTP answer came).
fn one_request(addr: &str, tally: &Tally) {
    let mut stream = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(_) => {
            tally.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    let body = r#"{"n":1}"#;
    let request = format!(
        "POST /2015-03-31/functions/echo/invocations HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(request.as_bytes());
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    if answer.starts_with(b"HTTP/1.1 ") {
        tally.answered.fetch_add(1, Ordering::Relaxed);
    } else {
        tally.lost.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn sigterm_under_load_answers_every_request_it_accepted() {
    let mut gw = LocalGateway::start(
        "graceful-stop",
        &[(
            "echo.yaml",
            python_function(
                "echo",
                "def handler(e, c):\n    return e\n",
                "  scaling: {minScale: 2, maxScale: 2}\n",
            ),
        )],
        &[],
    );
    let addr = gw.base.trim_start_matches("http://").to_string();
    let tally = Arc::new(Tally::default());
    one_request(&addr, &tally);
    assert_eq!(tally.answered.load(Ordering::Relaxed), 1, "{}", gw.log());

    let stop_sending = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..12)
        .map(|_| {
            let (addr, tally, stop) = (addr.clone(), tally.clone(), stop_sending.clone());
            std::thread::spawn(move || {
                // Bounded: at most 20 s of requests.
                let end = Instant::now() + Duration::from_secs(20);
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    one_request(&addr, &tally);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    let before = tally.answered.load(Ordering::Relaxed);
    let pid = nix::unistd::Pid::from_raw(gw.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    // Clients go on for a while after the signal, as they would before a
    // load balancer notices, then stop.
    std::thread::sleep(Duration::from_millis(400));
    stop_sending.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client");
    }
    let exited = gw.stop();
    let (answered, refused, lost) = (
        tally.answered.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        tally.lost.load(Ordering::Relaxed),
    );
    eprintln!("answered {answered} ({before} before SIGTERM), refused {refused}, lost {lost}");
    assert!(before > 10, "load was running before the signal ({before})");
    assert!(exited, "the gateway exited by itself: {}", gw.log());
    assert_eq!(
        lost,
        0,
        "requests sent and never answered; log: {}",
        gw.log()
    );
}

#[test]
fn a_stop_after_finished_async_events_abandons_nothing() {
    let mut gw = LocalGateway::start(
        "stop-after-event",
        &[(
            "echo.yaml",
            python_function("echo", "def handler(e, c):\n    return e\n", ""),
        )],
        &[],
    );
    let addr = gw.base.trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(&addr).expect("connect");
    let request = format!(
        "POST /2015-03-31/functions/echo/invocations HTTP/1.1\r\nhost: {addr}\r\nx-amz-invocation-type: Event\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
    );
    stream.write_all(request.as_bytes()).expect("write");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    // Wait (bounded) until the event ran: nothing pending any more.
    let mut finished = false;
    for _ in 0..200 {
        let mut s = TcpStream::connect(&addr).expect("connect");
        let _ = s.write_all(
            format!("GET /v1/functions HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        );
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        if text.contains("\"asyncPending\":0") && text.contains("\"inFlight\":0") {
            finished = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(finished, "the event ran: {}", gw.log());
    assert!(gw.stop(), "the gateway exited by itself");
    let log = gw.log();
    assert!(
        !log.contains("abandoned"),
        "nothing was running, nothing may be abandoned: {log}"
    );
}
