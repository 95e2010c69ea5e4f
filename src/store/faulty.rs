//! A fault-injecting, request-counting wrapper around any store, for tests: every operation
//! (GET, HEAD, LIST, PUT, conditional PUT, multipart start, part upload and completion, DELETE,
//! COPY) can be counted, made to fail the next N times with a transient error, or delayed, and
//! every one with a single answer (all but DELETE and the streamed LIST) can have that answer
//! lost after it was done, so every error path can be provoked on demand.

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The operations faults can be aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A GET of an object's bytes (whole or ranged).
    Get,
    /// A HEAD (a GET with `head: true`).
    Head,
    /// A listing, with or without a delimiter.
    List,
    /// An unconditional PUT.
    Put,
    /// A create-only or compare-and-swap PUT.
    ConditionalPut,
    /// Starting a multipart upload.
    MultipartStart,
    /// Uploading one part.
    PartUpload,
    /// Completing a multipart upload.
    MultipartComplete,
    /// A DELETE.
    Delete,
    /// A COPY.
    Copy,
}

const OPS: usize = 10;

#[derive(Debug, Default)]
struct Counters {
    seen: [AtomicUsize; OPS],
    fail_next: [AtomicUsize; OPS],
    lose_next: [AtomicUsize; OPS],
    delay_ms: [AtomicU64; OPS],
}

impl Counters {
    /// Counts `op`, waits its delay, and fails it if a fault is armed.
    async fn enter(&self, op: Op) -> Result<()> {
        let i = op as usize;
        self.seen[i].fetch_add(1, Ordering::SeqCst);
        let delay = self.delay_ms[i].load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if self.fail_next[i].fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(injected(op));
        }
        Ok(())
    }

    /// `done`, or an error in its place when a lost answer is armed for `op`.
    fn leave<T>(&self, op: Op, done: Result<T>) -> Result<T> {
        let lost = self.lose_next[op as usize].fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        match (done, lost) {
            (Ok(_), Ok(_)) => Err(object_store::Error::Generic {
                store: "faulty",
                source: format!("injected fault after {op:?} was done: timed out waiting for the answer").into(),
            }),
            (done, _) => done,
        }
    }
}

/// Wraps a store; counts every operation and fails or delays the ones asked for.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    counters: Arc<Counters>,
}

