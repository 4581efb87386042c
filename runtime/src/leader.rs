//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's rules (what
//! controller-runtime, and so TopoLVM's controller, uses): a candidate takes the Lease when it
//! does not exist, or when its holder has not renewed it for the lease duration **as observed
//! by this candidate's own clock** (the record's times are never compared with our clock, so
//! clock skew between nodes does not matter); the leader renews it every retry period and gives
//! up leadership when it has not managed to renew it within the renew deadline. Every write
//! carries the resourceVersion it read, so two candidates can never both win.
//!
//! A leader that stops gracefully releases the Lease (empty holder), so another replica takes
//! over at once instead of after the lease duration, as client-go's `ReleaseOnCancel` does.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The timing of an election (controller-runtime's defaults: 15 s, 10 s, 2 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Why leadership was lost or could not be sought.
#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "the renew deadline must be shorter than the lease duration, and the retry period shorter than the renew deadline"
    )]
    BadTiming,
    #[error("leadership of Lease {namespace}/{name} lost: not renewed within {deadline:?}")]
    Lost {
        namespace: String,
        name: String,
        deadline: Duration,
    },
}

/// One candidate for the Lease `name` in `namespace`.
#[derive(Clone)]
pub struct Candidate {
    leases: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    timing: Timing,
}

impl std::fmt::Debug for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Candidate")
            .field("lease", &format_args!("{}/{}", self.namespace, self.name))
            .field("identity", &self.identity)
            .field("timing", &self.timing)
            .finish()
    }
}

/// What one look at the Lease found.
enum Attempt {
    /// We hold it now (acquired or renewed).
    Held,
    /// Someone else holds it.
    Other,
    /// The API server could not be asked or refused the write (a race): try again.
    Failed(String),
}

/// The Lease's record as last seen, and when this candidate saw it change.
struct Observed {
    record: Option<(String, Option<MicroTime>, i32)>,
    at: Instant,
}

impl Candidate {
    /// `identity` must be unique among the candidates (controller-runtime uses the host name
    /// plus a random suffix).
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: Timing,
    ) -> Result<Self, Error> {
        if timing.renew_deadline >= timing.lease_duration
            || timing.retry_period >= timing.renew_deadline
        {
            return Err(Error::BadTiming);
        }
        Ok(Self {
            leases: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
        })
    }

    /// Waits until this candidate holds the Lease, then returns a [`Leadership`] that keeps
    /// renewing it. Returns `None` when `shutdown` is cancelled first.
    pub async fn acquire(self, shutdown: CancellationToken) -> Option<Leadership> {
        let mut observed = Observed {
            record: None,
            at: Instant::now(),
        };
        let mut logged_waiting = false;
        loop {
            match self.try_acquire_or_renew(&mut observed, false).await {
                Attempt::Held => {
                    info!(lease = %self.name, namespace = %self.namespace, identity = %self.identity, "became the leader");
                    let lost = CancellationToken::new();
                    let task = tokio::spawn(self.clone().keep(lost.clone(), shutdown.clone()));
                    return Some(Leadership { lost, task });
                }
                Attempt::Other if !logged_waiting => {
                    info!(lease = %self.name, namespace = %self.namespace, "another replica leads; waiting");
                    logged_waiting = true;
                }
                Attempt::Other => {}
                Attempt::Failed(e) => debug!(error = %e, "leader election attempt failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(self.timing.retry_period) => {}
            }
        }
    }

    /// Renews until `shutdown` (then releases) or until a renewal has not succeeded within the
    /// renew deadline (then cancels `lost`).
    async fn keep(self, lost: CancellationToken, shutdown: CancellationToken) -> Result<(), Error> {
        let mut observed = Observed {
            record: None,
            at: Instant::now(),
        };
        let mut last_renewal = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.release().await;
                    return Ok(());
                }
                _ = tokio::time::sleep(self.timing.retry_period) => {}
            }
            let attempt = tokio::time::timeout(
                self.timing.renew_deadline,
                self.try_acquire_or_renew(&mut observed, true),
            )
            .await;
            match attempt {
                Ok(Attempt::Held) => last_renewal = Instant::now(),
                Ok(Attempt::Other) => {
                    // Someone took it over (we were partitioned longer than the lease).
                    last_renewal = Instant::now() - self.timing.renew_deadline;
                }
                Ok(Attempt::Failed(e)) => warn!(error = %e, "renewing the Lease failed"),
                Err(_) => warn!("renewing the Lease timed out"),
            }
            if last_renewal.elapsed() >= self.timing.renew_deadline {
                warn!(lease = %self.name, namespace = %self.namespace, "leadership lost");
                lost.cancel();
                return Err(Error::Lost {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    deadline: self.timing.renew_deadline,
                });
            }
        }
    }

    fn spec(&self, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    async fn try_acquire_or_renew(&self, observed: &mut Observed, leading: bool) -> Attempt {
        let current = match self.leases.get_opt(&self.name).await {
            Ok(current) => current,
            Err(e) => return Attempt::Failed(e.to_string()),
        };
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(None, 0)),
            };
            return match self.leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Attempt::Held,
                Err(e) => Attempt::Failed(e.to_string()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = (
            holder.clone(),
            spec.renew_time.clone(),
            spec.lease_transitions.unwrap_or(0),
        );
        if observed.record.as_ref() != Some(&record) {
            observed.record = Some(record);
            observed.at = Instant::now();
        }
        let ours = holder == self.identity;
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
            .unwrap_or(self.timing.lease_duration);
        let expired = holder.is_empty() || observed.at.elapsed() >= duration;
        if !ours && !expired {
            return Attempt::Other;
        }
        if !ours && leading {
            return Attempt::Other;
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(if ours {
            self.spec(spec.acquire_time.clone(), transitions)
        } else {
            self.spec(None, transitions + 1)
        });
        // `replace` sends the resourceVersion read above: a concurrent writer makes it fail.
        match self
            .leases
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Attempt::Held,
            Err(e) => Attempt::Failed(e.to_string()),
        }
    }

    /// Gives the Lease up so another candidate need not wait for it to expire.
    async fn release(&self) {
        let Ok(Some(mut lease)) = self.leases.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .leases
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.name, namespace = %self.namespace, "leadership released"),
            Err(e) => warn!(error = %e, "releasing the Lease failed; it expires by itself"),
        }
    }
}

/// Held leadership. `lost()` is cancelled when it is lost; the holder must then stop its
/// leader-only work (controller-runtime exits the process, and so do our binaries).
#[derive(Debug)]
pub struct Leadership {
    lost: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Leadership {
    /// Cancelled when leadership is lost.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Waits for the renewal task: `Ok` after a graceful shutdown released the Lease, the error
    /// when leadership was lost.
    pub async fn finished(self) -> Result<(), Error> {
        match self.task.await {
            Ok(result) => result,
            // The task never panics; a cancelled runtime means we are exiting anyway.
            Err(_) => Ok(()),
        }
    }
}
