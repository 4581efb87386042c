//! Cheap looks at LVM's on-disk state that need no `lvm` process: the metadata-area headers of
//! physical volumes, and the device numbers of active logical volumes.
//!
//! Every LVM metadata commit rewrites the metadata-area header of the volume group's physical
//! volumes: the header at byte 4096 of a PV holds the location, size and checksum of the current
//! metadata copy. Reading those 512 bytes from each PV is a few `pread`s, so it can run every
//! second; two reads that differ mean the metadata changed in between.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::Path;

use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};

/// Where the first metadata area's header lives on an LVM2 physical volume, and its size.
const MDA_HEADER_OFFSET: u64 = 4096;
const MDA_HEADER_LEN: usize = 512;

/// The metadata headers of a set of devices; `None` for a device that could not be read.
pub type Headers = BTreeMap<String, Option<Vec<u8>>>;

/// Reads the metadata-area header of `device`, bypassing stale page cache.
pub fn read_mda_header(device: &str) -> std::io::Result<Vec<u8>> {
    let file = File::open(device)?;
    // LVM writes with O_DIRECT; drop any cached copy so the read sees the disk.
    let _ = posix_fadvise(
        &file,
        MDA_HEADER_OFFSET as i64,
        MDA_HEADER_LEN as i64,
        PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
    let mut buf = vec![0u8; MDA_HEADER_LEN];
    file.read_exact_at(&mut buf, MDA_HEADER_OFFSET)?;
    Ok(buf)
}

/// Reads the headers of `devices`.
pub fn read_headers<'a>(devices: impl IntoIterator<Item = &'a str>) -> Headers {
    devices
        .into_iter()
        .map(|d| (d.to_owned(), read_mda_header(d).ok()))
        .collect()
}

/// The major and minor numbers of the block device at `path` (an active LV's `/dev/VG/LV`), or
/// `None` when there is no such device node (the volume is inactive, or activation is off).
pub fn device_numbers(path: &Path) -> Option<(u32, u32)> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.file_type().is_block_device() {
        return None;
    }
    let rdev = meta.rdev();
    Some((
        u32::try_from(nix::sys::stat::major(rdev)).ok()?,
        u32::try_from(nix::sys::stat::minor(rdev)).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn header_read_sees_rewrites_of_the_file() {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        f.write_all(&vec![0u8; 8192]).expect("write");
        let path = f.path().to_string_lossy().into_owned();
        let before = read_mda_header(&path).expect("read");
        f.as_file()
            .write_all_at(b"LVM2 changed", 4096 + 32)
            .expect("write");
        let after = read_mda_header(&path).expect("read");
        assert_ne!(before, after);
        assert_eq!(&after[32..44], b"LVM2 changed");
    }

    #[test]
    fn unreadable_devices_are_none() {
        let headers = read_headers(["/nonexistent/device"]);
        assert_eq!(headers["/nonexistent/device"], None);
    }

    #[test]
    fn device_numbers_of_a_real_block_device_and_of_other_files() {
        // /dev/loop-control is a character device and a temp file a regular one: neither counts.
        assert_eq!(device_numbers(Path::new("/dev/loop-control")), None);
        let f = tempfile::NamedTempFile::new().expect("tmp");
        assert_eq!(device_numbers(f.path()), None);
        assert_eq!(device_numbers(Path::new("/nonexistent/dev")), None);
        // Any block device the machine has agrees with what the kernel lists in /proc/partitions.
        let partitions = std::fs::read_to_string("/proc/partitions").unwrap_or_default();
        for line in partitions.lines().skip(2) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let [major, minor, _, name] = cols[..] else {
                continue;
            };
            let dev = Path::new("/dev").join(name);
            if dev.exists() {
                let want = (major.parse().expect("major"), minor.parse().expect("minor"));
                assert_eq!(device_numbers(&dev), Some(want), "{}", dev.display());
                return;
            }
        }
    }
}
