//! A job's output, kept for its execution record: everything `datumfs run`'s command writes to
//! stdout and stderr passes through to the terminal as it comes and into a bounded log (the
//! first [`HEAD_MAX`] bytes and the last [`TAIL_MAX`], with a line saying how much was left out
//! between), which is put in the data store while the job runs and once more when it ends.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

/// The beginning of the output kept.
pub const HEAD_MAX: usize = 4 << 20;
/// The end of the output kept.
pub const TAIL_MAX: usize = 4 << 20;

#[derive(Default)]
struct Buf {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    /// Bytes between head and tail that were let go.
    dropped: u64,
    /// Bumped at every append (for uploads of what changed only).
    version: u64,
}

/// A job's bounded log.
#[derive(Default)]
pub struct JobLog {
    buf: Mutex<Buf>,
}

impl JobLog {
    /// An empty log.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buf> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds output.
    pub fn append(&self, mut bytes: &[u8]) {
        let mut b = self.lock();
        b.version += 1;
        if b.head.len() < HEAD_MAX {
            let n = bytes.len().min(HEAD_MAX - b.head.len());
            b.head.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
        b.tail.extend(bytes);
        let over = b.tail.len().saturating_sub(TAIL_MAX);
        if over > 0 {
            b.tail.drain(..over);
            b.dropped += over as u64;
        }
    }

    /// The log's text now, and its version.
    pub fn contents(&self) -> (Vec<u8>, u64) {
        let b = self.lock();
        let mut out = Vec::with_capacity(b.head.len() + b.tail.len() + 64);
        out.extend_from_slice(&b.head);
        if b.dropped > 0 {
            out.extend_from_slice(format!("\n[... {} bytes of output left out ...]\n", b.dropped).as_bytes());
        }
        out.extend(b.tail.iter());
        (out, b.version)
    }

    /// Copies `from` to `to` and into the log until `from` ends, on a thread of its own.
    pub fn tee(
        self: &Arc<Self>,
        mut from: impl Read + Send + 'static,
        mut to: impl Write + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        let log = self.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match from.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        log.append(&buf[..n]);
                        // The terminal going away must not stop the job or the log.
                        let _ = to.write_all(&buf[..n]).and_then(|()| to.flush());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_beginning_and_the_end() {
        let log = JobLog::new();
        log.append(b"start\n");
        assert_eq!(log.contents().0, b"start\n");
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..10 {
            log.append(&chunk);
        }
        log.append(b"end\n");
        let (text, version) = log.contents();
        assert_eq!(version, 12);
        assert!(text.starts_with(b"start\n") && text.ends_with(b"xend\n"));
        assert!(text.len() < HEAD_MAX + TAIL_MAX + 100);
        let marker = String::from_utf8_lossy(&text[HEAD_MAX..HEAD_MAX + 60]).to_string();
        assert!(marker.contains("bytes of output left out"), "{marker}");
    }
}
