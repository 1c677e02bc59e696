//! `oma-bench`: starts the real binaries on loopback and prints one table of
//! relay latency (beside a direct stdio reader and an `ssh localhost` pipe),
//! throughput of durably stored events, connection scale, replay and
//! footprint. See BENCHMARKS.md for a run and how to read it.
//!
//! ```text
//! cargo run --release -p oma-integration-tests --bin oma-bench [-- OPTIONS]
//!   --smoke          every scenario once at a tiny size (what `cargo test` runs)
//!   --runtimes N     connection-scale size (default 1000; the target is 10000)
//!   --events N       events of the 1-session throughput run and the replay (default 100000)
//!   --idle-sessions N  idle sessions of the memory-per-session run (default 1000)
//!   --only LIST      comma-separated: footprint,latency,throughput,replay,scale,idle,shutdown,team
//!                    (cp-latency: only latency's control-plane-alone and bare-relay rows, the
//!                    quick loop when working on the control plane's path)
//!                    (team, PostgreSQL only, runs only when named or with --smoke)
//!   --no-ssh         skip the ssh localhost baseline
//! ```
//! PostgreSQL rows run when `OMA_TEST_POSTGRES_URL` names a server.

#[path = "../bench/acp_client.rs"]
mod acp_client;
#[path = "../bench/cp_only.rs"]
mod cp_only;
#[path = "../bench/env.rs"]
mod env;
#[path = "../bench/floor.rs"]
mod floor;
#[path = "../bench/footprint.rs"]
mod footprint;
#[path = "../bench/idle.rs"]
mod idle;
#[path = "../bench/latency.rs"]
mod latency;
#[path = "../bench/procs.rs"]
mod procs;
#[path = "../bench/report.rs"]
mod report;
#[path = "../bench/scale.rs"]
mod scale;
#[path = "../bench/shutdown.rs"]
mod shutdown;
#[path = "../bench/sshd.rs"]
mod sshd;
#[path = "../bench/stats.rs"]
mod stats;
#[path = "../bench/team.rs"]
mod team;
#[path = "../bench/throughput.rs"]
mod throughput;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use oma_integration_tests::TestDatabase;
use oma_integration_tests::postgres::POSTGRES_URL_ENV;

use crate::report::{Report, Verdict, verdict};
use crate::stats::{Latency, bytes, dur, ns, ns_signed, rate, thousands};

const USAGE: &str = "usage: oma-bench [--smoke] [--runtimes N] [--events N] [--idle-sessions N] \
                     [--only footprint,latency,cp-latency,throughput,replay,scale,idle,shutdown,team] [--no-ssh]\n\
                     team (PostgreSQL: 2,000 runtimes, 200 sessions × 50/s for 30 s) runs only with \
                     --only team (or --smoke), as it takes minutes";

/// Every scenario `--only` knows.
const SCENARIOS: [&str; 9] = [
    "footprint",
    "latency",
    "cp-latency",
    "throughput",
    "replay",
    "scale",
    "idle",
    "shutdown",
    "team",
];

/// How to read the table, printed under it.
const LEGEND: &str = "\
latency: from the test agent's write of a chunk (the sent_unix_ns it stamps) to the reader's receive; \
direct = a minimal ACP client on the agent's own stdio, ssh = the same client through `ssh 127.0.0.1`, \
OMA = oma-agent → control plane (stored, then fanned out) → a WatchSession client.
throughput: test agents write `chunks N` at full speed; wall time from the prompts until every session's \
last_seq (advanced in the same transaction that stores the events) covers all N; CPU from /proc/PID/stat.
replay: WatchSession from seq 1 of the filled 1-session run until its last event arrives.
scale: one process pairs N runtimes, then opens N OpenStream calls (Hello, heartbeats) over N/100 HTTP/2 \
connections; RSS from /proc/PID/status before and after.";

/// What to run, and how big.
struct Options {
    smoke: bool,
    runtimes: usize,
    only: Option<Vec<String>>,
    ssh: bool,
    /// Events of the 1-session throughput run (and so of the replay).
    events: u64,
    /// Sessions of the idle run (0: the default).
    idle_sessions: usize,
}

