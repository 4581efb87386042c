//! The Helm chart `deploy/charts/topolvm-rs` and the plain manifests rendered from it
//! (`deploy/manifests/`), against Helm's own template engine (installed by
//! `scripts/install-helm.sh`), the test bed's real kube-apiserver and the binaries' own flag and
//! configuration parsers:
//!
//! ```text
//! scripts/install-helm.sh
//! cargo build -p lvmd --bin lvmd -p topolvm-node --bin topolvm-node \
//!     -p topolvm-controller --bin topolvm-controller -p topolvm-scheduler --bin topolvm-scheduler
//! cargo test -p topolvm-e2e --features e2e --test chart
//! ```
//!
//! - The committed plain manifests are exactly what `scripts/render-manifests.sh` renders now,
//!   and the chart's copies of `deploy/monitoring/` are that directory's files.
//! - The chart renders with its default values and each example values file, and passes
//!   `helm lint --strict` against Kubernetes 1.20; values that cannot work are refused with a
//!   message naming the key.
//! - Every rendered object and every plain manifest is accepted by the API server in a
//!   server-side dry run (server-side apply, which refuses fields the schema does not know), and
//!   the object the API server returns still holds every field sent (Kubernetes 1.20 drops
//!   unknown fields of some requests silently; a misspelt key shows up here).
//! - Every flag a container passes to one of our binaries is in that binary's `--help`; the
//!   lvmd.yaml and scheduler configuration the chart renders load with lvmd's and
//!   topolvm-scheduler's own parsers; names the objects use of each other (volumes, ConfigMaps,
//!   ServiceAccounts, roles, the lvmd socket) resolve within the render; every StorageClass waits
//!   for the first consumer; the CSIDriver is what TopoLVM's is.
//! - `node.registrar.builtin` leaves node-driver-registrar out and has topolvm-node register with
//!   kubelet through the host's `plugins_registry`, telling it the host path of the CSI socket,
//!   as the sidecar does by default.
#![cfg(feature = "e2e")]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};
use serde::Deserialize;
use serde_json::{Value, json};
use topolvm_e2e::cluster::{Cluster, ClusterOptions};
use topolvm_e2e::process::workspace_binary;

const NAMESPACE: &str = "topolvm-system";
const FIELD_MANAGER: &str = "topolvm-chart-test";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository")
}

fn chart() -> PathBuf {
    root().join("deploy/charts/topolvm-rs")
}

/// `helm template` of the chart with `values` files and `--set` items, by Helm's engine.
fn render(values: &[PathBuf], set: &[&str]) -> Result<String, String> {
    let mut command = Command::new("python3");
    command
        .arg(root().join("scripts/helm-template.py"))
        .arg(chart())
        .args(["--name", "topolvm-rs", "--namespace", NAMESPACE]);
    for v in values {
        command.arg("-f").arg(v);
    }
    for s in set {
        command.args(["--set", s]);
    }
    let output = command.output().expect("running scripts/helm-template.py");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_ne!(
        output.status.code(),
        Some(2),
        "Helm's engine is missing: run scripts/install-helm.sh\n{stderr}"
    );
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).expect("UTF-8"))
    } else {
        Err(stderr)
    }
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("a YAML document"))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("examples"))
        .expect("the chart's examples")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "the example values files: {files:?}");
    files
}

fn monitoring_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| {
                    e.expect("an entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .filter(|n| n.ends_with(".json") || n.ends_with(".yaml"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Every set of objects to check: the chart with its defaults, with each example (and with the
/// monitoring objects when their files exist), and each committed plain manifest.
fn cases() -> Vec<(String, Vec<Value>)> {
    let mut cases = vec![(
        "defaults".to_owned(),
        documents(&render(&[], &["createNamespace=true"]).expect("rendering the defaults")),
    )];
    for example in examples() {
        let text = render(std::slice::from_ref(&example), &["createNamespace=true"])
            .unwrap_or_else(|e| panic!("rendering {}: {e}", example.display()));
        cases.push((example.display().to_string(), documents(&text)));
    }
    if !monitoring_files(&chart().join("files/monitoring")).is_empty() {
        let text = render(
            &[],
            &[
                "monitoring.grafanaDashboard.enabled=true",
                "monitoring.prometheusRule.enabled=true",
            ],
        )
        .expect("rendering with the monitoring objects");
        cases.push(("monitoring".to_owned(), documents(&text)));
    }
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/manifests"))
        .expect("deploy/manifests")
        .map(|e| e.expect("an entry").path())
        .collect();
    manifests.sort();
    assert!(!manifests.is_empty());
    for path in manifests {
        let text = std::fs::read_to_string(&path).expect("a manifest");
        cases.push((path.display().to_string(), documents(&text)));
    }
    cases
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().expect("a kind")
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().expect("a name")
}

fn find<'a>(docs: &'a [Value], kind_: &str, name_: &str) -> Option<&'a Value> {
    docs.iter().find(|d| kind(d) == kind_ && name(d) == name_)
}

