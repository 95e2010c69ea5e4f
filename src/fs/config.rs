//! `config/` as a namespace: `parameters.json` (a job's parameters, fixed at mount) and
//! `inputs.json`, every input file in the shape Valohai jobs read,
//! made on demand and kept until something it shows changes (a listing, new checksums), so a
//! `stat` does not rebuild it.

use super::input::{InputNamespace, InputServices};
use super::namespace::{Namespace, OpenFile, OpenedFile};
use super::{made_file_attr, Attr, DirEntry, FsError, FsResult, Kind};
use async_trait::async_trait;
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// `config/`.
pub struct ConfigNamespace {
    top: u64,
    parent: u64,
    inputs: Vec<Arc<InputNamespace>>,
    services: Arc<InputServices>,
    /// The last `inputs.json` made, and the generation of the inputs it was made from.
    made: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
    /// `parameters.json`, when the job has parameters.
    parameters: Option<Arc<Vec<u8>>>,
}

/// Inode of `config/inputs.json`, relative to `config/`.
const INPUTS_JSON_OFFSET: u64 = 1;
/// Inode of `config/parameters.json`, relative to `config/`.
const PARAMETERS_JSON_OFFSET: u64 = 2;

impl ConfigNamespace {
    /// `config/` at inode `top`, a child of `parent`, describing `inputs` (and `parameters`,
    /// when the job has them).
    pub fn new(
        top: u64,
        parent: u64,
        inputs: Vec<Arc<InputNamespace>>,
        services: Arc<InputServices>,
        parameters: Option<Map<String, Value>>,
    ) -> Self {
        let parameters = parameters.map(|p| {
            let mut text = serde_json::to_vec_pretty(&Value::Object(p)).unwrap_or_else(|_| b"{}".to_vec());
            text.push(b'\n');
            Arc::new(text)
        });
        Self { top, parent, inputs, services, made: Mutex::new(None), parameters }
    }

    fn parameters_json_ino(&self) -> u64 {
        self.top + PARAMETERS_JSON_OFFSET
    }

    /// `parameters.json`'s attributes, if there is one.
    fn parameters_attr(&self) -> Option<Attr> {
        let p = self.parameters.as_ref()?;
        Some(Attr { cache_for: super::CacheFor::Long, ..made_file_attr(self.parameters_json_ino(), p.len() as u64) })
    }

    fn inputs_json_ino(&self) -> u64 {
        self.top + INPUTS_JSON_OFFSET
    }

    fn dir_attr(&self) -> Attr {
        Attr::read_only_dir(self.top, self.services.started)
    }

    /// The content when nothing changed since it was last made.
    fn current(&self) -> Option<Arc<Vec<u8>>> {
        let generation = self.services.generation.load(Ordering::Acquire);
        let made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        made.as_ref().filter(|(g, _)| *g == generation).map(|(_, c)| c.clone())
    }

    /// All files of all inputs, with the checksums known so far.
    pub async fn inputs_json(&self) -> Arc<Vec<u8>> {
        if let Some(c) = self.current() {
            return c;
        }
        // Stamped with the generation from before it was made: anything that changes while it
        // is made (its own listings included) makes the next ask build it again.
        let generation = self.services.generation.load(Ordering::Acquire);
        let mut doc = Map::new();
        for input in &self.inputs {
            doc.insert(input.summary().name.clone(), json!({ "files": input.files_json().await }));
        }
        let mut out = serde_json::to_vec_pretty(&Value::Object(doc)).unwrap_or_else(|_| b"{}".to_vec());
        out.push(b'\n');
        let out = Arc::new(out);
        *self.made.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, out.clone()));
        out
    }
}

#[async_trait]
impl Namespace for ConfigNamespace {
    fn top(&self) -> u64 {
        self.top
    }

    fn owns(&self, ino: u64) -> bool {
        ino == self.top || ino == self.inputs_json_ino() || ino == self.parameters_json_ino()
    }

    fn try_getattr(&self, ino: u64) -> Option<FsResult<Attr>> {
        if ino == self.top {
            return Some(Ok(self.dir_attr()));
        }
        if ino == self.parameters_json_ino() {
            return Some(self.parameters_attr().ok_or(FsError::NotFound));
        }
        if ino != self.inputs_json_ino() {
            return Some(Err(FsError::NotFound));
        }
        self.current().map(|c| Ok(made_file_attr(ino, c.len() as u64)))
    }

    async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        if let Some(res) = self.try_getattr(ino) {
            return res;
        }
        Ok(made_file_attr(ino, self.inputs_json().await.len() as u64))
    }

    fn try_lookup(&self, parent: u64, name: &str) -> Option<FsResult<Attr>> {
        if parent != self.top {
            return Some(Err(FsError::NotDir));
        }
        match name {
            "inputs.json" => self.try_getattr(self.inputs_json_ino()),
            "parameters.json" => Some(self.parameters_attr().ok_or(FsError::NotFound)),
            _ => Some(Err(FsError::NotFound)),
        }
    }

    async fn lookup(&self, parent: u64, name: &str) -> FsResult<Attr> {
        match self.try_lookup(parent, name) {
            Some(res) => res,
            None => self.getattr(self.inputs_json_ino()).await,
        }
    }

    fn try_readdir(&self, ino: u64) -> Option<FsResult<(u64, Vec<DirEntry>)>> {
        if ino != self.top {
            return Some(Err(FsError::NotDir));
        }
        let mut entries = vec![DirEntry { ino: self.inputs_json_ino(), name: "inputs.json".into(), kind: Kind::File }];
        if self.parameters.is_some() {
            entries.push(DirEntry {
                ino: self.parameters_json_ino(),
                name: "parameters.json".into(),
                kind: Kind::File,
            });
        }
        Some(Ok((self.parent, entries)))
    }

    async fn open(&self, ino: u64, flags: i32, _passthrough: bool) -> FsResult<OpenedFile> {
        if ino == self.top {
            return Err(FsError::IsDir);
        }
        if (flags & libc::O_ACCMODE) != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(FsError::ReadOnly);
        }
        if ino == self.parameters_json_ino() {
            let content = self.parameters.clone().ok_or(FsError::NotFound)?;
            return Ok(OpenedFile {
                file: Arc::new(MadeFile(content)),
                direct_io: false,
                keep_cache: true,
                backing: None,
                no_flush: true,
            });
        }
        let content = self.inputs_json().await;
        // Made at open and fixed for the handle's life: the kernel must not keep old pages.
        Ok(OpenedFile {
            file: Arc::new(MadeFile(content)),
            direct_io: true,
            keep_cache: false,
            backing: None,
            no_flush: true,
        })
    }
}

/// A file whose whole content was made at open.
struct MadeFile(Arc<Vec<u8>>);

#[async_trait]
impl OpenFile for MadeFile {
    fn try_read(&self, offset: u64, size: u32) -> Option<FsResult<Vec<u8>>> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.0.len());
        let end = start.saturating_add(size as usize).min(self.0.len());
        Some(Ok(self.0[start..end].to_vec()))
    }

    async fn read(&self, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        self.try_read(offset, size).unwrap_or(Ok(Vec::new()))
    }
}