impl Options {
    fn parse() -> Result<Options, String> {
        let mut options = Options {
            smoke: false,
            runtimes: 0,
            only: None,
            ssh: true,
            events: 0,
            idle_sessions: 0,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--smoke" => options.smoke = true,
                "--no-ssh" => options.ssh = false,
                "--runtimes" => {
                    options.runtimes = args
                        .next()
                        .and_then(|n| n.parse().ok())
                        .filter(|n| *n > 0)
                        .ok_or("--runtimes takes a positive number")?;
                }
                "--events" => {
                    options.events = args
                        .next()
                        .and_then(|n| n.parse().ok())
                        .filter(|n| *n > 0)
                        .ok_or("--events takes a positive number")?;
                }
                "--idle-sessions" => {
                    options.idle_sessions = args
                        .next()
                        .and_then(|n| n.parse().ok())
                        .filter(|n| *n > 0)
                        .ok_or("--idle-sessions takes a positive number")?;
                }
                "--only" => {
                    let list: Vec<String> = args
                        .next()
                        .ok_or("--only takes a comma-separated list")?
                        .split(',')
                        .map(|s| s.trim().to_owned())
                        .collect();
                    for name in &list {
                        if !SCENARIOS.contains(&name.as_str()) {
                            return Err(format!("unknown scenario {name:?}"));
                        }
                    }
                    options.only = Some(list);
                }
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(options)
    }

    fn wants(&self, scenario: &str) -> bool {
        self.only.as_ref().is_none_or(|list| list.iter().any(|s| s == scenario))
    }
}

/// Sizes of a full run and of a smoke run.
struct Sizes {
    /// (events/s, events) per latency rate.
    rates: Vec<(f64, u64)>,
    warmup: u64,
    one_session: u64,
    many_sessions: usize,
    many_each: u64,
    /// Events per run of the control-plane-alone throughput.
    cp_only: u64,
    idle_window: Duration,
    settle: Duration,
    starts: usize,
    cold_starts: usize,
    runtimes: usize,
}

impl Sizes {
    fn new(options: &Options) -> Sizes {
        if options.smoke {
            Sizes {
                rates: vec![(100.0, 10), (1000.0, 20), (10000.0, 50)],
                warmup: 5,
                one_session: if options.events > 0 { options.events } else { 200 },
                many_sessions: 3,
                many_each: 50,
                cp_only: 200,
                idle_window: Duration::from_millis(500),
                settle: Duration::from_millis(100),
                starts: 1,
                cold_starts: 1,
                runtimes: if options.runtimes > 0 { options.runtimes } else { 5 },
            }
        } else {
            Sizes {
                rates: vec![(100.0, 1000), (1000.0, 5000), (10000.0, 30000)],
                warmup: 200,
                one_session: if options.events > 0 { options.events } else { 100_000 },
                many_sessions: 100,
                many_each: 1000,
                cp_only: 20_000,
                idle_window: Duration::from_secs(10),
                settle: Duration::from_secs(2),
                starts: 10,
                cold_starts: 3,
                runtimes: if options.runtimes > 0 { options.runtimes } else { 1000 },
            }
        }
    }
}

fn progress(message: &str) {
    eprintln!("oma-bench: {message}");
}

fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or_else(|| "? GiB".into(), |kib| format!("{:.1} GiB", kib as f64 / 1048576.0));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu}), {mem} RAM")
}

fn lat(l: &Latency) -> String {
    format!("p50 {} · p99 {} · p99.9 {}", ns(l.p50), ns(l.p99), ns(l.p999))
}

fn diff(a: u64, b: u64) -> i64 {
    a as i64 - b as i64
}

fn ratio(a: u64, b: u64) -> String {
    if b == 0 {
        "—".into()
    } else {
        format!("{:.2}×", a as f64 / b as f64)
    }
}

/// ns per event as µs with one decimal.
fn us1(value: u64) -> String {
    format!("{:.1} µs", value as f64 / 1000.0)
}

fn rate_label(r: f64) -> String {
    format!("{}/s", thousands(r as u64))
}

/// Records a failed scenario in the table and the failure list.
fn failed(report: &mut Report, failures: &mut Vec<String>, what: &str, error: &anyhow::Error) {
    let message = format!("{error:#}");
    progress(&format!("{what} FAILED: {message}"));
    report.info(what, format!("ERROR: {message}"));
    failures.push(format!("{what}: {message}"));
}

