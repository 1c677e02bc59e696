//! Spawning and stopping ACP agent child processes.
//!
//! Each child runs in its own process group (agents such as claude-agent-acp
//! and gemini start node subprocesses of their own), with piped stdio. The
//! environment is the daemon's, minus the variables that make a nested Claude
//! Code refuse to start ([`SCRUBBED_ENV`]), plus what the caller adds. Its
//! stderr is drained into a [`StderrLog`]: the last 64 KiB in memory for error
//! messages, and optionally a size-capped file on disk.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use oma_proto::masking::{Masker, StreamMasker};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

/// Environment variables never passed to a child, whatever the daemon's
/// environment or the caller says: with them set, Claude Code refuses to start
/// because it believes it runs nested inside another Claude Code.
pub const SCRUBBED_ENV: &[&str] = &["CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT", "CLAUDE_CODE_SSE_PORT"];

/// How much of the child's stderr is kept in memory.
pub const STDERR_MEMORY_BYTES: usize = 64 * 1024;

/// How large the stderr log file grows before it is rotated to `<file>.1`.
pub const STDERR_FILE_MAX_BYTES: u64 = 1024 * 1024;

/// How much of the stderr [`StderrLog::tail`] returns.
pub const STDERR_TAIL_BYTES: usize = 4 * 1024;

/// How long [`AcpChild::terminate`] waits for the stderr drain after the
/// child is gone (a process outside the group may hold the pipe open).
const STDERR_DRAIN_WAIT: Duration = Duration::from_secs(1);

/// What to run. The command and its arguments come from the local agent
/// table only, never from the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSpec {
    pub command: PathBuf,
    pub args: Vec<String>,
    /// The working directory (the session directory).
    pub cwd: PathBuf,
    /// Added to (or overriding) the daemon's environment. Names in
    /// [`SCRUBBED_ENV`] are ignored.
    pub env: Vec<(String, String)>,
}

/// The environment a child gets: `base` minus [`SCRUBBED_ENV`], then `extra`
/// (whose scrubbed names are ignored too). Later entries win.
pub fn child_env(
    base: impl IntoIterator<Item = (OsString, OsString)>,
    extra: &[(String, String)],
) -> Vec<(OsString, OsString)> {
    let scrubbed = |name: &OsString| SCRUBBED_ENV.iter().any(|scrubbed| name.as_os_str() == *scrubbed);
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    let extra = extra
        .iter()
        .map(|(name, value)| (OsString::from(name), OsString::from(value)));
    for (name, value) in base.into_iter().chain(extra) {
        if scrubbed(&name) {
            continue;
        }
        match env.iter_mut().find(|(existing, _)| *existing == name) {
            Some(entry) => entry.1 = value,
            None => env.push((name, value)),
        }
    }
    env
}

/// The command for `spec` with the environment computed from `base_env`.
fn build_command(spec: &ChildSpec, base_env: impl IntoIterator<Item = (OsString, OsString)>) -> Command {
    let mut command = Command::new(&spec.command);
    command
        .args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(child_env(base_env, &spec.env))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    command
}

/// Spawns `spec` with the daemon's environment (scrubbed); stderr is kept in
/// memory only.
pub fn spawn(spec: &ChildSpec) -> io::Result<AcpChild> {
    spawn_logged(spec, None, Masker::default())
}

/// Spawns `spec` with the daemon's environment (scrubbed), appending its
/// stderr to `stderr_log_file` when given. Its stderr is masked with
/// `stderr_masker` before it is kept (in memory or in the file).
pub fn spawn_logged(spec: &ChildSpec, stderr_log_file: Option<PathBuf>, stderr_masker: Masker) -> io::Result<AcpChild> {
    spawn_with_env(spec, std::env::vars_os(), stderr_log_file, stderr_masker)
}

