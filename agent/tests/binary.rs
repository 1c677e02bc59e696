//! The `oma-agent` binary's local commands (pairing and the live daemon are
//! driven end to end in integration-tests/).

use std::process::Command;

struct Machine {
    config: tempfile::TempDir,
    data: tempfile::TempDir,
}

impl Machine {
    fn new() -> Machine {
        Machine {
            config: tempfile::tempdir().unwrap(),
            data: tempfile::tempdir().unwrap(),
        }
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_oma-agent"))
            .arg("--config-dir")
            .arg(self.config.path())
            .arg("--data-dir")
            .arg(self.data.path())
            .args(args)
            .env("OMA_LOG", "warn")
            .env("PATH", "/nonexistent")
            .output()
            .unwrap()
    }
}

#[test]
fn status_and_run_explain_how_to_pair() {
    let machine = Machine::new();
    let status = machine.run(&["status"]);
    assert_eq!(
        status.status.code(),
        Some(1),
        "unpaired and not running is not a success"
    );
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(stdout.contains("paired:    no"), "{stdout}");
    assert!(stdout.contains("daemon:    not running"), "{stdout}");

    let json = machine.run(&["status", "--json"]);
    assert_eq!(json.status.code(), Some(1));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["paired"], false, "{value}");
    assert_eq!(value["daemon"]["running"], false, "{value}");
    assert_eq!(value["sessions"], 0, "{value}");
    assert_eq!(value["version"], env!("CARGO_PKG_VERSION"), "{value}");

    let run = machine.run(&["run"]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("not paired: run `oma-agent setup"));
}

#[test]
fn agents_lists_the_configured_table() {
    let machine = Machine::new();
    std::fs::write(
        machine.config.path().join("agents.toml"),
        "[[agent]]\nid = \"sh\"\nname = \"A shell\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"true\"]\n",
    )
    .unwrap();
    let out = machine.run(&["agents"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("sh") && stdout.contains("/bin/sh -c true"), "{stdout}");
    assert!(stdout.contains("missing    claude"), "{stdout}");

    std::fs::write(
        machine.config.path().join("agents.toml"),
        "[[agent]]\nid = \"x\"\nbogus = 1\n",
    )
    .unwrap();
    let out = machine.run(&["agents"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("agents.toml"));
}

#[test]
fn agents_flags_the_old_claude_adapter() {
    use std::os::unix::fs::PermissionsExt as _;
    let machine = Machine::new();
    // An npm global install of the old adapter: bin/ links into lib/node_modules.
    let prefix = machine.data.path().join("npm");
    let package = prefix.join("lib/node_modules/@zed-industries/claude-agent-acp");
    std::fs::create_dir_all(package.join("dist")).unwrap();
    std::fs::create_dir_all(prefix.join("bin")).unwrap();
    std::fs::write(
        package.join("package.json"),
        r#"{"name": "@zed-industries/claude-agent-acp", "version": "0.23.1"}"#,
    )
    .unwrap();
    std::fs::write(package.join("dist/index.js"), "#!/usr/bin/env node\n").unwrap();
    std::fs::set_permissions(package.join("dist/index.js"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(package.join("dist/index.js"), prefix.join("bin/claude-agent-acp")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_oma-agent"))
        .arg("--config-dir")
        .arg(machine.config.path())
        .arg("--data-dir")
        .arg(machine.data.path())
        .arg("agents")
        .env("PATH", prefix.join("bin"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("(BuiltIn, @zed-industries/claude-agent-acp 0.23.1)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "problem: @zed-industries/claude-agent-acp 0.23.1 is known to answer every prompt after a cancel \
             with an empty turn; install @agentclientprotocol/claude-agent-acp"
        ),
        "{stdout}"
    );
}

#[test]
fn setup_refuses_an_unreachable_server_and_plaintext_beyond_loopback() {
    let machine = Machine::new();
    let out = machine.run(&[
        "setup",
        "--server",
        "http://10.0.0.1:1",
        "--code",
        "AAAA-AAAA-AAAA-AAAA",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing plaintext"));
    let out = machine.run(&[
        "setup",
        "--server",
        "http://127.0.0.1:1",
        "--code",
        "AAAA-AAAA-AAAA-AAAA",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the control plane"));
    assert!(!machine.config.path().join("credentials.toml").exists());
}

#[test]
fn service_install_dry_run_prints_the_unit() {
    let machine = Machine::new();
    let out = machine.run(&["service", "install", "--dry-run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("ExecStart=") || stdout.contains("ProgramArguments"),
        "{stdout}"
    );
    assert!(stdout.contains("run"), "{stdout}");
}

#[test]
fn service_install_keeps_the_run_options_and_the_log_filter() {
    let machine = Machine::new();
    let out = Command::new(env!("CARGO_BIN_EXE_oma-agent"))
        .arg("--config-dir")
        .arg(machine.config.path())
        .arg("--data-dir")
        .arg(machine.data.path())
        .args([
            "service",
            "install",
            "--dry-run",
            "--idle-timeout",
            "90s",
            "--reconnect-max",
            "5",
            "--max-sessions",
            "8",
            "--insecure",
        ])
        .env("OMA_LOG", "debug")
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let unit = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "--idle-timeout",
        "90000ms",
        "--reconnect-max",
        "5000ms",
        "--max-sessions",
        "--insecure",
        "OMA_LOG",
    ] {
        assert!(unit.contains(expected), "missing {expected} in\n{unit}");
    }
    assert!(!unit.contains("RUST_LOG"), "{unit}");
    if cfg!(target_os = "linux") {
        assert!(
            unit.contains("RestartPreventExitStatus=3") && unit.contains("UMask=0077"),
            "{unit}"
        );
    }
}
