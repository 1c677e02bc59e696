//! `oma-agent service install|uninstall|status`: run the daemon under the
//! user's service manager (a systemd user unit on Linux, a launchd agent on
//! macOS). The unit file is generated from code ([`systemd::render`],
//! [`launchd::render`]) and the manager driven with `systemctl --user` or
//! `launchctl`.

pub mod launchd;
pub mod systemd;

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::fsutil::{Durability, write_atomic};

/// Mode of the unit file: the user's, readable by the service manager.
const UNIT_FILE_MODE: u32 = 0o644;

/// What the service runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSpec {
    /// Absolute path of the `oma-agent` executable.
    pub exe: PathBuf,
    /// Its arguments, e.g. `["run"]` plus `--config-dir`/`--data-dir` when
    /// they are not the defaults.
    pub args: Vec<String>,
    /// Environment variables for the daemon, e.g. `OMA_LOG` and `PATH`.
    pub env: Vec<(String, String)>,
}

impl UnitSpec {
    /// The running executable with `args`, and the current `PATH` and
    /// `OMA_LOG` (the daemon's log filter; when set). `PATH` matters: service managers start jobs
    /// with a minimal one, on which ACP agents installed with npm or Homebrew
    /// would not be found.
    pub fn for_current_exe(args: Vec<String>) -> Result<Self, ServiceError> {
        let exe = std::env::current_exe().map_err(|source| ServiceError::Io {
            action: "find the path of",
            path: PathBuf::from("the running oma-agent executable"),
            source,
        })?;
        let env = ["PATH", "OMA_LOG"]
            .into_iter()
            .filter_map(|name| std::env::var(name).ok().map(|value| (name.to_owned(), value)))
            .collect();
        Ok(Self { exe, args, env })
    }

    /// Checks what both unit formats need: an absolute, UTF-8 executable
    /// path, valid environment variable names, and no control characters in
    /// arguments or values (systemd lines and XML cannot carry them all).
    pub fn validate(&self) -> Result<(), ServiceError> {
        let invalid = |message: String| Err(ServiceError::InvalidSpec(message));
        let Some(exe) = self.exe.to_str() else {
            return invalid(format!("executable path {} is not UTF-8", self.exe.display()));
        };
        if !self.exe.is_absolute() {
            return invalid(format!("executable path {exe:?} must be absolute"));
        }
        if exe.chars().any(char::is_control) {
            return invalid(format!("executable path {exe:?} contains control characters"));
        }
        for arg in &self.args {
            if arg.chars().any(char::is_control) {
                return invalid(format!("argument {arg:?} contains control characters"));
            }
        }
        for (name, value) in &self.env {
            if !crate::detect::is_env_name(name) {
                return invalid(format!("{name:?} is not a valid environment variable name"));
            }
            if value.chars().any(char::is_control) {
                return invalid(format!("the value of {name} contains control characters"));
            }
        }
        Ok(())
    }
}

/// The service manager that runs the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceManager {
    /// systemd user instance (`systemctl --user`), Linux.
    Systemd,
    /// launchd per-user agent (`launchctl … gui/<uid>`), macOS.
    Launchd,
}

impl ServiceManager {
    /// The manager of this operating system.
    pub fn current() -> Result<Self, ServiceError> {
        if cfg!(target_os = "macos") {
            Ok(Self::Launchd)
        } else if cfg!(target_os = "linux") {
            Ok(Self::Systemd)
        } else {
            Err(ServiceError::Unsupported {
                os: std::env::consts::OS,
            })
        }
    }

