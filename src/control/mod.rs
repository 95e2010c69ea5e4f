//! The local control socket: `datumfs mount` (joining a running daemon), `status`, `sync`,
//! `warm`, `unmount` and `cache` talk to the daemon of a cache dir here. Requests about one
//! mount name its mountpoint (one daemon serves every mount on its cache dir). One JSON request line; the daemon may answer with progress lines (`{"progress": ...}`)
//! before its one final response line. `version` lets later clients detect old daemons.

use crate::sync::ProgressSnapshot;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u32 = 3;

/// What an unmount does with outputs that are not synced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnsyncedOutputs {
    /// Refuse to unmount while there are any.
    #[default]
    Refuse,
    /// Delete them.
    Discard,
    /// Keep them staged on disk (a later mount with the same execution id finds them).
    Keep,
}

/// `datumfs cache` operations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CacheOp {
    /// The figures (`evict_after`: for "what the next eviction would remove"; the daemon's own
    /// setting when absent).
    Stats {
        /// Seconds.
        evict_after: Option<u64>,
    },
    /// Evict objects.
    Evict {
        /// Which.
        what: crate::cache::EvictWhat,
    },
    /// Re-verify every cached block.
    Verify {
        /// Drop bad blocks.
        repair: bool,
    },
}

/// A request to the daemon.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Add a mount to this daemon (a second `datumfs mount` on the same cache dir).
    Mount {
        /// The mount's settings (the cache-wide ones of the running daemon win).
        config: Box<crate::config::MountConfig>,
        /// Fingerprint of the client's store environment (credentials, endpoints); a daemon
        /// started with another one refuses, so no mount reads with someone else's credentials.
        environment: String,
    },
    /// Everything `status` shows about a mount.
    Status {
        /// The mount.
        mountpoint: PathBuf,
    },
    /// Upload new and changed outputs of a mount as datums.
    Sync {
        /// The mount.
        mountpoint: PathBuf,
    },
    /// Put a writable volume's changes back under its prefix.
    VolumeSync {
        /// The mount.
        mountpoint: PathBuf,
        /// The volume's name.
        name: String,
        /// Only say what would be done.
        #[serde(default)]
        dry_run: bool,
        /// Overwrite and delete whatever the bucket has now.
        #[serde(default)]
        force: bool,
    },
    /// A cache operation (`datumfs cache ...` while a daemon owns the cache).
    Cache {
        /// What to do.
        action: CacheOp,
    },
    /// Fetch whole inputs into the cache.
    Warm {
        /// The mount.
        mountpoint: PathBuf,
        /// A path relative to the mountpoint, under `inputs/`.
        path: String,
    },
    /// Fetch whole every object a URI names into the cache, without a mount.
    WarmUri {
        /// The URI, as `--input` takes it.
        uri: String,
        /// The data store (for `datum://` and `dataset://` URIs).
        store: String,
        /// The client's working directory (for relative local paths).
        cwd: PathBuf,
        /// Fingerprint of the client's store environment (see `Mount`).
        environment: String,
    },
    /// Unmount a mount (the daemon exits after its last one).
    Unmount {
        /// The mount.
        mountpoint: PathBuf,
        /// What to do with unsynced outputs.
        #[serde(default)]
        unsynced: UnsyncedOutputs,
    },
}

/// The daemon's answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    /// Protocol version of the daemon.
    pub version: u32,
    /// Whether the request succeeded.
    pub ok: bool,
    /// Error message when it did not.
    #[serde(default)]
    pub error: Option<String>,
    /// The daemon's process id.
    pub pid: u32,
    /// The status document (for `status`), the sync report (for `sync`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
    /// A status document already in its JSON text, sent as `status`: a sync report of a hundred
    /// thousand files costs the daemon 30 MB as text and about 150 MB as a JSON tree.
    #[serde(rename = "status", skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub status_text: Option<Box<serde_json::value::RawValue>>,
}

impl Response {
    /// A successful answer carrying `status`.
    pub fn ok(status: Option<serde_json::Value>) -> Self {
        Self { version: PROTOCOL_VERSION, ok: true, error: None, pid: std::process::id(), status, status_text: None }
    }

    /// `status` serialized without building its JSON tree first.
    pub fn with_status_of<T: Serialize>(mut self, status: &T) -> Self {
        match serde_json::value::to_raw_value(status) {
            Ok(raw) => {
                self.status = None;
                self.status_text = Some(raw);
            }
            Err(e) => tracing::warn!("serializing an answer: {e}"),
        }
        self
    }

    /// The answer as one line of JSON, in pieces to write one after the other: a status
    /// already in its text (a sync report of a hundred thousand files is tens of MB) is written
    /// as it is, not copied into a second buffer with the rest.
    pub fn into_line(mut self) -> Vec<Vec<u8>> {
        let status = self.status_text.take();
        if status.is_some() {
            self.status = None;
        }
        let mut head = serde_json::to_vec(&self).unwrap_or_default();
        match status {
            Some(raw) if head.last() == Some(&b'}') => {
                head.pop();
                head.extend_from_slice(b",\"status\":");
                let raw: Box<str> = raw.into();
                vec![head, raw.into_boxed_bytes().into_vec(), b"}\n".to_vec()]
            }
            _ => {
                head.push(b'\n');
                vec![head]
            }
        }
    }

