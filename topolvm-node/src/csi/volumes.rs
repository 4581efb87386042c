//! What the Node RPCs do to volumes, below the gRPC layer: publish, unpublish, stats and
//! expansion on checked requests ([`super::validate`]), with lvmd for finding and making volumes
//! and [`super::mount`] for the operating system.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::locate::{Located, locate};
use super::mount::{self, MountEntry, PathKind};
use super::validate::{Access, Expand, Publish, Stats, Unpublish, mount_options};
use super::{Error, ephemeral};
use crate::lvmd_client::{LatestReport, LvmdConnection};
use crate::volume_condition::{VolumeCondition, volume_condition};

/// The mode of a freshly mounted filesystem's root, as TopoLVM sets it: everyone may write, and
/// new files inherit the group (setgid), so pods running as any user can use the volume.
const FRESH_MOUNT_MODE: u32 = 0o2777;

/// The node's volumes: lvmd and the latest report of its device classes.
#[derive(Debug, Clone)]
pub struct Volumes {
    pub lvmd: LvmdConnection,
    pub report: LatestReport,
}

/// What NodeGetVolumeStats reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Usage {
    Filesystem(mount::FsUsage),
    Block { size: u64 },
}

fn device_of(located: &Located) -> Result<(u32, u32), Error> {
    let (major, minor) = (located.volume.dev_major, located.volume.dev_minor);
    if major == 0 && minor == 0 {
        // lvmd reports 0:0 for an inactive volume: it has no device to mount.
        return Err(Error::VolumeInactive(located.volume.name.clone()));
    }
    Ok((major, minor))
}

/// The mount a process sees at `path`.
fn top_mount(path: &Path) -> Result<Option<MountEntry>, Error> {
    Ok(mount::mounts_at(path)?.pop())
}

impl Volumes {
    /// Finds `volume_id`, or makes it first when the publish is of an inline ephemeral volume.
    async fn volume_for_publish(&self, request: &Publish) -> Result<Located, Error> {
        let spec = ephemeral::spec(&request.volume_id, &request.volume_context)?;
        match (
            locate(&self.lvmd, &self.report, &request.volume_id).await,
            spec,
        ) {
            (Ok(found), Some(_)) if !ephemeral::is_ephemeral(&found) => {
                Err(Error::NotEphemeral(request.volume_id.clone()))
            }
            (Ok(found), _) => Ok(found),
            (Err(Error::VolumeNotFound(_)), Some(spec)) => {
                ephemeral::create(&self.lvmd, &request.volume_id, &spec).await
            }
            (Err(e), _) => Err(e),
        }
    }

    pub async fn publish(&self, request: &Publish) -> Result<(), Error> {
        let located = self.volume_for_publish(request).await?;
        let device = device_of(&located)?;
        match &request.access {
            Access::Block => self.publish_block(request, &located, device).await,
            Access::Mount {
                filesystem,
                mount_flags,
            } => {
                let options = mount_options(request.read_only, mount_flags, *filesystem)?;
                self.publish_filesystem(request, &located, device, filesystem.name(), &options)
                    .await
            }
        }
    }

    async fn publish_filesystem(
        &self,
        request: &Publish,
        located: &Located,
        (major, minor): (u32, u32),
        fs_type: &str,
        options: &[String],
    ) -> Result<(), Error> {
        let target = &request.target;
        let lv_path = located.path();
        if let Some(existing) = top_mount(target)? {
            if !mount::is_mount_of(&existing, major, minor) {
                return Err(Error::TargetBusy {
                    target: target.clone(),
                    what: format!("a mount of {}", existing.source),
                });
            }
            if existing.read_only() != request.read_only {
                return Err(Error::TargetBusy {
                    target: target.clone(),
                    what: format!(
                        "this volume mounted {}",
                        if existing.read_only() {
                            "read-only"
                        } else {
                            "read-write"
                        }
                    ),
                });
            }
            info!(volume_id = %request.volume_id, target = %target.display(), "already published");
            if !request.read_only {
                let device = PathBuf::from(&existing.source);
                mount::grow_filesystem(&existing.fs_type, &device, target).await?;
            }
            return Ok(());
        }
        mount::make_dir(target)?;
        match mount::filesystem_on(lv_path).await? {
            Some(found) if found != fs_type => {
                return Err(Error::OtherFilesystem {
                    device: lv_path.to_owned(),
                    found,
                    wanted: fs_type.to_owned(),
                });
            }
            Some(_) => {}
            None if request.read_only => {
                return Err(Error::UnformattedReadOnly(lv_path.to_owned()));
            }
            None => {
                // Only a device without any filesystem is wiped: leftover partition tables or
                // RAID signatures would make mkfs refuse or the kernel misread the device.
                mount::wipe_signatures(lv_path).await?;
                mount::make_filesystem(fs_type, lv_path).await?;
            }
        }
        mount::mount(lv_path, target, fs_type, options).await?;
        if !request.read_only {
            // A read-only mount keeps the mode its first read-write publish set.
            mount::chmod(target, FRESH_MOUNT_MODE)?;
        }
        info!(volume_id = %request.volume_id, target = %target.display(), fs_type, "published");
        if !request.read_only {
            mount::grow_filesystem(fs_type, lv_path, target).await?;
        }
        Ok(())
    }

