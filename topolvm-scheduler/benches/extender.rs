//! Throughput and latency of both verbs through the router, in-process, for node lists shaped
//! like kube-scheduler's (full Node objects: labels, annotations, managedFields, status with
//! conditions, addresses, images), next to the floor: serde_json merely skipping the same body
//! (`from_slice::<IgnoredAny>`).
//!
//! Run: `cargo bench -p topolvm-scheduler --bench extender` (optionally `-- 100 1000` to pick
//! node counts). A benchmark, not a test: it prints a table and checks nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;
use topolvm_scheduler::config::Config;
use topolvm_scheduler::metrics::Metrics;
use topolvm_scheduler::wire::parse_extender_args;
use tower::ServiceExt;

const GIB: u64 = 1 << 30;

fn node(i: usize) -> serde_json::Value {
    let name = format!("worker-{i:05}.cluster.example.com");
    // Most nodes fit; every seventh is short of space, every thirteenth has no annotation.
    let ssd = if i.is_multiple_of(7) {
        2 * GIB
    } else {
        (50 + (i as u64 % 900)) * GIB
    };
    let mut annotations = json!({
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
    });
    if !i.is_multiple_of(13) {
        annotations["capacity.topolvm.io/00default"] = ssd.to_string().into();
        annotations["capacity.topolvm.io/ssd"] = ssd.to_string().into();
        annotations["capacity.topolvm.io/hdd"] = (4 * ssd).to_string().into();
    }
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({"type": kind, "status": status, "lastHeartbeatTime": "2025-01-10T08:21:33Z",
               "lastTransitionTime": "2025-01-02T11:04:09Z", "reason": reason, "message": message})
    };
    let images: Vec<serde_json::Value> = (0..12)
        .map(|k| {
            json!({"names": [
                format!("registry.example.com/team-{k}/service-{k}@sha256:{:064x}", i * 31 + k),
                format!("registry.example.com/team-{k}/service-{k}:v1.{k}.{i}")
            ], "sizeBytes": 10_000_000 + k * 1_234_567})
        })
        .collect();
    json!({
        "metadata": {
            "name": name,
            "uid": format!("6f1c{i:04x}-1d2e-4f3a-8b4c-5d6e7f8a9b0c"),
            "resourceVersion": format!("{}", 1_000_000 + i),
            "creationTimestamp": "2025-01-02T11:03:51Z",
            "labels": {
                "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux", "node.kubernetes.io/instance-type": "m6i.2xlarge",
                "topology.kubernetes.io/region": "eu-west-1", "topology.kubernetes.io/zone": format!("eu-west-1{}", ["a", "b", "c"][i % 3]),
                "topology.topolvm.io/node": name
            },
            "annotations": annotations,
            "finalizers": ["topolvm.io/node"],
            "managedFields": [
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": "2025-01-02T11:03:51Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:volumes.kubernetes.io/controller-managed-attach-detach": {}},
                              "f:labels": {".": {}, "f:beta.kubernetes.io/arch": {}, "f:beta.kubernetes.io/os": {}, "f:kubernetes.io/arch": {},
                                           "f:kubernetes.io/hostname": {}, "f:kubernetes.io/os": {}}}}},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": "2025-01-10T08:21:33Z", "fieldsType": "FieldsV1", "subresource": "status",
                 "fieldsV1": {"f:status": {"f:conditions": {"k:{\"type\":\"DiskPressure\"}": {"f:lastHeartbeatTime": {}},
                              "k:{\"type\":\"MemoryPressure\"}": {"f:lastHeartbeatTime": {}}, "k:{\"type\":\"Ready\"}": {"f:lastHeartbeatTime": {}}},
                              "f:images": {}}}},
                {"manager": "topolvm-node", "operation": "Update", "apiVersion": "v1", "time": "2025-01-10T08:20:01Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:annotations": {"f:capacity.topolvm.io/00default": {}, "f:capacity.topolvm.io/hdd": {}, "f:capacity.topolvm.io/ssd": {}},
                              "f:finalizers": {".": {}, "v:\"topolvm.io/node\"": {}}}}}
            ]
        },
        "spec": {"podCIDR": format!("10.{}.{}.0/24", i / 256, i % 256), "podCIDRs": [format!("10.{}.{}.0/24", i / 256, i % 256)],
                 "providerID": format!("aws:///eu-west-1a/i-{i:017x}")},
        "status": {
            "capacity": {"cpu": "8", "ephemeral-storage": "104845292Ki", "hugepages-1Gi": "0", "hugepages-2Mi": "0", "memory": "32386256Ki", "pods": "110"},
            "allocatable": {"cpu": "7910m", "ephemeral-storage": "95551679124", "hugepages-1Gi": "0", "hugepages-2Mi": "0", "memory": "31369424Ki", "pods": "110"},
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status")
            ],
            "addresses": [{"type": "InternalIP", "address": format!("10.0.{}.{}", i / 256, i % 256)},
                          {"type": "InternalDNS", "address": format!("ip-10-0-{}-{}.eu-west-1.compute.internal", i / 256, i % 256)},
                          {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"machineID": format!("{:032x}", i), "systemUUID": format!("ec2{i:05x}-0000-4000-8000-000000000000"),
                         "bootID": format!("{:08x}-1111-4222-8333-444455556666", i), "kernelVersion": "6.1.0-28-cloud-amd64",
                         "osImage": "Debian GNU/Linux 12 (bookworm)", "containerRuntimeVersion": "containerd://1.7.24",
                         "kubeletVersion": "v1.33.1", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
            "images": images
        }
    })
}

