//! How topolvm-node reaches lvmd: over its Unix socket (a DaemonSet next to the lvmd systemd
//! unit) or in-process (`--embed-lvmd`). Either way the rest of topolvm-node talks to lvmd
//! through the same gRPC clients, so the embedded mode runs exactly the code paths of the
//! external one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use topolvm_proto::lvmd as pb;

/// A cheap-to-clone handle on lvmd. The channel connects on first use and again after lvmd
/// restarts; a call while lvmd is down fails with `Unavailable`.
#[derive(Debug, Clone)]
pub struct LvmdConnection {
    channel: Channel,
    description: Arc<str>,
}

impl LvmdConnection {
    /// lvmd listening on `socket`. Requests carry the authority `localhost`, as gRPC-Go's do.
    pub fn socket(socket: &Path) -> Self {
        let path: PathBuf = socket.to_owned();
        let channel = Endpoint::from_static("http://localhost").connect_with_connector_lazy(
            tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }),
        );
        Self {
            channel,
            description: format!("unix:{}", socket.display()).into(),
        }
    }

    /// An lvmd reached through `channel` (the embedded lvmd's in-process connection).
    pub fn from_channel(channel: Channel, description: &str) -> Self {
        Self {
            channel,
            description: description.into(),
        }
    }

    /// Where lvmd is, for logs.
    pub fn description(&self) -> &str {
        &self.description
    }

    pub fn lv(&self) -> pb::lv_service_client::LvServiceClient<Channel> {
        pb::lv_service_client::LvServiceClient::new(self.channel.clone())
    }

    pub fn vg(&self) -> pb::vg_service_client::VgServiceClient<Channel> {
        pb::vg_service_client::VgServiceClient::new(self.channel.clone())
    }
}

/// The last message of lvmd's Watch stream (`None` before the first), shared by the parts of
/// topolvm-node that need lvmd's device classes or capacity without asking lvmd again: the
/// gauges, and the CSI service looking a volume up in every class.
pub type LatestReport = watch::Receiver<Option<Arc<pb::WatchResponse>>>;

/// The sending side of [`LatestReport`], owned by [`crate::capacity::run`].
pub type ReportSender = watch::Sender<Option<Arc<pb::WatchResponse>>>;

/// A new, empty report channel.
pub fn report_channel() -> (ReportSender, LatestReport) {
    watch::channel(None)
}

/// The device classes of `report`, sorted as lvmd sent them.
pub fn device_classes(report: &pb::WatchResponse) -> Vec<String> {
    report
        .items
        .iter()
        .map(|i| i.device_class.clone())
        .collect()
}
