//! The block devices a volume group is made of: a [`LoopDevice`] over a sparse file, or an
//! existing device (a VM's `/dev/vdb`), as a [`Disk`].

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use tempfile::TempDir;

use super::env::require_loop_devices;

/// Size of the sparse file behind a [`LoopDevice::new`] when a test does not care.
pub const DEFAULT_LOOP_SIZE: u64 = 128 << 20;

/// A loop device over a sparse file. Drop detaches it and deletes the file.
pub struct LoopDevice {
    device: PathBuf,
    // Deleted (with the file in it) after the device is detached.
    dir: TempDir,
}

impl fmt::Debug for LoopDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopDevice")
            .field("device", &self.device)
            .field("file", &self.dir.path().join("disk.img"))
            .finish()
    }
}

impl LoopDevice {
    /// Attaches a new sparse file of `size` bytes.
    pub fn new(size: u64) -> Self {
        require_loop_devices();
        // `losetup -f` picks a free device and then claims it; two at once can pick the same one.
        static ATTACH: Mutex<()> = Mutex::new(());
        let dir = tempfile::Builder::new()
            .prefix("topolvm-loop-")
            .tempdir()
            .expect("creating a dir for the loop device's file");
        let file = dir.path().join("disk.img");
        File::create(&file)
            .and_then(|f| f.set_len(size))
            .expect("creating the sparse file");
        let _serial = ATTACH.lock().unwrap_or_else(|e| e.into_inner());
        let mut last_error = String::new();
        for _ in 0..5 {
            let out = Command::new("losetup")
                .args(["-f", "--show"])
                .arg(&file)
                .output()
                .expect("running losetup");
            if out.status.success() {
                let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                return Self { device, dir };
            }
            // Raced with someone outside this process; try another free device.
            last_error = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("losetup -f --show {} failed: {last_error}", file.display());
    }

    pub fn path(&self) -> &Path {
        &self.device
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        for attempt in 0..20 {
            let out = Command::new("losetup").arg("-d").arg(&self.device).output();
            match out {
                Ok(out) if out.status.success() => return,
                Ok(out) if attempt == 19 => eprintln!(
                    "warning: losetup -d {} failed: {}",
                    self.device.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => {
                    eprintln!("warning: cannot run losetup -d: {e}");
                    return;
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// A block device for a volume group: one the harness attached, or one that already exists.
#[derive(Debug)]
pub enum Disk {
    Loop(LoopDevice),
    /// A device the caller owns (e.g. a VM's `/dev/vdb`); only its LVM label is removed.
    Existing(PathBuf),
}

impl Disk {
    /// A new loop device of `size` bytes.
    pub fn loop_device(size: u64) -> Self {
        Self::Loop(LoopDevice::new(size))
    }

    /// An existing block device.
    pub fn existing(path: impl Into<PathBuf>) -> Self {
        Self::Existing(path.into())
    }

    pub fn path(&self) -> &Path {
        match self {
            Self::Loop(l) => l.path(),
            Self::Existing(p) => p,
        }
    }
}