impl FaultyStore {
    /// Wraps `inner` with no faults armed.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self { inner, counters: Arc::default() }
    }

    /// How many times `op` was asked for.
    pub fn count(&self, op: Op) -> usize {
        self.counters.seen[op as usize].load(Ordering::SeqCst)
    }

    /// Fails the next `n` requests of `op` with a transient error (0 disarms).
    pub fn fail_next(&self, op: Op, n: usize) {
        self.counters.fail_next[op as usize].store(n, Ordering::SeqCst);
    }

    /// Serves the next `n` requests of `op` but answers each with a transient error, as when the
    /// connection drops before the answer arrives (0 disarms; DELETE and the streamed LIST
    /// ignore it).
    pub fn lose_answer_next(&self, op: Op, n: usize) {
        self.counters.lose_next[op as usize].store(n, Ordering::SeqCst);
    }

    /// Delays every request of `op` by `delay` before it is served (zero: none).
    pub fn delay(&self, op: Op, delay: Duration) {
        self.counters.delay_ms[op as usize].store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

fn injected(op: Op) -> object_store::Error {
    object_store::Error::Generic {
        store: "faulty",
        source: format!("injected fault in {op:?}: connection reset").into(),
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        let op = if matches!(opts.mode, PutMode::Overwrite) { Op::Put } else { Op::ConditionalPut };
        self.counters.enter(op).await?;
        let done = self.inner.put_opts(location, payload, opts).await;
        self.counters.leave(op, done)
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.counters.enter(Op::MultipartStart).await?;
        let done = self.inner.put_multipart_opts(location, opts).await;
        let inner = self.counters.leave(Op::MultipartStart, done)?;
        Ok(Box::new(FaultyUpload { inner, counters: self.counters.clone() }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let op = if options.head { Op::Head } else { Op::Get };
        self.counters.enter(op).await?;
        let done = self.inner.get_opts(location, options).await;
        self.counters.leave(op, done)
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        let counters = self.counters.clone();
        let checked = locations
            .then(move |loc| {
                let counters = counters.clone();
                async move { counters.enter(Op::Delete).await.and(loc) }
            })
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let counters = self.counters.clone();
        let inner = self.inner.list(prefix);
        futures::stream::once(async move { counters.enter(Op::List).await })
            .flat_map(move |entered| match entered {
                Ok(()) => futures::stream::empty().boxed(),
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            })
            .chain(inner)
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.counters.enter(Op::List).await?;
        let done = self.inner.list_with_delimiter(prefix).await;
        self.counters.leave(Op::List, done)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.counters.enter(Op::Copy).await?;
        let done = self.inner.copy_opts(from, to, options).await;
        self.counters.leave(Op::Copy, done)
    }
}

/// A multipart upload whose parts and completion can fail or be delayed.
#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    counters: Arc<Counters>,
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let counters = self.counters.clone();
        let part = self.inner.put_part(data);
        Box::pin(async move {
            counters.enter(Op::PartUpload).await?;
            let done = part.await;
            counters.leave(Op::PartUpload, done)
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        self.counters.enter(Op::MultipartComplete).await?;
        let done = self.inner.complete().await;
        self.counters.leave(Op::MultipartComplete, done)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    #[tokio::test]
    async fn every_operation_can_fail_and_is_counted() {
        let store = FaultyStore::new(Arc::new(InMemory::new()));
        let key = Path::from("a/b");
        store.fail_next(Op::Put, 1);
        assert!(store.put(&key, PutPayload::from_static(b"x")).await.is_err());
        store.put(&key, PutPayload::from_static(b"x")).await.unwrap();
        store.fail_next(Op::ConditionalPut, 1);
        let create = PutOptions { mode: PutMode::Create, ..Default::default() };
        assert!(store.put_opts(&Path::from("c"), PutPayload::from_static(b"y"), create.clone()).await.is_err());
        store.fail_next(Op::Head, 1);
        assert!(store.head(&key).await.is_err());
        store.head(&key).await.unwrap();
        store.fail_next(Op::Get, 1);
        assert!(store.get(&key).await.is_err());
        assert_eq!(&store.get(&key).await.unwrap().bytes().await.unwrap()[..], b"x");
        store.fail_next(Op::List, 1);
        assert!(store.list_with_delimiter(None).await.is_err());
        let listed: Vec<_> = store.list(None).collect().await;
        assert_eq!(listed.len(), 1);
        store.fail_next(Op::List, 1);
        let listed: Vec<_> = store.list(None).collect().await;
        assert!(listed[0].is_err(), "a failed listing starts with its error");

        let mut up = store.put_multipart(&Path::from("m")).await.unwrap();
        store.fail_next(Op::PartUpload, 1);
        assert!(up.put_part(PutPayload::from_static(b"part")).await.is_err());
        up.put_part(PutPayload::from_static(b"part")).await.unwrap();
        store.fail_next(Op::MultipartComplete, 1);
        assert!(up.complete().await.is_err());
        up.complete().await.unwrap();

        store.fail_next(Op::Delete, 1);
        assert!(store.delete(&key).await.is_err());
        store.delete(&key).await.unwrap();
        assert_eq!((store.count(Op::Put), store.count(Op::Head), store.count(Op::Get)), (2, 2, 2));
        assert_eq!((store.count(Op::PartUpload), store.count(Op::MultipartComplete)), (2, 2));

        store.delay(Op::Head, Duration::from_millis(50));
        let started = std::time::Instant::now();
        let _ = store.head(&Path::from("m")).await;
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_lost_answer_comes_after_the_operation_was_done() {
        let store = FaultyStore::new(Arc::new(InMemory::new()));
        let create = PutOptions { mode: PutMode::Create, ..Default::default() };
        store.lose_answer_next(Op::ConditionalPut, 1);
        let key = Path::from("k");
        assert!(store.put_opts(&key, PutPayload::from_static(b"x"), create.clone()).await.is_err());
        assert_eq!(&store.get(&key).await.unwrap().bytes().await.unwrap()[..], b"x", "stored all the same");
        let again = store.put_opts(&key, PutPayload::from_static(b"x"), create).await;
        assert!(matches!(again, Err(object_store::Error::AlreadyExists { .. })), "a retry is refused: {again:?}");

        store.lose_answer_next(Op::Copy, 1);
        assert!(store.copy(&key, &Path::from("c")).await.is_err());
        assert!(store.head(&Path::from("c")).await.is_ok(), "copied all the same");

        let mut up = store.put_multipart(&Path::from("m")).await.unwrap();
        store.lose_answer_next(Op::PartUpload, 1);
        assert!(up.put_part(PutPayload::from_static(b"part")).await.is_err());
        store.lose_answer_next(Op::MultipartComplete, 1);
        assert!(up.complete().await.is_err());
        assert_eq!(&store.get(&Path::from("m")).await.unwrap().bytes().await.unwrap()[..], b"part");
        // Disarmed once used.
        assert!(store.head(&Path::from("m")).await.is_ok());
    }
}
