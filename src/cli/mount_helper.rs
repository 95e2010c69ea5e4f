//! `mount -t fuse.datumfs` and `/etc/fstab`: the command line mount(8) hands a FUSE helper
//! (`datumfs SOURCE MOUNTPOINT -o OPTIONS`, through mount.fuse3, or the binary installed as
//! `mount.fuse.datumfs`) turned into `datumfs mount MOUNTPOINT --flags`.
//!
//! Every long flag of `datumfs mount` is an option, `-` or `_` alike (`cache_dir=DIR`,
//! `store=URL`, `input=NAME=URI` repeatable, `volume=...`); the FUSE options (`allow_other`,
//! `ro`, `noexec`, ...) pass through; what only mount(8) and systemd read (`_netdev`, `nofail`,
//! `noauto`, `x-systemd.*`, ...) is left out. The source field is free (`datumfs`, say).

use anyhow::{bail, Result};
use clap::CommandFactory;

/// Options of mount(8) and systemd that mean nothing to the filesystem.
const MOUNT_ONLY: &[&str] = &[
    "defaults", "auto", "noauto", "user", "users", "nouser", "owner", "group", "_netdev", "nofail", "rw", "dev",
    "suid", "exec", "async", "sync",
];

/// FUSE options the kernel takes as they are.
const FUSE_OPTIONS: &[&str] = &[
    "ro",
    "allow_other",
    "allow_root",
    "default_permissions",
    "nosuid",
    "nodev",
    "noexec",
    "noatime",
    "atime",
    "relatime",
    "nodiratime",
    "auto_unmount",
];

/// Whether the command line is a mount helper's: `datumfs SOURCE MOUNTPOINT -o OPTIONS`, as
/// mount.fuse3 runs it, or any call of the binary under the name `mount.fuse.datumfs`.
pub fn is_helper_call(args: &[String]) -> bool {
    let name = args.first().map(|a| a.rsplit('/').next().unwrap_or(a)).unwrap_or_default();
    if name.starts_with("mount.") {
        return true;
    }
    // mount.fuse3 always passes options (mount(8) adds `rw` at least); a mistyped subcommand
    // with two words after it is not taken for a mount.
    let known = super::Cli::command().get_subcommands().any(|s| args.get(1).is_some_and(|a| a == s.get_name()));
    !known
        && args.len() >= 4
        && !args[1].starts_with('-')
        && !args[2].starts_with('-')
        && args[3..].iter().any(|a| a.starts_with("-o"))
}

/// Turns a helper's command line into `datumfs mount ...` arguments.
pub fn translate(args: &[String]) -> Result<Vec<String>> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => match it.next() {
                Some(o) => options.extend(split_options(o)),
                None => bail!("mount helper: -o needs options"),
            },
            // mount(8)'s own: no mtab (-n), sloppy (-s), fake (-f), verbose (-v).
            "-n" | "-s" | "-f" | "-v" => {}
            o if o.starts_with("-o") => options.extend(split_options(&o[2..])),
            o if o.starts_with('-') => bail!("mount helper: unknown argument {o}"),
            p => positional.push(p.to_string()),
        }
    }
    let [_source, mountpoint] = positional.as_slice() else {
        bail!("mount helper: expected SOURCE MOUNTPOINT [-o OPTIONS], got {positional:?}");
    };
    let mut out = vec!["datumfs".to_string(), "mount".to_string(), mountpoint.clone()];
    out.extend(options_to_flags(options)?);
    Ok(out)
}

/// Mount options (`key[=value]`, as fstab and a CSI volume's mount flags give them) as the
/// flags of `datumfs mount`: every long flag by its name, `-` or `_` alike; FUSE options
/// gathered into one `-o`; what only mount(8) and systemd read left out. An option that is
/// neither is an error naming it.
pub fn options_to_flags(options: impl IntoIterator<Item = String>) -> Result<Vec<String>> {
    let mount = super::Cli::command();
    let Some(mount) = mount.find_subcommand("mount") else { bail!("no mount subcommand") };
    let mut out = Vec::new();
    let mut fuse = Vec::new();
    for opt in options {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (opt.clone(), None),
        };
        if MOUNT_ONLY.contains(&key.as_str()) || key.starts_with("x-") || key == "comment" {
            continue;
        }
        if FUSE_OPTIONS.contains(&key.as_str()) {
            fuse.push(opt);
            continue;
        }
        let flag = key.replace('_', "-");
        let Some(arg) = mount.get_arguments().find(|a| a.get_long() == Some(flag.as_str())) else {
            bail!("mount option '{key}': not a datumfs mount flag (see `datumfs mount --help`) nor a FUSE option");
        };
        let takes_value = arg.get_action().takes_values();
        match (takes_value, value) {
            (true, Some(v)) => out.extend([format!("--{flag}"), v]),
            (false, None) => out.push(format!("--{flag}")),
            (true, None) => bail!("mount option '{key}' needs a value ({key}=...)"),
            // A switch given a value, as CSI volume attributes (strings only) give it.
            (false, Some(v)) => match v.as_str() {
                "true" | "yes" | "1" => out.push(format!("--{flag}")),
                "false" | "no" | "0" => {}
                _ => bail!("mount option '{key}' is a switch: give it alone, or as {key}=true or {key}=false"),
            },
        }
    }
    if !fuse.is_empty() {
        out.extend(["-o".to_string(), fuse.join(",")]);
    }
    Ok(out)
}

/// Splits `a,b=c,d` at commas, except inside a value that holds a URI with commas quoted
/// (`input="a=s3://b/x,y"`).
fn split_options(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fstab_options_become_flags() {
        let call = strings(&[
            "datumfs",
            "datumfs",
            "/mnt/data",
            "-o",
            "rw,_netdev,nofail,x-systemd.automount,allow_other,cache_dir=/var/cache/datumfs,input=a=s3://b/x/,input=c=s3://b/y/,foreground,execution=e1",
        ]);
        assert!(is_helper_call(&call));
        assert!(!is_helper_call(&strings(&["datumfs", "mount", "/mnt", "--input", "a=b"])));
        assert!(is_helper_call(&strings(&["/sbin/mount.fuse.datumfs", "src", "/mnt"])));
        assert_eq!(
            translate(&call).unwrap(),
            strings(&[
                "datumfs",
                "mount",
                "/mnt/data",
                "--cache-dir",
                "/var/cache/datumfs",
                "--input",
                "a=s3://b/x/",
                "--input",
                "c=s3://b/y/",
                "--foreground",
                "--execution",
                "e1",
                "-o",
                "allow_other",
            ])
        );
        let e = translate(&strings(&["datumfs", "s", "/m", "-o", "cache_size"])).unwrap_err().to_string();
        assert!(e.contains("cache_size") && e.contains("value"), "{e}");
        let e = translate(&strings(&["datumfs", "s", "/m", "-o", "bogus=1"])).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let flags = options_to_flags(strings(&["foreground=true", "allow_other", "cache_size=1G"])).unwrap();
        assert_eq!(flags, strings(&["--foreground", "--cache-size", "1G", "-o", "allow_other"]));
        assert!(options_to_flags(strings(&["foreground=false"])).unwrap().is_empty());
        let e = options_to_flags(strings(&["foreground=maybe"])).unwrap_err().to_string();
        assert!(e.contains("foreground") && e.contains("switch"), "{e}");
        assert_eq!(split_options(r#"a,input="x=s3://b/k,1",b"#), ["a", "input=x=s3://b/k,1", "b"]);
    }
}
