//! The foundation flow through the real binaries: `oma-control-plane` on
//! SQLite and PostgreSQL, driven by the real `omactl`.

use oma_integration_tests::{ControlPlane, ControlPlaneOptions, Omactl, TestDatabase};

fn flow(cp: &ControlPlane) -> anyhow::Result<()> {
    let admin = Omactl::new(&cp.url(), &cp.admin_token)?;
    let who = admin.json(&["whoami"])?;
    assert_eq!(who["tenant"]["name"], "default", "{who}");

    // A member and a token for it.
    let user = admin.json(&["users", "create", "dana", "--role", "member"])?;
    let dana_id = user["id"]
        .as_str()
        .or(user["user"]["id"].as_str())
        .expect("user id")
        .to_owned();
    let token = admin.json(&["tokens", "create", "--user", &dana_id, "--name", "dana-cli"])?;
    let dana_token = token["secret"].as_str().expect("secret").to_owned();
    assert!(dana_token.starts_with("oma_"));
    let dana = Omactl::new(&cp.url(), &dana_token)?;
    assert_eq!(dana.json(&["whoami"])?["user"]["name"], "dana");

    // Dana pairs her laptop: a connect code, the setup line, the exchange.
    let code = dana.json(&["runtimes", "connect"])?;
    let setup = code["setup_command"].as_str().expect("setup_command");
    let code_str = code["code"].as_str().expect("code");
    assert_eq!(
        setup,
        format!("oma-agent setup --server {} --code {code_str}", cp.url())
    );
    let paired = dana.json(&[
        "runtimes",
        "exchange",
        "--code",
        code_str,
        "--machine-id",
        "dana-laptop",
    ])?;
    let runtime_id = paired["runtime"]["id"].as_str().expect("runtime id").to_owned();
    assert!(paired["machine_token"].as_str().unwrap().starts_with("sk_machine_"));
    let reused = dana.run(&[
        "runtimes",
        "exchange",
        "--code",
        code_str,
        "--machine-id",
        "dana-laptop",
    ])?;
    assert!(!reused.status.success());
    let stderr = String::from_utf8_lossy(&reused.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("already used"),
        "{stderr}"
    );

    // An agent bound to the laptop; updates keep every other field.
    let agent = dana.json(&[
        "agents",
        "create",
        "helper",
        "--system-prompt",
        "You help.",
        "--runtime",
        &runtime_id,
        "--acp-agent",
        "claude",
        "--skill-blocklist",
        "pdf,xlsx",
        // The laptop has not connected yet, so it has reported no skills.
        "--allow-unknown-skills",
        "--permission-policy",
        "allow-once",
    ])?;
    let agent_id = agent["id"].as_str().expect("agent id").to_owned();
    let updated = dana.json(&["agents", "update", &agent_id, "--system-prompt", "You help a lot."])?;
    assert_eq!(updated["spec"]["system_prompt"], "You help a lot.", "{updated}");
    assert_eq!(
        updated["spec"]["runtime_binding"]["runtime_id"],
        runtime_id.as_str(),
        "{updated}"
    );
    assert_eq!(
        updated["spec"]["runtime_binding"]["local_skill_blocklist"],
        serde_json::json!(["pdf", "xlsx"])
    );
    assert_eq!(updated["spec"]["permission_policy"], "allow_once", "{updated}");
    let got = dana.json(&["agents", "get", &agent_id])?;
    assert_eq!(got["spec"], updated["spec"]);
    assert_eq!(got["version"], 2);

    // A session on it, then cleanup.
    let session = dana.json(&["sessions", "create", "--agent", &agent_id, "--title", "first"])?;
    let session_id = session["id"].as_str().expect("session id").to_owned();
    assert_eq!(session["status"], "pending", "{session}");
    let listed = dana.json(&["sessions", "list"])?;
    assert!(listed.to_string().contains(&session_id));
    dana.json(&["sessions", "delete", &session_id])?;
    let gone = dana.run(&["sessions", "get", &session_id])?;
    assert_eq!(gone.status.code(), Some(5), "not found exits 5");
    dana.json(&["agents", "delete", &agent_id])?;
    dana.json(&["runtimes", "delete", &runtime_id])?;

    // A member cannot read the audit log; the admin sees every step.
    let denied = dana.run(&["audit", "list"])?;
    assert_eq!(denied.status.code(), Some(4), "permission denied exits 4");
    let audit = admin.json(&["audit", "list"])?.to_string();
    for action in [
        "user.create",
        "token.create",
        "connect_code.create",
        "runtime.pair",
        "agent.create",
        "agent.update",
        "session.create",
        "session.delete",
        "runtime.delete",
    ] {
        assert!(audit.contains(action), "audit lacks {action}: {audit}");
    }
    Ok(())
}

#[test]
fn foundation_flow_sqlite() {
    let cp = ControlPlane::start_sqlite().unwrap();
    flow(&cp).unwrap();
}

#[test]
fn foundation_flow_postgres() {
    let Some(db) = TestDatabase::postgres("foundation_flow_postgres").unwrap() else {
        return;
    };
    let cp = ControlPlane::start(db, ControlPlaneOptions::default()).unwrap();
    flow(&cp).unwrap();
}
