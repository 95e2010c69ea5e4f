//! Prometheus metrics of the daemon (`--metrics-addr HOST:PORT`): store requests by operation
//! and outcome with their latencies (every store goes through [`MeteredStore`]); the read
//! path's fetches in flight, read-ahead and failed reads by kind; bytes served, files and bytes
//! synced and outputs waiting for a sync, per mount; and the cache's figures read at each scrape
//! (hits, fetches, evictions, corrupt blocks, size against its cap).
//! The text format is prometheus-client's; the server answers `GET /metrics` and nothing else.

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// One kind of store request and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    op: &'static str,
    outcome: &'static str,
}

/// One kind of store request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

/// One mount, by its mountpoint.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MountLabels {
    mount: String,
}

/// Why a read failed, in a word.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<OpLabels, Histogram, fn() -> Histogram>,
    fetches_in_flight: Gauge,
    read_ahead_bytes: Counter,
    read_errors: Family<KindLabels, Counter>,
    served_bytes: Family<MountLabels, Counter>,
    synced_files: Family<MountLabels, Counter>,
    synced_bytes: Family<MountLabels, Counter>,
    outputs: OutputsFigures,
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let mut registry = Registry::with_prefix("datumfs");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<OpLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register("store_requests", "Requests to object stores, by operation and outcome", requests.clone());
        registry.register("store_request_seconds", "Latency of object store requests", latency.clone());
        let fetches_in_flight = Gauge::default();
        registry.register(
            "fetches_in_flight",
            "Ranged GETs of the read path running now (readers' and read-ahead)",
            fetches_in_flight.clone(),
        );
        let read_ahead_bytes = Counter::default();
        registry.register(
            "read_ahead_bytes",
            "Bytes fetched ahead of sequential readers, before they asked",
            read_ahead_bytes.clone(),
        );
        let read_errors = Family::<KindLabels, Counter>::default();
        registry.register("read_errors", "Reads answered with an error (EIO), by cause", read_errors.clone());
        let served_bytes = Family::<MountLabels, Counter>::default();
        registry.register(
            "served_bytes",
            "Bytes read through a mount (inputs, volumes, outputs)",
            served_bytes.clone(),
        );
        let synced_files = Family::<MountLabels, Counter>::default();
        registry.register("synced_files", "Output files uploaded as datums by syncs of a mount", synced_files.clone());
        let synced_bytes = Family::<MountLabels, Counter>::default();
        registry.register("synced_bytes", "Output bytes uploaded by syncs of a mount", synced_bytes.clone());
        let outputs = OutputsFigures::default();
        registry.register_collector(Box::new(outputs.clone()));
        Metrics {
            registry: Mutex::new(registry),
            requests,
            latency,
            fetches_in_flight,
            read_ahead_bytes,
            read_errors,
            served_bytes,
            synced_files,
            synced_bytes,
            outputs,
        }
    })
}

/// What a failed request says, in a word.
fn outcome<T>(res: &Result<T>) -> &'static str {
    match res {
        Ok(_) => "ok",
        Err(object_store::Error::NotFound { .. }) => "not_found",
        Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => "precondition",
        Err(object_store::Error::NotModified { .. }) => "not_modified",
        Err(object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }) => "denied",
        Err(e) if e.to_string().to_ascii_lowercase().contains("timed out") => "timeout",
        Err(_) => "error",
    }
}

fn observe<T>(op: &'static str, started: Instant, res: &Result<T>) {
    let m = metrics();
    m.requests.get_or_create(&RequestLabels { op, outcome: outcome(res) }).inc();
    m.latency.get_or_create(&OpLabels { op }).observe(started.elapsed().as_secs_f64());
}

/// Counts a ranged GET of the read path while it runs (dropping the guard ends it).
pub fn fetch_in_flight() -> InFlightFetch {
    metrics().fetches_in_flight.inc();
    InFlightFetch
}

/// One fetch counted in `datumfs_fetches_in_flight` until dropped.
#[derive(Debug)]
pub struct InFlightFetch;

impl Drop for InFlightFetch {
    fn drop(&mut self) {
        metrics().fetches_in_flight.dec();
    }
}

/// Counts `bytes` fetched ahead of a sequential reader.
pub fn read_ahead(bytes: u64) {
    metrics().read_ahead_bytes.inc_by(bytes);
}

