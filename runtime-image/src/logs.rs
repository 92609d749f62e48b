//! Log output of the environment: the runtime's stdout and stderr re-emitted
//! line by line with the current request id, Lambda's plain `START` / `END` /
//! `REPORT` lines, and the log tail of one invocation (`--log-type Tail`).
//! The shim's own diagnostics go through `tracing` (on stderr).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;

use porchlight_core::invoke::LOG_TAIL_BYTES;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

/// Longest line re-emitted at once; longer output is split.
const MAX_LINE_BYTES: usize = 256 * 1024;

/// How the environment's lines are written.
#[derive(Debug, Clone)]
pub struct LogSink {
    /// Output read in a terminal (local mode): a record's lines joined with
    /// `\r` (Lambda's way of keeping a traceback one CloudWatch event) are
    /// printed as lines, and platform lines name the function.
    local: bool,
    /// No `START` / `END` / `REPORT` lines (they still reach a log tail).
    quiet: bool,
    function_name: Arc<str>,
}

impl LogSink {
    pub fn new(function_name: &str, local: bool, quiet: bool) -> Self {
        Self {
            local,
            quiet,
            function_name: Arc::from(function_name),
        }
    }

    /// Whether `START`, `END` and `REPORT` lines are printed (not `--quiet`).
    pub fn prints_platform_lines(&self) -> bool {
        !self.quiet
    }