    /// `systemd` or `launchd`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Systemd => "systemd",
            Self::Launchd => "launchd",
        }
    }

    /// Where the unit file is installed: [`systemd::unit_path`] or
    /// [`launchd::plist_path`].
    pub fn unit_path(self) -> Result<PathBuf, ServiceError> {
        match self {
            Self::Systemd => systemd::unit_path(),
            Self::Launchd => launchd::plist_path(),
        }
    }

    /// The unit file's name: `oma-agent.service` or `dev.oma.agent.plist`.
    pub fn unit_file_name(self) -> String {
        match self {
            Self::Systemd => systemd::UNIT_NAME.to_owned(),
            Self::Launchd => format!("{}.plist", launchd::LABEL),
        }
    }

    /// How to follow the daemon's logs under this manager.
    pub fn log_hint(self) -> String {
        match self {
            Self::Systemd => format!("journalctl --user -u {} -f", systemd::UNIT_NAME),
            Self::Launchd => match launchd::log_path() {
                Ok(path) => format!("tail -f {}", path.display()),
                Err(_) => "tail -f ~/Library/Logs/oma-agent.log".to_owned(),
            },
        }
    }

    /// The unit file for `spec` (validated first).
    pub fn render(self, spec: &UnitSpec) -> Result<String, ServiceError> {
        spec.validate()?;
        Ok(match self {
            Self::Systemd => systemd::render(spec),
            Self::Launchd => launchd::render(spec, &launchd::log_path()?, &launchd::stderr_path()?),
        })
    }
}

impl fmt::Display for ServiceManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors installing, removing or querying the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No service manager is supported on this OS.
    #[error(
        "`oma-agent service` supports systemd (Linux) and launchd (macOS), not {os}: run `oma-agent run` under your own supervisor"
    )]
    Unsupported {
        /// `std::env::consts::OS`.
        os: &'static str,
    },
    /// The home directory is unknown.
    #[error("cannot determine the home directory: set HOME")]
    NoHome,
    /// The spec cannot be written as a unit.
    #[error("cannot write a service unit: {0}")]
    InvalidSpec(String),
    /// A file or directory operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The service manager's command-line tool is not installed.
    #[error("cannot run `{command}`: `{tool}` was not found on PATH. {}", after_failure(unit_path, *written))]
    ToolMissing {
        /// `systemctl`, `launchctl` or `id`.
        tool: String,
        /// The full command line.
        command: String,
        /// The unit file.
        unit_path: PathBuf,
        /// Whether the unit file was written before the failure.
        written: bool,
    },
    /// The tool could not be started for another reason.
    #[error("cannot run `{command}`: {source}. {}", after_failure(unit_path, *written))]
    Spawn {
        /// The full command line.
        command: String,
        /// The unit file.
        unit_path: PathBuf,
        /// Whether the unit file was written before the failure.
        written: bool,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The tool ran and failed.
    #[error("`{command}` failed ({status}): {output}. {}", after_failure(unit_path, *written))]
    CommandFailed {
        /// The full command line.
        command: String,
        /// Its exit status, e.g. `exit code 1`.
        status: String,
        /// What it printed (stderr, else stdout), trimmed.
        output: String,
        /// The unit file.
        unit_path: PathBuf,
        /// Whether the unit file was written before the failure.
        written: bool,
    },
}

fn after_failure(unit_path: &Path, written: bool) -> String {
    if written {
        format!(
            "The unit file was written at {}; load it yourself, or fix the problem and run `oma-agent service install` again",
            unit_path.display()
        )
    } else {
        format!("Unit file: {}", unit_path.display())
    }
}

/// What [`install`] did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    /// The manager used.
    pub manager: ServiceManager,
    /// Where the unit file is (or would be) written.
    pub unit_path: PathBuf,
    /// The unit file's contents.
    pub contents: String,
    /// Nothing was written or run.
    pub dry_run: bool,
    /// The commands run (or to run), in order.
    pub commands: Vec<String>,
    /// Things to tell the user, e.g. how to read the logs.
    pub notes: Vec<String>,
}

