//! The launchd agent (`~/Library/LaunchAgents/dev.oma.agent.plist`).
//!
//! Logging: launchd discards a job's stdout and stderr unless
//! `StandardOutPath`/`StandardErrorPath` are set, and never rotates those
//! files; the unified log would only show our output if the daemon logged
//! through `os_log`, which it does not. So the daemon writes its log itself
//! (`run --log-file ~/Library/Logs/oma-agent.log`, rotated by size, where
//! Console.app also finds it), and stdout and stderr go to
//! `~/Library/Logs/oma-agent.stderr.log` only for what comes before the log
//! is open or bypasses it (a bad flag, a panic).

use std::path::{Path, PathBuf};

use plist::{Dictionary, Value};

use super::{ServiceError, UnitSpec};

/// The job's label, also its name in `launchctl print gui/<uid>/<label>`.
pub const LABEL: &str = "dev.oma.agent";

/// Renders the plist for `spec`: the daemon logs to `log_file` (a
/// `--log-file` argument is added unless `spec` has one), its stdout and
/// stderr are appended to `stderr_file`. Call [`UnitSpec::validate`] first
/// (XML cannot carry most control characters).
pub fn render(spec: &UnitSpec, log_file: &Path, stderr_file: &Path) -> String {
    let mut args = spec.args.clone();
    if !args.iter().any(|a| a == "--log-file" || a.starts_with("--log-file=")) {
        args.extend(["--log-file".to_owned(), log_file.to_string_lossy().into_owned()]);
    }
    let program: Vec<Value> = std::iter::once(spec.exe.to_string_lossy().into_owned())
        .chain(args)
        .map(Value::String)
        .collect();
    let mut job = Dictionary::new();
    job.insert("Label".into(), LABEL.into());
    job.insert("ProgramArguments".into(), Value::Array(program));
    if !spec.env.is_empty() {
        let env: Dictionary = spec
            .env
            .iter()
            .map(|(name, value)| (name.clone(), Value::String(value.clone())))
            .collect();
        job.insert("EnvironmentVariables".into(), Value::Dictionary(env));
    }
    job.insert("RunAtLoad".into(), true.into());
    // Restart when it exits with an error or a signal; a clean exit stays down.
    let mut keep_alive = Dictionary::new();
    keep_alive.insert("SuccessfulExit".into(), false.into());
    job.insert("KeepAlive".into(), Value::Dictionary(keep_alive));
    // Like systemd's RestartSec=5 (launchd's default is 10 s).
    job.insert("ThrottleInterval".into(), 5.into());
    // Time between SIGTERM and SIGKILL on stop, like TimeoutStopSec=30.
    job.insert("ExitTimeOut".into(), 30.into());
    // `Standard`, not `Background`: the coding agents it starts are real work
    // a person waits for, and Background throttles their CPU and I/O.
    job.insert("ProcessType".into(), "Standard".into());
    // Session folders, outboxes and logs are the owner's alone (0077).
    job.insert("Umask".into(), 0o077.into());
    let stderr = stderr_file.to_string_lossy().into_owned();
    job.insert("StandardOutPath".into(), stderr.clone().into());
    job.insert("StandardErrorPath".into(), stderr.into());

    let mut xml = Vec::new();
    // Writing to a Vec cannot fail, and every value is a plain string,
    // boolean, integer, array or dictionary.
    let _ = Value::Dictionary(job).to_writer_xml(&mut xml);
    let xml = String::from_utf8_lossy(&xml);
    // The crate writes no comments: the note goes before the root element.
    xml.replacen(
        "<plist",
        "<!-- Written by `oma-agent service install`: run it again rather than editing this file. -->\n<plist",
        1,
    )
}

/// `~/Library/LaunchAgents/dev.oma.agent.plist`.
pub fn plist_path() -> Result<PathBuf, ServiceError> {
    let home = dirs::home_dir().ok_or(ServiceError::NoHome)?;
    Ok(home.join("Library/LaunchAgents").join(format!("{LABEL}.plist")))
}

/// `~/Library/Logs/oma-agent.log`: the daemon's log (rotated by the daemon).
pub fn log_path() -> Result<PathBuf, ServiceError> {
    let home = dirs::home_dir().ok_or(ServiceError::NoHome)?;
    Ok(home.join("Library/Logs/oma-agent.log"))
}

