//! How dataset versions are kept in the store: a small record naming the version's chunks
//! (see [`super::manifest`]), and the chunks themselves under `datasets/<name>/chunks/<id>`,
//! create-only and shared by every version that holds the same files. Records written before
//! chunked manifests (the whole file list in the record) are read as they are.

use super::datasets::{VersionFile, VersionRecord};
use super::manifest::{self, ChunkRef, FileView};
use super::{Catalog, CatalogError};
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// The format of records written now.
pub const FORMAT: u32 = 2;

/// Chunks read or written at once.
const CHUNKS_AT_ONCE: usize = 16;

/// A version record as stored: the version's own fields, and either its chunks (today) or, in
/// records written before chunked manifests, its files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredVersion {
    /// The version; its `files` are stored only by records of the older format.
    #[serde(flatten)]
    pub record: VersionRecord,
    /// [`FORMAT`] for chunked manifests; absent in records that list their files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<u32>,
    /// Number of files.
    #[serde(default)]
    pub count: u64,
    /// Bytes of all files.
    #[serde(default)]
    pub bytes: u64,
    /// The stores the files' objects are in (object URI = store + key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stores: Vec<String>,
    /// The chunks, in path order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkRef>,
}

impl StoredVersion {
    /// The ids of every chunk it uses (main and companion).
    pub fn chunk_ids(&self) -> HashSet<String> {
        self.chunks.iter().flat_map(|c| [c.id.clone(), c.sums.clone()]).collect()
    }
}

impl Catalog {
    fn chunk_rel(&self, dataset: &str, id: &str) -> String {
        format!("{}/{dataset}/chunks/{id}", self.collection.dir())
    }
}

impl Catalog {
    /// The stored record of version `version` of `name`, and its ETag (for compare-and-swap).
    pub(super) async fn stored_version(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<StoredVersion>, CatalogError> {
        let key = self.ds.record_key(&self.version_rel(name, version));
        Ok(self.read(&key).await?.map(|(v, _)| v))
    }

    /// A chunk's bytes.
    async fn chunk(&self, dataset: &str, id: &str) -> Result<Vec<u8>, CatalogError> {
        let key = self.ds.record_key(&self.chunk_rel(dataset, id));
        let res = self.ds.handle.inner.get(&key).await.map_err(|e| self.store_err(&key, e))?;
        Ok(res.bytes().await.map_err(|e| self.store_err(&key, e))?.to_vec())
    }

    /// The files of one chunk (with `with_sums`, their md5 and sha1 from its companion chunk;
    /// without, those are left empty and the companion is not read).
    async fn load_chunk(
        &self,
        dataset: &str,
        c: &ChunkRef,
        stores: &[String],
        with_sums: bool,
    ) -> Result<Vec<VersionFile>, CatalogError> {
        let sums = async {
            match with_sums {
                true => self.chunk(dataset, &c.sums).await.map(Some),
                false => Ok(None),
            }
        };
        let (main, sums) = futures::try_join!(self.chunk(dataset, &c.id), sums)?;
        let uri = self.ds.uri_of(&self.ds.record_key(&self.chunk_rel(dataset, &c.id)));
        let decoded = cpu_work(|| manifest::decode(c, &main, sums.as_deref(), stores));
        decoded.map_err(|e| CatalogError::Malformed { uri, reason: e.to_string() })
    }

    /// Stores a chunk, create-only: one already there holds the same bytes (its id is their hash).
    async fn put_chunk(&self, dataset: &str, id: String, bytes: Vec<u8>) -> Result<(), CatalogError> {
        let key = self.ds.record_key(&self.chunk_rel(dataset, &id));
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.ds.handle.inner.put_opts(&key, PutPayload::from(bytes), opts).await {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(()),
            Err(e) => Err(self.store_err(&key, e).into()),
        }
    }

    /// The version a stored record describes, its files read from its chunks (several at once).
    pub(super) async fn load_version(&self, stored: StoredVersion) -> Result<VersionRecord, CatalogError> {
        let mut record = stored.record;
        if !stored.chunks.is_empty() {
            let loads: Vec<_> =
                stored.chunks.iter().map(|c| self.load_chunk(&record.dataset, c, &stored.stores, true)).collect();
            // In order, each chunk's files moved in as it comes: never two copies of the list.
            let mut parts = futures::stream::iter(loads).buffered(CHUNKS_AT_ONCE);
            let mut files = Vec::with_capacity(usize::try_from(stored.count).unwrap_or(0).min(1 << 24));
            while let Some(part) = parts.try_next().await? {
                files.extend(part);
            }
            record.files = files;
        }
        Ok(record)
    }

    /// The files of a stored version a part at a time, in path order, for walking with
    /// [`VersionPart::for_each`] (md5 and sha1 are not read; a record of the older format
    /// gives its own files, moved out of it). Chunks are fetched, checked and
    /// decompressed a few at once in tasks of their own, beside whatever walks the parts; only
    /// those few chunks are in memory at any time, however large the version.
    pub fn version_parts(
        &self,
        stored: StoredVersion,
    ) -> impl futures::Stream<Item = Result<VersionPart, CatalogError>> + Send + 'static {
        let StoredVersion { record, stores, chunks, .. } = stored;
        let old_format = (chunks.is_empty()).then_some(Ok(VersionPart::Listed(record.files)));
        let (this, dataset, stores) = (self.clone(), record.dataset, std::sync::Arc::<[String]>::from(stores));
        let loads = chunks.into_iter().map(move |c| {
            let (this, dataset, stores) = (this.clone(), dataset.clone(), stores.clone());
            async move {
                let uri = this.ds.uri_of(&this.ds.record_key(&this.chunk_rel(&dataset, &c.id)));
                let chunk_uri = uri.clone();
                let task = tokio::spawn(async move {
                    let main = this.chunk(&dataset, &c.id).await?;
                    match cpu_work(|| manifest::open_chunk(&c, &main)) {
                        Ok(chunk) => Ok(VersionPart::Chunk { chunk, stores, uri: chunk_uri }),
                        Err(e) => Err(CatalogError::Malformed { uri: chunk_uri, reason: e.to_string() }),
                    }
                });
                task.await.map_err(|e| CatalogError::Malformed { uri, reason: format!("decoding stopped: {e}") })?
            }
        });
        futures::stream::iter(old_format).chain(futures::stream::iter(loads).buffered(CHUNKS_AT_ONCE / 4))
    }