/// Spawns `spec` with `base_env` in place of the daemon's environment.
pub fn spawn_with_env(
    spec: &ChildSpec,
    base_env: impl IntoIterator<Item = (OsString, OsString)>,
    stderr_log_file: Option<PathBuf>,
    stderr_masker: Masker,
) -> io::Result<AcpChild> {
    let mut child = build_command(spec, base_env).spawn().map_err(|err| {
        io::Error::new(
            err.kind(),
            format!(
                "cannot start {} in {}: {err}",
                spec.command.display(),
                spec.cwd.display()
            ),
        )
    })?;
    let pid = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .ok_or_else(|| io::Error::other("the child exited before its pid was known"))?;
    let stderr_log = StderrLog::new(stderr_log_file);
    let stderr_task = child
        .stderr
        .take()
        .map(|stderr| tokio::spawn(drain_stderr(stderr, stderr_log.clone(), stderr_masker)));
    Ok(AcpChild {
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
        child,
        pgid: Pid::from_raw(pid),
        stderr_log,
        stderr_task,
        status: None,
        group_killed: false,
    })
}

/// A running ACP agent child and its process group.
///
/// Dropping it kills the whole group with SIGKILL.
#[derive(Debug)]
pub struct AcpChild {
    child: Child,
    pgid: Pid,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr_log: StderrLog,
    stderr_task: Option<JoinHandle<()>>,
    status: Option<ExitStatus>,
    /// Set once the group got its SIGKILL after the leader was reaped.
    group_killed: bool,
}

impl AcpChild {
    /// The child's pid, which is also its process group id.
    pub fn pid(&self) -> i32 {
        self.pgid.as_raw()
    }

    /// Takes the child's stdin; closing it (dropping) is the polite way to ask
    /// the child to stop.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    pub fn stderr_log(&self) -> &StderrLog {
        &self.stderr_log
    }

    /// The exit status, if the child has exited (reaping it).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits for the child to exit (without signalling it).
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self.child.wait().await?;
        self.status = Some(status);
        Ok(status)
    }

    /// Sends `signal` to the child's whole process group. A group that is
    /// already gone is not an error.
    pub fn signal_group(&self, signal: Signal) -> io::Result<()> {
        match killpg(self.pgid, signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(errno) => Err(io::Error::from(errno)),
        }
    }

    /// Stops the child: closes its stdin, waits up to `grace / 2` for it to
    /// exit, sends SIGTERM to its process group, waits up to `grace / 2`
    /// more, then sends SIGKILL to the group. Always reaps the child and
    /// SIGKILLs whatever is left of its group. Returns the exit status when
    /// it could be read.
    pub async fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        drop(self.stdin.take());
        let half = grace / 2;
        let mut status = self.wait_for(half).await;
        if status.is_none() {
            let _ = self.signal_group(Signal::SIGTERM);
            status = self.wait_for(half).await;
        }
        if status.is_none() {
            let _ = self.signal_group(Signal::SIGKILL);
            status = self.wait().await.ok();
        }
        self.finish().await;
        status
    }

    /// Kills the child's group with SIGKILL at once and reaps the child.
    pub async fn kill(&mut self) -> Option<ExitStatus> {
        drop(self.stdin.take());
        if self.status.is_none() {
            let _ = self.signal_group(Signal::SIGKILL);
        }
        let status = self.wait().await.ok();
        self.finish().await;
        status
    }

    /// Waits until the stderr drain has seen EOF (bounded), so that
    /// [`StderrLog::tail`] holds everything the child wrote.
    pub async fn stderr_drained(&mut self, timeout: Duration) {
        if let Some(task) = self.stderr_task.as_mut()
            && tokio::time::timeout(timeout, task).await.is_ok()
        {
            self.stderr_task = None;
        }
    }

    async fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.try_wait() {
            return Some(status);
        }
        if limit.is_zero() {
            return None;
        }
        tokio::time::timeout(limit, self.wait()).await.ok().and_then(Result::ok)
    }

    /// After the leader is reaped: kill what is left of its group (its pid
    /// cannot be reused while group members live) and let stderr drain.
    async fn finish(&mut self) {
        if !self.group_killed {
            let _ = self.signal_group(Signal::SIGKILL);
            self.group_killed = true;
        }
        self.stderr_drained(STDERR_DRAIN_WAIT).await;
    }
}

