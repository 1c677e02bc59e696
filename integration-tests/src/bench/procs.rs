//! Real processes for the benchmarks, started by the harness
//! (`oma_integration_tests::{ControlPlane, AgentDaemon}`) with the bench's
//! flags and their stderr in files of the work folder; and what `/proc`
//! says about a process (RSS, CPU time).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use oma_integration_tests::{AgentDaemon, Clients, ControlPlane, ControlPlaneOptions, TestDatabase};

/// The path of a workspace binary, or an error saying how to build it.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    oma_integration_tests::try_bin(name)
        .context("run `cargo build --release -p oma-integration-tests -p oma-control-plane -p oma-agent`")
}

/// A new stderr log file of `name` in the work folder (see
/// [`count_log_lines`]).
fn stderr_log(log_dir: &Path, name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    log_dir.join(format!("{name}-{}.stderr.log", NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// How the bench starts a control plane: the harness's, with limits for
/// a fleet and its stderr in the work folder.
pub fn control_plane_options(log_dir: &Path) -> ControlPlaneOptions {
    let extra_args = [
        // The scale run pairs thousands of machines from one address.
        "--unauthenticated-rate",
        "off",
        // One tenant (the bench's admin) plays a whole fleet: the scale
        // and team runs pair thousands of runtimes (codes first, then the
        // exchanges), the idle run holds 1,000 sessions, the team run one
        // watcher per session.
        "--quota-runtimes",
        "1000000",
        "--quota-connect-codes",
        "1000000",
        "--quota-sessions",
        "1000000",
        "--max-watchers-per-tenant",
        "100000",
    ];
    ControlPlaneOptions {
        extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
        stderr_log: Some(stderr_log(log_dir, "oma-control-plane")),
        log_filter: Some(log_level()),
        ..Default::default()
    }
}

/// Starts a control plane on a fresh database and waits until it listens.
pub fn start_control_plane(database: TestDatabase, log_dir: &Path) -> anyhow::Result<ControlPlane> {
    bin("oma-control-plane")?;
    ControlPlane::start(database, control_plane_options(log_dir))
}

/// Pairs a machine (the harness's `AgentDaemon`: `test` is the scripted
/// agent) with a fresh connect code and starts `oma-agent run`.
pub async fn start_daemon(cp: &ControlPlane, clients: &mut Clients, log_dir: &Path) -> anyhow::Result<AgentDaemon> {
    bin("oma-agent")?;
    bin("oma-test-agent")?;
    let code = clients.connect_code().await?;
    let mut daemon = AgentDaemon::setup(&cp.url(), &code)?;
    daemon.stderr_log = Some(stderr_log(log_dir, "oma-agent"));
    daemon.log_filter = log_level();
    // The bench holds more sessions on one machine than the default allows
    // (the idle run: 1,000); every session stays held.
    daemon.start(&["--max-sessions", "100000"])?;
    Ok(daemon)
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