    /// Writes the chunks of `rec`'s files that are not in `known` (create-only: a chunk already
    /// there holds the same bytes) and returns the record to store for it.
    pub(super) async fn write_manifest(
        &self,
        rec: &VersionRecord,
        known: &HashSet<String>,
    ) -> Result<StoredVersion, CatalogError> {
        let mut stores = Vec::new();
        let chunks = manifest::encode(&rec.files, &mut stores).map_err(|e| CatalogError::BadName {
            name: format!("{}/{}", rec.dataset, rec.version),
            reason: e.to_string(),
        })?;
        let mut refs = Vec::with_capacity(chunks.len());
        let mut puts = Vec::new();
        for c in chunks {
            // Each chunk's bytes are moved into its PUT: never held twice.
            for (id, bytes) in [(&c.reference.id, c.main), (&c.reference.sums, c.sums)] {
                if !known.contains(id.as_str()) {
                    puts.push(self.put_chunk(&rec.dataset, id.clone(), bytes));
                }
            }
            refs.push(c.reference);
        }
        futures::stream::iter(puts).buffer_unordered(CHUNKS_AT_ONCE).try_collect::<Vec<()>>().await?;
        Ok(StoredVersion {
            record: rec.without_files(),
            format: Some(FORMAT),
            count: rec.files.len() as u64,
            bytes: rec.files.iter().map(|f| f.size).sum(),
            stores,
            chunks: refs,
        })
    }
}

/// Runs CPU work (checking, decompressing, decoding chunks) telling the runtime, so that it
/// moves other tasks off this worker. Not on a blocking-pool thread: allocations made there
/// land in another malloc arena than the tables built from them (+20 MiB peak RSS for a
/// 100,000-file version).
fn cpu_work<T>(work: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// A run of a version's files, in path order, as [`Catalog::version_parts`] gives them.
#[derive(Debug)]
pub enum VersionPart {
    /// One chunk of a chunked manifest, checked and decompressed.
    Chunk {
        /// The chunk.
        chunk: manifest::OpenedChunk,
        /// The version's store list.
        stores: std::sync::Arc<[String]>,
        /// The chunk's URI, for errors.
        uri: String,
    },
    /// The files of a record of the older format, which lists them itself.
    Listed(Vec<VersionFile>),
}

/// Why a walk of a [`VersionPart`] stopped.
enum Stop<E> {
    Manifest(manifest::ManifestError),
    Caller(E),
}

impl<E> From<manifest::ManifestError> for Stop<E> {
    fn from(e: manifest::ManifestError) -> Self {
        Stop::Manifest(e)
    }
}

impl VersionPart {
    /// Calls `f` with each file in turn, stopping at the first error: `f`'s, or the part's own
    /// (a damaged chunk) as `on_error` makes it.
    pub fn for_each<E>(
        &self,
        on_error: impl FnOnce(CatalogError) -> E,
        mut f: impl FnMut(FileView<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        match self {
            VersionPart::Chunk { chunk, stores, uri } => {
                chunk.for_each(stores, |v| f(v).map_err(Stop::Caller)).map_err(|stop| match stop {
                    Stop::Manifest(e) => on_error(CatalogError::Malformed { uri: uri.clone(), reason: e.to_string() }),
                    Stop::Caller(e) => e,
                })
            }
            VersionPart::Listed(files) => {
                for file in files {
                    let (store, key) = manifest::split_uri(&file.object_uri);
                    f(FileView {
                        path: &file.path,
                        store,
                        key,
                        size: file.size,
                        datum: &file.datum,
                        sha256: file.checksums.sha256(),
                        packed: file.packed.as_ref().map(|p| (p.offset, p.pack_size)),
                    })?;
                }
                Ok(())
            }
        }
    }
}
