//! The foundation flow through the real binaries: `oma-control-plane` on
//! SQLite and PostgreSQL, driven by the real `omactl`.

use std::process::Output;

use oma_integration_tests::{ControlPlane, ControlPlaneOptions, Omactl, TestDatabase, World, bin, test_agents_toml};

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

/// stderr of a failed `omactl` run with its exit code.
fn failed(output: &Output) -> (Option<i32>, String) {
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The ids `-o name` prints, sorted.
fn names(cli: &Omactl, args: &[&str]) -> Vec<String> {
    let mut full = args.to_vec();
    full.extend(["-o", "name"]);
    let mut ids: Vec<String> = stdout(&cli.run(&full).unwrap()).lines().map(str::to_owned).collect();
    ids.sort();
    ids
}

/// Names where ids go, `-o name|wide`, and `sessions create --wait` through
/// the real binaries, on a machine whose ACP agents are the scripted agent
/// (`test`), the same starting slowly (`slow`) and one that exits at once
/// (`broken`).
#[tokio::test(flavor = "multi_thread")]
async fn names_outputs_and_waiting_for_a_session() {
    let agents_toml = format!(
        "{}\n[[agent]]\nid = \"slow\"\ncommand = \"{}\"\nenv = {{ OMA_TEST_AGENT_STARTUP_DELAY_MS = \"30000\" }}\n\n\
         [[agent]]\nid = \"broken\"\ncommand = \"/bin/false\"\n",
        test_agents_toml(),
        bin("oma-test-agent").display()
    );
    let w = World::builder()
        .agents_toml(agents_toml)
        .agent_name("helper")
        .start()
        .await
        .unwrap();
    let cli = Omactl::new(&w.cp.url(), &w.cp.admin_token).unwrap();
    let runtime_id = w.machine.runtime_id.as_str();
    let runtime_name = cli.json(&["runtimes", "get", runtime_id]).unwrap()["name"]
        .as_str()
        .unwrap()
        .to_owned();

    // Names wherever ids go: the runtime and the agent by name.
    assert_eq!(cli.json(&["runtimes", "get", &runtime_name]).unwrap()["id"], runtime_id);
    assert_eq!(
        cli.json(&["agents", "get", "helper"]).unwrap()["id"],
        w.agent_id.as_str()
    );
    for (name, acp_agent) in [("slow-agent", "slow"), ("broken-agent", "broken")] {
        let agent = cli
            .json(&[
                "agents",
                "create",
                name,
                "--runtime",
                &runtime_name,
                "--acp-agent",
                acp_agent,
            ])
            .unwrap();
        assert_eq!(agent["spec"]["runtime_binding"]["runtime_id"], runtime_id, "{agent}");
    }
    let dana = cli.json(&["users", "create", "dana"]).unwrap();
    assert_eq!(names(&cli, &["users", "get", "dana"]), [dana["id"].as_str().unwrap()]);
    // No such name: exit 5, one sentence.
    let (code, err) = failed(&cli.run(&["agents", "get", "nope"]).unwrap());
    assert_eq!(code, Some(5), "{err}");
    assert_eq!(
        err,
        "error: no agent is named \"nope\", and it is not an agent id (agt_ and 32 hex digits)\n"
    );
    // Two runtimes of one name: exit 6 listing both, and nothing deleted.
    let mut twins = Vec::new();
    for machine in ["twin-1", "twin-2"] {
        let code = cli.json(&["runtimes", "connect"]).unwrap()["code"]
            .as_str()
            .unwrap()
            .to_owned();
        let paired = cli
            .json(&[
                "runtimes",
                "exchange",
                "--code",
                &code,
                "--machine-id",
                machine,
                "--name",
                "twin",
            ])
            .unwrap();
        twins.push(paired["runtime"]["id"].as_str().unwrap().to_owned());
    }
    for args in [
        &["runtimes", "get", "twin"][..],
        &["runtimes", "delete", "twin", "--yes"],
    ] {
        let (code, err) = failed(&cli.run(args).unwrap());
        assert_eq!(code, Some(6), "{err}");
        assert!(
            err.starts_with("error: 2 runtimes are named \"twin\" (")
                && twins.iter().all(|id| err.contains(id.as_str())),
            "{err}"
        );
    }
    let mut runtimes = vec![runtime_id.to_owned(), twins[0].clone(), twins[1].clone()];
    runtimes.sort();
    assert_eq!(names(&cli, &["runtimes", "list"]), runtimes);

    // --wait: ready (idle) and printed; a start that fails exits 1 saying
    // why; one still starting at the timeout exits 9.
    let ready = cli
        .json(&["sessions", "create", "--agent", "helper", "--wait", "--timeout", "60s"])
        .unwrap();
    assert_eq!(ready["status"], "idle", "{ready}");
    let (code, err) = failed(
        &cli.run(&[
            "sessions",
            "create",
            "--agent",
            "broken-agent",
            "--wait",
            "--timeout",
            "60s",
        ])
        .unwrap(),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.starts_with("error: session ses_") && err.contains(" failed to start: "),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let (code, err) = failed(
        &cli.run(&[
            "sessions",
            "create",
            "--agent",
            "slow-agent",
            "--wait",
            "--timeout",
            "1s",
        ])
        .unwrap(),
    );
    assert_eq!(code, Some(9), "{err}");
    assert!(err.contains("was not ready within 1s (it is pending)"), "{err}");

    // -o name: the ids, one per line, for lists and single resources.
    let sessions = names(&cli, &["sessions", "list"]);
    assert_eq!(sessions.len(), 3, "{sessions:?}");
    assert!(sessions.iter().all(|id| id.starts_with("ses_")), "{sessions:?}");
    let ready_id = ready["id"].as_str().unwrap();
    assert_eq!(names(&cli, &["sessions", "get", ready_id]), [ready_id]);
    assert_eq!(names(&cli, &["sessions", "list", "--agent", "helper"]), [ready_id]);
    assert_eq!(names(&cli, &["agents", "list"]).len(), 3);

    // -o wide: the table with more columns.
    let table = stdout(&cli.run(&["runtimes", "list"]).unwrap());
    let wide = stdout(&cli.run(&["runtimes", "list", "-o", "wide"]).unwrap());
    assert!(table.starts_with("ID ") && !table.contains("AGENT VERSION"), "{table}");
    let header = wide.lines().next().unwrap();
    assert!(header.contains("OS/ARCH") && header.contains("AGENT VERSION"), "{wide}");
    let row = wide.lines().find(|l| l.starts_with(runtime_id)).unwrap();
    assert!(row.contains(&format!("{}/", std::env::consts::OS)), "{wide}");
    let wide = stdout(&cli.run(&["sessions", "list", "-o", "wide"]).unwrap());
    for column in ["ACP AGENT", "WORKSPACE", "BRANCH", "MODE", "MODEL", "LAST SEQ"] {
        assert!(wide.lines().next().unwrap().contains(column), "{column}: {wide}");
    }
    assert!(!stdout(&cli.run(&["sessions", "list"]).unwrap()).contains("LAST SEQ"));
    assert!(stdout(&cli.run(&["agents", "list", "-o", "wide"]).unwrap()).contains("DEFAULT MODE"));

    // What -o name is for: piping ids into another command.
    let omactl = bin("omactl");
    let pipe = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{0}' sessions list -o name | xargs -n1 '{0}' sessions delete --yes",
            omactl.display()
        ))
        .env("OMACTL_CONFIG", cli.config_dir.path().join("config.toml"))
        .env("OMA_SERVER", &cli.server)
        .env("OMA_TOKEN", &cli.token)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(pipe.status.success(), "{}", String::from_utf8_lossy(&pipe.stderr));
    assert!(names(&cli, &["sessions", "list"]).is_empty());
}