fn latency_rows(report: &mut Report, results: &[latency::RateResult]) {
    report.section("latency");
    for r in results {
        let at = rate_label(r.rate);
        report.info(format!("{at}, n={}: direct stdio (the floor)", r.count), lat(&r.direct));
        report.info(
            format!("{at}: ssh localhost pipe"),
            match &r.ssh {
                Ok(l) => lat(l),
                Err(why) => why.clone(),
            },
        );
        report.info(
            format!("{at}: OMA relay (oma-agent → control plane → WatchSession)"),
            lat(&r.relay),
        );
        report.info(
            format!("{at}: OMA split at oma-agent's read stamp"),
            format!(
                "child → oma-agent p50 {} p99 {}; oma-agent → watcher p50 {} p99 {}",
                ns(r.relay_to_agent.p50),
                ns(r.relay_to_agent.p99),
                ns(r.relay_from_agent.p50),
                ns(r.relay_from_agent.p99)
            ),
        );
        report.info(
            format!("{at}: OMA added over direct"),
            format!(
                "p50 {} · p99 {} · p99.9 {}",
                ns_signed(diff(r.relay.p50, r.direct.p50)),
                ns_signed(diff(r.relay.p99, r.direct.p99)),
                ns_signed(diff(r.relay.p999, r.direct.p999))
            ),
        );
        report.info(
            format!("{at}: OMA ÷ ssh"),
            match &r.ssh {
                Ok(s) => format!(
                    "p50 {} · p99 {} · p99.9 {}",
                    ratio(r.relay.p50, s.p50),
                    ratio(r.relay.p99, s.p99),
                    ratio(r.relay.p999, s.p999)
                ),
                Err(_) => "n/a".into(),
            },
        );
    }
    if let Some(r) = results.iter().find(|r| (r.rate - 1000.0).abs() < 1.0) {
        let p50 = diff(r.relay.p50, r.direct.p50);
        let p99 = diff(r.relay.p99, r.direct.p99);
        report.target(
            "added relay latency p50 at 1,000/s",
            ns_signed(p50),
            "≤ 250 µs",
            verdict(p50 <= 250_000),
        );
        report.target(
            "added relay latency p99 at 1,000/s",
            ns_signed(p99),
            "≤ 1 ms",
            verdict(p99 <= 1_000_000),
        );
        match &r.ssh {
            Ok(s) => report.target(
                "OMA relay vs ssh pipe at 1,000/s",
                format!(
                    "p50 {} vs {} ({}) · p99 {} vs {}",
                    ns(r.relay.p50),
                    ns(s.p50),
                    ratio(r.relay.p50, s.p50),
                    ns(r.relay.p99),
                    ns(s.p99)
                ),
                "p50 ≤ 1.5× ssh's",
                verdict(r.relay.p50 as f64 <= 1.5 * s.p50 as f64),
            ),
            Err(why) => report.target(
                "OMA relay vs ssh pipe at 1,000/s",
                why.clone(),
                "p50 ≤ 1.5× ssh's",
                Verdict::Unknown,
            ),
        }
    }
    if let Some(r) = results.iter().find(|r| (r.rate - 10_000.0).abs() < 1.0) {
        report.target(
            "relay p99 at 10,000/s (keeps up: no backlog)",
            ns(r.relay.p99),
            "≤ 10 ms",
            verdict(r.relay.p99 <= 10_000_000),
        );
    }
}

/// What a throughput row must reach: the rate, and how the target reads.
struct RateTarget {
    per_sec: f64,
    reads: String,
}

impl RateTarget {
    fn at_least(per_sec: f64) -> Option<RateTarget> {
        Some(RateTarget {
            per_sec,
            reads: format!("≥ {}/s", thousands(per_sec as u64)),
        })
    }
}

fn throughput_rows(report: &mut Report, label: &str, t: &throughput::Throughput, target: Option<RateTarget>) {
    let what = format!(
        "{label}: {} session{} × {} events",
        t.sessions,
        if t.sessions == 1 { "" } else { "s" },
        thousands(t.events / t.sessions as u64)
    );
    let value = format!("{} ({})", rate(t.per_sec()), dur(t.elapsed));
    match target {
        Some(target) => report.target(what, value, &target.reads, verdict(t.per_sec() >= target.per_sec)),
        None => report.info(what, value),
    }
    let busy = (t.cp_cpu + t.agent_cpu + t.children_cpu).as_secs_f64() / t.elapsed.as_secs_f64().max(1e-9);
    report.info(
        format!("{label}, {} session(s): CPU per event", t.sessions),
        format!(
            "control plane {} · oma-agent {} · test agent(s) {} ({:.2} of 2 cores busy)",
            us1(t.cpu_per_event(t.cp_cpu)),
            us1(t.cpu_per_event(t.agent_cpu)),
            us1(t.cpu_per_event(t.children_cpu)),
            busy
        ),
    );
}

/// The targets of one store's throughput rows (none in `--smoke`).
struct StoreTargets {
    one_session: Option<RateTarget>,
    many_sessions: Option<RateTarget>,
    replay: bool,
}

