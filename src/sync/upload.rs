//! Uploading one local file as a plain object, create-only, hashing it on the way.

use crate::checksum::{Checksums, KnownSums, MultiHasher};
use crate::store::data::DataStore;
use crate::store::StoreError;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Files up to this size go up in one create-only PUT; bigger ones as multipart uploads.
pub const SINGLE_PUT_MAX: u64 = 16 << 20;
/// Part size of multipart uploads (larger for files that would need more parts than the store
/// allows).
const PART_SIZE: usize = 16 << 20;
/// Bytes of parts in flight per file, about (at least two parts).
const BYTES_IN_FLIGHT: usize = 64 << 20;

/// The part size for a file of `size` bytes: [`PART_SIZE`], or a larger whole number of MiB
/// when the file would need more than `max_parts` parts (a 200 GiB checkpoint on S3: 21 MiB).
fn part_size_for(size: u64, max_parts: u64) -> usize {
    let least = size.div_ceil(max_parts).next_multiple_of(1 << 20);
    usize::try_from(least).unwrap_or(usize::MAX).max(PART_SIZE)
}

/// How many parts of `part_size` go up at once.
fn parts_in_flight(part_size: usize) -> usize {
    (BYTES_IN_FLIGHT / part_size).max(2)
}

/// The buffers of one multipart upload's parts. A part's buffer comes back here once its request
/// is done, so an upload cycles through a few buffers instead of taking fresh memory from the
/// kernel for every part (a page fault per 4 KiB: a quarter of a million for 1 GiB, on the CPU
/// the hashing and the store share).
#[derive(Default)]
struct PartBuffers(Arc<Mutex<Vec<Vec<u8>>>>);

impl PartBuffers {
    /// An empty buffer that holds `capacity` bytes: a returned one if there is one.
    fn take(&self, capacity: usize) -> Vec<u8> {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
        buf.clear();
        buf.reserve_exact(capacity);
        buf
    }

    /// `buf` as a part's bytes, coming back here when the last reference to them goes (if the
    /// upload is still going then; otherwise it is freed).
    fn lend(&self, buf: Vec<u8>) -> bytes::Bytes {
        bytes::Bytes::from_owner(LentBuffer { buf, home: Arc::downgrade(&self.0) })
    }
}

/// A part's buffer while its request holds it.
struct LentBuffer {
    buf: Vec<u8>,
    home: Weak<Mutex<Vec<Vec<u8>>>>,
}

impl AsRef<[u8]> for LentBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for LentBuffer {
    fn drop(&mut self) {
        if let Some(home) = self.home.upgrade() {
            home.lock().unwrap_or_else(|e| e.into_inner()).push(std::mem::take(&mut self.buf));
        }
    }
}

/// The hash an upload goes on with, given what is `known`: none when the checksums are done
/// already, a copy of a hash of the file's start, or a new one.
fn hash_to_continue(known: Option<&KnownSums>) -> Option<Box<MultiHasher>> {
    match known {
        Some(KnownSums::Done { .. }) => None,
        Some(KnownSums::Started(h)) => Some(h.clone()),
        None => Some(Box::default()),
    }
}

/// The checksums of `bytes`, a whole file: `known` ones, or those of a hash of its start fed
/// the rest.
fn complete_hash(known: Option<&KnownSums>, bytes: &[u8]) -> Checksums {
    if let Some(KnownSums::Done { digests, .. }) = known {
        return digests.to_checksums();
    }
    let mut h = hash_to_continue(known).filter(|h| h.len() <= bytes.len() as u64).unwrap_or_default();
    h.update_parallel(&bytes[h.len() as usize..]);
    h.finish()
}

/// The checksums of the file at `path`, hashed from its start or, with a hash of its start
/// (`started`), from where that hash got.
fn hash_file_from(started: Option<&KnownSums>, path: &std::path::Path) -> std::io::Result<Checksums> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let mut h = hash_to_continue(started).unwrap_or_default();
    f.seek(SeekFrom::Start(h.len()))?;
    h.update_from(f)?;
    Ok(h.finish())
}

