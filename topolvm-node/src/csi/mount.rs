//! The operating-system layer of the CSI node service: filesystems, mounts and device sizes.
//!
//! Every external tool is run with an argument list (never a shell) and `LC_ALL=C`; the mount
//! table is read from `/proc/self/mountinfo`, so `findmnt` is not needed. This layer knows
//! nothing of CSI or gRPC: it has its own [`FsError`].

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use thiserror::Error;
use tokio::process::Command;
use tracing::{debug, info};

/// A failure of the operating system or of a tool.
#[derive(Debug, Error)]
pub enum FsError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Tool {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("/proc/self/mountinfo line {line:?}: {reason}")]
    MountInfo { line: String, reason: &'static str },
    #[error("{path} is still mounted after {count} unmounts")]
    StillMounted { path: PathBuf, count: usize },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> FsError + '_ {
    move |source| FsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One line of `/proc/self/mountinfo` (proc(5)), with the kernel's octal escapes undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the filesystem (st_dev of files in it).
    pub major: u32,
    pub minor: u32,
    /// The path inside the filesystem that is mounted (`/dm-3` for a bind mount of a device
    /// node from devtmpfs).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`/`ro`, `nosuid`, ...).
    pub mount_options: Vec<String>,
    pub fs_type: String,
    /// The mount source, e.g. `/dev/mapper/vg-lv`.
    pub source: String,
}

impl MountEntry {
    /// Whether this mount is read-only.
    pub fn read_only(&self) -> bool {
        self.mount_options.iter().any(|o| o == "ro")
    }
}

/// Undoes the kernel's escapes of space, tab, newline and backslash (`\040` ...).
fn unescape(field: &str) -> Result<String, &'static str> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let digits = bytes.get(i + 1..i + 4).ok_or("truncated escape")?;
            if !digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                return Err("escape is not three octal digits");
            }
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            out.push(u8::try_from(value).map_err(|_| "escape out of range")?);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8")
}

/// Parses the text of `/proc/self/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountEntry>, FsError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_mountinfo_line)
        .collect()
}

fn parse_mountinfo_line(line: &str) -> Result<MountEntry, FsError> {
    let bad = |reason| FsError::MountInfo {
        line: line.to_owned(),
        reason,
    };
    // 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    let (before, after) = line
        .split_once(" - ")
        .ok_or_else(|| bad("no ' - ' separator"))?;
    let fields: Vec<&str> = before.split(' ').collect();
    if fields.len() < 6 {
        return Err(bad("fewer than six fields before the separator"));
    }
    let (major, minor) = fields[2]
        .split_once(':')
        .ok_or_else(|| bad("major:minor"))?;
    let major = major.parse().map_err(|_| bad("major is not a number"))?;
    let minor = minor.parse().map_err(|_| bad("minor is not a number"))?;
    let tail: Vec<&str> = after.split(' ').collect();
    if tail.len() < 2 {
        return Err(bad("fewer than two fields after the separator"));
    }
    Ok(MountEntry {
        major,
        minor,
        root: PathBuf::from(unescape(fields[3]).map_err(bad)?),
        mount_point: PathBuf::from(unescape(fields[4]).map_err(bad)?),
        mount_options: fields[5].split(',').map(str::to_owned).collect(),
        fs_type: unescape(tail[0]).map_err(bad)?,
        source: unescape(tail[1]).map_err(bad)?,
    })
}

/// The mount table of this process's mount namespace, in mount order.
pub fn mount_table() -> Result<Vec<MountEntry>, FsError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    parse_mountinfo(&text)
}

/// The mounts at `path` (an absolute path without symlinks), bottom first; the last one is what
/// a process sees there.
pub fn mounts_at(path: &Path) -> Result<Vec<MountEntry>, FsError> {
    Ok(mount_table()?
        .into_iter()
        .filter(|m| m.mount_point == path)
        .collect())
}

/// The `TYPE=` value of `blkid -o export` output: the filesystem found, if any.
pub fn parse_blkid_export(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("TYPE="))
        .map(str::trim)
        .find(|t| !t.is_empty())
        .map(str::to_owned)
}

async fn run(program: &str, args: &[&OsStr]) -> Result<Output, FsError> {
    debug!(program, ?args, "running");
    Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|source| FsError::Spawn {
            program: program.to_owned(),
            source,
        })
}

fn command_line(program: &str, args: &[&OsStr]) -> String {
    std::iter::once(program.to_owned())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn run_ok(program: &str, args: &[&OsStr]) -> Result<Output, FsError> {
    let output = run(program, args).await?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(tool_error(program, args, &output))
    }
}