/// Throughput (1 session, many sessions) and replay on one environment.
#[allow(clippy::too_many_arguments)]
async fn store_scenarios(
    env: &mut env::Env,
    label: &str,
    one_session: u64,
    sizes: &Sizes,
    options: &Options,
    report: &mut Report,
    failures: &mut Vec<String>,
    targets: StoreTargets,
) {
    let mut filled: Option<String> = None;
    if options.wants("throughput") || options.wants("replay") {
        progress(&format!(
            "{label}: throughput, 1 session × {} events",
            thousands(one_session)
        ));
        report.section("throughput");
        match throughput::run(env, 1, one_session).await {
            Ok(t) => {
                throughput_rows(report, label, &t, targets.one_session);
                filled = t.session_ids.first().cloned();
            }
            Err(e) => failed(report, failures, &format!("{label}: throughput, 1 session"), &e),
        }
    }
    if options.wants("throughput") {
        progress(&format!(
            "{label}: throughput, {} sessions × {} events",
            sizes.many_sessions, sizes.many_each
        ));
        report.section("throughput");
        match throughput::run(env, sizes.many_sessions, sizes.many_each).await {
            Ok(t) => throughput_rows(report, label, &t, targets.many_sessions),
            Err(e) => failed(report, failures, &format!("{label}: throughput, many sessions"), &e),
        }
    }
    if options.wants("throughput") {
        report.section("throughput");
        for (sessions, per_frame) in [(1, 1), (1, 100), (100, 1)] {
            let sessions = sessions.min(sizes.many_sessions);
            let each = sizes.cp_only / sessions as u64;
            progress(&format!(
                "{label}: control plane alone, {sessions} session(s), {per_frame} event(s) per frame"
            ));
            let tag = format!("{sessions}x{per_frame}");
            match cp_only::run(env, sessions, each, per_frame, &tag).await {
                Ok(r) => report.info(
                    format!(
                        "{label}: control plane alone (synthetic runtime), {} session(s) × {}, {} event(s)/frame",
                        r.sessions,
                        thousands(each),
                        r.per_frame
                    ),
                    format!(
                        "{} ({}; control plane {} CPU/event)",
                        rate(r.per_sec()),
                        dur(r.elapsed),
                        us1(r.cpu_per_event_ns())
                    ),
                ),
                Err(e) => failed(report, failures, &format!("{label}: control plane alone {tag}"), &e),
            }
        }
    }
    if options.wants("replay")
        && let Some(session_id) = filled
    {
        progress(&format!("{label}: replay"));
        report.section("replay");
        match throughput::replay(env, &session_id).await {
            Ok((count, elapsed)) => {
                let what = format!("{label}: {} events", thousands(count));
                let value = format!("{} ({})", dur(elapsed), rate(count as f64 / elapsed.as_secs_f64()));
                if targets.replay {
                    report.target(
                        what,
                        value,
                        "< 1 s for 100,000",
                        verdict(elapsed < Duration::from_secs(1)),
                    );
                } else {
                    report.info(what, value);
                }
            }
            Err(e) => failed(report, failures, &format!("{label}: replay"), &e),
        }
    }
}

