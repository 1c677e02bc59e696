//! What `oma-agent` tells its owner on the machine: `status` (outbox backlog,
//! last connection error), `setup -o json`, and the daemon's own log file
//! (`run --log-format json --log-file`), through the real binaries.

use std::time::Duration;

use oma_integration_tests::world::World;
use oma_integration_tests::{AgentDaemon, ControlPlane, faults, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

fn status_json(machine: &AgentDaemon) -> serde_json::Value {
    let out = machine.command().args(["status", "--json"]).output().unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_the_backlog_and_the_last_error_and_the_log_is_json_lines() {
    let logs = tempfile::tempdir().unwrap();
    let log_file = logs.path().join("oma-agent.log");
    let mut w = World::builder()
        .prepare(|machine| machine.log_filter = "info".into())
        .daemon_args(&["--log-format", "json", "--log-file", log_file.to_str().unwrap()])
        .start()
        .await
        .unwrap();
    let session = w.session().await;
    w.run_turn(&session, "hello").await;

    // Every event of the turn acknowledged: the session is listed with none waiting.
    let status = wait_until("the session in the status backlog", DEADLINE, || async {
        let status = status_json(&w.machine);
        (status["backlog"]["sessions"][&session] == 0).then_some(status)
    })
    .await
    .unwrap();
    assert_eq!(status["backlog"]["total"], 0, "{status}");
    assert_eq!(status["daemon"]["connected"], true, "{status}");
    assert!(status["last_error"].is_null(), "{status}");
    let text = w.machine.command().arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("backlog:   none"), "{text}");

    // The daemon's log: JSON lines in the file, none on stderr.
    let connected = wait_until("a JSON `connected` line in the log file", DEADLINE, || async {
        let text = std::fs::read_to_string(&log_file).ok()?;
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("every line is JSON"))
            .find(|l| l["fields"]["message"] == "connected")
    })
    .await
    .unwrap();
    assert_eq!(
        connected["fields"]["runtime_id"],
        w.machine.runtime_id.as_str(),
        "{connected}"
    );

    // The control plane goes away: the error is reported with its time.
    faults::kill_control_plane(&mut w.cp).unwrap();
    let status = wait_until("the lost stream in status", DEADLINE, || async {
        let status = status_json(&w.machine);
        (status["daemon"]["connected"] == false && !status["last_error"].is_null()).then_some(status)
    })
    .await
    .unwrap();
    let error = &status["last_error"];
    assert!(error["message"].as_str().unwrap().len() > 5, "{status}");
    let at = error["at_unix"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(at) < 120, "{status}");
    let text = w.machine.command().arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("last error: "), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_prints_one_json_object() {
    let cp = ControlPlane::start_sqlite().unwrap();
    let code = cp.clients().await.unwrap().connect_code().await.unwrap();
    let config = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("agents.toml"),
        "[[agent]]\nid = \"sh\"\ncommand = \"/bin/sh\"\n",
    )
    .unwrap();
    let out = AgentDaemon::command_in(config.path(), data.path())
        .unwrap()
        .args(["setup", "--server", &cp.url(), "--code", &code, "-o", "json"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    let runtime_id = value["runtime_id"].as_str().unwrap();
    assert!(runtime_id.starts_with("rt_"), "{value}");
    assert_eq!(value["server"], cp.url().as_str(), "{value}");
    let credentials = value["credentials_file"].as_str().unwrap();
    assert!(std::fs::read_to_string(credentials).unwrap().contains(runtime_id));
    assert_eq!(value["agents"][0]["id"], "sh", "{value}");
    assert_eq!(value["agents"][0]["command"], "/bin/sh", "{value}");
    assert!(
        value["missing_agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m.as_str().unwrap().starts_with("claude:")),
        "{value}"
    );

    // A spent code: the error on stderr, exit 1, nothing on stdout.
    let out = AgentDaemon::command_in(config.path(), data.path())
        .unwrap()
        .args(["setup", "--server", &cp.url(), "--code", &code, "-o", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused the code"));
}
