//! `datumfs dataset create|ls|show|version create|alias set`: datasets from the command line,
//! straight against the data store (no daemon needed).

use super::datum::{files_of, push_files, runtime, StoreArg};
use crate::catalog::datasets::{split_ref, VersionFile, VersionRecord};
use crate::catalog::{self, Catalog, DatumRecord};
use crate::checksum::FileDigests;
use crate::sync::metadata::DatumMeta;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use std::collections::BTreeMap;

/// `datumfs dataset ...`.
#[derive(Debug, Args)]
pub struct DatasetArgs {
    #[command(subcommand)]
    command: DatasetCommand,
    #[command(flatten)]
    store: StoreArg,
}

#[derive(Debug, Subcommand)]
enum DatasetCommand {
    /// Create a dataset (a name for versions).
    Create {
        /// The dataset's name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List datasets.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a dataset (versions, aliases) or one version (its files).
    Show {
        /// NAME or NAME/VERSION (or NAME/ALIAS).
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Versions.
    Version {
        #[command(subcommand)]
        command: VersionCommand,
    },
    /// Aliases (production, staging, latest, ...).
    Alias {
        #[command(subcommand)]
        command: AliasCommand,
    },
}

#[derive(Debug, Subcommand)]
enum VersionCommand {
    /// Create a version: the files of --from (if given), plus --add, minus --remove. The old
    /// version is untouched; a version never changes once made.
    Create {
        /// NAME/VERSION.
        version: String,
        /// Start from this version (NAME/VERSION or NAME/ALIAS).
        #[arg(long, value_name = "NAME/VERSION")]
        from: Option<String>,
        /// Add a datum (datum://ID, ID, ALIAS) or local files (pushed as new datums; a
        /// directory adds every file below it). A file replaces one at the same path.
        #[arg(long, value_name = "DATUM|PATH")]
        add: Vec<String>,
        /// Remove the file at this path (as `dataset show NAME/VERSION` lists it).
        #[arg(long, value_name = "PATH")]
        remove: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AliasCommand {
    /// Point ALIAS of dataset NAME at VERSION (its history is kept).
    Set {
        /// The dataset.
        name: String,
        /// The alias.
        alias: String,
        /// The version.
        version: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `datumfs dataset ...`.
pub fn run(args: DatasetArgs) -> Result<i32> {
    let catalog = args.store.catalog()?;
    let rt = runtime()?;
    match args.command {
        DatasetCommand::Create { name, json } => {
            let rec = rt.block_on(catalog.create_dataset(&name, None, false))?;
            if json {
                super::print_json(&rec)?;
            } else {
                println!("dataset {name} created");
            }
        }
        DatasetCommand::Ls { json } => {
            let names = rt.block_on(catalog.datasets())?;
            if json {
                super::print_json(&names)?;
            } else if names.is_empty() {
                println!("no datasets");
            } else {
                names.iter().for_each(|n| println!("{n}"));
            }
        }
        DatasetCommand::Show { name, json } => {
            if name.trim_end_matches('/').contains('/') {
                show_version(&rt, &catalog, &name, json)?;
            } else {
                show_dataset(&rt, &catalog, &name, json)?;
            }
        }
        DatasetCommand::Version { command: VersionCommand::Create { version, from, add, remove, json } } => {
            let rec = create_version(&rt, &catalog, &version, from.as_deref(), &add, &remove)?;
            if json {
                let summary = json!({
                    "uri": rec.uri(),
                    "dataset": rec.dataset,
                    "version": rec.version,
                    "from": rec.from,
                    "files": rec.files,
                });
                super::print_json(&summary)?;
            } else {
                let bytes: u64 = rec.files.iter().map(|f| f.size).sum();
                println!("{}: {} file(s), {}", rec.uri(), rec.files.len(), super::human_bytes(bytes));
            }
        }
        DatasetCommand::Alias { command: AliasCommand::Set { name, alias, version, json } } => {
            let rec = rt.block_on(catalog.set_version_alias(&name, &alias, &version))?;
            if json {
                super::print_json(&rec)?;
            } else {
                println!("dataset://{name}/{alias} -> {version} (move {} of its history)", rec.history.len());
            }
        }
    }
    Ok(0)
}

fn show_dataset(rt: &tokio::runtime::Runtime, catalog: &Catalog, name: &str, json: bool) -> Result<()> {
    let Some(rec) = rt.block_on(catalog.dataset(name))? else {
        bail!(catalog::CatalogError::NoSuchDataset { name: name.to_string(), store: catalog.store().url.clone() });
    };
    let versions = rt.block_on(catalog.versions(name))?;
    let aliases = rt.block_on(catalog.version_aliases(name))?;
    if json {
        let v = json!({
            "dataset": rec,
            "versions": versions.iter().map(|(v, at)| json!({ "version": v, "created_at": at })).collect::<Vec<_>>(),
            "aliases": aliases,
        });
        super::print_json(&v)?;
        return Ok(());
    }
    println!("dataset {name} (created {} on {})", rec.created_at, rec.host);
    if versions.is_empty() {
        println!("  no versions yet");
    }
    for (v, at) in &versions {
        let pointing: Vec<&str> = aliases.iter().filter(|a| &a.version == v).map(|a| a.alias.as_str()).collect();
        let marks = if pointing.is_empty() { String::new() } else { format!("  <- {}", pointing.join(", ")) };
        println!("  {v:<24} {at}{marks}");
    }
    for a in &aliases {
        println!("  alias {} -> {} ({} move(s))", a.alias, a.version, a.history.len());
    }
    Ok(())
}

fn show_version(rt: &tokio::runtime::Runtime, catalog: &Catalog, name: &str, json: bool) -> Result<()> {
    let (rec, alias) = rt.block_on(catalog.resolve_version(name))?;
    let purged = rt.block_on(catalog.tombstones())?;
    if json {
        let files: Vec<_> = rec
            .files
            .iter()
            .map(|f| {
                let mut v = serde_json::to_value(f).unwrap_or_default();
                if let Some(t) = purged.get(&f.datum) {
                    v["purged"] = serde_json::to_value(t).unwrap_or_default();
                }
                v
            })
            .collect();
        let v = json!({
            "uri": rec.uri(),
            "dataset": rec.dataset,
            "version": rec.version,
            "via_alias": alias,
            "created_at": rec.created_at,
            "host": rec.host,
            "execution": rec.execution,
            "from": rec.from,
            "files": files,
        });
        super::print_json(&v)?;
        return Ok(());
    }
    let via = alias.map(|a| format!(" (alias {a})")).unwrap_or_default();
    println!("{}{via}", rec.uri());
    println!("  created     {} on {}", rec.created_at, rec.host);
    if let Some(e) = &rec.execution {
        println!("  execution   {e}");
    }
    if let Some(f) = &rec.from {
        println!("  from        {f}");
    }
    let bytes: u64 = rec.files.iter().map(|f| f.size).sum();
    println!("  files       {} ({})", rec.files.len(), super::human_bytes(bytes));
    for f in &rec.files {
        let state = purged.get(&f.datum).map(|t| format!("  PURGED {}", t.purged_at)).unwrap_or_default();
        println!("  {:>12}  datum://{}  {}{state}", f.size, f.datum, f.path);
    }
    Ok(())
}

fn version_file(d: &DatumRecord) -> Result<VersionFile> {
    Ok(VersionFile {
        path: d.path.clone(),
        datum: d.id.clone(),
        size: d.size,
        checksums: FileDigests::of(&d.checksums).with_context(|| format!("{}: malformed datum record", d.uri))?,
        object_uri: d.object_uri.as_str().into(),
        packed: d.packed.clone(),
    })
}

/// Builds and stores a new version from `from`, `add` and `remove`.
fn create_version(
    rt: &tokio::runtime::Runtime,
    catalog: &Catalog,
    version: &str,
    from: Option<&str>,
    add: &[String],
    remove: &[String],
) -> Result<VersionRecord> {
    let (name, version) = split_ref(version)?;
    if rt.block_on(catalog.dataset(&name))?.is_none() {
        bail!(catalog::CatalogError::NoSuchDataset { name, store: catalog.store().url.clone() });
    }
    if rt.block_on(catalog.version(&name, &version))?.is_some() {
        bail!("dataset version {name}/{version} already exists; versions never change: name a new one");
    }
    let mut files: BTreeMap<String, VersionFile> = BTreeMap::new();
    let from_uri = match from {
        Some(f) => {
            let (base, _) = rt.block_on(catalog.resolve_version(f))?;
            files.extend(base.files.iter().map(|f| (f.path.clone(), f.clone())));
            Some(format!("{}/{}", base.dataset, base.version))
        }
        None => None,
    };
    for path in remove {
        let path = path.trim_start_matches('/');
        if files.remove(path).is_none() {
            bail!("--remove {path}: no such file in {}", from_uri.as_deref().unwrap_or("an empty version"));
        }
    }
    add_files(rt, catalog, &mut files, add)?;
    // A path cannot be both a file and a directory of other files once mounted.
    for p in files.keys() {
        let dir = format!("{p}/");
        if let Some((inner, _)) = files.range(dir.clone()..).next().filter(|(k, _)| k.starts_with(&dir)) {
            bail!("'{p}' would be both a file and the directory of '{inner}' in {name}/{version}");
        }
    }
    let rec = VersionRecord {
        dataset: name,
        version,
        created_at: catalog::now(),
        host: catalog::hostname(),
        execution: None,
        from: from_uri,
        files: files.into_values().collect(),
    };
    rt.block_on(catalog.put_version(&rec))?;
    Ok(rec)
}

/// Adds the files `add` names (datums, or local files pushed as new datums) to `files`, by
/// path; two of them at one path is an error.
fn add_files(
    rt: &tokio::runtime::Runtime,
    catalog: &Catalog,
    files: &mut BTreeMap<String, VersionFile>,
    add: &[String],
) -> Result<()> {
    let purged = rt.block_on(catalog.tombstones())?;
    let mut added: BTreeMap<String, String> = BTreeMap::new();
    let mut take = |d: &DatumRecord, given: &str| -> Result<()> {
        if let Some(t) = purged.get(&d.id) {
            bail!("--add {given}: {}", t.describe());
        }
        if let Some(other) = added.insert(d.path.clone(), given.to_string()) {
            bail!("--add {other} and --add {given} both have the path {}", d.path);
        }
        files.insert(d.path.clone(), version_file(d)?);
        Ok(())
    };
    for item in add {
        let local = std::path::Path::new(item);
        if !item.starts_with("datum://") && local.exists() {
            let (_, results) = push_files(rt, catalog, files_of(local)?, DatumMeta::default(), None)?;
            for (rel, r) in results {
                match r {
                    Ok(d) => take(&d, item)?,
                    Err(e) => bail!("--add {item}: pushing {rel} failed: {e}"),
                }
            }
        } else {
            let d = rt.block_on(catalog.resolve(item))?;
            take(&d, item)?;
        }
    }
    Ok(())
}

/// The version entries of the files `add` names (for a model version).
pub(super) fn files_to_add(
    rt: &tokio::runtime::Runtime,
    catalog: &Catalog,
    add: &[String],
) -> Result<Vec<VersionFile>> {
    let mut files = BTreeMap::new();
    add_files(rt, catalog, &mut files, add)?;
    Ok(files.into_values().collect())
}