impl Drop for AcpChild {
    fn drop(&mut self) {
        if !self.group_killed {
            let _ = self.signal_group(Signal::SIGKILL);
        }
        if let Some(task) = self.stderr_task.take() {
            task.abort();
        }
    }
}

/// The child's stderr: the last [`STDERR_MEMORY_BYTES`] in memory, and
/// optionally everything in a file capped at [`STDERR_FILE_MAX_BYTES`]
/// (rotated once to `<file>.1`). Cheap to clone; clones share the log.
#[derive(Debug, Clone)]
pub struct StderrLog {
    inner: Arc<Mutex<StderrInner>>,
}

#[derive(Debug)]
struct StderrInner {
    memory: VecDeque<u8>,
    file: Option<PathBuf>,
}

impl StderrLog {
    pub fn new(file: Option<PathBuf>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(StderrInner {
                memory: VecDeque::with_capacity(4096),
                file,
            })),
        }
    }

    /// Appends to the in-memory log.
    fn push(&self, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let bytes = &bytes[bytes.len().saturating_sub(STDERR_MEMORY_BYTES)..];
        inner.memory.extend(bytes);
        let excess = inner.memory.len().saturating_sub(STDERR_MEMORY_BYTES);
        inner.memory.drain(..excess);
    }

    fn file(&self) -> Option<PathBuf> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .file
            .clone()
    }

    /// Everything kept in memory (at most [`STDERR_MEMORY_BYTES`]), lossily
    /// decoded.
    pub fn contents(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (front, back) = inner.memory.as_slices();
        let mut bytes = Vec::with_capacity(front.len() + back.len());
        bytes.extend_from_slice(front);
        bytes.extend_from_slice(back);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The last few KiB ([`STDERR_TAIL_BYTES`]), starting at a line boundary
    /// when one is near, trimmed; for error messages.
    pub fn tail(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let start = inner.memory.len().saturating_sub(STDERR_TAIL_BYTES);
        let mut bytes: Vec<u8> = inner.memory.range(start..).copied().collect();
        drop(inner);
        if start > 0
            && let Some(newline) = bytes.iter().position(|&byte| byte == b'\n')
            && newline + 1 < bytes.len()
        {
            bytes.drain(..=newline);
        }
        String::from_utf8_lossy(&bytes).trim().to_owned()
    }
}

/// Reads the child's stderr until EOF into `log`, masked (a secret the
/// child prints is never kept, not even in memory).
async fn drain_stderr(mut stderr: ChildStderr, log: StderrLog, masker: Masker) {
    let mut file = LogFile::new(log.file());
    let mut masking = StreamMasker::new(masker);
    let mut buffer = vec![0u8; 8192];
    loop {
        match stderr.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                let chunk = masking.push(&buffer[..read]);
                if !chunk.is_empty() {
                    log.push(&chunk);
                    file.append(&chunk).await;
                }
            }
        }
    }
    let rest = masking.finish();
    if !rest.is_empty() {
        log.push(&rest);
        file.append(&rest).await;
    }
    file.flush().await;
}

/// The on-disk stderr log, size-capped with one rotation. Gives up quietly
/// (memory logging goes on) after an I/O error.
struct LogFile {
    path: Option<PathBuf>,
    file: Option<tokio::fs::File>,
    size: u64,
}

impl LogFile {
    fn new(path: Option<PathBuf>) -> Self {
        Self {
            path,
            file: None,
            size: 0,
        }
    }

