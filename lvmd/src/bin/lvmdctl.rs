//! lvmdctl: a small command-line client for lvmd, for operators and the local demo.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use topolvm_proto::lvmd as pb;
use topolvm_proto::lvmd::lv_service_client::LvServiceClient;
use topolvm_proto::lvmd::vg_service_client::VgServiceClient;

#[derive(Debug, Parser)]
#[command(version, about = "Talk to lvmd over its Unix socket")]
struct Args {
    /// lvmd's socket.
    #[arg(long, default_value = topolvm_core::names::DEFAULT_LVMD_SOCKET)]
    socket: PathBuf,
    /// Device class (empty: the default class).
    #[arg(long, short = 'c', default_value = "")]
    device_class: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the bytes new volumes of the class may use.
    Free,
    /// List the volumes of the class.
    List,
    /// Create a volume of SIZE bytes.
    Create { name: String, size_bytes: i64 },
    /// Grow a volume to SIZE bytes.
    Resize { name: String, size_bytes: i64 },
    /// Remove a volume.
    Remove { name: String },
    /// Snapshot SOURCE as NAME ("ro" or "rw"); SIZE 0 means the source's size.
    Snapshot {
        name: String,
        source: String,
        #[arg(long, default_value = "ro")]
        access: String,
        #[arg(long, default_value_t = 0)]
        size_bytes: i64,
    },
    /// Print capacity reports as they arrive (COUNT of them, 0 = until interrupted).
    Watch {
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
}

fn print_volume(lv: &pb::LogicalVolume) {
    println!(
        "{}\t{} bytes\t{}\t{}:{}\t{}",
        lv.name,
        lv.size_bytes,
        lv.attr,
        lv.dev_major,
        lv.dev_minor,
        lv.tags.join(",")
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(status) => eprintln!("lvmdctl: {:?}: {}", status.code(), status.message()),
                None => eprintln!("lvmdctl: {e:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let channel = topolvm_runtime::unix::connect(&args.socket)
        .await
        .with_context(|| format!("connecting to {}", args.socket.display()))?;
    let mut lv = LvServiceClient::new(channel.clone());
    let mut vg = VgServiceClient::new(channel);
    let class = args.device_class;
    match args.command {
        Command::Free => {
            let r = vg
                .get_free_bytes(pb::GetFreeBytesRequest {
                    device_class: class,
                })
                .await?;
            println!("{}", r.into_inner().free_bytes);
        }
        Command::List => {
            let r = vg
                .get_lv_list(pb::GetLvListRequest {
                    device_class: class,
                })
                .await?;
            r.into_inner().volumes.iter().for_each(print_volume);
        }
        Command::Create { name, size_bytes } => {
            let r = lv
                .create_lv(pb::CreateLvRequest {
                    name,
                    device_class: class,
                    size_bytes,
                    ..Default::default()
                })
                .await?;
            if let Some(v) = r.into_inner().volume {
                print_volume(&v);
            }
        }
        Command::Resize { name, size_bytes } => {
            let r = lv
                .resize_lv(pb::ResizeLvRequest {
                    name,
                    device_class: class,
                    size_bytes,
                    ..Default::default()
                })
                .await?;
            println!("{}", r.into_inner().size_bytes);
        }
        Command::Remove { name } => {
            lv.remove_lv(pb::RemoveLvRequest {
                name,
                device_class: class,
            })
            .await?;
        }
        Command::Snapshot {
            name,
            source,
            access,
            size_bytes,
        } => {
            let r = lv
                .create_lv_snapshot(pb::CreateLvSnapshotRequest {
                    name,
                    device_class: class,
                    source_volume: source,
                    access_type: access,
                    size_bytes,
                    ..Default::default()
                })
                .await?;
            if let Some(v) = r.into_inner().snapshot {
                print_volume(&v);
            }
        }
        Command::Watch { count } => {
            let mut stream = vg.watch(pb::Empty {}).await?.into_inner();
            let mut seen = 0;
            while let Some(msg) = stream.message().await? {
                println!("default class free: {} bytes", msg.free_bytes);
                for item in &msg.items {
                    print!(
                        "  {}: free {} of {} bytes",
                        item.device_class, item.free_bytes, item.size_bytes
                    );
                    if let Some(t) = &item.thin_pool {
                        print!(
                            " (thin pool {} bytes, data {:.2}%, metadata {:.2}%, {} bytes may still be promised)",
                            t.size_bytes, t.data_percent, t.metadata_percent, t.overprovision_bytes
                        );
                    }
                    println!();
                }
                seen += 1;
                if count != 0 && seen >= count {
                    break;
                }
            }
        }
    }
    Ok(())
}
