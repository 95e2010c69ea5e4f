//! `datumfs project`: namespaces of their own in one data store.

use super::datum::{runtime, StoreArg};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::json;

/// `datumfs project ...`.
#[derive(Debug, Args)]
pub struct ProjectArgs {
    #[command(subcommand)]
    command: ProjectCommand,
    #[command(flatten)]
    store: StoreArg,
}

#[derive(Debug, Subcommand)]
enum ProjectCommand {
    /// Create a project (use it with --project NAME or DATUMFS_PROJECT).
    Create {
        /// The project's name.
        name: String,
    },
    /// List the store's projects.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a project: when it was made, and how many datums, datasets, models and executions
    /// it holds.
    Show {
        /// The project's name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `datumfs project ...`.
pub fn run(args: ProjectArgs) -> Result<i32> {
    let rt = runtime()?;
    match args.command {
        ProjectCommand::Create { name } => {
            // A project with a store of its own (a configuration file's [projects.NAME]) is
            // made there.
            let catalog = args.store.store_catalog_for(Some(&name))?;
            rt.block_on(catalog.create_project(&name))?;
            println!("project {name} created (use it with --project {name} or DATUMFS_PROJECT={name})");
        }
        ProjectCommand::Ls { json } => {
            let catalog = args.store.store_catalog()?;
            let names = rt.block_on(catalog.projects())?;
            if json {
                super::print_json(&names)?;
            } else if names.is_empty() {
                println!("no projects (everything is in the default project)");
            } else {
                names.iter().for_each(|n| println!("{n}"));
            }
        }
        ProjectCommand::Show { name, json } => {
            let catalog = args.store.store_catalog_for(Some(&name))?;
            let Some(rec) = rt.block_on(catalog.project(&name))? else {
                bail!(crate::catalog::CatalogError::NoSuchProject { name, store: catalog.store().url.clone() });
            };
            let p = rt.block_on(catalog.for_project(Some(&name)))?;
            let datums = rt.block_on(p.datums())?.len();
            let datasets = rt.block_on(p.datasets())?.len();
            let models = rt.block_on(p.model_names())?.len();
            let executions = rt.block_on(p.executions())?.len();
            if json {
                super::print_json(&json!({
                    "project": rec,
                    "datums": datums,
                    "datasets": datasets,
                    "models": models,
                    "executions": executions,
                }))?;
            } else {
                println!("project {} (created {} on {})", rec.name, rec.created_at, rec.host);
                println!("  {datums} datum(s), {datasets} dataset(s), {models} model(s), {executions} execution(s)");
            }
        }
    }
    Ok(0)
}