/// What happened to an upload.
#[derive(Debug)]
pub enum Outcome {
    /// The bytes are in the store at the key (written now, or found complete from an earlier,
    /// interrupted attempt).
    Stored {
        /// Their checksums.
        checksums: Checksums,
        /// Their size.
        size: u64,
    },
    /// Another object (not these bytes) already holds the key; it was left untouched.
    KeyTaken,
}

/// An upload failure, naming the file or the object.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The local file could not be read.
    #[error("{path}: {error}")]
    Local {
        /// The file.
        path: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn local(path: &std::path::Path) -> impl Fn(std::io::Error) -> UploadError + '_ {
    move |error| UploadError::Local { path: path.display().to_string(), error }
}

async fn blocking<T: Send + 'static>(
    path: &std::path::Path,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, UploadError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| local(path)(std::io::Error::other(e)))?.map_err(local(path))
}

/// The sha256 of local file `path`, read on a blocking thread.
pub async fn file_sha256(path: &std::path::Path) -> Result<String, UploadError> {
    let p = path.to_path_buf();
    blocking(path, move || {
        let mut h = Sha256::new();
        std::io::copy(&mut std::fs::File::open(&p)?, &mut h)?;
        Ok(hex::encode(h.finalize()))
    })
    .await
}

/// The sha256 of the object at `key`, streamed.
async fn remote_sha256(ds: &DataStore, key: &Path) -> Result<String, StoreError> {
    let err = |e| StoreError::from_object_store(&ds.uri_of(key), ds.handle.bucket.as_deref(), e);
    let mut stream = ds.handle.inner.get(key).await.map_err(err)?.into_stream();
    let mut h = Sha256::new();
    while let Some(chunk) = stream.next().await {
        h.update(chunk.map_err(err)?);
    }
    Ok(hex::encode(h.finalize()))
}

/// Uploads `file` to `key` without ever replacing an existing object. `resuming`: an earlier
/// attempt may have stored these very bytes at `key`, which then counts as done once its
/// content is checked. `known`: the file's checksums, or a hash of its start, when they were
/// computed as it was written (the caller checks that it did not change meanwhile); what they
/// leave out is hashed on the way. `sent` counts bytes as they go, for progress.
pub async fn upload(
    ds: &DataStore,
    file: &std::path::Path,
    key: &Path,
    resuming: bool,
    known: Option<&KnownSums>,
    sent: &Arc<AtomicU64>,
) -> Result<Outcome, UploadError> {
    let shown = ds.uri_of(key);
    let err = |e| StoreError::from_object_store(&shown, ds.handle.bucket.as_deref(), e);
    let path = file.to_path_buf();
    let size = blocking(file, move || std::fs::metadata(&path).map(|m| m.len())).await?;
    if size <= SINGLE_PUT_MAX {
        let path = file.to_path_buf();
        let known = known.cloned();
        let (bytes, checksums) = blocking(file, move || {
            let bytes = std::fs::read(&path)?;
            let sums = complete_hash(known.as_ref(), &bytes);
            Ok((bytes, sums))
        })
        .await?;
        let size = bytes.len() as u64;
        return Ok(if upload_bytes(ds, key, bytes::Bytes::from(bytes), resuming).await? {
            sent.fetch_add(size, Ordering::Relaxed);
            Outcome::Stored { checksums, size }
        } else {
            Outcome::KeyTaken
        });
    }

    // Multipart completion cannot be made conditional through object_store's generic API, so
    // the key is checked first; keys hold the execution id, and one sync runs at a time per
    // execution, so nothing else writes there in between.
    match ds.handle.inner.head(key).await {
        Ok(_) => {
            if resuming {
                let path = file.to_path_buf();
                let known = known.cloned();
                let local_sums = match known {
                    Some(KnownSums::Done { digests, .. }) => digests.to_checksums(),
                    started => blocking(file, move || hash_file_from(started.as_ref(), &path)).await?,
                };
                if remote_sha256(ds, key).await? == local_sums.sha256 {
                    sent.fetch_add(size, Ordering::Relaxed);
                    return Ok(Outcome::Stored { checksums: local_sums, size });
                }
            }
            return Ok(Outcome::KeyTaken);
        }
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(err(e).into()),
    }
    let (checksums, size) = put_multipart_file(ds, file, key, known, sent).await?;
    Ok(Outcome::Stored { checksums, size })
}

