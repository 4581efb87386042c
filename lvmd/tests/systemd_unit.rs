//! The systemd unit in deploy/ is accepted by `systemd-analyze verify` (host tier: needs
//! systemd's tools, which scripts/setup.sh installs).
#![cfg(feature = "host-tier")]

use std::path::Path;
use std::process::Command;

#[test]
fn lvmd_service_unit_verifies_cleanly() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/lvmd.service");
    let text = std::fs::read_to_string(&unit).expect("read the unit");
    assert!(text.contains("ExecStart=/usr/local/sbin/lvmd --config=/etc/topolvm/lvmd.yaml"));
    // verify insists that ExecStart exists: point it at the binary this build made.
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("lvmd.service");
    std::fs::write(
        &copy,
        text.replace("/usr/local/sbin/lvmd", env!("CARGO_BIN_EXE_lvmd")),
    )
    .expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze must be installed (scripts/setup.sh installs systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 even for unknown keys and bad values; any message is a finding.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn a_misspelt_key_would_be_caught() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = dir.path().join("bad.service");
    std::fs::write(
        &unit,
        format!(
            "[Service]\nExecStart={}\nTpye=simple\n",
            env!("CARGO_BIN_EXE_lvmd")
        ),
    )
    .expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Tpye"));
}