fn tool_error(program: &str, args: &[&OsStr], output: &Output) -> FsError {
    FsError::Tool {
        command: command_line(program, args),
        status: output.status.to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    }
}

/// The filesystem on `device` by a low-level probe (`blkid -p`, the cache is not trusted), or
/// `None` when there is none. Partition tables and other non-filesystem signatures are not
/// reported.
pub async fn filesystem_on(device: &Path) -> Result<Option<String>, FsError> {
    // Data written through another path must be on the device before it is probed.
    if let Ok(file) = File::open(device) {
        let _ = file.sync_all();
    }
    let args: [&OsStr; 7] = [
        "-p".as_ref(),
        "-u".as_ref(),
        "filesystem".as_ref(),
        "-o".as_ref(),
        "export".as_ref(),
        "--".as_ref(),
        device.as_os_str(),
    ];
    let output = run("blkid", &args).await?;
    match output.status.code() {
        Some(0) => Ok(parse_blkid_export(&String::from_utf8_lossy(&output.stdout))),
        // blkid(8): exit status 2 means nothing was found.
        Some(2) => Ok(None),
        _ => Err(tool_error("blkid", &args, &output)),
    }
}

/// Erases every signature on `device` (stray partition tables, RAID or other leftovers) that
/// could make mkfs or the kernel misread it. Only ever called when [`filesystem_on`] found no
/// filesystem.
pub async fn wipe_signatures(device: &Path) -> Result<(), FsError> {
    run_ok(
        "wipefs",
        &["-a".as_ref(), "--".as_ref(), device.as_os_str()],
    )
    .await?;
    Ok(())
}

/// The arguments of `mkfs.<fs_type>` for `device`: `-F -m0` for ext (no root reserve, as
/// mount-utils), `-f` for xfs, none for btrfs.
pub fn mkfs_args(fs_type: &str) -> &'static [&'static str] {
    match fs_type {
        "ext2" | "ext3" | "ext4" => &["-F", "-m0"],
        "xfs" => &["-f"],
        _ => &[],
    }
}

/// Makes a `fs_type` filesystem on `device`.
pub async fn make_filesystem(fs_type: &str, device: &Path) -> Result<(), FsError> {
    let program = format!("mkfs.{fs_type}");
    let mut args: Vec<&OsStr> = mkfs_args(fs_type).iter().map(OsStr::new).collect();
    args.push(device.as_os_str());
    info!(device = %device.display(), fs_type, "making a filesystem");
    run_ok(&program, &args).await?;
    Ok(())
}

/// `mount -t fs_type -o options device target`.
pub async fn mount(
    device: &Path,
    target: &Path,
    fs_type: &str,
    options: &[String],
) -> Result<(), FsError> {
    let joined = options.join(",");
    let mut args: Vec<&OsStr> = vec!["-t".as_ref(), fs_type.as_ref()];
    if !joined.is_empty() {
        args.push("-o".as_ref());
        args.push(joined.as_ref());
    }
    args.extend([device.as_os_str(), target.as_os_str()]);
    run_ok("mount", &args).await?;
    Ok(())
}

/// Bind-mounts `device` (a device node) onto the file `target`, read-only if asked
/// (mount(8) remounts a bind mount read-only by itself).
pub async fn bind_mount(device: &Path, target: &Path, read_only: bool) -> Result<(), FsError> {
    let options = if read_only { "bind,ro" } else { "bind" };
    run_ok(
        "mount",
        &[
            "-o".as_ref(),
            options.as_ref(),
            device.as_os_str(),
            target.as_os_str(),
        ],
    )
    .await?;
    Ok(())
}

/// Unmounts everything mounted at `target` (stacked mounts included), top first.
pub async fn unmount_all(target: &Path) -> Result<usize, FsError> {
    const LIMIT: usize = 64;
    for count in 0..=LIMIT {
        if mounts_at(target)?.is_empty() {
            return Ok(count);
        }
        if count == LIMIT {
            break;
        }
        run_ok("umount", &[target.as_os_str()]).await?;
    }
    Err(FsError::StillMounted {
        path: target.to_owned(),
        count: LIMIT,
    })
}

/// Grows the filesystem mounted at `mount_point` from `device` to the device's size, online.
/// ext grows through the device; xfs and btrfs through the mount point.
pub async fn grow_filesystem(
    fs_type: &str,
    device: &Path,
    mount_point: &Path,
) -> Result<(), FsError> {
    match fs_type {
        "ext2" | "ext3" | "ext4" => {
            run_ok("resize2fs", &[device.as_os_str()]).await?;
        }
        "xfs" => {
            run_ok("xfs_growfs", &["-d".as_ref(), mount_point.as_os_str()]).await?;
        }
        "btrfs" => {
            run_ok(
                "btrfs",
                &[
                    "filesystem".as_ref(),
                    "resize".as_ref(),
                    "max".as_ref(),
                    mount_point.as_os_str(),
                ],
            )
            .await?;
        }
        other => {
            debug!(fs_type = other, "no online grow for this filesystem");
        }
    }
    Ok(())
}

