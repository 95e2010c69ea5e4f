//! Uploading one local file as a plain object, create-only, hashing it on the way.

use crate::checksum::{Checksums, MultiHasher};
use crate::store::data::DataStore;
use crate::store::StoreError;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
/// content is checked. `known`: the file's checksums, when they were computed as it was
/// written (the caller checks that it did not change meanwhile); otherwise they are computed
/// on the way. `sent` counts bytes as they go, for progress.
pub async fn upload(
    ds: &DataStore,
    file: &std::path::Path,
    key: &Path,
    resuming: bool,
    known: Option<&Checksums>,
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
            let sums = match known {
                Some(k) => k,
                None => {
                    let mut h = MultiHasher::new();
                    h.update_parallel(&bytes);
                    h.finish()
                }
            };
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
                let local_sums = match known {
                    Some(k) => k.clone(),
                    None => blocking(file, move || MultiHasher::of_reader(std::fs::File::open(&path)?)).await?.0,
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
    known: Option<&Checksums>,
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
    // `None` inside: the checksums are known already, nothing to hash.
    let mut hasher = Some(if known.is_some() { None } else { Some(MultiHasher::new()) });
    let mut total = 0u64;
    let result: Result<(), UploadError> = async {
        loop {
            writer.wait_for_capacity(in_flight).await.map_err(err)?;
            let (mut f, mut h) = (reader.take().expect("reader"), hasher.take().expect("hasher"));
            let (f, h, chunk) = blocking(file, move || {
                let mut buf = Vec::with_capacity(part_size);
                (&mut f).take(part_size as u64).read_to_end(&mut buf)?;
                if let Some(h) = h.as_mut() {
                    h.update_parallel(&buf);
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
            writer.put(bytes::Bytes::from(chunk));
        }
    }
    .await;
    if let Err(e) = result {
        let _ = writer.abort().await;
        return Err(e);
    }
    writer.finish().await.map_err(err)?;
    let checksums = match (hasher.flatten(), known) {
        (Some(h), _) => h.finish(),
        (None, Some(k)) => k.clone(),
        (None, None) => unreachable!("a hasher exists whenever no checksums were given"),
    };
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

    #[test]
    fn swift_large_objects_take_fewer_segments_than_s3_parts() {
        let store = |url: &str| crate::store::StoreHandle::new(url, Arc::new(object_store::memory::InMemory::new()));
        assert_eq!(store("swift://records").max_parts(), 1_000);
        assert_eq!(store("s3://bucket").max_parts(), 10_000);
    }
}
