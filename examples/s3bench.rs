//! Baseline client for `scripts/bench.sh`: loads test data into a store and reads it directly
//! (parallel ranged GETs through object_store), so datumfs's figures can be shown as ratios.
//!
//!   s3bench put-file FILE URI                 upload one file (multipart)
//!   s3bench put-many COUNT BYTES URI_PREFIX   upload COUNT objects of BYTES random bytes
//!   s3bench get URI PARALLEL PART_BYTES [DEST] read one object with PARALLEL ranged GETs (into
//!                                             a new local file DEST: a plain download)
//!   s3bench get-many URI_PREFIX READERS [DIR] read every object below a prefix, READERS at once
//!                                             (each into a new file below DIR: a plain download)
//!   s3bench put-dir DIR URI_PREFIX            upload every file below DIR, 8 at once, big ones
//!                                             as multipart streamed from disk (no hashing)
//!
//! Prints one JSON line: {"bytes": N, "seconds": S}.

use datumfs::store::{StoreHandle, StoreRegistry};
use datumfs::uri;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use std::sync::Arc;
use std::time::Instant;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn open(u: &str) -> Res<(Arc<StoreHandle>, String)> {
    let parsed = uri::parse(u, std::path::Path::new("/"))?;
    let reg = StoreRegistry::new();
    Ok((reg.open(&parsed)?, parsed.key))
}

async fn put_file(store: &StoreHandle, path: &std::path::Path, key: &Path, size: u64) -> Res<u64> {
    use tokio::io::AsyncReadExt;
    if size <= 16 << 20 {
        let data = tokio::fs::read(path).await?;
        store.inner.put(key, PutPayload::from(data)).await?;
        return Ok(size);
    }
    let mut f = tokio::fs::File::open(path).await?;
    let upload = store.inner.put_multipart(key).await?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, 16 << 20);
    loop {
        w.wait_for_capacity(4).await?;
        let mut buf = Vec::with_capacity(16 << 20);
        let n = (&mut f).take(16 << 20).read_to_end(&mut buf).await?;
        if n == 0 {
            break;
        }
        w.put(buf.into());
    }
    w.finish().await?;
    Ok(size)
}

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let t = Instant::now();
    let bytes: u64 = match args.first().map(String::as_str) {
        Some("put-file") => {
            let (store, key) = open(&args[2])?;
            let data = std::fs::read(&args[1])?;
            let upload = store.inner.put_multipart(&Path::from(key)).await?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, 16 << 20);
            for chunk in data.chunks(16 << 20) {
                w.wait_for_capacity(8).await?;
                w.write(chunk);
            }
            w.finish().await?;
            data.len() as u64
        }
        Some("put-many") => {
            let count: usize = args[1].parse()?;
            let size: usize = args[2].parse()?;
            let (store, prefix) = open(&args[3])?;
            futures::stream::iter(0..count)
                .map(|i| {
                    let store = store.clone();
                    let key = format!("{prefix}{:03}/f{i:06}.bin", i % 100);
                    async move {
                        let data: Vec<u8> = (0..size).map(|j| ((i * 7919 + j * 31) % 251) as u8).collect();
                        store.inner.put(&Path::from(key), PutPayload::from(data)).await.map(|_| ())
                    }
                })
                .buffer_unordered(32)
                .try_collect::<Vec<()>>()
                .await?;
            (count * size) as u64
        }
        Some("get") => {
            let (store, key) = open(&args[1])?;
            let parallel: usize = args[2].parse()?;
            let part: u64 = args[3].parse()?;
            let key = Path::from(key);
            let size = store.inner.head(&key).await?.size;
            let dest = match args.get(4) {
                Some(p) => Some(Arc::new(std::fs::File::create_new(p)?)),
                None => None,
            };
            let ranges: Vec<_> = (0..size).step_by(part as usize).map(|s| s..(s + part).min(size)).collect();
            let got: Vec<u64> = futures::stream::iter(ranges)
                .map(|r| {
                    let store = store.clone();
                    let key = key.clone();
                    let dest = dest.clone();
                    async move {
                        let Some(file) = dest else {
                            return Ok(store.inner.get_range(&key, r).await?.len() as u64);
                        };
                        // Written as it streams in, a megabyte at a time, as a careful
                        // downloader (or a cache) would: no whole part held in memory.
                        let range = Some(object_store::GetRange::Bounded(r.clone()));
                        let mut stream = store
                            .inner
                            .get_opts(&key, object_store::GetOptions { range, ..Default::default() })
                            .await?
                            .into_stream();
                        let (mut at, mut buf) = (r.start, Vec::with_capacity(1 << 20));
                        loop {
                            let chunk = stream.next().await.transpose()?;
                            if let Some(c) = &chunk {
                                buf.extend_from_slice(c);
                            }
                            if buf.len() >= 1 << 20 || (chunk.is_none() && !buf.is_empty()) {
                                let (f, data) =
                                    (file.clone(), std::mem::replace(&mut buf, Vec::with_capacity(1 << 20)));
                                let n = data.len() as u64;
                                tokio::task::spawn_blocking(move || {
                                    std::os::unix::fs::FileExt::write_all_at(&*f, &data, at)
                                })
                                .await
                                .map_err(std::io::Error::other)??;
                                at += n;
                            }
                            if chunk.is_none() {
                                break;
                            }
                        }
                        Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(at - r.start)
                    }
                })
                .buffer_unordered(parallel)
                .try_collect()
                .await?;
            got.iter().sum()
        }
        Some("get-many") => {
            let (store, prefix) = open(&args[1])?;
            let readers: usize = args[2].parse()?;
            let p = Path::from(prefix.trim_end_matches('/'));
            let dest = args.get(3).map(std::path::PathBuf::from);
            let keys: Vec<Path> = store.inner.list(Some(&p)).map_ok(|m| m.location).try_collect().await?;
            let got: Vec<u64> = futures::stream::iter(keys)
                .map(|k| {
                    let store = store.clone();
                    let dest = dest.as_ref().map(|d| d.join(k.as_ref()));
                    async move {
                        let body = store.inner.get(&k).await?.bytes().await?;
                        let n = body.len() as u64;
                        if let Some(path) = dest {
                            tokio::task::spawn_blocking(move || {
                                std::fs::create_dir_all(path.parent().unwrap_or(std::path::Path::new(".")))?;
                                std::fs::write(&path, &body)
                            })
                            .await
                            .map_err(std::io::Error::other)??;
                        }
                        Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(n)
                    }
                })
                .buffer_unordered(readers)
                .try_collect()
                .await?;
            got.iter().sum()
        }
        Some("put-dir") => {
            let dir = std::path::PathBuf::from(&args[1]);
            let (store, prefix) = open(&args[2])?;
            let (files, _) = datumfs::sync::walk(&dir)?;
            let sizes: Vec<u64> = futures::stream::iter(files)
                .map(|(rel, meta)| {
                    let store = store.clone();
                    let path = dir.join(&rel);
                    let key = Path::from(format!("{prefix}{rel}"));
                    async move { put_file(&store, &path, &key, meta.len()).await }
                })
                .buffer_unordered(8)
                .try_collect()
                .await?;
            sizes.iter().sum()
        }
        _ => return Err("usage: s3bench put-file|put-many|put-dir|get|get-many ... (see the source)".into()),
    };
    println!("{{\"bytes\": {bytes}, \"seconds\": {:.4}}}", t.elapsed().as_secs_f64());
    Ok(())
}