async fn run(options: &Options, work: &Path, report: &mut Report, failures: &mut Vec<String>) {
    let sizes = Sizes::new(options);
    let postgres = std::env::var(POSTGRES_URL_ENV).is_ok();
    let mut stuck_sessions = 0;

    if options.wants("footprint") {
        report.section("footprint");
        progress("footprint: control-plane cold start");
        let mut backends = vec![("SQLite", false)];
        if postgres {
            backends.push(("PostgreSQL", true));
        }
        for (label, pg) in backends {
            let mut fresh = Vec::new();
            let mut restart = Vec::new();
            let mut error = None;
            for _ in 0..sizes.cold_starts {
                let database = if pg {
                    TestDatabase::postgres("oma-bench cold start")
                        .and_then(|d| d.ok_or_else(|| anyhow::anyhow!("gone")))
                } else {
                    TestDatabase::sqlite()
                };
                match async { footprint::cold_start(database?, work).await }.await {
                    Ok((f, r)) => {
                        fresh.push(f);
                        restart.push(r);
                    }
                    Err(e) => error = Some(e),
                }
            }
            match error {
                Some(e) => failed(report, failures, &format!("{label}: control-plane cold start"), &e),
                None => {
                    report.info(
                        format!(
                            "control-plane cold start → first WhoAmI, {label}, new database (median of {})",
                            fresh.len()
                        ),
                        dur(stats::median(&fresh)),
                    );
                    report.info(
                        format!(
                            "control-plane restart → first WhoAmI, {label}, same database (median of {})",
                            restart.len()
                        ),
                        dur(stats::median(&restart)),
                    );
                }
            }
        }
    }

    let needs_env = ["footprint", "latency", "cp-latency", "throughput", "replay"]
        .iter()
        .any(|s| options.wants(s));
    if needs_env {
        progress("starting the control plane (SQLite) and a paired oma-agent");
        let env = match TestDatabase::sqlite() {
            Ok(database) => env::Env::start(database, work).await,
            Err(e) => Err(e),
        };
        match env {
            Err(e) => failed(report, failures, "SQLite environment", &e),
            Ok(mut env) => {
                if options.wants("footprint") {
                    report.section("footprint");
                    progress(&format!("footprint: oma-agent idle for {:?}", sizes.idle_window));
                    tokio::time::sleep(sizes.settle).await;
                    match footprint::idle(env.daemon_pid(), sizes.idle_window).await {
                        Ok(idle) => {
                            report.target(
                                "oma-agent idle RSS (connected, no sessions)",
                                bytes(idle.rss),
                                "< 20 MiB",
                                verdict(idle.rss < 20 * 1024 * 1024),
                            );
                            let share = idle.cpu.as_secs_f64() / idle.window.as_secs_f64() * 100.0;
                            report.target(
                                format!("oma-agent idle CPU over {}", dur(idle.window)),
                                format!(
                                    "{} ({share:.3} % of a core; /proc stat ticks: {})",
                                    dur(idle.cpu),
                                    dur(idle.cpu_ticks)
                                ),
                                "near zero (< 0.1 % of a core)",
                                verdict(share < 0.1),
                            );
                        }
                        Err(e) => failed(report, failures, "oma-agent idle", &e),
                    }
                    progress("footprint: session start");
                    match footprint::session_start(&mut env, sizes.starts, work).await {
                        Ok((oma, direct)) => {
                            let (oma, direct) = (stats::median(&oma), stats::median(&direct));
                            report.info(
                                format!("session start: CreateSession → idle event (median of {})", sizes.starts),
                                dur(oma),
                            );
                            report.info(
                                format!(
                                    "test agent's own start: spawn → session/new answered (median of {})",
                                    sizes.starts
                                ),
                                dur(direct),
                            );
                            report.info(
                                "session start overhead beyond the ACP agent's own start",
                                ns_signed(diff(oma.as_nanos() as u64, direct.as_nanos() as u64)),
                            );
                        }
                        Err(e) => failed(report, failures, "session start", &e),
                    }
                }
                if options.wants("latency") {
                    let sshd = if !options.ssh {
                        Err("n/a (--no-ssh)".to_owned())
                    } else {
                        progress("latency: starting a private sshd");
                        match tokio::task::spawn_blocking(sshd::Sshd::start).await {
                            Ok(Ok(sshd)) => Ok(sshd),
                            Ok(Err(e)) if e.to_string() == "no sshd" => Err("n/a (no sshd)".to_owned()),
                            Ok(Err(e)) => Err(format!("n/a (sshd: {e:#})")),
                            Err(e) => Err(format!("n/a ({e})")),
                        }
                    };
                    progress("latency: 100, 1,000 and 10,000 events/s on direct stdio, ssh and the relay");
                    let result = latency::run(
                        &mut env,
                        &sizes.rates,
                        sizes.warmup,
                        sshd.as_ref().map_err(Clone::clone),
                        work,
                    )
                    .await;
                    match result {
                        Ok(results) => latency_rows(report, &results),
                        Err(e) => {
                            report.section("latency");
                            failed(report, failures, "relay latency", &e);
                        }
                    }
                }
                if options.wants("latency") || options.wants("cp-latency") {
                    if !options.wants("latency") {
                        report.section("latency");
                    }
                    progress("latency: the control plane alone at 1,000 events/s");
                    match cp_only::latency(&mut env, 1000.0, 5000).await {
                        Ok(l) => report.info(
                            "1,000/s, n=5000: control plane alone (synthetic runtime → commit → watcher, one process both ends)",
                            lat(&l),
                        ),
                        Err(e) => failed(report, failures, "control plane latency", &e),
                    }
                    progress("latency: a bare tonic relay at 1,000 events/s (the floor)");
                    match floor::latency(1000.0, 5000).await {
                        Ok(l) => report.info(
                            "1,000/s, n=5000: bare tonic relay, the architecture's floor (oma-relay-floor: publisher → server → watcher, no database, one process both ends)",
                            lat(&l),
                        ),
                        Err(e) => failed(report, failures, "bare relay latency", &e),
                    }
                }
                let mut source_rate = None;
                if options.wants("throughput") {
                    report.section("throughput");
                    let n = sizes.one_session;
                    let source = tokio::task::spawn_blocking({
                        let work = work.to_owned();
                        move || throughput::source_rate(&work, n)
                    })
                    .await;
                    match source {
                        Ok(Ok(elapsed)) => {
                            source_rate = Some(n as f64 / elapsed.as_secs_f64());
                            report.info(
                                format!(
                                    "the source: one test agent alone, {} chunks at full speed over stdio",
                                    thousands(n)
                                ),
                                format!("{} ({})", rate(n as f64 / elapsed.as_secs_f64()), dur(elapsed)),
                            )
                        }
                        Ok(Err(e)) => failed(report, failures, "test agent alone", &e),
                        Err(e) => failed(report, failures, "test agent alone", &e.into()),
                    }
                }
                let targets = StoreTargets {
                    // The relay keeps up with one agent: 80 % of its own rate.
                    one_session: source_rate.map(|source| RateTarget {
                        per_sec: 0.8 * source,
                        reads: format!("≥ 80 % of the source ({}/s)", thousands((0.8 * source) as u64)),
                    }),
                    many_sessions: RateTarget::at_least(100_000.0),
                    replay: true,
                };
                store_scenarios(
                    &mut env,
                    "SQLite",
                    sizes.one_session,
                    &sizes,
                    options,
                    report,
                    failures,
                    targets,
                )
                .await;
                stuck_sessions += env.stuck_sessions;
                if options.wants("footprint")
                    && let Ok(rss) = procs::rss_bytes(env.daemon_pid())
                {
                    report.section("footprint");
                    report.info("oma-agent RSS after the runs (its sessions idle)", bytes(rss));
                }
            }
        }
    }

    if options.wants("throughput") || options.wants("replay") {
        if postgres {
            progress("starting the control plane (PostgreSQL) and a paired oma-agent");
            let env = match TestDatabase::postgres("oma-bench") {
                Ok(Some(database)) => env::Env::start(database, work).await,
                Ok(None) => Err(anyhow::anyhow!("{POSTGRES_URL_ENV} is not set")),
                Err(e) => Err(e),
            };
            match env {
                Ok(mut env) => {
                    let targets = StoreTargets {
                        one_session: RateTarget::at_least(20_000.0),
                        many_sessions: RateTarget::at_least(50_000.0),
                        replay: false,
                    };
                    store_scenarios(
                        &mut env,
                        "PostgreSQL",
                        sizes.one_session.min(20_000),
                        &sizes,
                        options,
                        report,
                        failures,
                        targets,
                    )
                    .await;
                    stuck_sessions += env.stuck_sessions;
                }
                Err(e) => failed(report, failures, "PostgreSQL environment", &e),
            }
        } else {
            report.section("throughput");
            report.info("PostgreSQL", format!("n/a (set {POSTGRES_URL_ENV})"));
        }
    }

    if options.wants("scale") {
        let n = sizes.runtimes;
        progress(&format!(
            "scale: pairing and connecting {} runtimes",
            thousands(n as u64)
        ));
        report.section("scale");
        // Its own log folder: its pairing burst is counted in its own row.
        let log_dir = work.join("scale");
        let result = match std::fs::create_dir_all(&log_dir) {
            Ok(()) => scale::run(n, sizes.idle_window, &log_dir).await,
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(s) => scale_rows(report, &s),
            Err(e) => failed(report, failures, "connection scale", &e),
        }
    }
    if options.wants("idle") {
        stuck_sessions += idle_scenario(options, work, report, failures).await;
    }
    if options.wants("shutdown") {
        let sessions = if options.smoke { 2 } else { 10 };
        progress(&format!("shutdown: SIGTERM with {sessions} live sessions"));
        report.section("shutdown");
        match shutdown::run(sessions).await {
            Ok(s) => {
                report.target(
                    format!(
                        "oma-agent SIGTERM → exit with {} live sessions whose agents ignore stdin close",
                        s.sessions
                    ),
                    dur(s.elapsed),
                    "≤ 3 s",
                    verdict(s.elapsed <= Duration::from_secs(3)),
                );
                report.target(
                    "ACP children left running after the daemon exited",
                    s.left.to_string(),
                    "0",
                    verdict(s.left == 0),
                );
            }
            Err(e) => failed(report, failures, "shutdown", &e),
        }
    }
    if options.wants("team") {
        stuck_sessions += team_scenario(options, work, report, failures).await;
    }
    report.section("health");
    let refused = procs::count_log_lines(work, "events refused");
    let locked = procs::count_log_lines(work, "database is locked");
    report.target(
        "events the control plane refused (log: \"events refused\"; never acked, stuck until a reconnect)",
        refused.to_string(),
        "0",
        verdict(refused == 0),
    );
    report.target(
        "\"database is locked\" errors in the control-plane logs",
        locked.to_string(),
        "0",
        verdict(locked == 0),
    );
    report.target(
        "sessions stuck pending until oma-agent was restarted",
        stuck_sessions.to_string(),
        "0",
        verdict(stuck_sessions == 0),
    );
}

