//! Unit tests of the service logic against a scripted fake `lvm`: what is decided from the cache
//! alone, which command is run, and how failures are classified. Real `lvm` behaviour is proven by
//! the host and VM tiers in `tests/`.

use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::service::ownership::{copy_pending, copy_source};
use crate::state::fake::FakeLvm;

mod capacity;
mod ownership;
mod snapshots;
mod volumes;

const MIB: u64 = 1 << 20;
const EXTENT: u64 = 4 * MIB;

/// Builds fake `fullreport` JSON.
#[derive(Default)]
struct Vg {
    name: &'static str,
    size: u64,
    free: u64,
    lvs: Vec<serde_json::Value>,
    segs: Vec<serde_json::Value>,
}

impl Vg {
    fn new(name: &'static str, size: u64, free: u64) -> Self {
        Self {
            name,
            size,
            free,
            ..Default::default()
        }
    }

    /// A volume carrying lvmd's tags (as versions before the device-class tag made them).
    fn lv(self, name: &str, size: u64, attr: &str, pool: &str, origin: &str) -> Self {
        let tags = format!("topolvm.io/managed,topolvm.io/volume={name}");
        self.tagged_lv(name, size, attr, pool, origin, &tags)
    }

    fn tagged_lv(
        mut self,
        name: &str,
        size: u64,
        attr: &str,
        pool: &str,
        origin: &str,
        tags: &str,
    ) -> Self {
        let uuid = format!("uuid-{name}");
        self.lvs.push(json!({
            "lv_name": name, "lv_uuid": uuid, "lv_full_name": format!("{}/{name}", self.name),
            "lv_size": size.to_string(), "lv_attr": attr, "lv_tags": tags,
            "lv_path": format!("/dev/{}/{name}", self.name),
            "lv_kernel_major": "-1", "lv_kernel_minor": "-1", "pool_lv": pool, "origin": origin,
            "data_percent": if attr.starts_with('t') { "10.00" } else { "" }, "metadata_percent": ""
        }));
        self.segs.push(
            json!({"lv_uuid": uuid, "segtype": "linear", "stripes": "1", "stripe_size": "0"}),
        );
        self
    }

    fn thick(self, name: &str, size: u64) -> Self {
        self.lv(name, size, "-wi-a-----", "", "")
    }

    fn pool(self, name: &str, size: u64, data_percent: &str) -> Self {
        let mut vg = self.tagged_lv(name, size, "twi-aotz--", "", "", "");
        if let Some(last) = vg.lvs.last_mut() {
            last["data_percent"] = json!(data_percent);
        }
        vg
    }

    fn thin(self, name: &str, size: u64, pool: &str) -> Self {
        self.lv(name, size, "Vwi-a-tz--", pool, "")
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "vg": [{"vg_name": self.name, "vg_uuid": format!("uuid-{}", self.name),
                    "vg_size": self.size.to_string(), "vg_free": self.free.to_string(),
                    "vg_extent_size": EXTENT.to_string(), "vg_seqno": "1", "vg_tags": ""}],
            "pv": [{"pv_name": "/dev/loop9", "pv_uuid": "pv"}],
            "lv": self.lvs, "seg": self.segs
        })
    }
}

fn report(vgs: &[&Vg]) -> String {
    json!({"report": vgs.iter().map(|v| v.json()).collect::<Vec<_>>()}).to_string()
}

const CONFIG: &str = r#"
socket-name: /tmp/unused.sock
lvm-command-prefix: [lvm]
device-classes:
  - name: ssd
    volume-group: vg1
    default: true
    spare-gb: 0
  - name: striped
    volume-group: vg1
    spare-gb: 0
    stripe: 2
    stripe-size: 64k
  - name: thin
    volume-group: vg1
    type: thin
    thin-pool:
      name: pool
      overprovision-ratio: 2.0
      data-percent-threshold: 80
  - name: missing
    volume-group: novg
lvcreate-option-classes:
  - name: raid1
    options: ["--type=raid1", "-m", "1"]
"#;

async fn lvmd_with(report_json: &str) -> (Arc<FakeLvm>, Lvmd) {
    let fake = Arc::new(FakeLvm::with_report(report_json));
    let cache = Arc::new(StateCache::new(fake.clone(), Default::default()));
    cache
        .refresh(RefreshReason::Startup)
        .await
        .expect("initial report");
    let config = Arc::new(Config::parse(CONFIG).expect("config"));
    let lvmd = Lvmd::new(config, cache, fake.clone());
    (fake, lvmd)
}

fn base() -> Vg {
    Vg::new("vg1", 1024 * MIB, 512 * MIB)
        .thick("existing", 100 * MIB)
        .pool("pool", 256 * MIB, "10.00")
        .thin("thin1", 300 * MIB, "pool")
}

/// A 256 MiB thin pool with one 100 MiB thin volume, `thin1`.
fn thin_pool_with_one_volume() -> Vg {
    Vg::new("vg1", 1024 * MIB, 512 * MIB)
        .pool("pool", 256 * MIB, "10.00")
        .thin("thin1", 100 * MIB, "pool")
}

fn create(name: &str, class: &str, size: u64) -> CreateLv {
    CreateLv {
        name: name.into(),
        device_class: class.into(),
        size_bytes: size as i64,
        ..Default::default()
    }
}

/// Waits (bounded) until the fake has run `n` state reports in all.
async fn reports_run(fake: &FakeLvm, n: usize) {
    for _ in 0..200 {
        let reports = fake.calls().iter().filter(|c| c[0] == "fullreport").count();
        if reports >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("the confirming report never ran: {:?}", fake.calls());
}

/// LVM's own message when `lvcreate` finds the name taken (captured from real lvm2).
const LVCREATE_EXISTS: &str = include_str!("../../../tests/fixtures/lvcreate-exists.stderr");
