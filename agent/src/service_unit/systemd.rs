//! The systemd user unit (`~/.config/systemd/user/oma-agent.service`).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::PathBuf;

use super::{ServiceError, UnitSpec};

/// The unit's name as `systemctl --user` knows it.
pub const UNIT_NAME: &str = "oma-agent.service";

/// Renders the unit file for `spec`. Arguments and environment values are
/// quoted and escaped for systemd (`%` → `%%`, `$` → `$$` in arguments,
/// C-style escapes inside double quotes), so each reaches the daemon exactly
/// as given. Call [`UnitSpec::validate`] first.
pub fn render(spec: &UnitSpec) -> String {
    let mut exec_start = quote_word(&spec.exe.to_string_lossy(), false);
    for arg in &spec.args {
        exec_start.push(' ');
        exec_start.push_str(&quote_word(arg, true));
    }
    let mut out = String::new();
    out.push_str("# Written by `oma-agent service install`: run it again rather than editing this file.\n");
    out.push_str("[Unit]\n");
    out.push_str("Description=OMA agent: runs ACP agents for the OMA control plane\n");
    out.push_str("After=network-online.target\n");
    out.push_str("Wants=network-online.target\n");
    out.push('\n');
    out.push_str("[Service]\n");
    out.push_str("Type=simple\n");
    let _ = writeln!(out, "ExecStart={exec_start}");
    for (name, value) in &spec.env {
        let _ = writeln!(out, "Environment={}", quote_always(&format!("{name}={value}"), false));
    }
    out.push_str("Restart=on-failure\n");
    out.push_str("RestartSec=5\n");
    // Exit 3: the control plane refused the machine's credentials (revoked
    // or deleted runtime); restarting cannot help until it is paired again.
    out.push_str("RestartPreventExitStatus=3\n");
    // Session folders, outboxes and logs are the owner's alone.
    out.push_str("UMask=0077\n");
    // SIGTERM goes to the daemon alone, which stops its ACP children (each in
    // its own process group) itself; whatever is left after the timeout is
    // SIGKILLed as a group.
    out.push_str("KillMode=mixed\n");
    out.push_str("TimeoutStopSec=30\n");
    // tracing writes to stderr; journald keeps it (`journalctl --user -u oma-agent`).
    out.push_str("StandardOutput=journal\n");
    out.push_str("StandardError=journal\n");
    out.push('\n');
    out.push_str("[Install]\n");
    out.push_str("WantedBy=default.target\n");
    out
}

/// `$XDG_CONFIG_HOME/systemd/user/oma-agent.service`, else
/// `~/.config/systemd/user/oma-agent.service`.
pub fn unit_path() -> Result<PathBuf, ServiceError> {
    unit_path_from(std::env::var_os("XDG_CONFIG_HOME"), dirs::home_dir())
}

fn unit_path_from(xdg_config_home: Option<OsString>, home: Option<PathBuf>) -> Result<PathBuf, ServiceError> {
    // The XDG spec says a relative value is invalid and must be ignored.
    let config = match xdg_config_home.map(PathBuf::from).filter(|p| p.is_absolute()) {
        Some(dir) => dir,
        None => home.ok_or(ServiceError::NoHome)?.join(".config"),
    };
    Ok(config.join("systemd/user").join(UNIT_NAME))
}

/// One word of a command line: bare when that is unambiguous, else in double
/// quotes with C escapes. `%` is always doubled (specifiers); `$` is doubled
/// when `escape_dollar` (environment expansion applies to arguments, not to
/// the executable path).
fn quote_word(word: &str, escape_dollar: bool) -> String {
    let needs_quotes = word.is_empty()
        || word == ";"
        || word
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\'));
    if needs_quotes {
        return quote_always(word, escape_dollar);
    }
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        push_specifier_safe(&mut out, c, escape_dollar);
    }
    out
}

fn quote_always(word: &str, escape_dollar: bool) -> String {
    let mut out = String::with_capacity(word.len() + 2);
    out.push('"');
    for c in word.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
            c => push_specifier_safe(&mut out, c, escape_dollar),
        }
    }
    out.push('"');
    out
}

