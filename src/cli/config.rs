//! `datumfs config show`: the effective settings and where each came from.

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use serde_json::json;

/// `datumfs config ...`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Show every setting with its value and source (environment, a file, or the default), the
    /// named stores, and the files read. Precedence: flag > environment > user file > system file.
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `datumfs config ...`.
pub fn run(args: ConfigArgs) -> Result<i32> {
    let ConfigCommand::Show { json } = args.command;
    let loaded = crate::config_file::loaded().ok_or_else(|| anyhow!("the configuration files were not read"))?;
    let searched = crate::config_file::paths();
    if json {
        let stores: serde_json::Map<String, serde_json::Value> =
            loaded.stores.iter().map(|(name, (s, from))| (name.clone(), json!({ "store": s, "from": from }))).collect();
        let projects: serde_json::Map<String, serde_json::Value> = loaded
            .projects
            .iter()
            .map(|(name, (p, from))| (name.clone(), json!({ "project": p, "from": from })))
            .collect();
        super::print_json(&json!({
            "files_searched": searched,
            "files_read": loaded.files,
            "settings": loaded.sources,
            "stores": stores,
            "projects": projects,
        }))?;
        return Ok(0);
    }
    for path in &searched {
        let state = if loaded.files.contains(path) { "read" } else { "absent" };
        println!("# {} ({state})", path.display());
    }
    for s in &loaded.sources {
        match &s.value {
            Some(v) => println!("{:<15} = {v:<40} # {} ({})", s.key, s.from, s.env),
            None => println!("{:<15}   {:<40} # default ({})", s.key, "", s.env),
        }
    }
    for (name, (s, from)) in &loaded.stores {
        let extra: Vec<String> = [("endpoint", &s.endpoint), ("region", &s.region), ("profile", &s.profile)]
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} {v}")))
            .collect();
        println!("[stores.{name}] {} {} # {}", s.url, extra.join(", "), from.display());
    }
    for (name, (p, from)) in &loaded.projects {
        println!("[projects.{name}] store {} # {}", p.store.as_deref().unwrap_or("(the default)"), from.display());
    }
    Ok(0)
}
