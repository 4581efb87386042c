//! Turns CSI Node requests into checked, typed requests before anything touches a device.
//!
//! Codes follow the CSI spec (v1.12.0, "Error Scheme"): a missing or invalid field is
//! `INVALID_ARGUMENT`; an access mode the volume cannot do is `FAILED_PRECONDITION`
//! ("Exceeds capabilities", as TopoLVM answers). Target paths must lie under the kubelet
//! directory, the only place kubelet ever publishes to, so a confused or hostile caller cannot
//! make the node mount over or remove anything else.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use topolvm_core::size::Filesystem;
use topolvm_proto::csi;
use topolvm_proto::csi::volume_capability::{AccessType, access_mode::Mode};

use super::Error;

/// How a volume is presented to the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// A raw block device at a file.
    Block,
    /// A mounted filesystem.
    Mount {
        filesystem: Filesystem,
        mount_flags: Vec<String>,
    },
}

/// A checked NodePublishVolume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub volume_id: String,
    pub target: PathBuf,
    pub access: Access,
    pub read_only: bool,
    pub volume_context: HashMap<String, String>,
}

/// A checked NodeUnpublishVolume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpublish {
    pub volume_id: String,
    pub target: PathBuf,
}

/// A checked NodeGetVolumeStats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub volume_id: String,
    pub path: PathBuf,
}

/// A checked NodeExpandVolume. `volume_path` is only known to be present: it is confined to
/// the kubelet directory ([`Expand::path_under`]) after the volume is found, because the CSI
/// spec's "Volume does not exist" (NOT_FOUND) comes before a bad path in csi-sanity's
/// NodeExpandVolume "should fail when volume is not found" (csi-test v5.4 `pkg/sanity/node.go`,
/// an unknown id at the relative path `some/path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expand {
    pub volume_id: String,
    pub volume_path: String,
    /// `Some(true)` when the capability says block, `Some(false)` for mount, `None` when the
    /// CO sent none (allowed by the spec; then the path tells).
    pub block: Option<bool>,
}

fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidArgument(message.into())
}

fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, Error> {
    if value.is_empty() {
        Err(invalid(format!("{field} is required")))
    } else if value.contains('\0') {
        Err(invalid(format!("{field} contains a NUL byte")))
    } else {
        Ok(value)
    }
}

/// `target` made absolute and free of symlinks as far as it exists, refused unless it lies
/// strictly under `kubelet_dir`.
pub fn target_under(kubelet_dir: &Path, target: &str, field: &str) -> Result<PathBuf, Error> {
    let target = Path::new(required(target, field)?);
    if !target.is_absolute() {
        return Err(invalid(format!(
            "{field} {} is not an absolute path",
            target.display()
        )));
    }
    if target
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(invalid(format!(
            "{field} {} contains '..'",
            target.display()
        )));
    }
    let outside = || Error::OutsideKubeletDir {
        path: target.to_owned(),
        kubelet_dir: kubelet_dir.to_owned(),
    };
    let root = resolve(kubelet_dir).map_err(|_| outside())?;
    let resolved = resolve(target).map_err(|_| outside())?;
    match resolved.strip_prefix(&root) {
        Ok(rest) if !rest.as_os_str().is_empty() => Ok(resolved),
        _ => Err(outside()),
    }
}

