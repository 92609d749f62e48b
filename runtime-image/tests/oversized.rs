//! A client sending an event over the limit reads the shim's 413, however
//! much it still had to send when the shim decided.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Shim, task_root};

#[test]
fn a_client_still_sending_an_oversized_event_reads_the_413() {
    let root = task_root(&[("bootstrap", "#!/bin/sh\nwhile true; do sleep 1; done\n")]);
    let shim = Shim::start(&root, &["--runtime", "provided"], &[]);
    for declared in [true, false] {
        let mut s = TcpStream::connect(shim.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let size = 9 * 1024 * 1024;
        let head = if declared {
            format!(
                "POST /2015-03-31/functions/function/invocations HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n"
            )
        } else {
            "POST /2015-03-31/functions/function/invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_string()
        };
        s.write_all(head.as_bytes()).expect("head");
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0;
        while sent < size {
            let written = if declared {
                s.write_all(&chunk)
            } else {
                s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .and_then(|()| s.write_all(&chunk))
                    .and_then(|()| s.write_all(b"\r\n"))
            };
            written.unwrap_or_else(|e| {
                panic!("the shim stopped reading after {sent} bytes (declared: {declared}): {e}")
            });
            sent += chunk.len();
        }
        if !declared {
            s.write_all(b"0\r\n\r\n").expect("last chunk");
        }
        let mut answer = vec![0u8; 4096];
        let n = s.read(&mut answer).expect("an answer");
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(
            answer.contains("RequestEntityTooLargeException"),
            "{answer}"
        );
    }
}