/// `~/Library/Logs/oma-agent.stderr.log`: the daemon's stdout and stderr
/// (what comes before its log is open: a bad flag, a panic).
pub fn stderr_path() -> Result<PathBuf, ServiceError> {
    let home = dirs::home_dir().ok_or(ServiceError::NoHome)?;
    Ok(home.join("Library/Logs/oma-agent.stderr.log"))
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn spec() -> UnitSpec {
        UnitSpec {
            exe: "/Users/me/bin/oma agent".into(),
            args: vec![
                "run".into(),
                "--data-dir".into(),
                "/Users/me/a&b <c>".into(),
                "100% \"q\" 'a'".into(),
            ],
            env: vec![
                ("OMA_LOG".into(), "info".into()),
                ("PATH".into(), "/opt/homebrew/bin:/usr/bin:/bin".into()),
            ],
        }
    }

    /// The rendered plist read back as launchd would.
    fn parse(xml: &str) -> Dictionary {
        Value::from_reader_xml(xml.as_bytes())
            .unwrap()
            .into_dictionary()
            .unwrap()
    }

    fn strings(value: &Value) -> Vec<&str> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_string().unwrap())
            .collect()
    }

    #[test]
    fn render_keeps_every_argument_and_setting() {
        let xml = render(
            &spec(),
            Path::new("/Users/me/Library/Logs/oma-agent.log"),
            Path::new("/Users/me/Library/Logs/oma-agent.stderr.log"),
        );
        assert!(xml.contains("<string>/Users/me/a&amp;b &lt;c&gt;</string>"), "{xml}");
        assert!(xml.contains("<!-- Written by `oma-agent service install`"), "{xml}");
        let job = parse(&xml);
        let s = spec();
        let mut program = vec![s.exe.to_str().unwrap()];
        program.extend(s.args.iter().map(String::as_str));
        // The daemon rotates its own log: launchd never rotates a job's files.
        program.extend(["--log-file", "/Users/me/Library/Logs/oma-agent.log"]);
        assert_eq!(strings(&job["ProgramArguments"]), program);
        let env = job["EnvironmentVariables"].as_dictionary().unwrap();
        assert_eq!(env["OMA_LOG"].as_string(), Some("info"));
        assert_eq!(env["PATH"].as_string(), Some("/opt/homebrew/bin:/usr/bin:/bin"));
        assert_eq!(env.len(), 2);
        assert_eq!(job["Label"].as_string(), Some(LABEL));
        assert_eq!(job["RunAtLoad"].as_boolean(), Some(true));
        let keep_alive = job["KeepAlive"].as_dictionary().unwrap();
        assert_eq!(keep_alive["SuccessfulExit"].as_boolean(), Some(false));
        assert_eq!(job["ThrottleInterval"].as_unsigned_integer(), Some(5));
        assert_eq!(job["ExitTimeOut"].as_unsigned_integer(), Some(30));
        assert_eq!(job["ProcessType"].as_string(), Some("Standard"));
        assert_eq!(job["Umask"].as_unsigned_integer(), Some(0o077));
        let early = Some("/Users/me/Library/Logs/oma-agent.stderr.log");
        assert_eq!(job["StandardOutPath"].as_string(), early);
        assert_eq!(job["StandardErrorPath"].as_string(), early);
    }

    #[test]
    fn a_log_file_given_to_install_is_kept() {
        let mut s = spec();
        s.args.extend(["--log-file".into(), "/elsewhere/agent.log".into()]);
        let job = parse(&render(&s, Path::new("/l.log"), Path::new("/e.log")));
        let program = strings(&job["ProgramArguments"]);
        assert_eq!(program.iter().filter(|a| **a == "--log-file").count(), 1, "{program:?}");
        assert_eq!(program.last(), Some(&"/elsewhere/agent.log"));
    }

    #[test]
    fn no_environment_means_no_dict() {
        let mut s = spec();
        s.env.clear();
        let xml = render(&s, Path::new("/l.log"), Path::new("/e.log"));
        assert!(!parse(&xml).contains_key("EnvironmentVariables"), "{xml}");
    }

    #[test]
    fn plutil_lints_the_plist_when_present() {
        if which::which("plutil").is_err() {
            eprintln!("notice: plutil not on PATH: skipping plist lint (the plist was read back above)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.oma.agent.plist");
        std::fs::write(
            &path,
            render(
                &spec(),
                Path::new("/tmp/oma-agent.log"),
                Path::new("/tmp/oma-agent.stderr.log"),
            ),
        )
        .unwrap();
        let out = Command::new("plutil").arg("-lint").arg(&path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    }
}
