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

/// Under a service manager stdout is a log others read: the first admin
/// token must not go there, only into a 0600 file.
#[test]
fn the_first_admin_token_never_goes_to_a_non_terminal_stdout() {
    use std::io::{BufRead as _, BufReader};
    use std::os::unix::fs::PermissionsExt as _;

    let dir = tempfile::tempdir().unwrap();
    let mut child = bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut printed = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.starts_with("oma-control-plane listening on ");
        printed.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let stdout = printed.join("\n");
    assert!(!stdout.contains("oma_"), "the token was printed: {stdout}");
    let file = dir.path().join("bootstrap-admin-token");
    assert!(
        stdout.contains(&format!("admin token written to {}", file.display())),
        "{stdout}"
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(std::fs::read_to_string(&file).unwrap().starts_with("oma_"));
}