    /// A failed answer.
    pub fn failed(error: String, status: Option<serde_json::Value>) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            ok: false,
            error: Some(error),
            pid: std::process::id(),
            status,
            status_text: None,
        }
    }
}

/// Sends one request and waits for the answer, passing progress lines to `on_progress`.
pub fn call_with_progress(
    socket: &Path,
    req: &Request,
    mut on_progress: impl FnMut(ProgressSnapshot),
) -> std::io::Result<Response> {
    let mut stream = UnixStream::connect(socket)?;
    // Long jobs send progress at least every second, so a silent minute means a stuck daemon.
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut answer = String::new();
        if reader.read_line(&mut answer)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the daemon closed the connection"));
        }
        let v: serde_json::Value = serde_json::from_str(&answer).map_err(std::io::Error::other)?;
        if let Some(p) = v.get("progress") {
            if let Ok(p) = serde_json::from_value(p.clone()) {
                on_progress(p);
            }
            continue;
        }
        return serde_json::from_value(v).map_err(std::io::Error::other);
    }
}

/// Sends one request and waits for the answer.
pub fn call(socket: &Path, req: &Request) -> std::io::Result<Response> {
    call_with_progress(socket, req, |_| {})
}

/// Answers requests; may report progress through the sender while working.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one request.
    async fn handle(&self, req: Request, progress: tokio::sync::mpsc::UnboundedSender<ProgressSnapshot>) -> Response;
}

/// Requests being answered, so that a daemon about to exit can let them finish (the answer to
/// the last `unmount` is sent after the mount is gone).
#[derive(Debug, Default, Clone)]
pub struct InFlight(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    /// Waits until no request is being answered, for at most `limit`.
    pub fn wait_idle(&self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        while self.0.load(std::sync::atomic::Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

struct Answering(InFlight);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Answers a connection that may not make requests, and closes it.
async fn refuse(mut stream: tokio::net::UnixStream, why: String) {
    use tokio::io::AsyncWriteExt;
    let mut out = serde_json::to_vec(&Response::failed(why, None)).unwrap_or_default();
    out.push(b'\n');
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
}

/// Serves requests on `listener` until the process ends.
pub async fn serve(listener: tokio::net::UnixListener, handler: std::sync::Arc<dyn Handler>, in_flight: InFlight) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        // Only the user the daemon runs as (and root) may drive it, whatever the socket's mode.
        let me = nix::unistd::geteuid().as_raw();
        match stream.peer_cred() {
            Ok(peer) if peer.uid() == me || peer.uid() == 0 => {}
            Ok(peer) => {
                tracing::warn!("refused a control connection from uid {} (the daemon serves uid {me})", peer.uid());
                refuse(stream, format!("this daemon belongs to uid {me}; uid {} may not control it", peer.uid())).await;
                continue;
            }
            Err(e) => {
                tracing::warn!("refused a control connection whose peer is unknown: {e}");
                continue;
            }
        }
        let handler = handler.clone();
        in_flight.0.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let answering = Answering(in_flight.clone());
        tokio::spawn(async move {
            let _answering = answering;
            let (read, mut write) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(read).lines();
            let Ok(Some(line)) = lines.next_line().await else { return };
            let req = match serde_json::from_str::<Request>(&line) {
                Ok(req) => req,
                Err(e) => {
                    let resp = Response::failed(format!("bad request: {e}"), None);
                    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
                    out.push(b'\n');
                    let _ = write.write_all(&out).await;
                    return;
                }
            };
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let work = tokio::spawn(async move { handler.handle(req, tx).await });
            while let Some(p) = rx.recv().await {
                let mut out = serde_json::to_vec(&serde_json::json!({ "progress": p })).unwrap_or_default();
                out.push(b'\n');
                // A client that went away does not stop the work.
                let _ = write.write_all(&out).await;
            }
            let resp = work.await.unwrap_or_else(|e| Response::failed(format!("internal error: {e}"), None));
            for part in resp.into_line() {
                if write.write_all(&part).await.is_err() {
                    break;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::Response;

    fn line(resp: Response) -> serde_json::Value {
        let bytes: Vec<u8> = resp.into_line().concat();
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        assert_eq!(bytes.last(), Some(&b'\n'));
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn an_answer_is_one_line_of_json_with_its_status_written_as_it_is() {
        let report = serde_json::json!({"datums": [{"path": "a \"b\"\n", "size": 3}], "failed": []});
        let v = line(Response::failed("1 file(s) could not be synced".into(), None).with_status_of(&report));
        assert_eq!(v["status"], report);
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"], "1 file(s) could not be synced");
        let v = line(Response::ok(Some(serde_json::json!({"mounts": []}))));
        assert_eq!(v["status"], serde_json::json!({"mounts": []}));
        let v = line(Response::ok(None));
        assert_eq!((v["ok"].as_bool(), v.get("status")), (Some(true), None));
        // Read back as a client reads it.
        let back: Response = serde_json::from_value(line(Response::ok(None).with_status_of(&report))).unwrap();
        assert_eq!(back.status, Some(report));
    }
}