/// oma-agent's memory per idle session, on its own SQLite environment;
/// returns the sessions that got stuck.
async fn idle_scenario(options: &Options, work: &Path, report: &mut Report, failures: &mut Vec<String>) -> usize {
    let n = match (options.idle_sessions, options.smoke) {
        (0, true) => 5,
        (0, false) => 1000,
        (n, _) => n,
    };
    let settle = if options.smoke {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(2)
    };
    report.section("idle");
    // oma-agent holds 3 pipes per child, the control plane nothing per
    // session: the daemon inherits the raised limit.
    let limit = scale::raise_nofile_limit();
    if limit != 0 && (n as u64) * 4 + 256 > limit {
        failed(
            report,
            failures,
            "idle sessions",
            &anyhow::anyhow!("the open-files limit ({limit}) is too low for {n} sessions"),
        );
        return 0;
    }
    progress(&format!(
        "idle: starting the control plane (SQLite) and a paired oma-agent for {} idle sessions",
        thousands(n as u64)
    ));
    // Logs in the work folder: the health rows count them.
    let env = match TestDatabase::sqlite() {
        Ok(database) => env::Env::start(database, work).await,
        Err(e) => Err(e),
    };
    let mut env = match env {
        Ok(env) => env,
        Err(e) => {
            failed(report, failures, "idle: SQLite environment", &e);
            return 0;
        }
    };
    match idle::run(&mut env, n, settle).await {
        Ok(r) => idle_rows(report, &r, env.stuck_sessions),
        Err(e) => failed(report, failures, "idle sessions", &e),
    }
    env.stuck_sessions
}