#[test]
fn the_committed_manifests_are_a_fresh_render_of_the_chart() {
    let out = tempfile::tempdir().expect("a temporary directory");
    let status = Command::new(root().join("scripts/render-manifests.sh"))
        .arg("--out")
        .arg(out.path())
        .status()
        .expect("running scripts/render-manifests.sh");
    assert!(status.success());
    let committed = root().join("deploy/manifests");
    let names = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .expect("a directory")
            .map(|e| {
                e.expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    };
    assert_eq!(names(out.path()), names(&committed));
    for file in names(&committed) {
        let fresh = std::fs::read_to_string(out.path().join(&file)).expect("fresh");
        let old = std::fs::read_to_string(committed.join(&file)).expect("committed");
        assert!(
            fresh == old,
            "deploy/manifests/{file} is not the chart's render: run scripts/render-manifests.sh"
        );
    }

    // The chart's copies of deploy/monitoring/.
    let source = root().join("deploy/monitoring");
    let copies = chart().join("files/monitoring");
    assert_eq!(
        monitoring_files(&source),
        monitoring_files(&copies),
        "the chart's files/monitoring/ is not deploy/monitoring/: run scripts/render-manifests.sh"
    );
    for file in monitoring_files(&source) {
        assert_eq!(
            std::fs::read(source.join(&file)).expect("source"),
            std::fs::read(copies.join(&file)).expect("copy"),
            "files/monitoring/{file} differs: run scripts/render-manifests.sh"
        );
    }
}

/// `helm lint --strict` against Kubernetes 1.20 (the test bed's release): the chart's metadata,
/// values and templates, and no API removed or deprecated there.
#[test]
fn helm_lint_passes_with_the_defaults_and_each_example() {
    let mut values: Vec<Option<PathBuf>> = vec![None];
    values.extend(examples().into_iter().map(Some));
    for v in values {
        let mut command = Command::new("python3");
        command
            .arg(root().join("scripts/helm-template.py"))
            .arg(chart())
            .args(["--lint", "--kube-version", "v1.20.0"]);
        if let Some(v) = &v {
            command.arg("-f").arg(v);
        }
        let output = command.output().expect("running helm lint");
        assert!(
            output.status.success(),
            "helm lint with {v:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn values_that_cannot_work_are_refused_with_the_key() {
    for (set, key) in [
        (&["cert-manager.enabled=true"][..], "cert-manager.enabled"),
        (
            &["node.lvmdEmbedded=true"][..],
            "lvmd.managed and node.lvmdEmbedded",
        ),
        (
            &["webhook.podMutatingWebhook.enabled=true"][..],
            "scheduler.enabled",
        ),
        (
            &["scheduler.enabled=true", "scheduler.type=static"][..],
            "scheduler.type",
        ),
        (
            &[
                "scheduler.enabled=true",
                "webhook.podMutatingWebhook.enabled=true",
                "webhook.certManager=false",
            ][..],
            "webhook.secretName",
        ),
        (
            &["monitoring.grafanaDashboard.enabled=true"][..],
            "monitoring.grafanaDashboard.enabled",
        ),
    ] {
        if key.starts_with("monitoring")
            && !monitoring_files(&chart().join("files/monitoring")).is_empty()
        {
            continue; // the files exist: enabling renders them
        }
        let error = render(&[], set).expect_err(&format!("{set:?} renders"));
        assert!(error.contains(key), "{set:?}: {error}");
    }
}

/// The paths of `sent` (JSON) that `returned` does not hold.
fn dropped(sent: &Value, returned: &Value, path: &str, out: &mut Vec<String>) {
    match (sent, returned) {
        (Value::Object(s), Value::Object(r)) => {
            for (key, value) in s {
                let here = format!("{path}.{key}");
                match r.get(key) {
                    Some(back) => dropped(value, back, &here, out),
                    None => out.push(here),
                }
            }
        }
        (Value::Array(s), Value::Array(r)) => {
            if s.len() != r.len() {
                out.push(format!("{path} (length {} -> {})", s.len(), r.len()));
            }
            for (i, (a, b)) in s.iter().zip(r).enumerate() {
                dropped(a, b, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Object(_) | Value::Array(_), _) => out.push(format!("{path} (type changed)")),
        _ => {}
    }
}

/// Fields the 1.20 API server of the test bed drops although newer ones keep them.
fn dropped_by_1_20(kind_: &str, path: &str) -> bool {
    // CSIDriver.spec.storageCapacity is behind the alpha CSIStorageCapacity gate until 1.21.
    kind_ == "CSIDriver" && path == ".spec.storageCapacity"
}

/// Stand-in CRDs for the APIs the chart may use that the test bed does not serve: cert-manager
/// (Issuer, Certificate) and the Prometheus operator (PrometheusRule). Their schemas keep every
/// field, so the API server checks only apiVersion, kind and metadata of those objects; their
/// content is cert-manager's and Prometheus's to judge.
fn stand_in_crds() -> Vec<Value> {
    [
        ("cert-manager.io", "Issuer", "issuers"),
        ("cert-manager.io", "Certificate", "certificates"),
        ("monitoring.coreos.com", "PrometheusRule", "prometheusrules"),
    ]
    .iter()
    .map(|(group, kind_, plural)| {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.{group}")},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"kind": kind_, "plural": plural,
                          "singular": kind_.to_lowercase(), "listKind": format!("{kind_}List")},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object",
                        "x-kubernetes-preserve-unknown-fields": true}}}],
            },
        })
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rendered_object_and_plain_manifest_passes_a_server_side_dry_run() {
    let cluster = Cluster::start(ClusterOptions::api_only()).await;
    let client = cluster.client();

    let crd_api: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &kube::discovery::ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    for crd in stand_in_crds() {
        let object: DynamicObject = serde_json::from_value(crd).expect("a CRD");
        crd_api
            .create(&PostParams::default(), &object)
            .await
            .expect("a stand-in CRD");
    }
    // Discovery sees the stand-ins once they are served.
    let discovery = {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let discovery = Discovery::new(client.clone())
                .run()
                .await
                .expect("API discovery");
            let gvk = GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PrometheusRule");
            if discovery.resolve_gvk(&gvk).is_some() {
                break discovery;
            }
            assert!(std::time::Instant::now() < deadline, "stand-in CRDs served");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };

    let apply = PatchParams::apply(FIELD_MANAGER).force().dry_run();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (case, docs) in cases() {
        assert!(!docs.is_empty(), "{case}: no objects");
        // The namespace itself is created for real: namespaced dry runs need it.
        for doc in docs.iter().filter(|d| kind(d) == "Namespace") {
            let ns: DynamicObject = serde_json::from_value(doc.clone()).expect("a Namespace");
            let api: Api<DynamicObject> = Api::all_with(
                client.clone(),
                &kube::discovery::ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&()),
            );
            api.patch(
                name(doc),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&ns),
            )
            .await
            .unwrap_or_else(|e| panic!("{case}: creating the Namespace: {e}"));
        }
        for doc in &docs {
            let api_version = doc["apiVersion"].as_str().expect("an apiVersion");
            let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
            let gvk = GroupVersionKind::gvk(group, version, kind(doc));
            let Some((resource, caps)) = discovery.resolve_gvk(&gvk) else {
                failures.push(format!("{case}: {api_version} {} is not served", kind(doc)));
                continue;
            };
            let api: Api<DynamicObject> = match caps.scope {
                Scope::Namespaced => {
                    let Some(ns) = doc["metadata"]["namespace"].as_str() else {
                        failures.push(format!(
                            "{case}: {} {} has no namespace",
                            kind(doc),
                            name(doc)
                        ));
                        continue;
                    };
                    Api::namespaced_with(client.clone(), ns, &resource)
                }
                Scope::Cluster => Api::all_with(client.clone(), &resource),
            };
            let object: DynamicObject =
                serde_json::from_value(doc.clone()).expect("a Kubernetes object");
            match api.patch(name(doc), &apply, &Patch::Apply(&object)).await {
                Ok(returned) => {
                    let returned = serde_json::to_value(&returned).expect("JSON");
                    let mut lost = Vec::new();
                    dropped(doc, &returned, "", &mut lost);
                    lost.retain(|path| !dropped_by_1_20(kind(doc), path));
                    if !lost.is_empty() {
                        failures.push(format!(
                            "{case}: {} {}: the API server dropped {lost:?}",
                            kind(doc),
                            name(doc)
                        ));
                    }
                }
                Err(e) => failures.push(format!("{case}: {} {}: {e}", kind(doc), name(doc))),
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(checked > 50, "only {checked} objects checked");
}

/// The container's arguments: command after the program, then args.
fn arguments(container: &Value) -> Vec<String> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|s| s.as_str().expect("a string").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    strings(&container["command"])
        .into_iter()
        .skip(1)
        .chain(strings(&container["args"]))
        .collect()
}