/// `path` with the symlinks of its longest existing ancestor resolved and the rest appended
/// (the rest holds no `..`, checked by the caller, and no symlinks, since it does not exist).
fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(canonical) => {
                let mut out = canonical;
                out.extend(rest.iter().rev());
                return Ok(out);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let Some(name) = existing.file_name().map(ToOwned::to_owned) else {
                    return Err(e);
                };
                rest.push(name);
                if !existing.pop() {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn access(capability: Option<&csi::VolumeCapability>) -> Result<Access, Error> {
    let capability = capability.ok_or_else(|| invalid("volume_capability is required"))?;
    let mode = capability
        .access_mode
        .as_ref()
        .ok_or_else(|| invalid("volume_capability.access_mode is required"))?;
    let access = match capability.access_type.as_ref() {
        Some(AccessType::Block(_)) => Access::Block,
        Some(AccessType::Mount(mount)) => {
            let filesystem = Filesystem::from_fs_type(&mount.fs_type)
                .map_err(|e| invalid(format!("volume_capability.mount.fs_type: {e}")))?;
            for flag in &mount.mount_flags {
                if flag.is_empty() || flag.chars().any(|c| c.is_whitespace() || c == '\0') {
                    return Err(invalid(format!(
                        "volume_capability.mount.mount_flags: {flag:?} is not a mount option"
                    )));
                }
            }
            if !mount.volume_mount_group.is_empty() {
                return Err(invalid(
                    "volume_capability.mount.volume_mount_group is set, but this plugin does \
                     not announce VOLUME_MOUNT_GROUP",
                ));
            }
            Access::Mount {
                filesystem,
                mount_flags: mount.mount_flags.clone(),
            }
        }
        None => {
            return Err(invalid(
                "volume_capability.access_type must be block or mount",
            ));
        }
    };
    match Mode::try_from(mode.mode) {
        Ok(Mode::SingleNodeWriter) => Ok(access),
        Ok(other) => Err(Error::UnsupportedAccessMode(other.as_str_name().to_owned())),
        Err(_) => Err(Error::UnsupportedAccessMode(format!(
            "unknown ({})",
            mode.mode
        ))),
    }
}

/// Checks a NodePublishVolume.
pub fn publish(
    request: &csi::NodePublishVolumeRequest,
    kubelet_dir: &Path,
) -> Result<Publish, Error> {
    let volume_id = required(&request.volume_id, "volume_id")?.to_owned();
    required(&request.target_path, "target_path")?;
    let access = access(request.volume_capability.as_ref())?;
    let target = target_under(kubelet_dir, &request.target_path, "target_path")?;
    if let Access::Mount { mount_flags, .. } = &access {
        mount_options(request.readonly, mount_flags, Filesystem::Ext4)?;
    }
    Ok(Publish {
        volume_id,
        target,
        access,
        read_only: request.readonly,
        volume_context: request.volume_context.clone(),
    })
}

/// Checks a NodeUnpublishVolume.
pub fn unpublish(
    request: &csi::NodeUnpublishVolumeRequest,
    kubelet_dir: &Path,
) -> Result<Unpublish, Error> {
    let volume_id = required(&request.volume_id, "volume_id")?.to_owned();
    let target = target_under(kubelet_dir, &request.target_path, "target_path")?;
    Ok(Unpublish { volume_id, target })
}

/// Checks a NodeGetVolumeStats. The path is not confined to the kubelet directory: stats only
/// read, and a path elsewhere simply does not hold the volume (`NOT_FOUND`).
pub fn stats(request: &csi::NodeGetVolumeStatsRequest) -> Result<Stats, Error> {
    let volume_id = required(&request.volume_id, "volume_id")?.to_owned();
    let path = PathBuf::from(required(&request.volume_path, "volume_path")?);
    Ok(Stats { volume_id, path })
}

/// Checks a NodeExpandVolume's fields, all but where `volume_path` lies.
pub fn expand(request: &csi::NodeExpandVolumeRequest) -> Result<Expand, Error> {
    let volume_id = required(&request.volume_id, "volume_id")?.to_owned();
    let volume_path = required(&request.volume_path, "volume_path")?.to_owned();
    if let Some(range) = &request.capacity_range {
        if range.required_bytes < 0 || range.limit_bytes < 0 {
            return Err(invalid("capacity_range must not be negative"));
        }
        if range.limit_bytes > 0 && range.required_bytes > range.limit_bytes {
            return Err(invalid(
                "capacity_range.required_bytes exceeds capacity_range.limit_bytes",
            ));
        }
    }
    let block = match &request.volume_capability {
        None => None,
        Some(capability) => Some(access(Some(capability))? == Access::Block),
    };
    Ok(Expand {
        volume_id,
        volume_path,
        block,
    })
}

impl Expand {
    /// `volume_path` made absolute, refused unless it lies under `kubelet_dir`, as a publish's
    /// target is.
    pub fn path_under(&self, kubelet_dir: &Path) -> Result<PathBuf, Error> {
        target_under(kubelet_dir, &self.volume_path, "volume_path")
    }
}

/// The mount options of a filesystem publish, in TopoLVM's order: `ro` when read-only, then the
/// capability's mount flags (a StorageClass's mountOptions), then `nouuid` for xfs so that a
/// snapshot or clone mounts next to its origin (TopoLVM PR #522). `rw` together with a
/// read-only publish is a contradiction (TopoLVM issue #94/#96).
pub fn mount_options(
    read_only: bool,
    mount_flags: &[String],
    filesystem: Filesystem,
) -> Result<Vec<String>, Error> {
    let mut options = Vec::new();
    if read_only {
        if mount_flags.iter().any(|f| f == "rw") {
            return Err(invalid("mount flag \"rw\" contradicts a read-only publish"));
        }
        options.push("ro".to_owned());
    }
    options.extend(mount_flags.iter().cloned());
    if filesystem == Filesystem::Xfs && !options.iter().any(|o| o == "nouuid") {
        options.push("nouuid".to_owned());
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(f: &[&str]) -> Vec<String> {
        f.iter().map(|s| (*s).to_owned()).collect()
    }

    /// TopoLVM's order (`makeMountOptions` in `internal/driver/node.go` @ 110864718b8f): `ro`, the
    /// mount flags, `nouuid` for xfs.
    #[test]
    fn mount_options_in_topolvms_order() {
        assert_eq!(
            mount_options(false, &[], Filesystem::Ext4).expect("ok"),
            Vec::<String>::new()
        );
        assert_eq!(
            mount_options(true, &flags(&["noatime", "discard"]), Filesystem::Ext4).expect("ok"),
            flags(&["ro", "noatime", "discard"])
        );
        assert_eq!(
            mount_options(true, &flags(&["noatime"]), Filesystem::Xfs).expect("ok"),
            flags(&["ro", "noatime", "nouuid"])
        );
        assert_eq!(
            mount_options(false, &flags(&["nouuid"]), Filesystem::Xfs).expect("ok"),
            flags(&["nouuid"])
        );
        assert_eq!(
            mount_options(false, &flags(&["rw"]), Filesystem::Btrfs).expect("ok"),
            flags(&["rw"])
        );
        assert!(matches!(
            mount_options(true, &flags(&["rw"]), Filesystem::Ext4),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn targets_strictly_under_the_kubelet_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kubelet = dir.path().join("kubelet");
        std::fs::create_dir(&kubelet).expect("mkdir");
        let canonical = kubelet.canonicalize().expect("canonical");
        let ok = format!(
            "{}/pods/u/volumes/kubernetes.io~csi/pv/mount",
            kubelet.display()
        );
        assert_eq!(
            target_under(&kubelet, &ok, "target_path").expect("under"),
            canonical.join("pods/u/volumes/kubernetes.io~csi/pv/mount")
        );
        for bad in [
            String::new(),
            "pods/u/mount".to_owned(),
            kubelet.display().to_string(),
            format!("{}/", kubelet.display()),
            format!("{}/pods/../../etc", kubelet.display()),
            format!("{}/..", kubelet.display()),
            format!("{}-other/pods/x", kubelet.display()),
            "/etc/kubernetes".to_owned(),
            "/".to_owned(),
        ] {
            assert!(
                target_under(&kubelet, &bad, "target_path").is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn symlinks_are_followed_before_the_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kubelet = dir.path().join("kubelet");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&kubelet).expect("mkdir");
        std::fs::create_dir(&outside).expect("mkdir");
        // A link inside pointing out: refused.
        std::os::unix::fs::symlink(&outside, kubelet.join("pods")).expect("symlink");
        let through = format!("{}/pods/u/mount", kubelet.display());
        assert!(target_under(&kubelet, &through, "target_path").is_err());
        // A kubelet dir that is itself a symlink (as on some distributions): targets under
        // either spelling are accepted and come back resolved.
        let real = dir.path().join("real-kubelet");
        std::fs::create_dir(&real).expect("mkdir");
        let link = dir.path().join("link-kubelet");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let via_link = format!("{}/pods/u/mount", link.display());
        assert_eq!(
            target_under(&real, &via_link, "target_path").expect("under"),
            real.canonicalize().expect("canonical").join("pods/u/mount")
        );
    }
}
