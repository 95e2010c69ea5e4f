//! Object key <-> relative path mapping.
//!
//! Owns the one rule that decides whether an object key may become a path under
//! `inputs/<name>/`: no `..` or `.` segments, no empty segments, no NUL or control bytes,
//! no segment longer than the kernel's name limit. Keys that fail are skipped (with a
//! warning by the caller), never served. Touches no I/O.

use std::fmt;

/// Longest file name Linux accepts (NAME_MAX).
const NAME_MAX: usize = 255;

/// Why a key cannot be shown as a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnsafeKey {
    /// A `..` segment would escape the input directory.
    ParentSegment,
    /// A `.` segment has no meaning as a file name.
    DotSegment,
    /// Two slashes in a row, or a key that is only slashes.
    EmptySegment,
    /// NUL or another control byte in the key.
    ControlByte,
    /// A segment longer than the file-name limit.
    TooLong,
}

impl fmt::Display for UnsafeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnsafeKey::ParentSegment => "it has a '..' segment that would escape the input directory",
            UnsafeKey::DotSegment => "it has a '.' segment",
            UnsafeKey::EmptySegment => "it has an empty path segment",
            UnsafeKey::ControlByte => "it contains NUL or control characters",
            UnsafeKey::TooLong => "a path segment is longer than 255 bytes",
        })
    }
}

/// Checks one path segment (a file or directory name).
pub fn check_segment(seg: &str) -> Result<(), UnsafeKey> {
    match seg {
        "" => Err(UnsafeKey::EmptySegment),
        "." => Err(UnsafeKey::DotSegment),
        ".." => Err(UnsafeKey::ParentSegment),
        _ if seg.chars().any(|c| c.is_control()) => Err(UnsafeKey::ControlByte),
        _ if seg.len() > NAME_MAX => Err(UnsafeKey::TooLong),
        _ => Ok(()),
    }
}

/// Turns a key relative to an input's root into path segments, or says why it is unsafe.
/// A leading `/` (an "absolute" key) is stripped: the result always stays below the input.
pub fn relative_segments(rel_key: &str) -> Result<Vec<&str>, UnsafeKey> {
    let trimmed = rel_key.trim_start_matches('/');
    if trimmed.is_empty() {
        return Err(UnsafeKey::EmptySegment);
    }
    let segments: Vec<&str> = trimmed.split('/').collect();
    for seg in &segments {
        check_segment(seg)?;
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_keys_pass() {
        assert_eq!(relative_segments("a/b/c.jpg").unwrap(), vec!["a", "b", "c.jpg"]);
        assert_eq!(relative_segments("x").unwrap(), vec!["x"]);
        assert_eq!(relative_segments("dir/ünï côde.txt").unwrap(), vec!["dir", "ünï côde.txt"]);
    }

    #[test]
    fn escapes_are_rejected() {
        assert_eq!(relative_segments("a/../../etc/passwd"), Err(UnsafeKey::ParentSegment));
        assert_eq!(relative_segments(".."), Err(UnsafeKey::ParentSegment));
        assert_eq!(relative_segments("a/./b"), Err(UnsafeKey::DotSegment));
        assert_eq!(relative_segments("a//b"), Err(UnsafeKey::EmptySegment));
        assert_eq!(relative_segments("a/b/"), Err(UnsafeKey::EmptySegment));
        assert_eq!(relative_segments("///"), Err(UnsafeKey::EmptySegment));
        assert_eq!(relative_segments("a\0b"), Err(UnsafeKey::ControlByte));
        assert_eq!(relative_segments("new\nline"), Err(UnsafeKey::ControlByte));
        assert_eq!(relative_segments(&"x".repeat(256)), Err(UnsafeKey::TooLong));
    }

    #[test]
    fn absolute_keys_stay_inside() {
        assert_eq!(relative_segments("/etc/passwd").unwrap(), vec!["etc", "passwd"]);
    }
}