fn idle_rows(report: &mut Report, r: &idle::IdleSessions, stuck: usize) {
    let n = thousands(r.sessions as u64);
    report.info(
        format!(
            "{n} idle sessions of the test agent: how they were made (CreateSession 8 in flight, {} agent(s) of ≤ {} \
             sessions, each batch waited on until all idle via ListSessions)",
            r.agents,
            idle::PER_AGENT
        ),
        format!(
            "{} until all idle{}",
            dur(r.elapsed),
            if stuck > 0 {
                format!("; {stuck} stuck, oma-agent restarted: its RSS before is of the first process")
            } else {
                String::new()
            }
        ),
    );
    report.info(
        format!("oma-agent RSS: connected, no sessions → {n} idle sessions"),
        format!("{} → {}", bytes(r.agent_rss_before), bytes(r.agent_rss_after)),
    );
    let per = r.per_session();
    report.target(
        "oma-agent RSS per idle session ((after − before) ÷ N)",
        bytes(per),
        "≤ 256 KiB per idle session",
        verdict(per <= 256 * 1024),
    );
    report.info(
        format!(
            "the {} test-agent children (not oma-agent's memory): RSS summed · PSS summed (shared pages once)",
            thousands(r.children as u64)
        ),
        format!(
            "{} ({} each) · {} ({} each)",
            bytes(r.children_rss),
            bytes(r.children_rss / r.children.max(1) as u64),
            bytes(r.children_pss),
            bytes(r.children_pss / r.children.max(1) as u64)
        ),
    );
    report.info(
        format!("control-plane RSS: no sessions → {n} idle sessions"),
        format!("{} → {}", bytes(r.cp_rss_before), bytes(r.cp_rss_after)),
    );
}

/// The team day on PostgreSQL; returns the sessions that got stuck.
async fn team_scenario(options: &Options, work: &Path, report: &mut Report, failures: &mut Vec<String>) -> usize {
    report.section("team");
    let named = options
        .only
        .as_ref()
        .is_some_and(|list| list.iter().any(|s| s == "team"));
    if !named && !options.smoke {
        report.info(
            "team day on PostgreSQL (2,000 runtimes, 200 sessions × 50/s)",
            "n/a (takes minutes: run with --only team)",
        );
        return 0;
    }
    if std::env::var(POSTGRES_URL_ENV).is_err() {
        report.info("team day on PostgreSQL", format!("n/a (set {POSTGRES_URL_ENV})"));
        return 0;
    }
    let sizes = team::TeamSizes::new(options.smoke);
    progress(&format!(
        "team: PostgreSQL, {} runtimes, {} sessions × {}/s for {}",
        thousands(sizes.runtimes as u64),
        sizes.sessions,
        sizes.rate,
        dur(sizes.window)
    ));
    // Logs in the work folder: the health rows count them.
    match team::run(&sizes, work).await {
        Ok(t) => {
            team_rows(report, &t);
            if let Some(first) = t.errors.first() {
                failed(
                    report,
                    failures,
                    "team: watchers",
                    &anyhow::anyhow!("{} watcher(s) failed; first: {first}", t.errors.len()),
                );
            }
            t.stuck_sessions
        }
        Err(e) => {
            failed(report, failures, "team day", &e);
            0
        }
    }
}

