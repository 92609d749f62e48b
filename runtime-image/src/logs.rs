//! Log output of the environment: the runtime's stdout and stderr re-emitted
//! line by line with the current request id, and Lambda's plain
//! `START` / `END` / `REPORT` lines. The shim's own diagnostics go through
//! `tracing` (on stderr).

use std::io::Write;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// Longest line re-emitted at once; longer output is split.
const MAX_LINE_BYTES: usize = 256 * 1024;

/// Where log lines go.
#[derive(Debug, Clone, Copy)]
pub struct LogSink {
    quiet: bool,
}

impl LogSink {
    pub fn stdio() -> Self {
        Self { quiet: false }
    }

    pub fn stdout_line(&self, line: &str) {
        if !self.quiet {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
        }
    }

    fn write(&self, stream: Stream, request_id: Option<&str>, line: &[u8]) {
        if self.quiet {
            return;
        }
        let mut buf = Vec::with_capacity(line.len() + 40);
        if let Some(id) = request_id {
            buf.extend_from_slice(id.as_bytes());
            buf.push(b'\t');
        }
        buf.extend_from_slice(line);
        buf.push(b'\n');
        let _ = match stream {
            Stream::Stdout => std::io::stdout().lock().write_all(&buf),
            Stream::Stderr => std::io::stderr().lock().write_all(&buf),
        };
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Copies a runtime output stream line by line to `sink`, prefixing the
/// request id of the invocation in flight (as `current_request_id` tells),
/// until the stream ends.
pub async fn pump(
    sink: LogSink,
    stream: Stream,
    output: impl AsyncRead + Unpin,
    current_request_id: impl Fn() -> Option<Arc<str>>,
) {
    let mut reader = BufReader::with_capacity(16 * 1024, output);
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        let read = {
            let mut limited = (&mut reader).take(MAX_LINE_BYTES as u64);
            limited.read_until(b'\n', &mut line).await
        };
        match read {
            Ok(0) => break,
            Ok(_) => {
                while matches!(line.last(), Some(b'\n' | b'\r')) {
                    line.pop();
                }
                let request_id = current_request_id();
                sink.write(stream, request_id.as_deref(), &line);
            }
            Err(e) => {
                tracing::debug!(error = %e, "runtime output stream ended");
                break;
            }
        }
    }
}