/// Counts a read answered with an error, by cause (`not_found`, `changed`, `store`, `cache`,
/// `integrity`, ...).
pub fn read_failed(kind: &'static str) {
    metrics().read_errors.get_or_create(&KindLabels { kind }).inc();
}

fn mount_labels(mount: &std::path::Path) -> MountLabels {
    MountLabels { mount: mount.display().to_string() }
}

/// The count of bytes read through one mount, kept by its filesystem (one lookup per mount, not
/// per read).
#[derive(Debug, Clone)]
pub struct ServedBytes(Counter);

impl ServedBytes {
    /// The counter of `mount`.
    pub fn of(mount: &std::path::Path) -> Self {
        Self(metrics().served_bytes.get_or_create(&mount_labels(mount)).clone())
    }

    /// Counts `bytes` read.
    pub fn add(&self, bytes: u64) {
        self.0.inc_by(bytes);
    }
}

/// Counts `files` and `bytes` uploaded by a sync of `mount`.
pub fn synced(mount: &std::path::Path, files: u64, bytes: u64) {
    let m = metrics();
    let labels = mount_labels(mount);
    m.synced_files.get_or_create(&labels).inc_by(files);
    m.synced_bytes.get_or_create(&labels).inc_by(bytes);
    // What is pending changed: the next scrape asks again.
    if let Some(w) = m.outputs.mounts.lock().unwrap_or_else(|e| e.into_inner()).get(&labels.mount) {
        *w.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// What a mount's outputs hold that a sync would upload: (files, bytes).
pub type PendingOutputs = Box<dyn Fn() -> Option<(u64, u64)> + Send + Sync>;

/// Shows `mount`'s unsynced outputs at each scrape (`datumfs_outputs_pending_files|bytes`).
/// `pending` walks the staging area, so a scrape reuses its last answer for 20 times as long
/// as that took (at least a second): a big staging area is not walked at every scrape.
pub fn watch_outputs(mount: &std::path::Path, pending: PendingOutputs) {
    let mut mounts = metrics().outputs.mounts.lock().unwrap_or_else(|e| e.into_inner());
    mounts.insert(mount.display().to_string(), Watched { pending, last: Mutex::new(None) });
}

/// Drops what a scrape shows of `mount` (it is unmounted).
pub fn forget_mount(mount: &std::path::Path) {
    let m = metrics();
    let labels = mount_labels(mount);
    m.outputs.mounts.lock().unwrap_or_else(|e| e.into_inner()).remove(&labels.mount);
    m.served_bytes.remove(&labels);
    m.synced_files.remove(&labels);
    m.synced_bytes.remove(&labels);
}

struct Watched {
    pending: PendingOutputs,
    last: Mutex<Option<Answer>>,
}

/// A pending-outputs answer: when it was asked, how long it took, what it said.
type Answer = (Instant, std::time::Duration, (u64, u64));

/// Each mount's unsynced outputs, read at scrape time.
#[derive(Default, Clone)]
struct OutputsFigures {
    mounts: Arc<Mutex<std::collections::BTreeMap<String, Watched>>>,
}

impl std::fmt::Debug for OutputsFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OutputsFigures")
    }
}

impl prometheus_client::collector::Collector for OutputsFigures {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        let mounts = self.mounts.lock().unwrap_or_else(|e| e.into_inner());
        let mut figures = Vec::new();
        for (mount, watched) in mounts.iter() {
            let mut last = watched.last.lock().unwrap_or_else(|e| e.into_inner());
            let reuse = |took: std::time::Duration| (took * 20).max(std::time::Duration::from_secs(1));
            let value = match *last {
                Some((at, took, v)) if at.elapsed() < reuse(took) => v,
                _ => {
                    let started = Instant::now();
                    let Some(v) = (watched.pending)() else { continue };
                    *last = Some((started, started.elapsed(), v));
                    v
                }
            };
            figures.push((mount.clone(), value));
        }
        let series = [
            ("outputs_pending_files", "Output files a sync of the mount would upload", 0),
            ("outputs_pending_bytes", "Output bytes a sync of the mount would upload", 1),
        ];
        for (name, help, which) in series {
            let mut family =
                encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Gauge)?;
            for (mount, value) in &figures {
                let labels = MountLabels { mount: mount.clone() };
                let g = ConstGauge::new(if which == 0 { value.0 } else { value.1 } as i64);
                g.encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The cache's figures, read at each scrape.
struct CacheFigures(Arc<crate::cache::Cache>);

impl std::fmt::Debug for CacheFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CacheFigures({})", self.0.dir().display())
    }
}

