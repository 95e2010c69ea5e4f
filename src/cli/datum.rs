//! `datumfs datum show|ls|get`, `datumfs lineage` and `datumfs push`: the catalog from the
//! command line, straight against the data store (no daemon needed).

use crate::catalog::{self, Catalog, DatumRecord};
use crate::store::data::DataStore;
use crate::store::StoreRegistry;
use crate::sync::metadata::DatumMeta;
use crate::sync::{Progress, Syncer};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use futures::StreamExt;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;

/// The data store flag shared by the catalog commands.
#[derive(Debug, Args)]
pub struct StoreArg {
    /// Data store URL [default: $DATUMFS_HOME/store, the embedded local store].
    #[arg(long, value_name = "URL", env = "DATUMFS_STORE", global = true)]
    store: Option<String>,
    /// The project whose names to use (made with `datumfs project create`) [default: the
    /// store's default project].
    #[arg(long, value_name = "NAME", env = "DATUMFS_PROJECT", global = true)]
    project: Option<String>,
}

impl StoreArg {
    /// The store URL, defaulted (the project's own store when a configuration file gives it one).
    pub fn url(&self) -> String {
        self.url_for(self.project.as_deref())
    }

    /// The store URL for `project`.
    pub(super) fn url_for(&self, project: Option<&str>) -> String {
        let store = crate::config_file::store_for(self.store.as_deref(), project);
        store.as_deref().map(crate::config_file::resolve_store).unwrap_or_else(|| {
            format!("file://{}", super::absolute(&crate::config::datumfs_home().join("store")).display())
        })
    }

    pub(super) fn catalog(&self) -> Result<Catalog> {
        let catalog = self.store_catalog()?;
        Ok(runtime()?.block_on(catalog.for_project(self.project.as_deref()))?)
    }

    /// The catalog of the store's default project (where projects are listed).
    pub(super) fn store_catalog(&self) -> Result<Catalog> {
        self.store_catalog_for(self.project.as_deref())
    }

    /// The catalog of the default project of `project`'s store (where that project is listed).
    pub(super) fn store_catalog_for(&self, project: Option<&str>) -> Result<Catalog> {
        let ds = DataStore::open(&self.url_for(project), &StoreRegistry::new()).map_err(|e| anyhow!("--store: {e}"))?;
        Ok(Catalog::new(ds))
    }
}

/// `datumfs datum ...`.
#[derive(Debug, Args)]
pub struct DatumArgs {
    #[command(subcommand)]
    command: DatumCommand,
    #[command(flatten)]
    store: StoreArg,
}

