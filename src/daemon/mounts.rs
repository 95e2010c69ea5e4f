//! What is mounted where, from `/proc/self/mountinfo`, and dead-mount detection.

use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Debug, Clone)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// Filesystem type (`fuse.datumfs` for ours).
    pub fstype: String,
    /// Source (`datumfs` for ours).
    pub source: String,
}

/// The source name datumfs mounts show in mountinfo.
pub const SOURCE: &str = "datumfs";

impl MountEntry {
    /// Whether this is a datumfs mount (FUSE, with our source name; the type is `fuse` or
    /// `fuse.datumfs` depending on how it was mounted).
    pub fn is_datumfs(&self) -> bool {
        self.fstype.starts_with("fuse") && (self.source == SOURCE || self.fstype == "fuse.datumfs")
    }
}

fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every current mount.
pub fn list() -> Vec<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mountpoint = unescape(pre.split(' ').nth(4)?);
            let mut post = post.split(' ');
            let fstype = post.next()?.to_string();
            let source = unescape(post.next().unwrap_or_default());
            Some(MountEntry { mountpoint: PathBuf::from(mountpoint), fstype, source })
        })
        .collect()
}

/// The mount at exactly `path`, if any (the last one wins when mounts are stacked).
pub fn at(path: &Path) -> Option<MountEntry> {
    list().into_iter().rev().find(|m| m.mountpoint == path)
}

/// Whether `path` is a FUSE mount whose daemon is gone ("Transport endpoint is not connected").
pub fn is_dead(path: &Path) -> bool {
    matches!(std::fs::metadata(path), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN))
}

/// Unmounts `path`; fails with EBUSY while files are open. Non-root users go through
/// `fusermount3 -u`, as the kernel only lets root unmount directly.
pub fn unmount(path: &Path) -> std::io::Result<()> {
    match nix::mount::umount2(path, nix::mount::MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            let out = std::process::Command::new("fusermount3").arg("-u").arg(path).output()?;
            if out.status.success() {
                Ok(())
            } else {
                Err(std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Detaches the mount at `path` (lazy unmount): used on dead mounts and forced unmounts.
pub fn detach(path: &Path) -> std::io::Result<()> {
    nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_escapes() {
        assert_eq!(unescape("/mnt/with\\040space"), "/mnt/with space");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn reads_own_mounts() {
        assert!(list().iter().any(|m| m.mountpoint == Path::new("/")));
    }
}
