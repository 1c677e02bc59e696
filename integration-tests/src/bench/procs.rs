//! Real processes for the benchmarks: where the binaries are, a child
//! process killed on drop (with its pid, for `/proc`), a control plane and a
//! paired `oma-agent`, and what `/proc` says about a process (RSS, CPU time).

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use oma_integration_tests::{Bearer, Clients, TestDatabase};
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint};

/// How long a process gets to print its start line.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// The folder holding the workspace's binaries: next to this executable
/// (`target/release/oma-bench`), or one up when it runs from `deps/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let here = exe.parent().expect("the executable's folder").to_path_buf();
    if here.join("oma-control-plane").exists() {
        return here;
    }
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

/// The path of a workspace binary, or an error saying how to build it.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir().join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is not built; run `cargo build --release -p oma-integration-tests -p oma-control-plane -p oma-agent`",
        path.display()
    );
    Ok(path)
}

/// A child process killed on drop; stdout lines are collected, stderr goes
/// to a file.
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    name: String,
    pub stderr_path: PathBuf,
}

impl Proc {
    pub fn spawn(mut command: Command, name: &str, log_dir: &Path) -> anyhow::Result<Proc> {
        let stderr_path = log_dir.join(format!("{name}-{}.stderr.log", unique()));
        let stderr = std::fs::File::create(&stderr_path)?;
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(stderr);
        let mut child = command.spawn().with_context(|| format!("cannot start {name}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            child,
            lines: rx,
            seen: Vec::new(),
            name: name.to_owned(),
            stderr_path,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line for which `pick` returns `Some`.
    pub fn wait_for_line<T>(
        &mut self,
        deadline: Duration,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> anyhow::Result<T> {
        if let Some(found) = self.seen.iter().find_map(|l| pick(l)) {
            return Ok(found);
        }
        let start = Instant::now();
        loop {
            let left = deadline.checked_sub(start.elapsed()).unwrap_or_default();
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = pick(&line);
                    self.seen.push(line);
                    if let Some(found) = found {
                        return Ok(found);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                    "{} printed no expected line within {deadline:?} (stderr: {})",
                    self.name,
                    self.stderr_path.display()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    bail!(
                        "{} exited ({status:?}) before printing the expected line (stderr: {})",
                        self.name,
                        self.stderr_path.display()
                    )
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed).to_string()
}

/// A running `oma-control-plane`.
pub struct ControlPlane {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub admin_token: String,
    pub database: TestDatabase,
}

impl ControlPlane {
    /// Starts on a fresh database and waits until it listens.
    pub fn start(database: TestDatabase, log_dir: &Path) -> anyhow::Result<ControlPlane> {
        let mut proc = Proc::spawn(Self::command(&database)?, "oma-control-plane", log_dir)?;
        let admin_token = oma_integration_tests::read_token_file(
            &proc.wait_for_line(START_DEADLINE, oma_integration_tests::bootstrap_token_path)?,
        )?;
        let addr = Self::wait_listening(&mut proc)?;
        Ok(ControlPlane {
            proc,
            addr,
            admin_token,
            database,
        })
    }

    /// The serve command on `database`, listening on a free loopback port.
    pub fn command(database: &TestDatabase) -> anyhow::Result<Command> {
        let mut command = Command::new(bin("oma-control-plane")?);
        command
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(database.serve_args())
            // The scale run pairs thousands of machines from one address.
            .args(["--unauthenticated-rate", "off"])
            // One tenant (the bench's admin) plays a whole fleet: the scale
            // and team runs pair thousands of runtimes (codes first, then
            // the exchanges), the idle run holds 1,000 sessions, the team run
            // one watcher per session.
            .args(["--quota-runtimes", "1000000", "--quota-connect-codes", "1000000"])
            .args(["--quota-sessions", "1000000", "--max-watchers-per-tenant", "100000"])
            .env("OMA_LOG", log_level());
        Ok(command)
    }

    pub fn wait_listening(proc: &mut Proc) -> anyhow::Result<SocketAddr> {
        proc.wait_for_line(START_DEADLINE, |line| {
            line.strip_prefix("oma-control-plane listening on ")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse::<SocketAddr>().ok())
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Endpoint::from_shared(self.url())?.tcp_nodelay(true).connect().await?)
    }

    /// Clients with the bootstrap admin's token, on a new connection.
    pub async fn clients(&self) -> anyhow::Result<Clients> {
        Ok(Clients::new(self.channel().await?, Bearer::new(&self.admin_token)))
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

/// A paired `oma-agent` whose agent table maps `test` to `oma-test-agent`.
pub struct AgentDaemon {
    pub proc: Option<Proc>,
    pub runtime_id: String,
    config_dir: TempDir,
    data_dir: TempDir,
    log_dir: PathBuf,
}

impl AgentDaemon {
    /// Pairs with a fresh connect code and starts `oma-agent run`.
    pub async fn start(cp: &ControlPlane, clients: &mut Clients, log_dir: &Path) -> anyhow::Result<AgentDaemon> {
        let code = clients.connect_code().await?;
        let config_dir = tempfile::tempdir()?;
        let data_dir = tempfile::tempdir()?;
        let agents_toml = format!(
            "[[agent]]\nid = \"test\"\nname = \"Scripted test agent\"\ncommand = \"{}\"\n",
            bin("oma-test-agent")?.display()
        );
        std::fs::write(config_dir.path().join("agents.toml"), agents_toml)?;
        let output = Self::command(config_dir.path(), data_dir.path())?
            .args([
                "setup",
                "--server",
                &cp.url(),
                "--code",
                &code,
                "--name",
                "bench-machine",
            ])
            .env("OMA_LOG", "warn")
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "oma-agent setup failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout)?;
        let runtime_id = stdout
            .lines()
            .find_map(|l| l.strip_prefix("paired as runtime "))
            .and_then(|rest| rest.split_whitespace().next())
            .context("oma-agent setup printed no runtime id")?
            .to_owned();
        let mut daemon = AgentDaemon {
            proc: None,
            runtime_id,
            config_dir,
            data_dir,
            log_dir: log_dir.to_owned(),
        };
        daemon.run()?;
        Ok(daemon)
    }

    /// Starts `oma-agent run` and waits until it says it runs.
    fn run(&mut self) -> anyhow::Result<()> {
        let mut command = Self::command(self.config_dir.path(), self.data_dir.path())?;
        command
            .args(["run", "--reconnect-max", "2"])
            // The bench holds more sessions on one machine than the default
            // allows (the idle run: 1,000); every session stays held.
            .args(["--max-sessions", "100000"])
            .env("OMA_LOG", log_level());
        let mut proc = Proc::spawn(command, "oma-agent", &self.log_dir)?;
        proc.wait_for_line(START_DEADLINE, |l| l.starts_with("oma-agent ").then_some(()))?;
        self.proc = Some(proc);
        Ok(())
    }

    /// Kills the daemon (SIGKILL) and starts it again: it reconnects and
    /// resends every event the control plane has not acknowledged.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        drop(self.proc.take());
        self.run()
    }

    fn command(config_dir: &Path, data_dir: &Path) -> anyhow::Result<Command> {
        let mut command = Command::new(bin("oma-agent")?);
        command
            .arg("--config-dir")
            .arg(config_dir)
            .arg("--data-dir")
            .arg(data_dir);
        Ok(command)
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, Proc::pid)
    }
}

/// Resident memory of a process in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kib * 1024)
}

/// Clock ticks per second of `/proc/PID/stat` times (USER_HZ: 100 on Linux).
const TICKS_PER_SEC: u64 = 100;

/// User + system CPU time a process has used (all its threads, including
/// ones that have exited), from `/proc/PID/stat`; 10 ms resolution.
pub fn cpu_time(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((ticks(14) + ticks(15)) * 1000 / TICKS_PER_SEC)
}

/// The direct children of a process.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

/// Nanosecond CPU time per live thread, from `/proc/PID/task/TID/schedstat`.
/// A thread that exits between two snapshots loses its time (use
/// [`CpuSnapshot::since`], which counts only threads in the later one).
pub struct CpuSnapshot {
    threads: HashMap<u32, u64>,
}

impl CpuSnapshot {
    pub fn take(pid: u32) -> CpuSnapshot {
        let mut threads = HashMap::new();
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some(ns) = std::fs::read_to_string(task.path().join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
                {
                    threads.insert(tid, ns);
                }
            }
        }
        CpuSnapshot { threads }
    }

    /// CPU time used since `earlier` by the threads alive now.
    pub fn since(&self, earlier: &CpuSnapshot) -> Duration {
        let ns: u64 = self
            .threads
            .iter()
            .map(|(tid, now)| now.saturating_sub(earlier.threads.get(tid).copied().unwrap_or(0)))
            .sum();
        Duration::from_nanos(ns)
    }
}

/// The log filter of the started binaries: `OMA_BENCH_LOG`, else warnings
/// (their stderr goes to files in the work folder, which the bench reads
/// for refused events).
fn log_level() -> String {
    std::env::var("OMA_BENCH_LOG").unwrap_or_else(|_| "warn".into())
}

/// Lines containing `needle` in the stderr logs of the work folder.
pub fn count_log_lines(log_dir: &Path, needle: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(log_dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".stderr.log"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|text| text.lines().filter(|l| l.contains(needle)).count())
        .sum()
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