#[derive(Debug, Subcommand)]
enum DatumCommand {
    /// Show one datum (by id or alias).
    Show {
        /// datum://ID, datum://ALIAS, ID or ALIAS.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List datums, oldest first.
    Ls {
        /// Only those produced by this execution.
        #[arg(long, value_name = "ID")]
        execution: Option<String>,
        /// Only those with this tag.
        #[arg(long, value_name = "TAG")]
        tag: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a datum's bytes for good (e.g. a deletion request), keeping a tombstone that says
    /// who, when and why; versions, lineage and inputs that reference it then say "purged".
    Purge {
        /// datum://ID, datum://ALIAS, ID or ALIAS.
        name: String,
        /// Why (kept in the tombstone).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Download a datum's bytes to DEST (a file, or a directory to put it in), checking its sha256.
    Get {
        /// datum://ID, datum://ALIAS, ID or ALIAS.
        name: String,
        /// Destination file or directory.
        dest: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `datumfs lineage`.
#[derive(Debug, Args)]
pub struct LineageArgs {
    /// datum://ID, datum://ALIAS, ID or ALIAS; or the URI of a bucket key a volume sync wrote
    /// (s3://bucket/key: which execution last wrote it, and whether the bucket still holds it).
    name: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArg,
}

/// `datumfs push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// Files or directories (directories: every file below, by relative path).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// A tag for every datum (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// An alias for the datum (one file only).
    #[arg(long, value_name = "ALIAS")]
    alias: Option<String>,
    /// The execution the datums belong to (default: a new `push-ID`). A push with the id of an
    /// earlier one that was interrupted finishes it: files it already recorded keep their datums.
    #[arg(long, value_name = "ID")]
    execution: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArg,
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")
}

fn print_datum(d: &DatumRecord) {
    println!("{}", d.uri);
    println!("  path        {}", d.path);
    println!("  size        {}", d.size);
    println!("  stored at   {}", d.object_uri);
    println!("  created     {}", d.created_at);
    println!("  execution   {}", d.execution.as_deref().unwrap_or("-"));
    println!("  md5         {}", d.checksums.md5);
    println!("  sha1        {}", d.checksums.sha1);
    println!("  sha256      {}", d.checksums.sha256);
    if !d.tags.is_empty() {
        println!("  tags        {}", d.tags.join(", "));
    }
    if let Some(a) = &d.alias {
        println!("  alias       {a}");
    }
    for (k, v) in &d.properties {
        println!("  {k:<11} {v}");
    }
}

/// Runs `datumfs datum ...`.
pub fn run_datum(args: DatumArgs) -> Result<i32> {
    let catalog = args.store.catalog()?;
    let rt = runtime()?;
    match args.command {
        DatumCommand::Show { name, json } => {
            let d = rt.block_on(catalog.resolve(&name))?;
            let purged = rt.block_on(catalog.tombstone(&d.id))?;
            let alias = match catalog::strip_scheme(&name) {
                n if !catalog::is_id(n) => rt.block_on(catalog.alias(n))?,
                _ => None,
            };
            if json {
                let mut v = serde_json::to_value(&d)?;
                if let Some(a) = alias {
                    v["resolved_from"] = serde_json::to_value(a)?;
                }
                v["purged"] = serde_json::to_value(&purged)?;
                super::print_json(&v)?;
            } else {
                print_datum(&d);
                if let Some(t) = &purged {
                    println!("  PURGED      {}", t.describe());
                }
                if let Some(a) = alias {
                    println!("  (alias {} -> {}, moved {} time(s))", a.alias, a.datum, a.history.len());
                }
            }
        }
        DatumCommand::Ls { execution, tag, json } => {
            let all = match &execution {
                Some(e) => {
                    let rec = rt.block_on(catalog.execution(e))?;
                    rt.block_on(catalog.execution_datums(&rec))?
                }
                None => rt.block_on(catalog.datums())?,
            };
            let picked: Vec<&DatumRecord> =
                all.iter().filter(|d| tag.as_ref().is_none_or(|t| d.tags.contains(t))).collect();
            if json {
                super::print_json(&picked)?;
            } else if picked.is_empty() {
                println!("no datums");
            } else {
                for d in picked {
                    println!(
                        "{}  {:>12}  {}  {}  {}",
                        d.uri,
                        d.size,
                        d.created_at,
                        d.execution.as_deref().unwrap_or("-"),
                        d.path
                    );
                }
            }
        }
        DatumCommand::Purge { name, reason, yes, json } => {
            let d = rt.block_on(catalog.resolve(&name))?;
            if !yes {
                confirm_purge(&d)?;
            }
            let t = rt.block_on(catalog.purge(&d.id, reason.as_deref()))?;
            if json {
                super::print_json(&t)?;
            } else {
                println!("{}", t.describe());
            }
        }
        DatumCommand::Get { name, dest, json } => {
            let d = rt.block_on(catalog.resolve(&name))?;
            if let Some(t) = rt.block_on(catalog.tombstone(&d.id))? {
                bail!("{}", t.describe());
            }
            let target =
                if dest.is_dir() { dest.join(d.path.rsplit('/').next().unwrap_or(&d.id)) } else { dest.clone() };
            rt.block_on(download(&catalog, &d, &target))?;
            if json {
                println!("{}", json!({ "datum": d.uri, "path": target, "size": d.size, "sha256": d.checksums.sha256 }));
            } else {
                println!("{} -> {} ({} bytes, sha256 verified)", d.uri, target.display(), d.size);
            }
        }
    }
    Ok(0)
}

/// Asks on the terminal before a purge; without a terminal, --yes is required.
fn confirm_purge(d: &DatumRecord) -> Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        bail!("refusing to purge {} without confirmation: pass --yes", d.uri);
    }
    eprint!(
        "Purge {} ({}, {} bytes, stored at {})? Its bytes are deleted for good. Type 'yes' to go on: ",
        d.uri, d.path, d.size, d.object_uri
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        bail!("not purged");
    }
    Ok(())
}

/// Downloads a datum to `target` through a temporary file, renamed only once its sha256 matches.
async fn download(catalog: &Catalog, d: &DatumRecord, target: &std::path::Path) -> Result<()> {
    use sha2::Digest;
    use tokio::io::AsyncWriteExt;
    let registry = StoreRegistry::new();
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    let src = crate::uri::parse(&d.object_uri, &cwd).map_err(|e| anyhow!("{}: {e}", d.uri))?;
    let store = if src.store_url == catalog.store().handle.url {
        catalog.store().handle.clone()
    } else {
        registry.open(&src)?
    };
    let key = object_store::path::Path::from(src.key.as_str());
    let tmp = target.with_file_name(format!(
        ".{}.datumfs-partial",
        target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let mut out = tokio::fs::File::create(&tmp).await.with_context(|| format!("creating {}", tmp.display()))?;
    let res = async {
        // A packed datum is a range of its pack.
        let range = d.packed.as_ref().map(|p| object_store::GetRange::Bounded(p.offset..p.offset + d.size));
        let opts = object_store::GetOptions { range, ..Default::default() };
        let mut stream = if d.packed.is_some() && d.size == 0 {
            futures::stream::empty().boxed()
        } else {
            store
                .inner
                .get_opts(&key, opts)
                .await
                .map_err(|e| crate::store::StoreError::from_object_store(&d.object_uri, src.bucket.as_deref(), e))?
                .into_stream()
        };
        let mut h = sha2::Sha256::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| crate::store::StoreError::from_object_store(&d.object_uri, None, e))?;
            h.update(&chunk);
            out.write_all(&chunk).await.with_context(|| format!("writing {}", tmp.display()))?;
        }
        out.flush().await?;
        let got = hex::encode(h.finalize());
        if got != d.checksums.sha256 {
            bail!("{}: downloaded bytes have sha256 {got}, the record says {}", d.uri, d.checksums.sha256);
        }
        Ok(())
    }
    .await;
    if let Err(e) = res {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    tokio::fs::rename(&tmp, target).await.with_context(|| format!("renaming to {}", target.display()))?;
    Ok(())
}

/// Runs `datumfs lineage`.
pub fn run_lineage(args: LineageArgs) -> Result<i32> {
    let catalog = args.store.catalog()?;
    let rt = runtime()?;
    if args.name.contains("://") && !args.name.starts_with("datum://") {
        return rt.block_on(key_lineage(&catalog, &args.name, args.json));
    }
    let d = rt.block_on(catalog.resolve(&args.name))?;
    let producer = match &d.execution {
        Some(e) => rt.block_on(catalog.find_execution(e))?,
        None => None,
    };
    let readers = rt.block_on(catalog.readers(&d.id))?;
    let purged = rt.block_on(catalog.tombstone(&d.id))?;
    if args.json {
        let v = json!({ "datum": d, "produced_by": producer, "read_by": readers, "purged": purged });
        super::print_json(&v)?;
        return Ok(0);
    }
    println!("{}  {}  ({} bytes, sha256 {})", d.uri, d.path, d.size, d.checksums.sha256);
    if let Some(t) = &purged {
        println!("PURGED: {}", t.describe());
    }
    match producer {
        Some(p) => {
            print_execution("made by execution", &p);
            for i in &p.inputs {
                println!("  input {}: {}", i.name, i.uris.join(" "));
                for id in &i.datums {
                    println!("    datum://{id}");
                }
                for v in &i.datasets {
                    println!("    {v}");
                }
                for f in &i.files_read {
                    println!("    read {} ({} bytes, sha256 {})", f.uri, f.size, f.checksums.sha256);
                }
            }
        }
        None => println!("made by: unknown (no execution record)"),
    }
    if readers.is_empty() {
        println!("read by: no execution yet");
    }
    for r in readers {
        println!("read by execution {} on {} at {}", r.execution, r.host, r.at);
    }
    Ok(0)
}

/// Every file under `path` as (relative path, local path); a file is itself.
pub(super) fn files_of(path: &std::path::Path) -> Result<Vec<(String, PathBuf)>> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if meta.is_file() {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok(vec![(name, path.to_path_buf())]);
    }
    let (files, _) = crate::sync::walk(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(files.into_iter().map(|(rel, _)| (rel.clone(), path.join(rel))).collect())
}

/// Each pushed file's relative path and outcome.
pub(super) type Pushed = Vec<(String, Result<DatumRecord, crate::sync::SyncError>)>;

/// Pushes local files as datums of a new `push-...` execution (recorded with them), with a
/// progress bar on a terminal. Returns the execution id and each file's outcome.
pub(super) fn push_files(
    rt: &tokio::runtime::Runtime,
    catalog: &Catalog,
    files: Vec<(String, PathBuf)>,
    meta: DatumMeta,
    execution: Option<String>,
) -> Result<(String, Pushed)> {
    let execution = execution.unwrap_or_else(new_push_execution);
    // An execution that exists already is an earlier push of these files, interrupted (or one
    // to extend): its datums are found again, never made twice.
    let (mut record, earlier) = match rt.block_on(catalog.find_execution(&execution))? {
        Some(rec) => {
            let earlier = rt.block_on(catalog.execution_datums(&rec))?;
            (rec, Some(earlier))
        }
        None => {
            let rec = catalog::ExecutionRecord {
                command: Some(std::env::args().collect()),
                ..catalog::ExecutionRecord::new(&execution, &catalog::now(), &catalog::hostname())
            };
            rt.block_on(catalog.put_execution(&rec))?;
            (rec, None)
        }
    };
    let started_ms = chrono::DateTime::parse_from_rfc3339(&record.started_at)
        .map(|t| t.timestamp_millis().max(0) as u64)
        .with_context(|| {
            format!("execution {execution}: its record has a malformed start time {:?}", record.started_at)
        })?;
    let syncer = Syncer::new(catalog.clone(), execution.clone(), 0);
    let progress = Arc::new(Progress::default());
    let bar = super::sync::progress_bar("pushing");
    let results = rt.block_on(async {
        let ticker = super::sync::tick(progress.clone(), bar.clone());
        let r = syncer.push(files, meta, started_ms, earlier.as_deref(), &progress).await;
        ticker.abort();
        r
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    record.ended_at = Some(catalog::now());
    for d in results.iter().filter_map(|(_, r)| r.as_ref().ok()) {
        if !record.outputs.contains(&d.id) {
            record.outputs.push(d.id.clone());
        }
    }
    rt.block_on(catalog.put_execution(&record))?;
    crate::crash::point("execution-recorded");
    Ok((execution, results))
}

/// A new execution id for a push.
fn new_push_execution() -> String {
    format!("push-{}", catalog::new_id().to_ascii_lowercase())
}

/// Runs `datumfs push`.
pub fn run_push(args: PushArgs) -> Result<i32> {
    let catalog = args.store.catalog()?;
    if let Some(a) = &args.alias {
        catalog::check_alias(a)?;
    }
    if let Some(e) = &args.execution {
        catalog::check_name(e, "execution")?;
    }
    let mut files = Vec::new();
    for p in &args.paths {
        files.extend(files_of(p)?);
    }
    if files.is_empty() {
        bail!(
            "nothing to push: no files under {}",
            args.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    if args.alias.is_some() && files.len() != 1 {
        bail!("--alias names one datum, but {} files were given", files.len());
    }
    let meta = DatumMeta { tags: args.tags.clone(), alias: args.alias.clone(), ..Default::default() };
    let rt = runtime()?;
    let execution = args.execution.clone().unwrap_or_else(new_push_execution);
    eprintln!(
        "datumfs: pushing {} file(s) as execution {execution} (if it is interrupted, the same push with --execution {execution} finishes it)",
        files.len()
    );
    let (execution, results) = push_files(&rt, &catalog, files, meta, Some(execution))?;
    let ok: Vec<&DatumRecord> = results.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    if args.json {
        let v: Vec<_> = results
            .iter()
            .map(|(rel, r)| match r {
                Ok(d) => json!({ "path": rel, "datum": d.uri, "size": d.size, "sha256": d.checksums.sha256 }),
                Err(e) => json!({ "path": rel, "error": e.to_string() }),
            })
            .collect();
        super::print_json(&json!({ "execution": execution, "datums": v }))?;
    } else {
        for (rel, r) in &results {
            match r {
                Ok(d) => println!("{rel} -> {}", d.uri),
                Err(e) => eprintln!("datumfs: {rel}: {e}"),
            }
        }
    }
    Ok(if ok.len() == results.len() { 0 } else { 1 })
}

/// `datumfs lineage URI` of a bucket key: the volume sync that last wrote (or deleted) it, its
/// execution, and whether the bucket still holds what it wrote.
async fn key_lineage(catalog: &catalog::Catalog, uri: &str, json_out: bool) -> Result<i32> {
    let Some((execution, write)) = catalog.last_volume_write(uri).await? else {
        eprintln!("datumfs: no volume sync recorded in {} wrote {uri}", catalog.store().url);
        return Ok(1);
    };
    let producer = catalog.find_execution(&execution).await?;
    // What the bucket holds now.
    let now = match crate::uri::parse(uri, std::path::Path::new("/")) {
        Ok(parsed) => match crate::store::StoreRegistry::new().open(&parsed) {
            Ok(store) => {
                let key = object_store::path::Path::from(parsed.key.as_str());
                match object_store::ObjectStoreExt::head(&*store.inner, &key).await {
                    Ok(meta) => Some(Some(meta.e_tag)),
                    Err(object_store::Error::NotFound { .. }) => Some(None),
                    Err(_) => None,
                }
            }
            Err(_) => None,
        },
        Err(_) => None,
    };
    let same = |etag: &Option<String>| match (etag, &write.etag) {
        (Some(a), Some(b)) => crate::volumes::state::same_etag(a, b),
        _ => false,
    };
    let current = match &now {
        Some(Some(etag)) => Some(!write.deleted && same(etag)),
        Some(None) => Some(write.deleted),
        None => None,
    };
    if json_out {
        let bucket_now = now.map(|n| json!({ "exists": n.is_some(), "etag": n.flatten() }));
        let v = json!({ "uri": uri, "last_write": write, "execution": execution, "execution_record": producer, "bucket_now": bucket_now, "current": current });
        super::print_json(&v)?;
        return Ok(0);
    }
    let what = if write.deleted {
        "deleted".to_string()
    } else {
        format!(
            "written ({} bytes, sha256 {}, ETag {})",
            write.size.unwrap_or(0),
            write.sha256.as_deref().unwrap_or("?"),
            write.etag.as_deref().unwrap_or("?")
        )
    };
    println!("{uri}: {what} by execution {execution} at {} (volume {})", write.at, write.volume);
    if let Some(p) = producer {
        print_execution("  execution", &p);
    }
    match current {
        Some(true) => println!("  the bucket still holds it"),
        Some(false) => {
            println!("  the bucket has changed it since (written outside datumfs, or by an unrecorded sync)")
        }
        None => println!("  (the bucket could not be asked whether it still holds it)"),
    }
    Ok(0)
}

/// `{what} ID on HOST (START - END)` and the command, for lineage.
fn print_execution(what: &str, p: &catalog::ExecutionRecord) {
    println!("{what} {} on {} ({} - {})", p.id, p.host, p.started_at, p.ended_at.as_deref().unwrap_or("running"));
    if let Some(cmd) = &p.command {
        println!("  command: {}", cmd.join(" "));
    }
}
