//! The example configurations in deploy/scheduler-config load and say what the README says.

use std::path::PathBuf;

use topolvm_scheduler::config::Config;

fn deploy(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/scheduler-config")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn extender_config_example_loads() {
    let config = Config::parse(&deploy("scheduler-config.yaml")).expect("valid");
    assert_eq!(config.listen, "127.0.0.1:9251");
    assert_eq!(config.scoring.divisor("hdd"), 10.0);
    assert_eq!(config.scoring.divisor("00default"), 1.0);
}

#[test]
fn kube_scheduler_examples_point_at_the_extender() {
    for (name, api_version) in [
        (
            "kube-scheduler-config-v1.yaml",
            "kubescheduler.config.k8s.io/v1",
        ),
        (
            "kube-scheduler-config-v1beta1.yaml",
            "kubescheduler.config.k8s.io/v1beta1",
        ),
    ] {
        let doc: serde_yaml::Value = serde_yaml::from_str(&deploy(name)).expect(name);
        assert_eq!(doc["apiVersion"].as_str(), Some(api_version), "{name}");
        assert_eq!(doc["kind"].as_str(), Some("KubeSchedulerConfiguration"));
        let extender = &doc["extenders"][0];
        assert_eq!(
            extender["urlPrefix"].as_str(),
            Some("http://127.0.0.1:9251")
        );
        assert_eq!(extender["filterVerb"].as_str(), Some("predicate"));
        assert_eq!(extender["prioritizeVerb"].as_str(), Some("prioritize"));
        assert_eq!(extender["nodeCacheCapable"].as_bool(), Some(false));
        assert_eq!(
            extender["managedResources"][0]["name"].as_str(),
            Some(topolvm_core::names::CAPACITY_RESOURCE)
        );
        assert_eq!(
            extender["managedResources"][0]["ignoredByScheduler"].as_bool(),
            Some(true)
        );
    }
    let policy: serde_json::Value =
        serde_json::from_str(&deploy("scheduler-policy.cfg")).expect("policy JSON");
    assert_eq!(policy["kind"], "Policy");
    assert_eq!(policy["extenders"][0]["filterVerb"], "predicate");
}