/// Makes `dir` and its parents; the new directories get mode 0755.
pub fn make_dir(dir: &Path) -> Result<(), FsError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(io_error(dir))
}

/// Creates the file `path` if it is missing, never truncating an existing one.
pub fn make_file(path: &Path) -> Result<(), FsError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(path)
        .map(drop)
        .map_err(io_error(path))
}

/// Sets `path`'s mode to `mode`.
pub fn chmod(path: &Path, mode: u32) -> Result<(), FsError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_error(path))
}

/// Removes the directory or file `path` if it is empty; missing is fine.
pub fn remove_target(path: &Path) -> Result<(), FsError> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(path)(e)),
        _ => Ok(()),
    }
}

/// What is at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Missing,
    Directory,
    /// A block device node (also a file a device node is bind-mounted on), with its numbers.
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Other,
}

/// What `path` is, following symlinks.
pub fn path_kind(path: &Path) -> Result<PathKind, FsError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(PathKind::Directory),
        Ok(meta) if meta.file_type().is_block_device() => {
            let rdev = meta.rdev();
            Ok(PathKind::BlockDevice {
                major: nix::sys::stat::major(rdev) as u32,
                minor: nix::sys::stat::minor(rdev) as u32,
            })
        }
        Ok(_) => Ok(PathKind::Other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PathKind::Missing),
        Err(e) => Err(io_error(path)(e)),
    }
}

/// The device numbers of the device node `path`, if it is one.
pub fn device_numbers(path: &Path) -> Option<(u32, u32)> {
    match path_kind(path) {
        Ok(PathKind::BlockDevice { major, minor }) => Some((major, minor)),
        _ => None,
    }
}

/// Whether `entry` is a mount of the block device `(major, minor)`: its st_dev says so (ext4,
/// xfs), or, for filesystems with anonymous device numbers such as btrfs, its source is that
/// device node.
pub fn is_mount_of(entry: &MountEntry, major: u32, minor: u32) -> bool {
    (entry.major, entry.minor) == (major, minor)
        || device_numbers(Path::new(&entry.source)) == Some((major, minor))
}

/// The size in bytes of the block device (or bind-mounted device node) `path`.
pub fn block_device_size(path: &Path) -> Result<u64, FsError> {
    let mut file = File::open(path).map_err(io_error(path))?;
    file.seek(SeekFrom::End(0)).map_err(io_error(path))
}

/// Byte and inode figures of the filesystem holding `path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    pub bytes_total: u64,
    pub bytes_used: u64,
    pub bytes_available: u64,
    pub inodes_total: u64,
    pub inodes_used: u64,
    pub inodes_free: u64,
}

