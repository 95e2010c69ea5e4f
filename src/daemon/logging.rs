//! Logs: to a private file under the cache dir (always) and to stderr in the foreground.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Clone)]
struct SharedFile(Arc<Mutex<std::fs::File>>);

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

impl<'a> MakeWriter<'a> for SharedFile {
    type Writer = SharedFile;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Starts logging at `level` (tracing filter syntax) to `file`, and to stderr when `stderr`.
pub fn init(file: &Path, level: &str, stderr: bool) -> std::io::Result<()> {
    let f = OpenOptions::new().create(true).append(true).mode(0o600).open(file)?;
    let filter = || EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let file_layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_target(false)
        .with_writer(SharedFile(Arc::new(Mutex::new(f))))
        .with_filter(filter());
    let stderr_layer = stderr.then(|| {
        tracing_subscriber::fmt::layer().with_target(false).with_writer(std::io::stderr).with_filter(filter())
    });
    let _ = tracing_subscriber::registry().with(file_layer).with(stderr_layer).try_init();
    Ok(())
}
