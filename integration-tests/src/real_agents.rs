//! What the opt-in tests with real ACP agents (`tests/real_agents*.rs`)
//! share: the opt-in switch, npm installs into the target dir, TOML quoting
//! for `agents.toml`, and a graceful stop of the daemon.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Process, bin_dir};

/// Whether the opt-in real-agent tests run (`OMA_TEST_REAL_AGENTS=1`); says
/// loudly that they were skipped otherwise.
pub fn enabled() -> bool {
    if std::env::var("OMA_TEST_REAL_AGENTS").as_deref() == Ok("1") {
        return true;
    }
    eprintln!(
        "\n==================================================================\n\
         SKIPPED: real ACP agent test (set OMA_TEST_REAL_AGENTS=1 to run it;\n\
         it npm-installs the agents' ACP adapters once and needs node >= 18)\n\
         ==================================================================\n"
    );
    false
}

/// A progress line with the time since `start`.
pub fn log(label: &str, start: Instant, what: &str) {
    eprintln!("[{label} {:>8.3}s] {what}", start.elapsed().as_secs_f64());
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Where an npm package is installed for these tests:
/// `<cargo target dir>/real-agents/<package without @ and />-<version>`.
pub fn install_dir(package: &str, version: &str) -> PathBuf {
    let target_dir = bin_dir().parent().expect("the target dir").to_path_buf();
    let dir_name = package.trim_start_matches('@').replace('/', "-");
    target_dir.join("real-agents").join(format!("{dir_name}-{version}"))
}

/// `package@version` installed (once) and the path of `relative` inside its
/// `node_modules` (e.g. `.bin/codex-acp`), checked to exist.
pub fn installed(package: &str, version: &str, relative: &str) -> anyhow::Result<PathBuf> {
    let install = install_dir(package, version);
    let path = install.join("node_modules").join(relative);
    if !path.exists() {
        npm_install(&install, &format!("{package}@{version}"))?;
    }
    anyhow::ensure!(
        path.exists(),
        "npm installed {package}@{version} but {} is missing",
        path.display()
    );
    Ok(path)
}

/// `npm install <spec>` into a scratch folder renamed to `install` when done,
/// so an interrupted install is never mistaken for a finished one.
pub fn npm_install(install: &Path, spec: &str) -> anyhow::Result<()> {
    let name = install.file_name().expect("an install dir name").to_string_lossy();
    let scratch: PathBuf = install.with_file_name(format!("{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    eprintln!("installing {spec} into {} (npm)…", install.display());
    let output = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix"])
        .arg(&scratch)
        .arg(spec)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run npm (needed to install {spec}): {e}"))?;
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(&scratch);
        anyhow::bail!(
            "npm install {spec} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if install.exists() && !install.join("node_modules").is_dir() {
        // Not an install (e.g. an empty leftover): make way.
        let _ = std::fs::remove_dir_all(install);
    }
    if std::fs::rename(&scratch, install).is_err() {
        // Another test process finished first; keep its copy.
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Ok(())
}

/// Stops `oma-agent` with SIGTERM, so that it stops its ACP children: killed
/// outright, it would orphan them, and claude-agent-acp 0.23.1 does not exit
/// when its stdin closes.
pub struct StopGracefully(pub Process);

impl Drop for StopGracefully {
    fn drop(&mut self) {
        if self.0.signal("TERM").is_ok()
            && let Err(err) = self.0.wait_exit(Duration::from_secs(30))
        {
            eprintln!("{err}; killing it");
        }
    }
}

/// On a failed assertion, prints what a fake model endpoint received and the
/// tail of each log in `logs` (the daemon's and its ACP children's).
pub struct Diagnostics<F: Fn() -> String> {
    pub fake_summary: F,
    pub logs: PathBuf,
}

impl<F: Fn() -> String> Drop for Diagnostics<F> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        eprintln!(
            "--- requests the fake model endpoint received:\n{}",
            (self.fake_summary)()
        );
        for entry in std::fs::read_dir(&self.logs).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let tail = &text[text.len().saturating_sub(8 * 1024)..];
            eprintln!("--- {} (tail):\n{tail}", entry.path().display());
        }
    }
}