/// statvfs(2) of `path`, in TopoLVM's figures: used = total - free, available = what
/// unprivileged users may still use.
pub fn filesystem_usage(path: &Path) -> Result<FsUsage, FsError> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| FsError::Io {
        path: path.to_owned(),
        source: e.into(),
    })?;
    let frsize = st.fragment_size();
    let blocks = st.blocks();
    Ok(FsUsage {
        bytes_total: blocks.saturating_mul(frsize),
        bytes_used: blocks
            .saturating_sub(st.blocks_free())
            .saturating_mul(frsize),
        bytes_available: st.blocks_available().saturating_mul(frsize),
        inodes_total: st.files(),
        inodes_used: st.files().saturating_sub(st.files_free()),
        inodes_free: st.files_free(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as Linux 6.1 printed them (proc(5) format), including a path with a space, which
    /// the kernel writes as `\040`, and a bind mount of a device node from devtmpfs.
    const MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime shared:1 - overlay overlay rw,lowerdir=/run/lower,upperdir=/run/upper/u,workdir=/run/upper/w
24 22 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs devtmpfs rw,size=1010020k,nr_inodes=252505,mode=755
301 22 254:3 / /var/lib/kubelet/pods/7d1e/volumes/kubernetes.io~csi/pv\\040one/mount rw,relatime shared:160 - ext4 /dev/mapper/vg-lv1 rw
302 22 254:4 / /var/lib/kubelet/pods/7d1e/volumes/kubernetes.io~csi/pv2/mount ro,relatime shared:161 - xfs /dev/mapper/vg-lv2 ro,attr2,inode64,logbufs=8,logbsize=32k,nouuid,noquota
303 22 0:5 /dm-5 /var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/publish/pv3/7d1e rw,nosuid,relatime shared:2 - devtmpfs devtmpfs rw,size=1010020k,nr_inodes=252505,mode=755
304 22 0:52 / /mnt/b rw,relatime shared:170 - btrfs /dev/mapper/vg-lv4 rw,space_cache=v2,subvolid=5,subvol=/
";

    #[test]
    fn mountinfo_lines_as_the_kernel_prints_them() {
        let entries = parse_mountinfo(MOUNTINFO).expect("parses");
        assert_eq!(entries.len(), 6);
        let ext4 = &entries[2];
        assert_eq!((ext4.major, ext4.minor), (254, 3));
        assert_eq!(
            ext4.mount_point,
            Path::new("/var/lib/kubelet/pods/7d1e/volumes/kubernetes.io~csi/pv one/mount")
        );
        assert_eq!(ext4.fs_type, "ext4");
        assert_eq!(ext4.source, "/dev/mapper/vg-lv1");
        assert!(!ext4.read_only());
        assert!(entries[3].read_only());
        let block = &entries[4];
        assert_eq!(block.root, Path::new("/dm-5"));
        assert_eq!(block.fs_type, "devtmpfs");
        assert_eq!((entries[5].major, entries[5].minor), (0, 52));
    }

    #[test]
    fn mountinfo_optional_fields_may_be_absent_or_many() {
        let none = "40 22 254:1 / /a rw - ext4 /dev/vda rw\n";
        let many = "41 22 254:1 / /b rw shared:3 master:2 propagate_from:1 - ext4 /dev/vda rw\n";
        assert_eq!(
            parse_mountinfo(none).expect("none")[0].mount_point,
            Path::new("/a")
        );
        assert_eq!(
            parse_mountinfo(many).expect("many")[0].mount_point,
            Path::new("/b")
        );
    }

    #[test]
    fn mountinfo_escapes_for_tab_newline_and_backslash() {
        let line = "40 22 254:1 / /a\\011b\\012c\\134d rw - ext4 /dev/vda rw\n";
        let entry = &parse_mountinfo(line).expect("parses")[0];
        assert_eq!(entry.mount_point, Path::new("/a\tb\nc\\d"));
    }

    #[test]
    fn malformed_mountinfo_is_an_error_not_a_guess() {
        for bad in [
            "40 22 254:1 / /a rw ext4 /dev/vda rw",
            "40 22 2541 / /a rw - ext4 /dev/vda rw",
            "40 22 254:x / /a rw - ext4 /dev/vda rw",
            "40 22 254:1 / /a\\04 rw - ext4 /dev/vda rw",
            "40 22 254:1 / /a\\999 rw - ext4 /dev/vda rw",
            "40 22 254:1 / rw - ext4",
        ] {
            assert!(parse_mountinfo(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn blkid_export_output() {
        // `blkid -p -u filesystem -o export /dev/vdb` of util-linux 2.38 on a fresh ext4.
        let ext4 = "DEVNAME=/dev/vdb\nUUID=4c2b4b1e-4f0e-4bd1-9b0e-4b8c3a5a0f12\nVERSION=1.0\n\
                    BLOCK_SIZE=4096\nTYPE=ext4\nUSAGE=filesystem\n";
        assert_eq!(parse_blkid_export(ext4).as_deref(), Some("ext4"));
        let xfs = "DEVNAME=/dev/vdc\nUUID=0b9f\nBLOCK_SIZE=512\nTYPE=xfs\nUSAGE=filesystem\n";
        assert_eq!(parse_blkid_export(xfs).as_deref(), Some("xfs"));
        // SEC_TYPE comes before TYPE for ext2-compatible filesystems; it is not the type.
        let ext3 = "DEVNAME=/dev/vdd\nSEC_TYPE=ext2\nTYPE=ext3\nUSAGE=filesystem\n";
        assert_eq!(parse_blkid_export(ext3).as_deref(), Some("ext3"));
        // A partition table alone: no TYPE line.
        let pt = "DEVNAME=/dev/vde\nPTUUID=1234abcd\nPTTYPE=dos\n";
        assert_eq!(parse_blkid_export(pt), None);
        assert_eq!(parse_blkid_export(""), None);
    }

    #[test]
    fn mkfs_arguments_as_mount_utils() {
        assert_eq!(mkfs_args("ext4"), ["-F", "-m0"]);
        assert_eq!(mkfs_args("ext3"), ["-F", "-m0"]);
        assert_eq!(mkfs_args("xfs"), ["-f"]);
        assert!(mkfs_args("btrfs").is_empty());
    }
}