/// Uploads `file` to `key` as it is now, replacing what is there (`datumfs volume push`): one
/// PUT, or a multipart upload for a big file. Returns its checksums and size.
pub async fn put_file(
    ds: &DataStore,
    file: &std::path::Path,
    key: &Path,
    sent: &Arc<AtomicU64>,
) -> Result<(Checksums, u64), UploadError> {
    let path = file.to_path_buf();
    let size = blocking(file, move || std::fs::metadata(&path).map(|m| m.len())).await?;
    if size > SINGLE_PUT_MAX {
        return put_multipart_file(ds, file, key, None, sent).await;
    }
    let path = file.to_path_buf();
    let (bytes, checksums) = blocking(file, move || {
        let bytes = std::fs::read(&path)?;
        let mut h = MultiHasher::new();
        h.update_parallel(&bytes);
        Ok((bytes, h.finish()))
    })
    .await?;
    let size = bytes.len() as u64;
    ds.handle
        .inner
        .put(key, PutPayload::from(bytes))
        .await
        .map_err(|e| StoreError::from_object_store(&ds.uri_of(key), ds.handle.bucket.as_deref(), e))?;
    sent.fetch_add(size, Ordering::Relaxed);
    Ok((checksums, size))
}

/// Uploads `file` to `key` in parts, several in flight, hashing it on the way unless its
/// checksums are `known`.
pub(crate) async fn put_multipart_file(
    ds: &DataStore,
    file: &std::path::Path,
    key: &Path,
    known: Option<&KnownSums>,
    sent: &Arc<AtomicU64>,
) -> Result<(Checksums, u64), UploadError> {
    let shown = ds.uri_of(key);
    let err = |e| StoreError::from_object_store(&shown, ds.handle.bucket.as_deref(), e);
    let (reader, size) = {
        let path = file.to_path_buf();
        blocking(file, move || {
            let f = std::fs::File::open(&path)?;
            let size = f.metadata()?.len();
            Ok((f, size))
        })
        .await?
    };
    let mut reader = Some(reader);
    let part_size = part_size_for(size, ds.handle.max_parts());
    let in_flight = parts_in_flight(part_size);
    let upload = ds.handle.inner.put_multipart(key).await.map_err(err)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, part_size);
    // `None` inside: the checksums are known already, nothing to hash; else the hash goes on
    // from the bytes it has been fed (those of the file's start, hashed as it was written).
    let mut hasher = Some(hash_to_continue(known));
    let mut total = 0u64;
    let buffers = PartBuffers::default();
    let result: Result<(), UploadError> = async {
        loop {
            writer.wait_for_capacity(in_flight).await.map_err(err)?;
            let (mut f, mut h) = (reader.take().expect("reader"), hasher.take().expect("hasher"));
            let mut buf = buffers.take(part_size);
            let at = total;
            let (f, h, chunk) = blocking(file, move || {
                (&mut f).take(part_size as u64).read_to_end(&mut buf)?;
                if let Some(h) = h.as_mut() {
                    // Only what the hash was not fed yet.
                    let fed = usize::try_from(h.len().saturating_sub(at)).unwrap_or(usize::MAX);
                    h.update_parallel(&buf[fed.min(buf.len())..]);
                }
                Ok((f, h, buf))
            })
            .await?;
            reader = Some(f);
            hasher = Some(h);
            if chunk.is_empty() {
                return Ok(());
            }
            total += chunk.len() as u64;
            sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            writer.put(buffers.lend(chunk));
        }
    }
    .await;
    if let Err(e) = result {
        let _ = writer.abort().await;
        return Err(e);
    }
    let checksums = match (hasher.flatten(), known) {
        (Some(h), _) => h.finish(),
        (None, Some(KnownSums::Done { digests, .. })) => digests.to_checksums(),
        (None, _) => unreachable!("a hasher exists whenever no checksums were given"),
    };
    if let Err(e) = writer.finish().await {
        // The completion's answer can be lost after the store did it: a store assembling a big
        // object can outlast the read timeout, and the retry then finds the upload gone. The key
        // was free when the upload started, so if it now holds these very bytes, they are ours.
        let e = err(e);
        match remote_sha256(ds, key).await {
            Ok(stored) if stored == checksums.sha256 => {
                tracing::info!("{e}; the store holds the uploaded bytes at {shown} all the same");
            }
            _ => return Err(e.into()),
        }
    }
    Ok((checksums, total))
}

