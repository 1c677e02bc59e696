//! The `oma-control-plane` binary's offline commands (the server itself is
//! driven end to end in integration-tests/).

use std::process::Command;

fn bin() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_oma-control-plane"));
    command.env("OMA_LOG", "warn");
    command
}

#[test]
fn admin_commands_work_on_a_fresh_database() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out = bin().args(["admin", "--data-dir", data, "migrate"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("oma.db").exists());

    let out = bin()
        .args(["admin", "--data-dir", data, "create-tenant", "acme"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("admin token (shown once; store it now): oma_"),
        "{stdout}"
    );

    let again = bin()
        .args(["admin", "--data-dir", data, "create-tenant", "acme"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let out = bin()
        .args([
            "admin",
            "--data-dir",
            data,
            "create-token",
            "--tenant",
            "acme",
            "--user",
            "ci",
            "--role",
            "member",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("for user ci (usr_") && stdout.contains(", member)"),
        "{stdout}"
    );

    let listed = bin()
        .args(["admin", "--data-dir", data, "list-tenants"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains("\tacme"));

    let unknown = bin()
        .args(["admin", "--data-dir", data, "create-token", "--tenant", "nope"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no tenant named \"nope\""));
}

#[test]
fn bad_flags_are_refused_with_a_sentence() {
    let out = bin().args(["serve", "--listen", "not-an-address"]).output().unwrap();
    assert!(!out.status.success());
    let out = bin().args(["serve", "--tls-cert", "/nonexistent"]).output().unwrap();
    assert!(!out.status.success(), "--tls-cert needs --tls-key");
}
