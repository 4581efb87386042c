//! Mounts a test leaves behind: what is mounted under a directory, and taking it all down, so a
//! failing test leaves no mount and the volume group under it can be removed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One line of `/proc/self/mountinfo` (proc(5)): where, what type, its super options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    pub fs_type: String,
    pub super_options: String,
}

/// This process's mount table, in the order the mounts were made.
pub fn mount_table() -> Vec<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines().filter_map(parse_line).collect()
}

/// Field 5 is the mount point (octal-escaped); after the ` - ` separator come the type, the
/// source and the super options.
fn parse_line(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let point = PathBuf::from(unescape_octal(before.split(' ').nth(4)?));
    let mut after = after.split(' ');
    let fs_type = after.next()?.to_owned();
    let super_options = after.nth(1).unwrap_or("").to_owned();
    Some(Mount {
        point,
        fs_type,
        super_options,
    })
}

/// The mount points at or under `dir`, in the order they were mounted.
pub fn mount_points_under(dir: &Path) -> Vec<PathBuf> {
    mount_table()
        .into_iter()
        .map(|m| m.point)
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
        let _ = Command::new("umount").arg("-l").arg(&point).output();
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
    fn a_line_as_the_kernel_prints_it() {
        let line =
            "36 35 98:0 /mnt1 /mnt\\040x rw,noatime master:1 - ext3 /dev/root rw,errors=continue";
        assert_eq!(
            parse_line(line),
            Some(Mount {
                point: PathBuf::from("/mnt x"),
                fs_type: "ext3".into(),
                super_options: "rw,errors=continue".into(),
            })
        );
        assert_eq!(parse_line("garbage"), None);
    }

    #[test]
    fn the_root_is_a_mount_point_under_itself() {
        assert!(mount_points_under(Path::new("/")).contains(&PathBuf::from("/")));
        assert!(mount_points_under(Path::new("/no/such/dir")).is_empty());
    }
}