/// What [`uninstall`] did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UninstallReport {
    /// The manager used.
    pub manager: ServiceManager,
    /// The unit file's path.
    pub unit_path: PathBuf,
    /// Whether a unit file existed (and was, unless a dry run, removed).
    pub removed: bool,
    /// Nothing was removed or run.
    pub dry_run: bool,
    /// The commands run (or to run), in order.
    pub commands: Vec<String>,
    /// Steps that failed without stopping the uninstall (e.g. the service
    /// was not loaded).
    pub warnings: Vec<String>,
}

/// What [`status`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    /// The manager asked.
    pub manager: ServiceManager,
    /// The unit file's path.
    pub unit_path: PathBuf,
    /// Whether the unit file exists.
    pub installed: bool,
    /// The command run.
    pub command: String,
    /// Its exit code (`systemctl status` answers 3 for a stopped unit).
    pub exit_code: Option<i32>,
    /// Its stdout followed by its stderr.
    pub output: String,
}

/// Renders `spec` for `manager` and writes it into `dir` under the unit's
/// usual file name (creating `dir`), without touching the service manager.
/// Returns the file's path.
pub fn write_unit_file(spec: &UnitSpec, manager: ServiceManager, dir: &Path) -> Result<PathBuf, ServiceError> {
    let contents = manager.render(spec)?;
    let path = dir.join(manager.unit_file_name());
    write_file(&path, &contents)?;
    Ok(path)
}

/// Writes the unit file to its standard place and starts the service, now
/// and at every login: `systemctl --user daemon-reload`, `enable` and
/// `restart` (so a re-install picks up a new binary), or `launchctl bootout`
/// of an old copy, `enable`, `bootstrap` and `kickstart`. With `dry_run`,
/// only reports what it would write and run.
pub fn install(spec: &UnitSpec, manager: ServiceManager, dry_run: bool) -> Result<InstallReport, ServiceError> {
    let contents = manager.render(spec)?;
    let unit_path = manager.unit_path()?;
    install_with(manager, contents, unit_path, dry_run, &mut SystemRunner)
}

/// Stops and disables the service and removes its unit file. A service that
/// is not loaded, or a missing `systemctl`/`launchctl`, is a warning, not an
/// error: the file is removed either way.
pub fn uninstall(manager: ServiceManager, dry_run: bool) -> Result<UninstallReport, ServiceError> {
    let unit_path = manager.unit_path()?;
    uninstall_with(manager, unit_path, dry_run, &mut SystemRunner)
}

/// Asks the manager about the service (`systemctl --user status … --no-pager`
/// or `launchctl print gui/<uid>/dev.oma.agent`) and returns its answer. A
/// stopped or unknown service is a report with a non-zero exit code, not an
/// error.
pub fn status(manager: ServiceManager) -> Result<StatusReport, ServiceError> {
    let unit_path = manager.unit_path()?;
    status_with(manager, unit_path, &mut SystemRunner)
}

/// One command line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Invocation {
    program: &'static str,
    args: Vec<String>,
}

impl Invocation {
    fn new(program: &'static str, args: &[&str]) -> Self {
        Self {
            program,
            args: args.iter().map(|&a| a.to_owned()).collect(),
        }
    }
}