/// Uploads `bytes` (a small file, a pack) to `key` without ever replacing an existing object:
/// one create-only PUT, or a multipart upload when they are big. `resuming`: an earlier attempt may
/// have stored these very bytes there, which then counts as done. Returns false when another
/// object holds the key (left untouched).
pub async fn upload_bytes(
    ds: &DataStore,
    key: &Path,
    bytes: bytes::Bytes,
    resuming: bool,
) -> Result<bool, UploadError> {
    let shown = ds.uri_of(key);
    let err = |e| StoreError::from_object_store(&shown, ds.handle.bucket.as_deref(), e);
    let same_bytes = |bytes: bytes::Bytes| async move {
        if !resuming {
            return Ok(false);
        }
        let local = tokio::task::spawn_blocking(move || hex::encode(Sha256::digest(&bytes)))
            .await
            .map_err(|e| StoreError::Other { uri: ds.uri_of(key), cause: e.to_string() })?;
        Ok::<bool, UploadError>(remote_sha256(ds, key).await? == local)
    };
    let single = bytes.len() as u64 <= SINGLE_PUT_MAX;
    // The key is checked first when resuming (the bytes may be there already, and a refused
    // create-only PUT can be answered before its body is read, which some servers do by closing
    // the connection mid-body: an error, not a refusal), and before a multipart upload (its
    // completion is not conditional; the key holds an id no other writer uses).
    if resuming || !single {
        match ds.handle.inner.head(key).await {
            Ok(_) => return same_bytes(bytes).await,
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(err(e).into()),
        }
    }
    if single {
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        return match ds.handle.inner.put_opts(key, PutPayload::from(bytes.clone()), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                same_bytes(bytes).await
            }
            Err(e) => Err(err(e).into()),
        };
    }
    // Parts are slices of the pack itself (a multipart writer would copy them into buffers of
    // its own), all in flight at once: a pack is a few parts.
    let part_size = part_size_for(bytes.len() as u64, ds.handle.max_parts());
    let mut upload = ds.handle.inner.put_multipart(key).await.map_err(err)?;
    let parts: Vec<_> = (0..bytes.len())
        .step_by(part_size)
        .map(|at| upload.put_part(PutPayload::from(bytes.slice(at..(at + part_size).min(bytes.len())))))
        .collect();
    if let Err(e) = futures::future::try_join_all(parts).await {
        let _ = upload.abort().await;
        return Err(err(e).into());
    }
    upload.complete().await.map_err(err)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_grow_only_when_a_file_would_need_more_than_the_store_allows() {
        const GIB: u64 = 1 << 30;
        for max_parts in [10_000, 1_000] {
            assert_eq!(part_size_for(20 << 20, max_parts), PART_SIZE);
            assert_eq!(part_size_for(GIB, max_parts), PART_SIZE);
            assert_eq!(part_size_for(PART_SIZE as u64 * max_parts, max_parts), PART_SIZE, "exactly the limit");
            for size in [20 * GIB, 200 * GIB, 1024 * GIB, 5 * 1024 * GIB, PART_SIZE as u64 * max_parts + 1] {
                let part = part_size_for(size, max_parts) as u64;
                assert!(size.div_ceil(part) <= max_parts, "{size} bytes in parts of {part}");
                assert_eq!(part % (1 << 20), 0, "whole MiB");
            }
        }
        assert_eq!(part_size_for(200 * GIB, 10_000), 21 << 20);
        assert_eq!(part_size_for(20 * GIB, 1_000), 21 << 20, "a 20 GiB output to Swift");
        assert_eq!(parts_in_flight(PART_SIZE), 4);
        assert_eq!(parts_in_flight(part_size_for(5 * 1024 * GIB, 1_000)), 2, "memory stays bounded");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upload_goes_on_from_a_hash_of_the_files_start() {
        use object_store::ObjectStoreExt;
        let handle =
            Arc::new(crate::store::StoreHandle::new("mem://u", Arc::new(object_store::memory::InMemory::new())));
        let ds = DataStore { handle, prefix: String::new(), url: "mem://u".into(), local_dir: None, project: None };
        let dir = tempfile::tempdir().unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        // One file in one PUT, one in parts; hashes of their start that end inside a part, at a
        // part's end, past the first part, and of nothing.
        for size in [(8 << 20) + 5, (40 << 20) + 7] {
            let data: Vec<u8> = (0..size as u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
            let path = dir.path().join(format!("f{size}"));
            std::fs::write(&path, &data).unwrap();
            let want = MultiHasher::of_reader(&data[..]).unwrap().0;
            for (case, fed) in
                [0, (5 << 20) + 3, PART_SIZE, PART_SIZE + (1 << 20), size].map(|n| n.min(size)).iter().enumerate()
            {
                let fed = *fed;
                let mut start = Box::<MultiHasher>::default();
                start.update(&data[..fed]);
                let key = Path::from(format!("k{size}-{case}"));
                let known = KnownSums::Started(start);
                let got = upload(&ds, &path, &key, false, Some(&known), &sent).await.unwrap();
                let Outcome::Stored { checksums, size: stored } = got else { panic!("{key}: key taken") };
                assert_eq!((checksums, stored), (want.clone(), size as u64), "{size} bytes, {fed} hashed before");
                let back = ds.handle.inner.get(&key).await.unwrap().bytes().await.unwrap();
                assert!(back[..] == data[..], "{key}: the stored bytes are the file's");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_completion_whose_answer_was_lost_counts_only_if_the_store_holds_the_bytes() {
        use crate::store::faulty::{FaultyStore, Op};
        let faulty = Arc::new(FaultyStore::new(Arc::new(object_store::memory::InMemory::new())));
        let handle = Arc::new(crate::store::StoreHandle::new("mem://u", faulty.clone()));
        let ds = DataStore { handle, prefix: String::new(), url: "mem://u".into(), local_dir: None, project: None };
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(20 << 20) as u32 + 11).map(|i| (i.wrapping_mul(2246822519) >> 7) as u8).collect();
        let path = dir.path().join("model.bin");
        std::fs::write(&path, &data).unwrap();
        let want = MultiHasher::of_reader(&data[..]).unwrap().0;
        let sent = Arc::new(AtomicU64::new(0));
        // Done by the store, its answer lost: the stored bytes are checked, and it counts.
        faulty.lose_answer_next(Op::MultipartComplete, 1);
        let got = upload(&ds, &path, &Path::from("done"), false, None, &sent).await.unwrap();
        assert!(
            matches!(got, Outcome::Stored { ref checksums, size } if *checksums == want && size == data.len() as u64)
        );
        assert_eq!(faulty.count(Op::MultipartComplete), 1);
        // Not done by the store: an error naming the object, and nothing at the key.
        faulty.fail_next(Op::MultipartComplete, 1);
        let e = upload(&ds, &path, &Path::from("failed"), false, None, &sent).await.unwrap_err();
        assert!(e.to_string().contains("mem://u/failed"), "{e}");
        assert!(ds.handle.inner.head(&Path::from("failed")).await.is_err());
    }

    #[test]
    fn swift_large_objects_take_fewer_segments_than_s3_parts() {
        let store = |url: &str| crate::store::StoreHandle::new(url, Arc::new(object_store::memory::InMemory::new()));
        assert_eq!(store("swift://records").max_parts(), 1_000);
        assert_eq!(store("s3://bucket").max_parts(), 10_000);
    }
}