fn flag<'a>(args: &'a [String], name_: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("--{name_}=")))
}

fn help(binary: &str, package: &str) -> String {
    let output = Command::new(workspace_binary(binary, package))
        .arg("--help")
        .output()
        .expect("running --help");
    assert!(output.status.success(), "{binary} --help");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn pod_spec(doc: &Value) -> Option<&Value> {
    matches!(kind(doc), "Deployment" | "DaemonSet").then(|| &doc["spec"]["template"]["spec"])
}

fn config_map_data<'a>(docs: &'a [Value], name_: &str, key: &str) -> &'a str {
    find(docs, "ConfigMap", name_).unwrap_or_else(|| panic!("the ConfigMap {name_}"))["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in the ConfigMap {name_}"))
}

#[test]
fn the_rendered_workloads_fit_the_binaries_and_each_other() {
    let binaries = [
        (
            "/topolvm-controller",
            help("topolvm-controller", "topolvm-controller"),
        ),
        ("/topolvm-node", help("topolvm-node", "topolvm-node")),
        (
            "/topolvm-scheduler",
            help("topolvm-scheduler", "topolvm-scheduler"),
        ),
        ("/lvmd", help("lvmd", "lvmd")),
    ];
    let mut seen_programs = BTreeSet::new();
    for (case, docs) in cases() {
        let has = |kind_: &str, name_: &str| find(&docs, kind_, name_).is_some();

        // StorageClasses and the CSIDriver.
        for sc in docs.iter().filter(|d| kind(d) == "StorageClass") {
            assert_eq!(sc["provisioner"], "topolvm.io", "{case}: {}", name(sc));
            assert_eq!(
                sc["volumeBindingMode"],
                "WaitForFirstConsumer",
                "{case}: {}",
                name(sc)
            );
        }
        let driver = find(&docs, "CSIDriver", topolvm_core::names::PLUGIN_NAME)
            .unwrap_or_else(|| panic!("{case}: the CSIDriver"));
        assert_eq!(driver["spec"]["attachRequired"], false, "{case}");
        assert_eq!(driver["spec"]["podInfoOnMount"], true, "{case}");
        assert_eq!(
            driver["spec"]["volumeLifecycleModes"],
            json!(["Persistent", "Ephemeral"]),
            "{case}"
        );
        let crd = find(
            &docs,
            "CustomResourceDefinition",
            "logicalvolumes.topolvm.io",
        )
        .unwrap_or_else(|| panic!("{case}: the CRD"));
        assert_eq!(
            crd,
            &serde_json::to_value(topolvm_core::crd::logical_volume_crd()).expect("JSON"),
            "{case}: the CRD is not the one generated from the Rust type"
        );

        // Bindings name roles and ServiceAccounts of the render.
        for binding in docs
            .iter()
            .filter(|d| matches!(kind(d), "ClusterRoleBinding" | "RoleBinding"))
        {
            let role = &binding["roleRef"];
            assert!(
                has(
                    role["kind"].as_str().expect("kind"),
                    role["name"].as_str().expect("name")
                ),
                "{case}: {} binds a missing {role}",
                name(binding)
            );
            for subject in binding["subjects"].as_array().expect("subjects") {
                assert_eq!(subject["kind"], "ServiceAccount");
                assert!(
                    has("ServiceAccount", subject["name"].as_str().expect("name")),
                    "{case}: {} binds a missing {subject}",
                    name(binding)
                );
            }
        }

        let mut lvmd_socket = None;
        let mut node_socket = None;
        let mut controller_has_webhook = None;
        for doc in &docs {
            let Some(pod) = pod_spec(doc) else { continue };
            let workload = format!("{case}: {} {}", kind(doc), name(doc));
            // Pods select themselves.
            for (key, value) in doc["spec"]["selector"]["matchLabels"]
                .as_object()
                .expect("a selector")
            {
                assert_eq!(
                    &doc["spec"]["template"]["metadata"]["labels"][key], value,
                    "{workload}: selector {key}"
                );
            }
            let account = pod["serviceAccountName"]
                .as_str()
                .expect("a ServiceAccount");
            assert!(has("ServiceAccount", account), "{workload}: {account}");
            let volumes: Vec<&Value> = pod["volumes"]
                .as_array()
                .map(|v| v.iter().collect())
                .unwrap_or_default();
            let volume_names: BTreeSet<&str> = volumes
                .iter()
                .map(|v| v["name"].as_str().expect("a name"))
                .collect();
            for volume in &volumes {
                if let Some(cm) = volume["configMap"]["name"].as_str() {
                    assert!(has("ConfigMap", cm), "{workload}: ConfigMap {cm}");
                }
            }
            for container in pod["containers"].as_array().expect("containers") {
                let cname = container["name"].as_str().expect("a name");
                for mount in container["volumeMounts"].as_array().into_iter().flatten() {
                    let volume = mount["name"].as_str().expect("a name");
                    assert!(
                        volume_names.contains(volume),
                        "{workload}: {cname} mounts a missing volume {volume}"
                    );
                }
                let Some(program) = container["command"][0].as_str() else {
                    continue;
                };
                let (_, help) = binaries
                    .iter()
                    .find(|(p, _)| *p == program)
                    .unwrap_or_else(|| panic!("{workload}: {cname} runs {program}"));
                seen_programs.insert(program.to_owned());
                let args = arguments(container);
                for arg in &args {
                    let flag_name = arg
                        .strip_prefix("--")
                        .unwrap_or_else(|| panic!("{workload}: {arg} is not a flag"))
                        .split('=')
                        .next()
                        .expect("a name");
                    assert!(
                        help.contains(&format!("--{flag_name} "))
                            || help.contains(&format!("--{flag_name}\n"))
                            || help.contains(&format!("--{flag_name}[")),
                        "{workload}: {program} does not take --{flag_name}"
                    );
                }
                let mounted_at = |path: &str| {
                    container["volumeMounts"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|m| {
                            Path::new(path).starts_with(m["mountPath"].as_str().expect("path"))
                        })
                };
                match program {
                    "/lvmd" | "/topolvm-node"
                        if args.iter().any(|a| a.starts_with("--config=")) =>
                    {
                        let path = flag(&args, "config").expect("--config");
                        assert!(mounted_at(path), "{workload}: {path} is mounted");
                        let config = lvmd::config::Config::parse(config_map_data(
                            &docs,
                            "topolvm-lvmd",
                            "lvmd.yaml",
                        ))
                        .unwrap_or_else(|e| panic!("{workload}: lvmd.yaml: {e}"));
                        lvmd_socket = Some(config.socket_name.clone());
                        if program == "/lvmd" {
                            assert!(mounted_at(config.socket_name.to_str().expect("UTF-8")));
                        }
                    }
                    "/topolvm-scheduler" => {
                        let path = flag(&args, "config").expect("--config");
                        assert!(mounted_at(path), "{workload}: {path} is mounted");
                        topolvm_scheduler::Config::parse(config_map_data(
                            &docs,
                            "topolvm-scheduler",
                            "scheduler-config.yaml",
                        ))
                        .unwrap_or_else(|e| panic!("{workload}: scheduler config: {e}"));
                    }
                    "/topolvm-controller" => {
                        controller_has_webhook =
                            Some(!args.iter().any(|a| a == "--enable-webhooks=false"));
                    }
                    _ => {}
                }
                if program == "/topolvm-node"
                    && let Some(socket) = flag(&args, "lvmd-socket")
                {
                    assert!(mounted_at(socket), "{workload}: the lvmd socket is mounted");
                    node_socket = Some(PathBuf::from(socket));
                }
            }
        }
        // topolvm-node dials the socket lvmd (a DaemonSet of this render) listens on.
        if let (Some(lvmd), Some(node)) = (&lvmd_socket, &node_socket) {
            assert_eq!(lvmd, node, "{case}: lvmd's socket");
        }
        // The webhook configuration exists exactly when the controller serves it.
        assert_eq!(
            controller_has_webhook,
            Some(has("MutatingWebhookConfiguration", "topolvm-hook")),
            "{case}"
        );
    }
    assert_eq!(
        seen_programs.len(),
        binaries.len(),
        "every binary is run by some render: {seen_programs:?}"
    );
}

