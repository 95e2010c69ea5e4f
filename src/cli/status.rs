//! `datumfs status`.

use crate::control::{self, Request};
use crate::daemon::mounts;
use anyhow::{bail, Result};
use clap::Args;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Flags of `datumfs status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A mountpoint [default: every datumfs mount].
    mountpoint: Option<PathBuf>,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

fn query(mp: &Path) -> Value {
    if mounts::is_dead(mp) {
        return json!({ "mountpoint": mp, "state": "dead", "error": "the daemon is gone (run datumfs unmount to clean up)" });
    }
    match super::control_socket_of(mp)
        .and_then(|s| control::call(&s, &Request::Status { mountpoint: mp.to_path_buf() }))
    {
        Ok(resp) if resp.ok => {
            let mut v = resp.status.unwrap_or(Value::Null);
            v["state"] = json!("mounted");
            v
        }
        Ok(resp) => json!({ "mountpoint": mp, "state": "error", "error": resp.error }),
        Err(e) => json!({ "mountpoint": mp, "state": "unreachable", "error": e.to_string() }),
    }
}

fn print_human(v: &Value) {
    let mp = v["mountpoint"].as_str().unwrap_or("?");
    if v["state"] != "mounted" {
        println!("{mp}: {} ({})", v["state"].as_str().unwrap_or("?"), v["error"].as_str().unwrap_or(""));
        return;
    }
    println!("{mp}: mounted by pid {} since {}", v["pid"], v["started_at"].as_str().unwrap_or("?"));
    let others: Vec<&str> =
        v["daemon"]["mounts"].as_array().into_iter().flatten().filter_map(Value::as_str).filter(|m| *m != mp).collect();
    if !others.is_empty() {
        println!("  the same daemon (and cache) also serves {}", others.join(", "));
    }
    for input in v["inputs"].as_array().into_iter().flatten() {
        let uris: Vec<&str> = input["uris"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        println!("  input {:<16} {}", input["name"].as_str().unwrap_or("?"), uris.join(" "));
    }
    for vol in v["volumes"].as_array().into_iter().flatten() {
        let name = vol["name"].as_str().unwrap_or("?");
        let mode = vol["mode"].as_str().unwrap_or("?");
        let count = |k: &str| vol[k].as_array().map(Vec::len).unwrap_or(0);
        if mode == "ro" {
            println!("  volume {name:<15} ro");
        } else if let Some(e) = vol["error"].as_str() {
            println!("  volume {name:<15} {mode}: cannot read its staged tree: {e}");
        } else {
            println!(
                "  volume {name:<15} {mode} {}: {} to put ({}), {} to delete, {} refused, {} in conflict (staged in {})",
                vol["uri"].as_str().unwrap_or("?"),
                count("to_put"),
                super::human_bytes(vol["bytes_to_put"].as_u64().unwrap_or(0)),
                count("to_delete"),
                count("refused"),
                count("conflicts"),
                vol["staged"].as_str().unwrap_or("?")
            );
        }
    }
    let c = &v["cache"];
    println!(
        "  cache {}: {} on disk in {} objects; fetched {}, served from cache {}",
        c["dir"].as_str().unwrap_or("?"),
        super::human_bytes(c["disk_bytes"].as_u64().unwrap_or(0)),
        c["objects"],
        super::human_bytes(c["fetched_bytes"].as_u64().unwrap_or(0)),
        super::human_bytes(c["hit_bytes"].as_u64().unwrap_or(0)),
    );
    if let Some(store) = v["data_store"].as_str() {
        println!("  data store {store}");
    }
    let e = &v["execution"];
    if let Some(id) = e["id"].as_str() {
        let u = &e["unsynced"];
        println!(
            "  execution {id}: {} unsynced output file(s), {} (staged in {})",
            u["files"].as_u64().unwrap_or(0),
            super::human_bytes(u["bytes"].as_u64().unwrap_or(0)),
            e["staging"].as_str().unwrap_or("?")
        );
    }
    let files = v["files"].as_array().map(Vec::len).unwrap_or(0);
    println!("  files read whole and checksummed: {files} (--json lists them with md5, sha1, sha256)");
}

/// Runs `datumfs status`.
pub fn run(args: StatusArgs) -> Result<i32> {
    let targets: Vec<PathBuf> = match &args.mountpoint {
        Some(mp) => {
            let mp = super::absolute(mp);
            if !mounts::is_dead(&mp) {
                match mounts::at(&mp) {
                    Some(m) if m.is_datumfs() => {}
                    Some(m) => bail!("{} is not a datumfs mount (it is {})", mp.display(), m.fstype),
                    None => bail!("{} is not mounted", mp.display()),
                }
            }
            vec![mp]
        }
        None => mounts::list().into_iter().filter(|m| m.is_datumfs()).map(|m| m.mountpoint).collect(),
    };
    let results: Vec<Value> = targets.iter().map(|mp| query(mp)).collect();
    let healthy = results.iter().all(|r| r["state"] == "mounted");
    if args.json {
        let out =
            if args.mountpoint.is_some() { results.into_iter().next().unwrap_or(Value::Null) } else { json!(results) };
        super::print_json(&out)?;
    } else if results.is_empty() {
        println!("no datumfs mounts");
    } else {
        results.iter().for_each(print_human);
    }
    Ok(if healthy { 0 } else { 1 })
}