    async fn publish_block(
        &self,
        request: &Publish,
        located: &Located,
        (major, minor): (u32, u32),
    ) -> Result<(), Error> {
        let target = &request.target;
        if let Some(existing) = top_mount(target)? {
            // A bind mount of a device node shows devtmpfs in the mount table; the file at the
            // target then is the device node, whose numbers say which device it is.
            if mount::path_kind(target)? != (PathKind::BlockDevice { major, minor }) {
                return Err(Error::TargetBusy {
                    target: target.clone(),
                    what: format!("a mount of {}", existing.source),
                });
            }
            if existing.read_only() != request.read_only {
                return Err(Error::TargetBusy {
                    target: target.clone(),
                    what: "this volume with another read-only setting".to_owned(),
                });
            }
            // TopoLVM binds again here and stacks mounts (issue #1225).
            info!(volume_id = %request.volume_id, target = %target.display(), "already published");
            return Ok(());
        }
        if let Some(parent) = target.parent() {
            mount::make_dir(parent)?;
        }
        if mount::path_kind(target)? == PathKind::Directory {
            return Err(Error::TargetBusy {
                target: target.clone(),
                what: "a directory (a block volume is published on a file)".to_owned(),
            });
        }
        mount::make_file(target)?;
        mount::bind_mount(located.path(), target, request.read_only).await?;
        info!(volume_id = %request.volume_id, target = %target.display(), "published block");
        Ok(())
    }

    pub async fn unpublish(&self, request: &Unpublish) -> Result<(), Error> {
        let target = &request.target;
        if mount::path_kind(target)? != PathKind::Missing || !mount::mounts_at(target)?.is_empty() {
            let count = mount::unmount_all(target).await?;
            mount::remove_target(target)?;
            info!(volume_id = %request.volume_id, target = %target.display(), unmounted = count, "unpublished");
        }
        if ephemeral::is_ephemeral_volume_id(&request.volume_id) {
            // Also when the target is already gone: a retry after the unmount succeeded but
            // RemoveLV failed must still remove the LV.
            match locate(&self.lvmd, &self.report, &request.volume_id).await {
                Ok(found) if ephemeral::is_ephemeral(&found) => {
                    ephemeral::remove(&self.lvmd, &found).await?;
                }
                Ok(_) => warn!(volume_id = %request.volume_id, "not an ephemeral volume; kept"),
                Err(Error::VolumeNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub async fn stats(&self, request: &Stats) -> Result<(Usage, VolumeCondition), Error> {
        let not_here = || Error::NotAtPath {
            volume_id: request.volume_id.clone(),
            path: request.path.clone(),
        };
        let kind = mount::path_kind(&request.path)?;
        if kind == PathKind::Missing {
            return Err(not_here());
        }
        let located = locate(&self.lvmd, &self.report, &request.volume_id).await?;
        let (major, minor) = device_of(&located)?;
        let usage = match kind {
            PathKind::BlockDevice { major: a, minor: b } if (a, b) == (major, minor) => {
                Usage::Block {
                    size: mount::block_device_size(&request.path)?,
                }
            }
            PathKind::Directory => {
                let path = request
                    .path
                    .canonicalize()
                    .map_err(|source| mount::FsError::Io {
                        path: request.path.clone(),
                        source,
                    })?;
                match top_mount(&path)? {
                    Some(entry) if mount::is_mount_of(&entry, major, minor) => {
                        Usage::Filesystem(mount::filesystem_usage(&path)?)
                    }
                    _ => return Err(not_here()),
                }
            }
            _ => return Err(not_here()),
        };
        let condition = volume_condition(&located.volume.attr)?;
        Ok((usage, condition))
    }

    /// Grows the filesystem of `volume_id` mounted at the request's path (which must lie under
    /// `kubelet_dir`; the volume is looked up first, [`Expand`] says why) to its LV's size;
    /// returns the LV's size.
    pub async fn expand(&self, request: &Expand, kubelet_dir: &Path) -> Result<u64, Error> {
        let located = locate(&self.lvmd, &self.report, &request.volume_id).await?;
        let path = request.path_under(kubelet_dir)?;
        let (major, minor) = device_of(&located)?;
        let kind = mount::path_kind(&path)?;
        let block = request
            .block
            .unwrap_or(matches!(kind, PathKind::BlockDevice { .. }));
        if block {
            // A block volume is as large as its LV as soon as lvmd resized it.
            return Ok(located.size());
        }
        let not_here = || Error::NotAtPath {
            volume_id: request.volume_id.clone(),
            path: path.clone(),
        };
        if kind != PathKind::Directory {
            return Err(not_here());
        }
        // Grow what is actually mounted there, whatever its device node is called (TopoLVM
        // issues #143, #273, #955 resized another path than the mounted one).
        let entry = top_mount(&path)?.ok_or_else(not_here)?;
        if !mount::is_mount_of(&entry, major, minor) {
            return Err(not_here());
        }
        let device = PathBuf::from(&entry.source);
        if entry.read_only() {
            return Err(Error::ReadOnlyExpand(path.clone()));
        }
        mount::grow_filesystem(&entry.fs_type, &device, &path).await?;
        info!(volume_id = %request.volume_id, path = %path.display(), size = located.size(), "filesystem grown");
        Ok(located.size())
    }
}
