//! Notices LVM changes made outside lvmd without running `lvm`.
//!
//! Every LVM metadata commit rewrites the metadata-area header of the volume group's physical
//! volumes: the header at byte 4096 of a PV holds the location, size and checksum of the current
//! metadata copy. Reading those 512 bytes from each PV of the configured volume groups is a few
//! `pread`s, so it can run every second. When any header differs from the last look (or the set
//! of PVs changes), one `lvm fullreport` refreshes the cache and Watch subscribers hear about it.
//!
//! A slow periodic refresh backs this up: it covers devices lvmd cannot open, volume groups that
//! appear after start-up, and thin pools' data usage, which changes with writes but not metadata.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::state::{RefreshReason, Snapshot, StateCache};

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

/// The PV devices of the given volume groups in `snapshot`.
pub fn watched_devices(snapshot: &Snapshot, vgs: &BTreeSet<String>) -> Vec<String> {
    snapshot
        .vgs
        .values()
        .filter(|vg| vgs.contains(&vg.name))
        .flat_map(|vg| vg.pvs.iter().map(|pv| pv.name.clone()))
        .collect()
}

/// Reads the headers of `devices`.
pub fn read_headers(devices: &[String]) -> Headers {
    devices
        .iter()
        .map(|d| (d.clone(), read_mda_header(d).ok()))
        .collect()
}

/// Runs until `shutdown`: polls the headers every `poll` and refreshes the cache when they change
/// or when `full_refresh` has passed since the last refresh.
pub async fn run(
    cache: Arc<StateCache>,
    volume_groups: BTreeSet<String>,
    poll: Duration,
    full_refresh: Duration,
    shutdown: CancellationToken,
) {
    let mut last_full = Instant::now();
    let mut last_refresh_count = cache.refresh_count();
    // Take the baseline now rather than after the first poll: a change made before that poll
    // would otherwise become the baseline and go unnoticed until the periodic refresh.
    let devices = watched_devices(&cache.current(), &volume_groups);
    let mut last_headers: Option<Headers> =
        tokio::task::spawn_blocking(move || read_headers(&devices))
            .await
            .ok();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(poll) => {}
        }
        let devices = watched_devices(&cache.current(), &volume_groups);
        let headers = match tokio::task::spawn_blocking(move || read_headers(&devices)).await {
            Ok(h) => h,
            Err(_) => continue,
        };
        // A refresh by someone else (a mutation) already captured the state after it; take the
        // headers as they are now as the new baseline instead of refreshing again.
        let refreshed_elsewhere = cache.refresh_count() != last_refresh_count;
        let changed = match &last_headers {
            Some(previous) => *previous != headers,
            None => false,
        };
        if changed && !refreshed_elsewhere {
            debug!("metadata header changed; refreshing");
            cache.refresh_or_warn(RefreshReason::OutsideChange).await;
            last_full = Instant::now();
        } else if last_full.elapsed() >= full_refresh {
            cache.refresh_or_warn(RefreshReason::Periodic).await;
            last_full = Instant::now();
        }
        if refreshed_elsewhere {
            last_full = Instant::now();
        }
        last_refresh_count = cache.refresh_count();
        last_headers = Some(headers);
    }
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
        let headers = read_headers(&["/nonexistent/device".to_owned()]);
        assert_eq!(headers["/nonexistent/device"], None);
    }
}