fn team_rows(report: &mut Report, t: &team::Team) {
    let runtimes = thousands(t.runtimes as u64);
    report.info(
        format!("PostgreSQL: pair {runtimes} runtimes, then connect their streams (Hello, heartbeats)"),
        format!(
            "pairing {} ({} retried) · connect {} ({} retried) · streams lost during the run: {}",
            dur(t.pairing),
            t.pairing_retries,
            dur(t.connect_all),
            t.stream_retries,
            t.lost
        ),
    );
    report.info(
        format!(
            "{} sessions on the real oma-agent: CreateSession → all idle",
            t.sessions
        ),
        dur(t.sessions_start),
    );
    let what = format!(
        "{} sessions × {}/s for {}, one watcher each",
        t.sessions,
        t.rate,
        dur(t.window)
    );
    report.target(
        format!("{what}: chunks delivered to the watchers"),
        format!(
            "{} of {} (prompts → last turn end: {}; {} delivered vs {} offered)",
            thousands(t.delivered),
            thousands(t.expected),
            dur(t.elapsed),
            rate(t.delivered as f64 / t.elapsed.as_secs_f64().max(1e-9)),
            rate((t.rate * t.sessions as u64) as f64)
        ),
        "all",
        verdict(t.delivered == t.expected),
    );
    report.info(
        format!("{what}: latency, test agent's stamp → watcher's receive"),
        lat(&t.latency),
    );
    report.info(
        format!("{what}: latency split at oma-agent's read stamp"),
        format!(
            "child → oma-agent p50 {} p99 {}; oma-agent → watcher p50 {} p99 {}",
            ns(t.to_agent.p50),
            ns(t.to_agent.p99),
            ns(t.from_agent.p50),
            ns(t.from_agent.p99)
        ),
    );
    let busy = (t.cp_cpu + t.agent_cpu).as_secs_f64() / t.elapsed.as_secs_f64().max(1e-9);
    report.info(
        format!("{what}: CPU per delivered chunk"),
        format!(
            "control plane {} · oma-agent {} ({:.2} of 2 cores busy)",
            us1(t.per_event(t.cp_cpu)),
            us1(t.per_event(t.agent_cpu)),
            busy
        ),
    );
    report.info(
        format!("control-plane RSS: {runtimes} runtimes connected → after the streaming"),
        format!("{} → {}", bytes(t.cp_rss_before), bytes(t.cp_rss_after)),
    );
    report.info(
        format!(
            "PostgreSQL CPU over the streaming ({} processes named postgres; anyone else's queries count too)",
            t.postgres_procs
        ),
        format!(
            "{} ({:.2} cores; {} per chunk)",
            dur(t.postgres_cpu),
            t.postgres_cpu.as_secs_f64() / t.elapsed.as_secs_f64().max(1e-9),
            us1(t.per_event(t.postgres_cpu))
        ),
    );
}

fn scale_rows(report: &mut Report, s: &scale::Scale) {
    let n = s.runtimes;
    let full = n >= 10_000;
    let scale_to_10k = 10_000.0 / n as f64;
    report.info(
        format!(
            "pair {} runtimes (connect code + exchange, 32 in flight)",
            thousands(n as u64)
        ),
        format!(
            "{} ({} calls retried after INTERNAL, e.g. \"database is locked\")",
            dur(s.pairing),
            s.pairing_retries
        ),
    );
    let connect = if full {
        dur(s.connect_all)
    } else {
        format!(
            "{} (×{scale_to_10k:.0} ≈ {} projected for 10,000)",
            dur(s.connect_all),
            dur(s.connect_all.mul_f64(scale_to_10k))
        )
    };
    report.target(
        format!(
            "connect {} streams over {} HTTP/2 connections (open → every Welcome)",
            thousands(n as u64),
            n.div_ceil(100)
        ),
        format!("{connect}; {} opens retried", s.stream_retries),
        "10,000 within 60 s",
        if full {
            verdict(s.connect_all < Duration::from_secs(60))
        } else {
            Verdict::Unknown
        },
    );
    let per = s.rss_per_runtime();
    let projected = s.rss_before + per * 10_000;
    let value = format!(
        "{} per runtime ({} → {}{})",
        bytes(per),
        bytes(s.rss_before),
        bytes(s.rss_after),
        if full {
            String::new()
        } else {
            format!("; ≈ {} projected for 10,000", bytes(projected))
        }
    );
    report.target(
        "control-plane RSS per connected runtime",
        value,
        "10,000 in < 1 GiB",
        if full {
            verdict(s.rss_after < 1024 * 1024 * 1024)
        } else {
            Verdict::Unknown
        },
    );
    let share = s.idle_cpu.as_secs_f64() / s.idle_window.as_secs_f64() * 100.0;
    report.info(
        format!(
            "control-plane CPU with {} idle streams, over {}",
            thousands(n as u64),
            dur(s.idle_window)
        ),
        format!("{} ({share:.2} % of a core)", dur(s.idle_cpu)),
    );
    report.info("streams lost while idle", s.lost.to_string());
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match Options::parse() {
        Ok(options) => options,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("oma-bench: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let work = match tempfile::Builder::new().prefix("oma-bench-").tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("oma-bench: cannot create a work folder: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let mut report = Report::new(options.smoke);
    let mut failures = Vec::new();
    run(&options, work.path(), &mut report, &mut failures).await;

    println!(
        "oma-bench{}: {}; release build: {}",
        if options.smoke {
            " --smoke (tiny sizes; targets not judged)"
        } else {
            ""
        },
        machine_line(),
        if cfg!(debug_assertions) { "no" } else { "yes" }
    );
    println!();
    print!("{}", report.render());
    println!();
    println!("{LEGEND}");
    let missed = report.missed();
    if missed.is_empty() {
        println!("targets not met: none");
    } else {
        println!(
            "targets not met: {}",
            missed.iter().map(|r| r.what.as_str()).collect::<Vec<_>>().join("; ")
        );
    }
    println!("total time: {}", dur(started.elapsed()));
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        let kept = work.keep();
        eprintln!(
            "oma-bench: {} scenario(s) failed; logs kept in {}",
            failures.len(),
            kept.display()
        );
        ExitCode::FAILURE
    }
}
