//! `oma-agent uninstall` tells the control plane to forget the machine: its
//! runtime (and so its token) is deleted there, audited as the machine's
//! own act, and nothing of the daemon is left on the machine.

use oma_integration_tests::world::World;
use oma_proto::pb;

#[tokio::test(flavor = "multi_thread")]
async fn uninstall_deletes_the_runtime_at_the_control_plane() {
    let mut w = World::builder().logs_to_files().start().await.unwrap();
    let runtime_id = w.machine.runtime_id.clone();
    let token = std::fs::read_to_string(w.machine.config_dir.path().join("credentials.toml")).unwrap();
    assert!(token.contains("sk_machine_"));
    w.assert_no_panic();
    w.machine.kill().unwrap();

    let out = w.machine.command().arg("uninstall").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("forgot runtime {runtime_id}")), "{stdout}");
    assert!(!w.machine.config_dir.path().join("credentials.toml").exists());

    let gone = w
        .clients
        .runtimes
        .clone()
        .get_runtime(pb::GetRuntimeRequest {
            runtime_id: runtime_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    let audit = w
        .clients
        .audit
        .clone()
        .list_audit_entries(pb::ListAuditEntriesRequest {
            target_id: runtime_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let entry = audit
        .entries
        .iter()
        .find(|e| e.action == "runtime.deregister")
        .expect("the deregistration is audited");
    assert_eq!(entry.actor, format!("runtime:{runtime_id}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn uninstall_without_a_reachable_control_plane_says_what_to_do() {
    let mut w = World::builder().logs_to_files().start().await.unwrap();
    let runtime_id = w.machine.runtime_id.clone();
    w.machine.kill().unwrap();
    // The control plane moved away: nothing answers at the stored URL.
    let file = w.machine.config_dir.path().join("credentials.toml");
    let creds = std::fs::read_to_string(&file).unwrap();
    let unreachable = creds.replace(&w.cp.url(), "http://127.0.0.1:1");
    assert_ne!(creds, unreachable);
    std::fs::write(&file, unreachable).unwrap();
    let out = w.machine.command().arg("uninstall").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("omactl runtimes delete {runtime_id}")),
        "{stdout}"
    );
    assert!(!w.machine.config_dir.path().join("credentials.toml").exists());
}