fn push_specifier_safe(out: &mut String, c: char, escape_dollar: bool) {
    match c {
        '%' => out.push_str("%%"),
        '$' if escape_dollar => out.push_str("$$"),
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;

    fn spec(exe: &str, args: &[&str]) -> UnitSpec {
        UnitSpec {
            exe: exe.into(),
            args: args.iter().map(|&a| a.to_owned()).collect(),
            env: vec![
                ("OMA_LOG".into(), "info,oma_agent=debug".into()),
                ("ODD".into(), "a \"b\" 100% $HOME \\x".into()),
            ],
        }
    }

    #[test]
    fn render_quotes_arguments_and_environment() {
        let unit = render(&spec(
            "/opt/oma/bin/oma-agent",
            &[
                "run",
                "--data-dir",
                "/home/me/My Data",
                "100%",
                "$HOME",
                "",
                "it's",
                "a\\b",
            ],
        ));
        assert!(
            unit.contains(
                "ExecStart=/opt/oma/bin/oma-agent run --data-dir \"/home/me/My Data\" 100%% $$HOME \"\" \"it's\" \"a\\\\b\"\n"
            ),
            "{unit}"
        );
        assert!(
            unit.contains("Environment=\"OMA_LOG=info,oma_agent=debug\"\n"),
            "{unit}"
        );
        assert!(
            unit.contains("Environment=\"ODD=a \\\"b\\\" 100%% $HOME \\\\x\"\n"),
            "{unit}"
        );
        for line in [
            "[Unit]",
            "After=network-online.target",
            "Wants=network-online.target",
            "[Service]",
            "Type=simple",
            "Restart=on-failure",
            "RestartSec=5",
            "RestartPreventExitStatus=3",
            "UMask=0077",
            "KillMode=mixed",
            "TimeoutStopSec=30",
            "StandardOutput=journal",
            "StandardError=journal",
            "[Install]",
            "WantedBy=default.target",
        ] {
            assert!(unit.lines().any(|l| l == line), "missing {line:?} in\n{unit}");
        }
    }

    #[test]
    fn exe_path_with_space_and_percent() {
        let unit = render(&spec("/Users/me/my tools/oma%agent", &["run"]));
        assert!(
            unit.contains("ExecStart=\"/Users/me/my tools/oma%%agent\" run\n"),
            "{unit}"
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(quote_word("a\nb", true), "\"a\\nb\"");
        assert_eq!(quote_word("a\u{1}b", true), "\"a\\x01b\"");
        assert_eq!(quote_word(";", true), "\";\"");
    }

    #[test]
    fn unit_path_respects_xdg_config_home() {
        let p = unit_path_from(Some("/x/conf".into()), Some("/home/me".into())).unwrap();
        assert_eq!(p, Path::new("/x/conf/systemd/user/oma-agent.service"));
        let p = unit_path_from(Some("relative".into()), Some("/home/me".into())).unwrap();
        assert_eq!(p, Path::new("/home/me/.config/systemd/user/oma-agent.service"));
        let p = unit_path_from(None, Some("/home/me".into())).unwrap();
        assert_eq!(p, Path::new("/home/me/.config/systemd/user/oma-agent.service"));
        assert!(matches!(unit_path_from(None, None), Err(ServiceError::NoHome)));
    }

    /// Runs `systemd-analyze verify --user` on a rendered unit whose
    /// `ExecStart` names a real executable; skipped where systemd is absent.
    #[test]
    fn systemd_analyze_accepts_the_unit() {
        if which::which("systemd-analyze").is_err() {
            eprintln!("notice: systemd-analyze not on PATH: skipping unit verification");
            return;
        }
        let exe = ["/bin/true", "/usr/bin/true"]
            .into_iter()
            .find(|p| Path::new(p).is_file());
        let Some(exe) = exe else {
            eprintln!("notice: no /bin/true: skipping unit verification");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let runtime_dir = tempfile::tempdir().unwrap();
        let spec = spec(
            exe,
            &[
                "run",
                "--config-dir",
                "/tmp/with space/100%",
                "$x",
                "q\"uote",
                "back\\slash",
            ],
        );
        let path = super::super::write_unit_file(&spec, super::super::ServiceManager::Systemd, dir.path()).unwrap();
        assert_eq!(path, dir.path().join(UNIT_NAME));
        let out = Command::new("systemd-analyze")
            .args(["verify", "--user"])
            .arg(&path)
            // The user manager it simulates needs a runtime dir; give it a private one.
            .env("XDG_RUNTIME_DIR", runtime_dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "systemd-analyze failed: {stderr}");
        let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains(UNIT_NAME)).collect();
        assert!(complaints.is_empty(), "systemd-analyze complained: {complaints:?}");
    }
}