fn body(nodes: usize) -> Vec<u8> {
    let pod = json!({
        "metadata": {"name": "db-0", "namespace": "default", "uid": "3f1c2b7a-9d4e-4f5a-8b6c-7d8e9f0a1b2c",
                     "annotations": {"capacity.topolvm.io/ssd": (5 * GIB).to_string(), "capacity.topolvm.io/00default": GIB.to_string()}},
        "spec": {"containers": [{"name": "postgres", "image": "postgres:16",
                 "resources": {"limits": {"topolvm.io/capacity": "1"}, "requests": {"topolvm.io/capacity": "1"}}}]},
        "status": {"phase": "Pending"}
    });
    // Written the way Go's encoder lays ExtenderArgs out: untagged names, compact.
    let items: Vec<String> = (0..nodes).map(|i| node(i).to_string()).collect();
    format!(
        r#"{{"Pod":{pod},"Nodes":{{"metadata":{{}},"items":[{}]}},"NodeNames":null}}"#,
        items.join(",")
    )
    .into_bytes()
}

struct Stats {
    p50: Duration,
    p99: Duration,
    per_second: f64,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    let total: Duration = samples.iter().sum();
    Stats {
        p50: at(0.5),
        p99: at(0.99),
        per_second: samples.len() as f64 / total.as_secs_f64(),
    }
}

/// Runs the measured operations in turn, round after round, for about `budget` (at least `min`
/// rounds), so that load from elsewhere on the machine hits all of them alike; returns one
/// sample list per operation.
fn interleaved(budget: Duration, min: usize, ops: &mut [&mut dyn FnMut()]) -> Vec<Vec<Duration>> {
    for op in ops.iter_mut() {
        op(); // warm-up
    }
    let started = Instant::now();
    let mut samples = vec![Vec::new(); ops.len()];
    let mut rounds = 0;
    while rounds < min || started.elapsed() < budget {
        for (op, samples) in ops.iter_mut().zip(&mut samples) {
            let t = Instant::now();
            op();
            samples.push(t.elapsed());
        }
        rounds += 1;
    }
    samples
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn main() {
    let counts: Vec<usize> = {
        let args: Vec<usize> = std::env::args()
            .skip(1)
            .filter_map(|a| a.parse().ok())
            .collect();
        if args.is_empty() {
            vec![100, 1000, 5000]
        } else {
            args
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // 5000 full nodes are larger than the default 10 MiB limit (as with TopoLVM, such clusters
    // need nodeCacheCapable or a higher limit).
    let config = Config {
        max_request_bytes: 1 << 30,
        ..Config::default()
    };
    let state = topolvm_scheduler::state(&config, Arc::new(Metrics::new().expect("metrics")), None);
    let router = topolvm_scheduler::app(state);

    println!(
        "| nodes | body | floor: skip (IgnoredAny) p50 | parse only p50 | predicate p50 / p99 | predicate req/s | prioritize p50 / p99 | prioritize req/s | predicate / floor | prioritize / floor |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &counts {
        let body = bytes::Bytes::from(body(n));
        let budget = Duration::from_secs(8);
        let request = |path: &'static str| {
            Request::post(path)
                .header("content-type", "application/json")
                .header("content-length", body.len())
                .body(Body::from(body.clone()))
                .expect("request")
        };
        let call = |path: &'static str| {
            // The answer's frames are consumed as a socket write would take them, without
            // gathering them into one buffer.
            let answered = runtime.block_on(async {
                let response = router
                    .clone()
                    .oneshot(request(path))
                    .await
                    .expect("infallible");
                assert_eq!(response.status(), StatusCode::OK);
                let mut body = response.into_body();
                let mut bytes = 0;
                while let Some(frame) = body.frame().await {
                    bytes += frame.expect("frame").data_ref().map_or(0, |d| d.len());
                }
                bytes
            });
            std::hint::black_box(answered);
        };
        let samples = interleaved(
            budget,
            20,
            &mut [
                &mut || {
                    let skipped: serde::de::IgnoredAny =
                        serde_json::from_slice(&body).expect("valid JSON");
                    std::hint::black_box(skipped);
                },
                &mut || {
                    let args = parse_extender_args(&body).expect("valid args");
                    std::hint::black_box(&args);
                },
                &mut || call("/predicate"),
                &mut || call("/prioritize"),
            ],
        );
        let mut samples = samples.into_iter().map(stats);
        let (Some(floor), Some(parse), Some(predicate), Some(prioritize)) = (
            samples.next(),
            samples.next(),
            samples.next(),
            samples.next(),
        ) else {
            unreachable!("four operations were measured")
        };
        println!(
            "| {n} | {:.1} MiB | {} ms | {} ms | {} / {} ms | {:.0} | {} / {} ms | {:.0} | {:.2}x | {:.2}x |",
            body.len() as f64 / (1 << 20) as f64,
            ms(floor.p50),
            ms(parse.p50),
            ms(predicate.p50),
            ms(predicate.p99),
            predicate.per_second,
            ms(prioritize.p50),
            ms(prioritize.p99),
            prioritize.per_second,
            predicate.p50.as_secs_f64() / floor.p50.as_secs_f64(),
            prioritize.p50.as_secs_f64() / floor.p50.as_secs_f64(),
        );
    }
}