impl prometheus_client::collector::Collector for CacheFigures {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        let stats = self.0.stats();
        let counters = [
            ("cache_hit_bytes", "Bytes served from the block cache", stats.hit_bytes.load(Ordering::Relaxed)),
            (
                "cache_fetched_bytes",
                "Bytes fetched from stores into the cache",
                stats.fetched_bytes.load(Ordering::Relaxed),
            ),
            ("cache_evicted_objects", "Objects evicted from the cache", stats.evicted_objects.load(Ordering::Relaxed)),
            ("cache_evicted_bytes", "Bytes freed by evictions", stats.evicted_bytes.load(Ordering::Relaxed)),
            (
                "cache_corrupt_blocks",
                "Cached blocks that failed verification",
                stats.corrupt_blocks.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let gauges = [
            ("cache_used_bytes", "Bytes of the blocks in the cache", self.0.used_bytes() as i64),
            ("cache_cap_bytes", "The cache's size cap (0: none)", self.0.cap_bytes() as i64),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

/// Adds `cache`'s figures to what a scrape shows.
pub fn watch_cache(cache: Arc<crate::cache::Cache>) {
    metrics().registry.lock().unwrap_or_else(|e| e.into_inner()).register_collector(Box::new(CacheFigures(cache)));
}

/// Everything, in Prometheus' text format.
pub fn render() -> String {
    let mut out = String::new();
    let registry = metrics().registry.lock().unwrap_or_else(|e| e.into_inner());
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut conn, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = match tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = if request.starts_with("GET ") && (path == "/metrics" || path.starts_with("/metrics?"))
            {
                ("200 OK", render())
            } else {
                ("404 Not Found", "only /metrics is served here\n".to_string())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

/// An object store whose every request is counted and timed.
#[derive(Debug)]
pub struct MeteredStore {
    inner: Arc<dyn ObjectStore>,
}

impl MeteredStore {
    /// `inner`, metered.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self { inner }
    }
}

impl std::fmt::Display for MeteredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.inner)
    }
}

#[async_trait]
impl ObjectStore for MeteredStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        let op = if matches!(opts.mode, PutMode::Overwrite) { "put" } else { "conditional_put" };
        let started = Instant::now();
        let res = self.inner.put_opts(location, payload, opts).await;
        observe(op, started, &res);
        res
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        let started = Instant::now();
        let res = self.inner.put_multipart_opts(location, opts).await;
        observe("multipart_start", started, &res);
        Ok(Box::new(MeteredUpload { inner: res? }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let op = if options.head { "head" } else { "get" };
        let started = Instant::now();
        let res = self.inner.get_opts(location, options).await;
        observe(op, started, &res);
        res
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner
            .delete_stream(locations)
            .map(|res| {
                observe("delete", Instant::now(), &res);
                res
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        metrics().requests.get_or_create(&RequestLabels { op: "list", outcome: "started" }).inc();
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let started = Instant::now();
        let res = self.inner.list_with_delimiter(prefix).await;
        observe("list", started, &res);
        res
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let started = Instant::now();
        let res = self.inner.copy_opts(from, to, options).await;
        observe("copy", started, &res);
        res
    }
}

/// A multipart upload whose parts and completion are counted and timed.
#[derive(Debug)]
struct MeteredUpload {
    inner: Box<dyn MultipartUpload>,
}

#[async_trait]
impl MultipartUpload for MeteredUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let part = self.inner.put_part(data);
        Box::pin(async move {
            let started = Instant::now();
            let res = part.await;
            observe("part_upload", started, &res);
            res
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let started = Instant::now();
        let res = self.inner.complete().await;
        observe("multipart_complete", started, &res);
        res
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn requests_are_counted_by_operation_and_outcome() {
        let store = MeteredStore::new(Arc::new(InMemory::new()));
        store.put(&Path::from("a"), PutPayload::from_static(b"x")).await.unwrap();
        store.get(&Path::from("a")).await.unwrap();
        assert!(store.head(&Path::from("missing")).await.is_err());
        let text = render();
        assert!(text.contains(r#"datumfs_store_requests_total{op="put",outcome="ok"}"#), "{text}");
        assert!(text.contains(r#"datumfs_store_requests_total{op="head",outcome="not_found"}"#), "{text}");
        assert!(text.contains("datumfs_store_request_seconds_bucket"), "{text}");
    }
}