    /// A `START`, `END` or `REPORT` line.
    pub fn platform_line(&self, line: &str) {
        if self.quiet {
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = if self.local {
            writeln!(out, "[{}] {line}", self.function_name)
        } else {
            writeln!(out, "{line}")
        };
    }

    /// One line of the runtime's output, with the request id of the
    /// invocation in flight unless the line carries it already (Lambda's
    /// log formats put it in every record).
    pub fn runtime_line(&self, stream: Stream, request_id: Option<&str>, line: &[u8]) {
        let mut buf = Vec::with_capacity(line.len() + 40);
        let pieces: Box<dyn Iterator<Item = &[u8]>> = if self.local {
            Box::new(line.split(|b| *b == b'\r'))
        } else {
            Box::new(std::iter::once(line))
        };
        for piece in pieces {
            if let Some(id) = request_id
                && !contains(line, id.as_bytes())
            {
                buf.extend_from_slice(id.as_bytes());
                buf.push(b'\t');
            }
            buf.extend_from_slice(piece);
            buf.push(b'\n');
        }
        let _ = match stream {
            Stream::Stdout => std::io::stdout().lock().write_all(&buf),
            Stream::Stderr => std::io::stderr().lock().write_all(&buf),
        };
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// The log of one invocation as Lambda's `X-Amz-Log-Result` carries it:
/// its lines as the runtime wrote them (a record's `\r` as a line break),
/// keeping only the last [`LOG_TAIL_BYTES`].
#[derive(Debug, Default)]
pub struct LogTail {
    bytes: VecDeque<u8>,
}

impl LogTail {
    pub fn push_line(&mut self, line: &[u8]) {
        // Only the end is kept: skip what could not survive anyway.
        let keep = &line[line.len().saturating_sub(LOG_TAIL_BYTES)..];
        self.bytes
            .extend(keep.iter().map(|&b| if b == b'\r' { b'\n' } else { b }));
        self.bytes.push_back(b'\n');
        let excess = self.bytes.len().saturating_sub(LOG_TAIL_BYTES);
        self.bytes.drain(..excess);
    }

    /// The tail as text, starting at a character boundary.
    pub fn into_text(self) -> String {
        let bytes: Vec<u8> = self.bytes.into();
        let start = bytes
            .iter()
            .position(|b| (*b as i8) >= -0x40)
            .unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }
}

/// Asks a [`pump`] to read everything the runtime has written so far, and
/// says when it has.
pub type FlushRequest = oneshot::Sender<()>;

/// The flush side of a [`pump`].
pub fn flush_channel() -> (mpsc::Sender<FlushRequest>, mpsc::Receiver<FlushRequest>) {
    mpsc::channel(4)
}

/// Copies a runtime output stream line by line to `on_line` until the
/// stream ends. A flush request makes it read what the pipe holds at once,
/// so that output written before the runtime answered belongs to the
/// invocation it answered.
pub async fn pump(
    stream: Stream,
    output: pipe::Receiver,
    mut flushes: mpsc::Receiver<FlushRequest>,
    mut on_line: impl FnMut(Stream, &[u8]),
) {
    let mut pending = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let ended = tokio::select! {
            ready = output.readable() => {
                ready.is_err()
                    || drain(Read::Reactor, &output, &mut chunk, &mut pending, stream, &mut on_line)
            }
            Some(done) = flushes.recv() => {
                let ended = drain(Read::Now, &output, &mut chunk, &mut pending, stream, &mut on_line);
                let _ = done.send(());
                ended
            }
        };
        if ended {
            break;
        }
    }
    if !pending.is_empty() {
        on_line(stream, trim_end(&pending));
    }
    // Flush requests made after the end are answered: there is nothing left.
    flushes.close();
    while let Some(done) = flushes.recv().await {
        let _ = done.send(());
    }
}

/// How [`drain`] reads.
#[derive(Clone, Copy)]
enum Read {
    /// Through the reactor (`try_read`), which clears the pipe's readiness
    /// once it would block: after a readiness event.
    Reactor,
    /// The system call itself (the pipe is non-blocking): for a flush, which
    /// must read what was written before it was asked for, even while the
    /// reactor has not seen the pipe readable yet (`try_read` would then
    /// answer "would block" without reading).
    Now,
}

/// Reads what the pipe holds now and emits every complete line; true once
/// the stream ended.
fn drain(
    how: Read,
    output: &pipe::Receiver,
    chunk: &mut [u8],
    pending: &mut Vec<u8>,
    stream: Stream,
    on_line: &mut impl FnMut(Stream, &[u8]),
) -> bool {
    loop {
        let read = match how {
            Read::Reactor => output.try_read(chunk),
            Read::Now => nix::unistd::read(output, chunk).map_err(std::io::Error::from),
        };
        match read {
            Ok(0) => return true,
            Ok(n) => {
                pending.extend_from_slice(&chunk[..n]);
                emit_lines(pending, stream, on_line);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(error = %e, "runtime output stream ended");
                return true;
            }
        }
    }
}

fn emit_lines(pending: &mut Vec<u8>, stream: Stream, on_line: &mut impl FnMut(Stream, &[u8])) {
    let mut start = 0;
    while let Some(end) = pending[start..].iter().position(|b| *b == b'\n') {
        on_line(stream, trim_end(&pending[start..start + end]));
        start += end + 1;
    }
    while pending.len() - start >= MAX_LINE_BYTES {
        on_line(stream, &pending[start..start + MAX_LINE_BYTES]);
        start += MAX_LINE_BYTES;
    }
    pending.drain(..start);
}

fn trim_end(mut line: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r'] = line {
        line = rest;
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_keeps_the_last_bytes_from_a_character_boundary() {
        let mut tail = LogTail::default();
        tail.push_line(b"START");
        tail.push_line(b"[ERROR] E: x\rTraceback\r  File");
        assert_eq!(tail.into_text(), "START\n[ERROR] E: x\nTraceback\n  File\n");

        let mut tail = LogTail::default();
        tail.push_line("é".repeat(LOG_TAIL_BYTES).as_bytes());
        tail.push_line(b"REPORT");
        let text = tail.into_text();
        assert!(text.ends_with("é\nREPORT\n"), "{text}");
        assert!(text.len() <= LOG_TAIL_BYTES && text.len() >= LOG_TAIL_BYTES - 1);
    }

    #[tokio::test]
    async fn a_flush_answers_once_what_the_pipe_held_was_read() {
        use std::sync::Mutex;
        use tokio::io::AsyncWriteExt as _;

        let (mut writer, reader) = pipe::pipe().expect("pipe");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        let (flush, requests) = flush_channel();
        let task = tokio::spawn(pump(Stream::Stdout, reader, requests, move |_, l| {
            seen.lock().expect("lock").push(l.to_vec())
        }));
        writer.write_all(b"one\ntwo\npartial").await.expect("write");
        let (done, ack) = oneshot::channel();
        flush.send(done).await.expect("send");
        ack.await.expect("ack");
        assert_eq!(
            *lines.lock().expect("lock"),
            [b"one".to_vec(), b"two".to_vec()]
        );
        // At the end, the last partial line, and later flushes still answer.
        drop(writer);
        let (done, ack) = oneshot::channel();
        let _ = flush.send(done).await;
        let _ = ack.await;
        task.await.expect("pump");
        assert_eq!(lines.lock().expect("lock").len(), 3);
    }

    #[test]
    fn lines_are_split_at_newlines_and_at_the_length_limit() {
        let mut lines = Vec::new();
        let mut pending = b"one\r\ntwo\nthr".to_vec();
        emit_lines(&mut pending, Stream::Stdout, &mut |_, l: &[u8]| {
            lines.push(l.to_vec())
        });
        assert_eq!(lines, [b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(pending, b"thr");
        pending.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES));
        lines.clear();
        emit_lines(&mut pending, Stream::Stdout, &mut |_, l: &[u8]| {
            lines.push(l.to_vec())
        });
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), MAX_LINE_BYTES);
        assert_eq!(pending, b"xxx");
    }
}
