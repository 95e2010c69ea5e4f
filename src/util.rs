//! Small helpers several rooms need, with no dependency on any of them: private directories and
//! byte sizes for people, files replaced whole, bounded decompression.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Creates `path` (and parents) as a directory private to the current user (0700), and makes an
/// existing one private.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Writes `bytes` to `path` (private to the user) so that a reader, or a crash, finds the old
/// file or the whole new one, never a part: a temporary file beside it, synced, then renamed.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// `n` bytes for people: `512 B`, `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// The host name, for records.
pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "unknown".into())
}

/// Decompresses zstd `compressed` that must not grow past `max` bytes (what a store others can
/// write to holds may be made to decompress without end). The error says why, for the caller to
/// name the object.
pub fn zstd_decompress_bounded(compressed: &[u8], max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut raw = Vec::new();
    zstd::stream::Decoder::new(compressed)
        .and_then(|d| d.take(max + 1).read_to_end(&mut raw))
        .map_err(|e| format!("cannot decompress: {e}"))?;
    if raw.len() as u64 > max {
        return Err(format!("it decompresses to more than {max} bytes"));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536 << 10), "1.5 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn private_dirs_are_private_even_when_they_existed() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o700);
    }
}
