//! Block-for-block copies, for the volumes LVM cannot snapshot: a thick snapshot (or a thick
//! clone, which is one) cannot have a copy-on-write snapshot of its own, so a restore or clone
//! from it is a new plain volume filled from the source's device.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

/// Copies the first `len` bytes of one block device onto another and makes them durable.
pub type CopyFn = dyn Fn(&Path, &Path, u64) -> io::Result<()> + Send + Sync;

/// How lvmd copies devices: [`copy_device`], or a stand-in in unit tests.
#[derive(Clone)]
pub struct Copier(pub Arc<CopyFn>);

impl Default for Copier {
    fn default() -> Self {
        Self(Arc::new(copy_device))
    }
}

impl fmt::Debug for Copier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Copier")
    }
}

/// 1 MiB: large enough that the per-call cost vanishes, small enough to stay off the heap's
/// high-water mark.
const CHUNK: usize = 1 << 20;

/// Copies `len` bytes from `source` to `target` in 1 MiB chunks and syncs `target`. Every
/// block is written (the target's extents may hold anything, so zero blocks are copied too). A
/// source shorter than `len` is an error, never a silently short copy.
pub fn copy_device(source: &Path, target: &Path, len: u64) -> io::Result<()> {
    let with_path = |path: &Path, what: &str| {
        let path = path.display().to_string();
        let what = what.to_owned();
        move |e: io::Error| io::Error::new(e.kind(), format!("{what} {path}: {e}"))
    };
    let mut from = File::open(source).map_err(with_path(source, "opening"))?;
    let mut to = OpenOptions::new()
        .write(true)
        .open(target)
        .map_err(with_path(target, "opening"))?;
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
        from.read_exact(&mut buf[..n])
            .map_err(with_path(source, "reading"))?;
        to.write_all(&buf[..n])
            .map_err(with_path(target, "writing"))?;
        left -= n as u64;
    }
    to.sync_all().map_err(with_path(target, "syncing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_exactly_len_bytes_and_refuses_a_short_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let data: Vec<u8> = (0..(3 * CHUNK + 123)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).expect("source");
        // The target is as big as a device would be, and holds garbage beyond the copy.
        std::fs::write(&dst, vec![0xEEu8; data.len() + 4096]).expect("target");

        copy_device(&src, &dst, data.len() as u64).expect("copy");
        let copied = std::fs::read(&dst).expect("read");
        assert_eq!(&copied[..data.len()], &data[..]);
        assert_eq!(&copied[data.len()..], &vec![0xEEu8; 4096][..]);

        let err = copy_device(&src, &dst, data.len() as u64 + 1).expect_err("short source");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("reading"), "{err}");
        let err = copy_device(&dir.path().join("nope"), &dst, 1).expect_err("no source");
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
