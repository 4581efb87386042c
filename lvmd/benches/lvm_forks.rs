//! Benchmark (not a test): `lvm` forks per RPC and CreateLV/RemoveLV latency through lvmd,
//! next to bare `lvcreate`/`lvremove` on the same volume group.
//!
//! Runs on real lvm2 on a loop device (metadata-only mode where the kernel has no
//! device-mapper, as on this project's machines). Needs root.
//!
//!     cargo bench -p lvmd --bench lvm_forks [-- ITERATIONS]
//!
//! Results are in lvmd/README.md.

use topolvm_test_kit::lvm as common;

use std::time::{Duration, Instant};

use common::{Disk, LvmEnv, Lvmd, LvmdOptions, VolumeGroup};
use topolvm_proto::lvmd as pb;

const MIB: u64 = 1 << 20;

struct Stats {
    samples: Vec<Duration>,
}

impl Stats {
    fn new() -> Self {
        Self {
            samples: Vec::new(),
        }
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut s = self.samples.clone();
        s.sort();
        let i = ((s.len() as f64 - 1.0) * p).round() as usize;
        s[i]
    }

    fn mean(&self) -> Duration {
        self.samples.iter().sum::<Duration>() / self.samples.len() as u32
    }

    fn row(&self, what: &str, forks: f64) {
        println!(
            "| {what:<28} | {:>7.1} | {:>7.1} | {:>7.1} | {forks:>13.2} |",
            self.mean().as_secs_f64() * 1e3,
            self.percentile(0.5).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
        );
    }
}

#[tokio::main]
async fn main() {
    let iterations: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(50);
    common::require_lvm();
    common::require_loop_devices();

    let env = LvmEnv::metadata_only();
    let vg = VolumeGroup::create(&env, vec![Disk::loop_device(8 << 30)]);
    // Background volumes, so reports have a realistic size.
    for i in 0..100 {
        env.lvm(&[
            "lvcreate",
            "-q",
            "-n",
            &format!("bg{i}"),
            "-L",
            "4m",
            "-y",
            vg.name(),
        ]);
    }
    let lvmd = Lvmd::start(
        &env,
        LvmdOptions::new(
            env!("CARGO_BIN_EXE_lvmd"),
            common::thick_default_class("ssd", vg.name()),
        ),
    );
    let mut lv = lvmd
        .client(pb::lv_service_client::LvServiceClient::new)
        .await;
    let mut vgc = lvmd
        .client(pb::vg_service_client::VgServiceClient::new)
        .await;

    let (mut create, mut remove) = (Stats::new(), Stats::new());
    let forks_before = lvmd.lvm_command_count().await;
    for i in 0..iterations {
        let name = format!("bench{i}");
        let t = Instant::now();
        lv.create_lv(pb::CreateLvRequest {
            name: name.clone(),
            size_bytes: (8 * MIB) as i64,
            ..Default::default()
        })
        .await
        .expect("CreateLV");
        create.samples.push(t.elapsed());
    }
    // Let the confirming reports of the burst run before counting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let forks_mid = lvmd.lvm_command_count().await;
    for i in 0..iterations {
        let t = Instant::now();
        lv.remove_lv(pb::RemoveLvRequest {
            name: format!("bench{i}"),
            device_class: String::new(),
        })
        .await
        .expect("RemoveLV");
        remove.samples.push(t.elapsed());
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let forks_after = lvmd.lvm_command_count().await;

    let mut reads = Stats::new();
    for _ in 0..iterations * 10 {
        let t = Instant::now();
        vgc.get_free_bytes(pb::GetFreeBytesRequest::default())
            .await
            .expect("GetFreeBytes");
        vgc.get_lv_list(pb::GetLvListRequest::default())
            .await
            .expect("GetLVList");
        reads.samples.push(t.elapsed());
    }
    let forks_reads = lvmd.lvm_command_count().await - forks_after;

    let idle_window = Duration::from_secs(20);
    let idle_before = lvmd.lvm_command_count().await;
    tokio::time::sleep(idle_window).await;
    let idle_forks = lvmd.lvm_command_count().await - idle_before;

    let (mut bare_create, mut bare_remove) = (Stats::new(), Stats::new());
    for i in 0..iterations {
        let name = format!("bare{i}");
        let t = Instant::now();
        env.lvm(&[
            "lvcreate",
            "-q",
            "-n",
            &name,
            "-L",
            "8m",
            "-W",
            "y",
            "-y",
            vg.name(),
        ]);
        bare_create.samples.push(t.elapsed());
    }
    for i in 0..iterations {
        let t = Instant::now();
        env.lvm(&["lvremove", "-q", "-y", &format!("{}/bare{i}", vg.name())]);
        bare_remove.samples.push(t.elapsed());
    }

    let n = iterations as f64;
    println!(
        "lvmd benchmark: {iterations} iterations, 100 other volumes in the volume group, lvm2 metadata-only mode on a loop device"
    );
    println!();
    println!("| operation                    | mean ms |  p50 ms |  p99 ms | lvm forks/op |");
    println!("|------------------------------|--------:|--------:|--------:|--------------:|");
    create.row("CreateLV via lvmd", (forks_mid - forks_before) as f64 / n);
    bare_create.row("bare lvcreate", 1.0);
    remove.row("RemoveLV via lvmd", (forks_after - forks_mid) as f64 / n);
    bare_remove.row("bare lvremove", 1.0);
    reads.row("GetFreeBytes + GetLVList", forks_reads as f64 / (n * 10.0));
    let ratio =
        |a: &Stats, b: &Stats| a.percentile(0.5).as_secs_f64() / b.percentile(0.5).as_secs_f64();
    println!();
    println!(
        "p50 through lvmd / p50 bare: CreateLV {:.2}x, RemoveLV {:.2}x (target <= 1.1x)",
        ratio(&create, &bare_create),
        ratio(&remove, &bare_remove)
    );
    println!(
        "idle: {idle_forks} lvm forks in {}s (change detection reads PV headers; full-refresh-interval 60s)",
        idle_window.as_secs()
    );
}
