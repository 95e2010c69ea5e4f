//! `datumfs execution`: the records of executions (mounts and `datumfs run` jobs).

use super::datum::{runtime, StoreArg};
use crate::catalog::ExecutionRecord;
use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;

/// `datumfs execution ...`.
#[derive(Debug, Args)]
pub struct ExecutionArgs {
    #[command(subcommand)]
    command: ExecutionCommand,
    #[command(flatten)]
    store: StoreArg,
}

#[derive(Debug, Subcommand)]
enum ExecutionCommand {
    /// List executions, newest first: status, duration, inputs, outputs, warnings.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the output (stdout and stderr) of an execution's command (`datumfs run`).
    Logs {
        /// The execution id.
        id: String,
    },
    /// Show one execution: command, code, parameters, exit status, every input file read with
    /// its checksums, its outputs and the keys its volume syncs wrote.
    Show {
        /// The execution id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// How an execution ended, in a word.
fn status(rec: &ExecutionRecord) -> String {
    match (rec.exit_status, &rec.ended_at) {
        (Some(0), _) => "succeeded".into(),
        (Some(code), _) => format!("failed ({code})"),
        (None, Some(_)) => "ended".into(),
        (None, None) => "running or cut off".into(),
    }
}

fn summary(rec: &ExecutionRecord) -> serde_json::Value {
    json!({
        "id": rec.id,
        "status": status(rec),
        "started_at": rec.started_at,
        "ended_at": rec.ended_at,
        "duration_secs": rec.duration_secs,
        "exit_status": rec.exit_status,
        "host": rec.host,
        "command": rec.command,
        "inputs": rec.inputs.iter().map(|i| &i.name).collect::<Vec<_>>(),
        "outputs": rec.outputs.len(),
        "volume_writes": rec.volume_writes.len(),
        "warnings": rec.warnings,
    })
}

/// Runs `datumfs execution ...`.
pub fn run(args: ExecutionArgs) -> Result<i32> {
    let catalog = args.store.catalog()?;
    let rt = runtime()?;
    match args.command {
        ExecutionCommand::Ls { json } => {
            let all = rt.block_on(catalog.executions())?;
            if json {
                super::print_json(&all.iter().map(summary).collect::<Vec<_>>())?;
            } else if all.is_empty() {
                println!("no executions");
            } else {
                for rec in &all {
                    let took = rec.duration_secs.map(|d| format!("{d:.1} s")).unwrap_or_else(|| "-".into());
                    println!(
                        "{:<28} {:<20} {:<24} {:>10}  {} input(s), {} output(s)",
                        rec.id,
                        status(rec),
                        rec.started_at,
                        took,
                        rec.inputs.len(),
                        rec.outputs.len()
                    );
                }
            }
        }
        ExecutionCommand::Logs { id } => {
            rt.block_on(catalog.execution(&id))?;
            match rt.block_on(catalog.log(&id))? {
                Some(text) => std::io::Write::write_all(&mut std::io::stdout(), &text)?,
                None => {
                    eprintln!("datumfs: execution {id} has no log (only `datumfs run` keeps one)");
                    return Ok(1);
                }
            }
        }
        ExecutionCommand::Show { id, json } => {
            let rec = rt.block_on(catalog.execution(&id))?;
            if json {
                let mut v = serde_json::to_value(&rec)?;
                v["status"] = json!(status(&rec));
                super::print_json(&v)?;
                return Ok(0);
            }
            println!("execution {} ({})", rec.id, status(&rec));
            println!("  host        {}", rec.host);
            println!("  started     {}", rec.started_at);
            if let Some(e) = &rec.ended_at {
                println!("  ended       {e}");
            }
            if let Some(d) = rec.duration_secs {
                println!("  duration    {d:.1} s");
            }
            if let Some(cmd) = &rec.command {
                println!("  command     {}", cmd.join(" "));
            }
            if let Some(c) = &rec.code {
                let dirty = if c.dirty { " (with uncommitted changes)" } else { "" };
                let branch = c.branch.as_deref().map(|b| format!(" on {b}")).unwrap_or_default();
                let remote = c.remote.as_deref().map(|r| format!(" from {r}")).unwrap_or_default();
                println!("  code        {}{branch}{remote}{dirty}", c.commit);
            }
            for (name, value) in rec.parameters.iter().flatten() {
                println!("  parameter   {name} = {value}");
            }
            for i in &rec.inputs {
                println!("  input {}: {}", i.name, i.uris.join(" "));
                for v in &i.datasets {
                    println!("    {v}");
                }
                for f in &i.files_read {
                    println!("    read {} ({} bytes, sha256 {})", f.uri, f.size, f.checksums.sha256);
                }
            }
            for o in &rec.outputs {
                println!("  output datum://{o}");
            }
            for w in &rec.volume_writes {
                let what = if w.deleted { "deleted" } else { "wrote" };
                println!("  volume {} {what} {}", w.volume, w.uri);
            }
            for w in &rec.warnings {
                println!("  WARNING {w}");
            }
        }
    }
    Ok(0)
}