    async fn append(&mut self, chunk: &[u8]) {
        let Some(path) = self.path.clone() else {
            return;
        };
        if let Err(err) = self.write(&path, chunk).await {
            tracing::warn!(path = %path.display(), "cannot write the agent's stderr log: {err}");
            self.path = None;
            self.file = None;
        }
    }

    async fn write(&mut self, path: &Path, chunk: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            self.open(path).await?;
        }
        if self.size > 0 && self.size + chunk.len() as u64 > STDERR_FILE_MAX_BYTES {
            if let Some(mut file) = self.file.take() {
                file.flush().await?;
            }
            let mut rotated = path.as_os_str().to_owned();
            rotated.push(".1");
            tokio::fs::rename(path, PathBuf::from(rotated)).await?;
            self.open(path).await?;
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.write_all(chunk).await?;
        file.flush().await?;
        self.size += chunk.len() as u64;
        Ok(())
    }

    /// Opens the file for appending and reads its current size.
    async fn open(&mut self, path: &Path) -> io::Result<()> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(crate::fsutil::PRIVATE_FILE_MODE)
            .open(path)
            .await?;
        self.size = file.metadata().await?.len();
        self.file = Some(file);
        Ok(())
    }

    async fn flush(&mut self) {
        if let Some(file) = self.file.as_mut() {
            let _ = file.flush().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt as _;

    fn os(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(name, value)| (OsString::from(name), OsString::from(value)))
            .collect()
    }

    fn sh(script: &str, cwd: &Path) -> ChildSpec {
        ChildSpec {
            command: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            cwd: cwd.to_owned(),
            env: Vec::new(),
        }
    }

    async fn stdout_of(child: &mut AcpChild) -> String {
        let mut out = String::new();
        let mut stdout = child.take_stdout().unwrap();
        stdout.read_to_string(&mut out).await.unwrap();
        out
    }

    #[test]
    fn env_is_scrubbed_and_extended() {
        let base = os(&[
            ("PATH", "/bin"),
            ("CLAUDECODE", "1"),
            ("CLAUDE_CODE_ENTRYPOINT", "cli"),
            ("CLAUDE_CODE_SSE_PORT", "1234"),
            ("HOME", "/home/u"),
        ]);
        let extra = vec![
            ("HOME".to_owned(), "/session".to_owned()),
            ("CLAUDECODE".to_owned(), "again".to_owned()),
            ("ANTHROPIC_API_KEY".to_owned(), "k".to_owned()),
        ];
        assert_eq!(
            child_env(base, &extra),
            os(&[("PATH", "/bin"), ("HOME", "/session"), ("ANTHROPIC_API_KEY", "k")])
        );
    }

    #[tokio::test]
    async fn child_does_not_see_scrubbed_variables() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = sh(
            "echo \"[$CLAUDECODE][$CLAUDE_CODE_ENTRYPOINT][$CLAUDE_CODE_SSE_PORT][$KEEP][$EXTRA][$(pwd)]\"",
            dir.path(),
        );
        spec.env.push(("EXTRA".into(), "x".into()));
        spec.env.push(("CLAUDE_CODE_SSE_PORT".into(), "9".into()));
        let base = os(&[
            ("CLAUDECODE", "1"),
            ("CLAUDE_CODE_ENTRYPOINT", "cli"),
            ("CLAUDE_CODE_SSE_PORT", "1"),
            ("KEEP", "kept"),
        ]);
        let mut child = spawn_with_env(&spec, base, None, Masker::default()).unwrap();
        let out = stdout_of(&mut child).await;
        let cwd = dir.path().canonicalize().unwrap();
        assert_eq!(out.trim(), format!("[][][][kept][x][{}]", cwd.display()));
        assert!(child.wait().await.unwrap().success());
    }

    #[tokio::test]
    async fn spawn_inherits_the_daemon_environment() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn(&sh("echo \"$PATH\"", dir.path())).unwrap();
        let out = stdout_of(&mut child).await;
        assert_eq!(out.trim(), std::env::var("PATH").unwrap_or_default());
    }

    #[tokio::test]
    async fn spawn_failure_names_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ChildSpec {
            command: PathBuf::from("/nonexistent/oma-agent-test-binary"),
            args: Vec::new(),
            cwd: dir.path().to_owned(),
            env: Vec::new(),
        };
        let err = spawn(&spec).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("oma-agent-test-binary"), "{err}");
    }

    fn alive(pid: i32) -> bool {
        nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
    }

    #[tokio::test]
    async fn terminate_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        // The shell ignores SIGTERM, so only the group SIGKILL stops it; its
        // background sleep is a grandchild of ours.
        let mut child = spawn(&sh("trap '' TERM; sleep 100 & echo $!; wait", dir.path())).unwrap();
        let mut lines = tokio::io::BufReader::new(child.take_stdout().unwrap()).lines();
        let grandchild: i32 = lines.next_line().await.unwrap().unwrap().trim().parse().unwrap();
        assert!(alive(grandchild));
        let started = std::time::Instant::now();
        let status = child.terminate(Duration::from_millis(400)).await.unwrap();
        assert!(!status.success());
        assert!(started.elapsed() < Duration::from_secs(5));
        // The grandchild is reparented to init (or a subreaper), which reaps it.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive(grandchild) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(grandchild), "grandchild {grandchild} survived");
    }

    #[tokio::test]
    async fn terminate_lets_a_polite_child_exit_on_stdin_eof() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn(&sh("cat >/dev/null; exit 7", dir.path())).unwrap();
        let status = child.terminate(Duration::from_secs(10)).await.unwrap();
        assert_eq!(status.code(), Some(7));
    }

    #[tokio::test]
    async fn sigterm_stops_a_child_that_ignores_eof() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn(&sh("exec sleep 100", dir.path())).unwrap();
        let started = std::time::Instant::now();
        let status = child.terminate(Duration::from_millis(200)).await.unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(Signal::SIGTERM as i32)
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn dropping_the_child_kills_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn(&sh("sleep 100 & echo $!; wait", dir.path())).unwrap();
        let mut lines = tokio::io::BufReader::new(child.take_stdout().unwrap()).lines();
        let grandchild: i32 = lines.next_line().await.unwrap().unwrap().trim().parse().unwrap();
        drop(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive(grandchild) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(grandchild));
    }

    #[tokio::test]
    async fn stderr_is_kept_bounded_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logs").join("agent.stderr");
        // 3 MiB of numbered lines, then a last line.
        let script = "i=0; while [ $i -lt 3072 ]; do printf '%01023d\\n' $i; i=$((i+1)); done >&2; echo the-end >&2";
        let mut child = spawn_logged(&sh(script, dir.path()), Some(log.clone()), Masker::default()).unwrap();
        child.wait().await.unwrap();
        child.stderr_drained(Duration::from_secs(10)).await;
        let memory = child.stderr_log().contents();
        assert!(memory.len() <= STDERR_MEMORY_BYTES);
        assert!(memory.len() > STDERR_MEMORY_BYTES - 1024);
        assert!(memory.ends_with("the-end\n"));
        let tail = child.stderr_log().tail();
        assert!(tail.len() <= STDERR_TAIL_BYTES);
        assert!(tail.ends_with("the-end"));
        assert!(tail.starts_with('0'), "the tail starts at a line boundary");
        let on_disk = std::fs::metadata(&log).unwrap().len();
        assert!(on_disk <= STDERR_FILE_MAX_BYTES, "{on_disk}");
        assert!(std::fs::read_to_string(&log).unwrap().ends_with("the-end\n"));
        let rotated = std::fs::metadata(dir.path().join("logs").join("agent.stderr.1"))
            .unwrap()
            .len();
        assert!(rotated <= STDERR_FILE_MAX_BYTES);
        assert!(rotated >= STDERR_FILE_MAX_BYTES / 2);
    }
}
