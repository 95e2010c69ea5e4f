//! The local control socket: `datumfs status` and `unmount` talk to a running daemon here.
//! One JSON request line, one JSON answer line; `version` lets later clients detect old daemons.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;

/// A request to the daemon.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Everything `status` shows.
    Status,
    /// Unmount and exit.
    Unmount,
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
    /// The status document (for `status`).
    #[serde(default)]
    pub status: Option<serde_json::Value>,
}

/// Sends one request and waits for the answer.
pub fn call(socket: &Path, req: &Request) -> std::io::Result<Response> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    serde_json::from_str(&answer).map_err(std::io::Error::other)
}

/// Serves requests on `socket` until the process ends; `handle` answers each one.
pub async fn serve<F>(listener: tokio::net::UnixListener, handle: F)
where
    F: Fn(Request) -> Response + Send + Sync + 'static,
{
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let handle = std::sync::Arc::new(handle);
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let handle = handle.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(read).lines();
            if let Ok(Some(line)) = lines.next_line().await {
                let resp = match serde_json::from_str::<Request>(&line) {
                    Ok(req) => handle(req),
                    Err(e) => Response {
                        version: PROTOCOL_VERSION,
                        ok: false,
                        error: Some(format!("bad request: {e}")),
                        pid: std::process::id(),
                        status: None,
                    },
                };
                let mut out = serde_json::to_vec(&resp).unwrap_or_default();
                out.push(b'\n');
                let _ = write.write_all(&out).await;
            }
        });
    }
}
