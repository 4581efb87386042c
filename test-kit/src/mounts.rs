//! Mounts a test leaves behind: what is mounted under a directory, and taking it all down, so a
//! failing test leaves no mount and the volume group under it can be removed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The mount points at or under `dir`, in the order they were mounted (the kernel's order of
/// `/proc/self/mountinfo`).
pub fn mount_points_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        // Field 5 is the mount point (proc(5)), with space, tab, newline and backslash octal-escaped.
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_octal(field)))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// `\040` and friends back to bytes, as the kernel's `seq_file` escaping wrote them.
fn unescape_octal(field: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out)
}

/// Lazily unmounts everything at or under `dir`, the last mounted first. Errors are ignored:
/// this runs on the way out, also while a test panics.
pub fn unmount_all_under(dir: &Path) {
    for point in mount_points_under(dir).into_iter().rev() {
        let _ = Command::new("umount").arg("-l").arg(&point).status();
    }
}

/// Unmounts everything under its directory when dropped ([`unmount_all_under`]).
#[derive(Debug)]
pub struct Unmounter(pub PathBuf);

impl Drop for Unmounter {
    fn drop(&mut self) {
        unmount_all_under(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_escapes_are_decoded_as_the_kernel_wrote_them() {
        assert_eq!(unescape_octal(r"/a\040b\011c\134d"), "/a b\tc\\d");
        assert_eq!(unescape_octal(r"/plain"), "/plain");
        // Not an escape: fewer than three octal digits.
        assert_eq!(unescape_octal(r"/x\04"), r"/x\04");
    }

    #[test]
    fn the_root_is_a_mount_point_under_itself() {
        assert!(mount_points_under(Path::new("/")).contains(&PathBuf::from("/")));
        assert!(mount_points_under(Path::new("/no/such/dir")).is_empty());
    }
}