impl fmt::Display for Invocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.program)?;
        for arg in &self.args {
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || "'\"\\$`".contains(c)) {
                write!(f, " '{}'", arg.replace('\'', r"'\''"))?;
            } else {
                write!(f, " {arg}")?;
            }
        }
        Ok(())
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RunOutput {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl RunOutput {
    fn success(&self) -> bool {
        self.code == Some(0)
    }

    fn status(&self) -> String {
        match self.code {
            Some(code) => format!("exit code {code}"),
            None => "killed by a signal".to_owned(),
        }
    }

    fn message(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let text = text.trim();
        if text.is_empty() {
            "no output".to_owned()
        } else {
            text.to_owned()
        }
    }
}

/// Runs commands; replaced in tests so the sequence can be checked without
/// touching the real service manager.
trait Runner {
    fn run(&mut self, invocation: &Invocation) -> io::Result<RunOutput>;
    fn pause(&mut self, duration: Duration);
}

struct SystemRunner;

impl Runner for SystemRunner {
    fn run(&mut self, invocation: &Invocation) -> io::Result<RunOutput> {
        let out = Command::new(invocation.program)
            .args(&invocation.args)
            .stdin(Stdio::null())
            .output()?;
        Ok(RunOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn pause(&mut self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

/// Runs the command; a missing tool and a failed start become errors naming
/// the unit file.
fn run(
    runner: &mut dyn Runner,
    invocation: &Invocation,
    unit_path: &Path,
    written: bool,
) -> Result<RunOutput, ServiceError> {
    runner.run(invocation).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            ServiceError::ToolMissing {
                tool: invocation.program.to_owned(),
                command: invocation.to_string(),
                unit_path: unit_path.to_path_buf(),
                written,
            }
        } else {
            ServiceError::Spawn {
                command: invocation.to_string(),
                unit_path: unit_path.to_path_buf(),
                written,
                source,
            }
        }
    })
}

/// Runs the command and requires it to succeed.
fn run_ok(
    runner: &mut dyn Runner,
    invocation: &Invocation,
    unit_path: &Path,
    written: bool,
) -> Result<RunOutput, ServiceError> {
    let out = run(runner, invocation, unit_path, written)?;
    if out.success() {
        Ok(out)
    } else {
        Err(ServiceError::CommandFailed {
            command: invocation.to_string(),
            status: out.status(),
            output: out.message(),
            unit_path: unit_path.to_path_buf(),
            written,
        })
    }
}

fn systemctl(args: &[&str]) -> Invocation {
    let mut all = vec!["--user"];
    all.extend_from_slice(args);
    Invocation::new("systemctl", &all)
}

/// The launchd domain of this user, `gui/<uid>`. The uid comes from `id -u`,
/// else from the owner of the home directory (no `unsafe` getuid call).
fn launchd_domain(runner: &mut dyn Runner) -> Result<String, ServiceError> {
    let from_id = runner
        .run(&Invocation::new("id", &["-u"]))
        .ok()
        .filter(RunOutput::success)
        .and_then(|out| out.stdout.trim().parse::<u32>().ok());
    let uid = match from_id {
        Some(uid) => uid,
        None => {
            let home = dirs::home_dir().ok_or(ServiceError::NoHome)?;
            fs::metadata(&home)
                .map_err(|source| ServiceError::Io {
                    action: "read the owner of",
                    path: home,
                    source,
                })?
                .uid()
        }
    };
    Ok(format!("gui/{uid}"))
}

fn write_file(path: &Path, contents: &str) -> Result<(), ServiceError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|source| ServiceError::Io {
            action: "create directory",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    write_atomic(path, contents.as_bytes(), UNIT_FILE_MODE, Durability::Synced).map_err(|source| ServiceError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

fn install_with(
    manager: ServiceManager,
    contents: String,
    unit_path: PathBuf,
    dry_run: bool,
    runner: &mut dyn Runner,
) -> Result<InstallReport, ServiceError> {
    let mut notes = vec![format!("logs: {}", manager.log_hint())];
    let steps: Vec<(Invocation, bool)> = match manager {
        ServiceManager::Systemd => {
            notes.push("to keep it running while you are logged out: loginctl enable-linger \"$USER\"".to_owned());
            vec![
                (systemctl(&["daemon-reload"]), true),
                (systemctl(&["enable", systemd::UNIT_NAME]), true),
                (systemctl(&["restart", systemd::UNIT_NAME]), true),
            ]
        }
        ServiceManager::Launchd => {
            let domain = launchd_domain(runner)?;
            let target = format!("{domain}/{}", launchd::LABEL);
            let plist = unit_path.to_string_lossy();
            vec![
                // Unload an older copy; failing means there was none.
                (Invocation::new("launchctl", &["bootout", &target]), false),
                (Invocation::new("launchctl", &["enable", &target]), true),
                (Invocation::new("launchctl", &["bootstrap", &domain, &plist]), true),
                (Invocation::new("launchctl", &["kickstart", &target]), true),
            ]
        }
    };
    let commands = steps.iter().map(|(inv, _)| inv.to_string()).collect();
    let report = InstallReport {
        manager,
        unit_path,
        contents,
        dry_run,
        commands,
        notes,
    };
    if dry_run {
        return Ok(report);
    }
    if manager == ServiceManager::Launchd
        && let Ok(log) = launchd::log_path()
        && let Some(dir) = log.parent()
    {
        // launchd does not create the log file's directory.
        let _ = fs::create_dir_all(dir);
    }
    write_file(&report.unit_path, &report.contents)?;
    for (invocation, required) in &steps {
        if !required {
            run(runner, invocation, &report.unit_path, true)?;
            continue;
        }
        if invocation.args.first().map(String::as_str) == Some("bootstrap") {
            // `bootout` returns before the old job is gone; bootstrap fails
            // with an I/O error until it is, so give it a few tries.
            let mut attempt = 1;
            loop {
                match run_ok(runner, invocation, &report.unit_path, true) {
                    Ok(_) => break,
                    Err(ServiceError::CommandFailed { .. }) if attempt < 5 => {
                        attempt += 1;
                        runner.pause(Duration::from_millis(400));
                    }
                    Err(err) => return Err(err),
                }
            }
        } else {
            run_ok(runner, invocation, &report.unit_path, true)?;
        }
    }
    Ok(report)
}

fn uninstall_with(
    manager: ServiceManager,
    unit_path: PathBuf,
    dry_run: bool,
    runner: &mut dyn Runner,
) -> Result<UninstallReport, ServiceError> {
    let existed = unit_path.exists();
    let (stop, reload): (Vec<Invocation>, Vec<Invocation>) = match manager {
        ServiceManager::Systemd => (
            vec![systemctl(&["disable", "--now", systemd::UNIT_NAME])],
            vec![systemctl(&["daemon-reload"])],
        ),
        ServiceManager::Launchd => {
            let domain = launchd_domain(runner)?;
            let target = format!("{domain}/{}", launchd::LABEL);
            (vec![Invocation::new("launchctl", &["bootout", &target])], Vec::new())
        }
    };
    let mut report = UninstallReport {
        manager,
        unit_path,
        removed: existed,
        dry_run,
        commands: stop.iter().chain(&reload).map(ToString::to_string).collect(),
        warnings: Vec::new(),
    };
    if dry_run {
        return Ok(report);
    }
    let mut tool_present = true;
    for invocation in &stop {
        match run_ok(runner, invocation, &report.unit_path, existed) {
            Ok(_) => {}
            Err(ServiceError::ToolMissing { tool, .. }) => {
                tool_present = false;
                report
                    .warnings
                    .push(format!("{tool} not found on PATH: could not stop the service"));
            }
            Err(err) => report.warnings.push(format!("{err}")),
        }
    }
    if existed {
        fs::remove_file(&report.unit_path).map_err(|source| ServiceError::Io {
            action: "remove",
            path: report.unit_path.clone(),
            source,
        })?;
    }
    if tool_present {
        for invocation in &reload {
            if let Err(err) = run_ok(runner, invocation, &report.unit_path, false) {
                report.warnings.push(err.to_string());
            }
        }
    }
    Ok(report)
}

fn status_with(
    manager: ServiceManager,
    unit_path: PathBuf,
    runner: &mut dyn Runner,
) -> Result<StatusReport, ServiceError> {
    let invocation = match manager {
        ServiceManager::Systemd => systemctl(&["status", systemd::UNIT_NAME, "--no-pager"]),
        ServiceManager::Launchd => {
            let target = format!("{}/{}", launchd_domain(runner)?, launchd::LABEL);
            Invocation::new("launchctl", &["print", &target])
        }
    };
    let out = run(runner, &invocation, &unit_path, false)?;
    let mut output = out.stdout;
    if !out.stderr.is_empty() {
        if !output.is_empty() && !output.ends_with('\n') {
            output.push('\n');
        }
        output.push_str(&out.stderr);
    }
    Ok(StatusReport {
        manager,
        installed: unit_path.exists(),
        unit_path,
        command: invocation.to_string(),
        exit_code: out.code,
        output,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    type Answer = Box<dyn FnMut(&Invocation) -> io::Result<RunOutput>>;

    /// Records invocations and answers each with a scripted result.
    struct FakeRunner {
        calls: Vec<String>,
        answer: Answer,
        pauses: usize,
    }

    impl FakeRunner {
        fn new(answer: impl FnMut(&Invocation) -> io::Result<RunOutput> + 'static) -> Self {
            Self {
                calls: Vec::new(),
                answer: Box::new(answer),
                pauses: 0,
            }
        }
    }

    impl Runner for FakeRunner {
        fn run(&mut self, invocation: &Invocation) -> io::Result<RunOutput> {
            self.calls.push(invocation.to_string());
            (self.answer)(invocation)
        }

        fn pause(&mut self, _: Duration) {
            self.pauses += 1;
        }
    }

    fn ok(stdout: &str) -> io::Result<RunOutput> {
        Ok(RunOutput {
            code: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
        })
    }

    fn fail(code: i32, stderr: &str) -> io::Result<RunOutput> {
        Ok(RunOutput {
            code: Some(code),
            stdout: String::new(),
            stderr: stderr.into(),
        })
    }

    fn not_found() -> io::Result<RunOutput> {
        Err(io::Error::from(io::ErrorKind::NotFound))
    }

    fn spec() -> UnitSpec {
        UnitSpec {
            exe: "/usr/local/bin/oma-agent".into(),
            args: vec!["run".into()],
            env: vec![("OMA_LOG".into(), "info".into())],
        }
    }

    #[test]
    fn validate_rejects_what_units_cannot_carry() {
        spec().validate().unwrap();
        let mut s = spec();
        s.exe = "oma-agent".into();
        assert!(s.validate().unwrap_err().to_string().contains("absolute"));
        let mut s = spec();
        s.args.push("a\nb".into());
        assert!(s.validate().unwrap_err().to_string().contains("control"));
        let mut s = spec();
        s.env.push(("BAD NAME".into(), "x".into()));
        assert!(s.validate().unwrap_err().to_string().contains("BAD NAME"));
        let mut s = spec();
        s.env.push(("X".into(), "a\u{0}".into()));
        assert!(s.validate().is_err());
    }

    #[test]
    fn for_current_exe_is_absolute_and_valid() {
        let s = UnitSpec::for_current_exe(vec!["run".into()]).unwrap();
        assert!(s.exe.is_absolute());
        assert_eq!(s.args, ["run"]);
        assert!(s.env.iter().all(|(k, _)| k == "PATH" || k == "OMA_LOG"));
    }

    #[test]
    fn current_manager_matches_the_os() {
        let m = ServiceManager::current();
        if cfg!(target_os = "linux") {
            assert_eq!(m.unwrap(), ServiceManager::Systemd);
        } else if cfg!(target_os = "macos") {
            assert_eq!(m.unwrap(), ServiceManager::Launchd);
        }
    }

    #[test]
    fn write_unit_file_writes_both_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("units");
        let unit = write_unit_file(&spec(), ServiceManager::Systemd, &target).unwrap();
        assert_eq!(unit, target.join("oma-agent.service"));
        let text = fs::read_to_string(&unit).unwrap();
        assert!(text.contains("ExecStart=/usr/local/bin/oma-agent run\n"));
        assert_eq!(fs::metadata(&unit).unwrap().permissions().mode() & 0o777, 0o644);
        let plist = write_unit_file(&spec(), ServiceManager::Launchd, &target).unwrap();
        assert_eq!(plist, target.join("dev.oma.agent.plist"));
        assert!(
            fs::read_to_string(&plist)
                .unwrap()
                .contains("<string>dev.oma.agent</string>")
        );

        let mut bad = spec();
        bad.exe = "relative".into();
        assert!(matches!(
            write_unit_file(&bad, ServiceManager::Systemd, &target),
            Err(ServiceError::InvalidSpec(_))
        ));
    }

    #[test]
    fn systemd_install_runs_reload_enable_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("systemd/user/oma-agent.service");
        let mut runner = FakeRunner::new(|_| ok(""));
        let contents = systemd::render(&spec());
        let report = install_with(
            ServiceManager::Systemd,
            contents.clone(),
            path.clone(),
            false,
            &mut runner,
        )
        .unwrap();
        assert_eq!(
            runner.calls,
            [
                "systemctl --user daemon-reload",
                "systemctl --user enable oma-agent.service",
                "systemctl --user restart oma-agent.service"
            ]
        );
        assert_eq!(report.commands, runner.calls);
        assert_eq!(fs::read_to_string(&path).unwrap(), contents);
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.contains("journalctl --user -u oma-agent.service"))
        );
    }

    #[test]
    fn dry_run_writes_and_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oma-agent.service");
        let mut runner = FakeRunner::new(|_| ok(""));
        let report = install_with(ServiceManager::Systemd, "x".into(), path.clone(), true, &mut runner).unwrap();
        assert!(report.dry_run);
        assert_eq!(report.commands.len(), 3);
        assert!(runner.calls.is_empty());
        assert!(!path.exists());
    }

    #[test]
    fn missing_systemctl_says_where_the_unit_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oma-agent.service");
        let mut runner = FakeRunner::new(|_| not_found());
        let err = install_with(ServiceManager::Systemd, "x".into(), path.clone(), false, &mut runner).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, ServiceError::ToolMissing { written: true, .. }),
            "{err:?}"
        );
        assert!(msg.contains("`systemctl` was not found"), "{msg}");
        assert!(msg.contains(&format!("written at {}", path.display())), "{msg}");
        assert!(path.exists());
    }

    #[test]
    fn failing_systemctl_reports_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oma-agent.service");
        let mut runner = FakeRunner::new(|inv| {
            if inv.args.iter().any(|a| a == "enable") {
                fail(1, "Failed to connect to bus: No medium found\n")
            } else {
                ok("")
            }
        });
        let err = install_with(ServiceManager::Systemd, "x".into(), path, false, &mut runner).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("systemctl --user enable oma-agent.service"), "{msg}");
        assert!(
            msg.contains("exit code 1") && msg.contains("Failed to connect to bus"),
            "{msg}"
        );
        assert_eq!(runner.calls.len(), 2);
    }

    #[test]
    fn launchd_install_sequence_with_bootstrap_retry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("LaunchAgents/dev.oma.agent.plist");
        let mut bootstraps = 0;
        let mut runner = FakeRunner::new(move |inv| match (inv.program, inv.args[0].as_str()) {
            ("id", _) => ok("501\n"),
            ("launchctl", "bootout") => fail(3, "Boot-out failed: 3: No such process"),
            ("launchctl", "bootstrap") => {
                bootstraps += 1;
                if bootstraps < 3 {
                    fail(5, "Bootstrap failed: 5: Input/output error")
                } else {
                    ok("")
                }
            }
            _ => ok(""),
        });
        let report = install_with(
            ServiceManager::Launchd,
            "<plist/>".into(),
            path.clone(),
            false,
            &mut runner,
        )
        .unwrap();
        let plist = path.display().to_string();
        assert_eq!(
            report.commands,
            [
                "launchctl bootout gui/501/dev.oma.agent".to_owned(),
                "launchctl enable gui/501/dev.oma.agent".to_owned(),
                format!("launchctl bootstrap gui/501 {plist}"),
                "launchctl kickstart gui/501/dev.oma.agent".to_owned(),
            ]
        );
        assert_eq!(runner.calls.len(), 1 + 4 + 2);
        assert_eq!(runner.pauses, 2);
        assert!(path.exists());
    }

    #[test]
    fn launchd_bootstrap_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.oma.agent.plist");
        let mut runner = FakeRunner::new(|inv| match (inv.program, inv.args[0].as_str()) {
            ("id", _) => ok("501"),
            ("launchctl", "bootstrap") => fail(5, "Bootstrap failed: 5: Input/output error"),
            _ => ok(""),
        });
        let err = install_with(ServiceManager::Launchd, "x".into(), path, false, &mut runner).unwrap_err();
        assert!(err.to_string().contains("Input/output error"), "{err}");
        assert_eq!(runner.pauses, 4);
    }

    #[test]
    fn uninstall_stops_removes_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oma-agent.service");
        fs::write(&path, "x").unwrap();
        let mut runner = FakeRunner::new(|_| ok(""));
        let report = uninstall_with(ServiceManager::Systemd, path.clone(), false, &mut runner).unwrap();
        assert!(report.removed && !path.exists());
        assert!(report.warnings.is_empty());
        assert_eq!(
            runner.calls,
            [
                "systemctl --user disable --now oma-agent.service",
                "systemctl --user daemon-reload"
            ]
        );

        // Not installed and no systemctl: nothing to do, a warning, no error.
        let mut runner = FakeRunner::new(|_| not_found());
        let report = uninstall_with(ServiceManager::Systemd, path.clone(), false, &mut runner).unwrap();
        assert!(!report.removed);
        assert_eq!(runner.calls.len(), 1);
        assert!(
            report.warnings[0].contains("systemctl not found"),
            "{:?}",
            report.warnings
        );
    }

    #[test]
    fn uninstall_survives_a_service_that_is_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.oma.agent.plist");
        fs::write(&path, "x").unwrap();
        let mut runner = FakeRunner::new(|inv| match inv.program {
            "id" => ok("501"),
            _ => fail(3, "Boot-out failed: 3: No such process"),
        });
        let report = uninstall_with(ServiceManager::Launchd, path.clone(), false, &mut runner).unwrap();
        assert!(report.removed && !path.exists());
        assert_eq!(report.commands, ["launchctl bootout gui/501/dev.oma.agent"]);
        assert!(report.warnings[0].contains("No such process"));
    }

    #[test]
    fn status_returns_output_even_when_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oma-agent.service");
        let mut runner = FakeRunner::new(|_| {
            Ok(RunOutput {
                code: Some(3),
                stdout: "○ oma-agent.service - OMA agent\n     Active: inactive (dead)\n".into(),
                stderr: String::new(),
            })
        });
        let report = status_with(ServiceManager::Systemd, path.clone(), &mut runner).unwrap();
        assert_eq!(report.command, "systemctl --user status oma-agent.service --no-pager");
        assert_eq!(report.exit_code, Some(3));
        assert!(report.output.contains("inactive"));
        assert!(!report.installed);

        let mut runner = FakeRunner::new(|inv| if inv.program == "id" { ok("501") } else { not_found() });
        let err = status_with(ServiceManager::Launchd, path, &mut runner).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`launchctl` was not found") && msg.contains("launchctl print gui/501/dev.oma.agent"));
    }

    #[test]
    fn uid_falls_back_to_the_home_owner() {
        let mut runner = FakeRunner::new(|_| not_found());
        let domain = launchd_domain(&mut runner).unwrap();
        assert!(domain.starts_with("gui/"), "{domain}");
    }

    #[test]
    fn invocation_display_quotes_for_a_shell() {
        let inv = Invocation::new("launchctl", &["bootstrap", "gui/501", "/Users/me/My Stuff/it's.plist"]);
        assert_eq!(
            inv.to_string(),
            r"launchctl bootstrap gui/501 '/Users/me/My Stuff/it'\''s.plist'"
        );
    }
}
