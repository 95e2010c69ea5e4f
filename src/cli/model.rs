//! `datumfs model`: models, their versions and their approval.

use super::datum::{runtime, StoreArg};
use crate::catalog::models::{self, Approval};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::json;

/// `datumfs model ...`.
#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    command: ModelCommand,
    #[command(flatten)]
    store: StoreArg,
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Create a model (a name for versions; a job's sync creates it too).
    Create {
        /// The model's name.
        name: String,
    },
    /// List models.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a model (its versions, their states, tags and release notes) or one version
    /// (NAME/VERSION, NAME/latest, NAME/approved: its files and decisions).
    Show {
        /// NAME or NAME/VERSION.
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
}

#[derive(Debug, Subcommand)]
enum VersionCommand {
    /// Make the model's next version from datums or local files (pushed as new datums).
    Create {
        /// The model.
        name: String,
        /// A datum (datum://ID, ID, ALIAS) or local files (a directory adds every file below).
        #[arg(long, value_name = "DATUM|PATH", required = true)]
        add: Vec<String>,
        /// A tag for the version (repeatable).
        #[arg(long)]
        tag: Vec<String>,
        /// The version's release note.
        #[arg(long)]
        release_note: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve NAME/VERSION (model://NAME/approved then names it, if it is the newest approved).
    Approve {
        /// NAME/VERSION.
        version: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Reject NAME/VERSION.
    Reject {
        /// NAME/VERSION.
        version: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
}

/// NAME/VERSION, split and checked.
fn name_and_version(text: &str) -> Result<(String, String)> {
    match models::split(text)? {
        (name, Some(v)) => Ok((name, v)),
        (name, None) => bail!("'{text}': expected NAME/VERSION (e.g. {name}/v1)"),
    }
}

/// Runs `datumfs model ...`.
pub fn run(args: ModelArgs) -> Result<i32> {
    let catalog = args.store.catalog()?;
    let rt = runtime()?;
    match args.command {
        ModelCommand::Create { name } => {
            rt.block_on(catalog.create_model(&name, None, false))?;
            println!("model {name} created");
        }
        ModelCommand::Ls { json } => {
            let names = rt.block_on(catalog.model_names())?;
            if json {
                super::print_json(&names)?;
            } else if names.is_empty() {
                println!("no models");
            } else {
                names.iter().for_each(|n| println!("{n}"));
            }
        }
        ModelCommand::Show { name, json } => match models::split(&name)? {
            (name, None) => {
                if !rt.block_on(catalog.model_exists(&name))? {
                    bail!(crate::catalog::CatalogError::NoSuchModel { name, store: catalog.store().url.clone() });
                }
                let mut versions = Vec::new();
                for v in rt.block_on(catalog.model_versions(&name))? {
                    let rec = rt.block_on(catalog.model_version(&name, &v))?;
                    let state = rt.block_on(catalog.model_state(&name, &v))?;
                    versions.push((rec, state));
                }
                if json {
                    let list: Vec<_> = versions
                        .iter()
                        .map(|(rec, s)| {
                            json!({
                                "version": rec.version,
                                "uri": models::uri(&name, &rec.version),
                                "created_at": rec.created_at,
                                "execution": rec.execution,
                                "files": rec.files.len(),
                                "state": s.state,
                                "tags": s.tags,
                                "release_note": s.release_note,
                            })
                        })
                        .collect();
                    super::print_json(&json!({ "model": name, "versions": list }))?;
                } else {
                    println!("model {name}");
                    if versions.is_empty() {
                        println!("  no versions yet");
                    }
                    for (rec, s) in &versions {
                        let by = rec.execution.as_deref().map(|e| format!(" by {e}")).unwrap_or_default();
                        let tags = if s.tags.is_empty() { String::new() } else { format!(" [{}]", s.tags.join(", ")) };
                        println!(
                            "  {:<6} {:<9} {}{by}, {} file(s){tags}",
                            rec.version,
                            s.state.as_str(),
                            rec.created_at,
                            rec.files.len()
                        );
                        if let Some(n) = &s.release_note {
                            println!("         {n}");
                        }
                    }
                }
            }
            (name, Some(which)) => {
                let version = rt.block_on(catalog.resolve_model(&name, &which))?;
                let rec = rt.block_on(catalog.model_version(&name, &version))?;
                let state = rt.block_on(catalog.model_state(&name, &version))?;
                if json {
                    let v = json!({
                        "uri": models::uri(&name, &version),
                        "model": name,
                        "version": version,
                        "created_at": rec.created_at,
                        "host": rec.host,
                        "execution": rec.execution,
                        "state": state.state,
                        "tags": state.tags,
                        "release_note": state.release_note,
                        "history": state.history,
                        "files": rec.files,
                    });
                    super::print_json(&v)?;
                } else {
                    println!("{} ({})", models::uri(&name, &version), state.state.as_str());
                    println!("  created     {} on {}", rec.created_at, rec.host);
                    if let Some(e) = &rec.execution {
                        println!("  execution   {e}");
                    }
                    for d in &state.history {
                        let why = d.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
                        println!("  {} by {} on {} at {}{why}", d.state.as_str(), d.by, d.host, d.at);
                    }
                    for f in &rec.files {
                        println!("  {:>12}  datum://{}  {}", f.size, f.datum, f.path);
                    }
                }
            }
        },
        ModelCommand::Version { command: VersionCommand::Create { name, add, tag, release_note, json } } => {
            let files = super::dataset::files_to_add(&rt, &catalog, &add)?;
            let execution = format!("cli-{}", crate::catalog::new_id());
            let version =
                rt.block_on(catalog.publish_model_version(&name, &execution, files, &tag, release_note.as_deref()))?;
            if json {
                super::print_json(&json!({ "uri": models::uri(&name, &version), "model": name, "version": version }))?;
            } else {
                println!("{}", models::uri(&name, &version));
            }
        }
        ModelCommand::Version { command: VersionCommand::Approve { version, reason } } => {
            let (name, v) = name_and_version(&version)?;
            let s = rt.block_on(catalog.decide_model_version(&name, &v, Approval::Approved, reason.as_deref()))?;
            println!("{} approved ({} decision(s))", models::uri(&name, &v), s.history.len());
        }
        ModelCommand::Version { command: VersionCommand::Reject { version, reason } } => {
            let (name, v) = name_and_version(&version)?;
            let s = rt.block_on(catalog.decide_model_version(&name, &v, Approval::Rejected, reason.as_deref()))?;
            println!("{} rejected ({} decision(s))", models::uri(&name, &v), s.history.len());
        }
    }
    Ok(0)
}