/// Where `path` of `container` is on the host: through the hostPath volume mounted deepest
/// above it.
fn host_path(pod: &Value, container: &Value, path: &str) -> Option<PathBuf> {
    let path = Path::new(path);
    let mount = container["volumeMounts"]
        .as_array()?
        .iter()
        .filter(|m| path.starts_with(m["mountPath"].as_str().expect("a mountPath")))
        .max_by_key(|m| m["mountPath"].as_str().expect("a mountPath").len())?;
    let volume = pod["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == mount["name"])?;
    let below = path
        .strip_prefix(mount["mountPath"].as_str().expect("a mountPath"))
        .expect("under the mount");
    Some(Path::new(volume["hostPath"]["path"].as_str()?).join(below))
}

/// `node.registrar.builtin`: node-driver-registrar goes and topolvm-node registers with kubelet
/// itself, telling kubelet the host path of its CSI socket and listening in the host's
/// `<kubelet root>/plugins_registry`, where kubelet's plugin watcher looks
/// (kubernetes/kubernetes pkg/kubelet/pluginmanager/pluginwatcher). The default keeps the
/// sidecar, which tells kubelet the same socket.
#[test]
fn the_builtin_registrar_replaces_the_sidecar() {
    for (set, kubelet, builtin) in [
        (&[][..], "/var/lib/kubelet", false),
        (
            &["node.registrar.builtin=true"][..],
            "/var/lib/kubelet",
            true,
        ),
        (
            &[
                "node.registrar.builtin=true",
                "node.kubeletWorkDirectory=/var/lib/k0s/kubelet",
            ][..],
            "/var/lib/k0s/kubelet",
            true,
        ),
    ] {
        let docs = documents(&render(&[], set).unwrap_or_else(|e| panic!("{set:?}: {e}")));
        let daemonset = find(&docs, "DaemonSet", "topolvm-node").expect("the node DaemonSet");
        let pod = &daemonset["spec"]["template"]["spec"];
        let containers = pod["containers"].as_array().expect("containers");
        let node = containers
            .iter()
            .find(|c| c["name"] == "topolvm-node")
            .expect("topolvm-node");
        let node_args = arguments(node);
        let csi_socket = flag(&node_args, "csi-socket").expect("--csi-socket");
        let kubelet_sees = host_path(pod, node, csi_socket).expect("the CSI socket on the host");
        assert_eq!(
            kubelet_sees,
            Path::new(kubelet).join("plugins/topolvm.io/node/csi-topolvm.sock"),
            "{set:?}"
        );
        let sidecar = containers.iter().find(|c| c["name"] == "csi-registrar");
        assert_eq!(
            node_args.iter().any(|a| a == "--register-with-kubelet"),
            builtin,
            "{set:?}: {node_args:?}"
        );
        let registering = if builtin {
            assert!(
                sidecar.is_none(),
                "{set:?}: node-driver-registrar is left out"
            );
            node
        } else {
            sidecar.expect("node-driver-registrar by default")
        };
        let args = arguments(registering);
        // node-driver-registrar's --plugin-registration-path defaults to /registration.
        let dir_flag = if builtin {
            "plugin-registration-dir"
        } else {
            "plugin-registration-path"
        };
        let dir = flag(&args, dir_flag).unwrap_or("/registration");
        assert_eq!(
            host_path(pod, registering, dir),
            Some(Path::new(kubelet).join("plugins_registry")),
            "{set:?}: the registration directory"
        );
        assert_eq!(
            flag(&args, "kubelet-registration-path").map(PathBuf::from),
            Some(kubelet_sees),
            "{set:?}: the endpoint told to kubelet"
        );
    }
}
