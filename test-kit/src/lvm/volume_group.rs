//! [`VolumeGroup`]: a uniquely named volume group that removes itself, its physical volumes and
//! then its disks when dropped; and the VM's scratch disks it is made of in the VM tier.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use super::disk::Disk;
use super::env::{LvmEnv, ReportRow};

/// The scratch disks of the test VM (`TOPOLVM_VM_DISKS`, set by `scripts/vm/run.sh`), at least
/// two; panics outside the VM, naming the script that runs the VM tier.
pub fn vm_disks() -> Vec<PathBuf> {
    assert_eq!(
        std::env::var("TOPOLVM_IN_VM").as_deref(),
        Ok("1"),
        "the VM tier runs only inside the test VM: use scripts/test-vm-tier.sh"
    );
    let disks: Vec<PathBuf> = std::env::var("TOPOLVM_VM_DISKS")
        .expect("TOPOLVM_VM_DISKS")
        .split_whitespace()
        .map(PathBuf::from)
        .collect();
    assert!(
        disks.len() >= 2,
        "the VM tier needs two scratch disks, got {disks:?}"
    );
    disks
}

/// A volume group made from [`Disk`]s. Drop removes the volume group, wipes the physical volume
/// labels and then releases the disks (detaching loop devices).
#[derive(Debug)]
pub struct VolumeGroup {
    env: LvmEnv,
    name: String,
    disks: Vec<Disk>,
}

impl VolumeGroup {
    /// A name no other volume group of this or a parallel test process has: `tlvm<pid>x<n>`.
    pub fn unique_name() -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        format!(
            "tlvm{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Creates a uniquely named volume group on `disks`.
    pub fn create(env: &LvmEnv, disks: Vec<Disk>) -> Self {
        Self::create_named(env, &Self::unique_name(), disks)
    }

    /// Creates the volume group `name` on `disks` (`pvcreate` + `vgcreate`).
    pub fn create_named(env: &LvmEnv, name: &str, disks: Vec<Disk>) -> Self {
        assert!(!disks.is_empty(), "a volume group needs at least one disk");
        // Own everything first so a failure below still cleans up.
        let vg = Self {
            env: env.clone(),
            name: name.to_owned(),
            disks,
        };
        let paths: Vec<String> = vg
            .disks
            .iter()
            .map(|d| d.path().to_string_lossy().into_owned())
            .collect();
        for disk in &vg.disks {
            env.allow_device(disk.path());
        }
        let mut args = vec!["pvcreate", "-q", "-y", "-ff"];
        args.extend(paths.iter().map(String::as_str));
        env.lvm(&args);
        let mut args = vec!["vgcreate", "-q", name];
        args.extend(paths.iter().map(String::as_str));
        env.lvm(&args);
        vg
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn disks(&self) -> &[Disk] {
        &self.disks
    }

    /// Adds `disk` to the volume group (`vgextend`, which also labels it).
    pub fn extend(&mut self, disk: Disk) {
        let path = disk.path().to_string_lossy().into_owned();
        self.env.allow_device(disk.path());
        self.disks.push(disk);
        self.env.lvm(&["vgextend", "-q", "-y", &self.name, &path]);
    }

    /// Creates a linear volume with `lvm` itself, behind lvmd's back, as an admin would;
    /// `size` in `lvcreate -L` form (`8m`).
    pub fn create_lv_by_hand(&self, name: &str, size: &str) {
        self.env
            .lvm(&["lvcreate", "-q", "-y", "-n", name, "-L", size, &self.name]);
    }

    /// `vgs` figures of this volume group: `vg_size`, `vg_free`, `vg_extent_size`.
    pub fn sizes(&self) -> ReportRow {
        let rows = self
            .env
            .report("vgs", "vg_size,vg_free,vg_extent_size", &[&self.name]);
        rows.into_iter()
            .next()
            .unwrap_or_else(|| panic!("vgs shows no {}", self.name))
    }
}

impl Drop for VolumeGroup {
    fn drop(&mut self) {
        if let Err(e) = self.env.try_lvm(&["vgremove", "-ff", "-y", &self.name]) {
            // Expected when creation itself failed.
            eprintln!("note: vgremove {}: {e}", self.name);
        }
        for disk in &self.disks {
            let path = disk.path().to_string_lossy().into_owned();
            if let Err(e) = self.env.try_lvm(&["pvremove", "-ff", "-y", &path]) {
                eprintln!("note: pvremove {path}: {e}");
            }
        }
        // The disks drop after this body: loop devices are detached last.
    }
}
