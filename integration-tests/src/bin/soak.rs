//! `soak`: runs many sessions through random faults for a while and checks
//! that no event was lost, doubled or reordered.
//!
//! ```text
//! cargo run -p oma-integration-tests --bin soak -- --minutes N [OPTIONS]
//!   --minutes N      how long to run (default 10; fractions allowed)
//!   --sessions N     sessions per round (default 4)
//!   --seed N         the random seed (default: random; printed)
//!   --postgres       store on PostgreSQL (OMA_TEST_POSTGRES_URL) instead of SQLite
//!   --no-build       do not build the binaries first
//! ```
//!
//! One control plane, a fault proxy in front of it and one `oma-agent`
//! paired through the proxy run the scripted test agent in every session.
//! Each round creates fresh sessions, prompts each with `chunks N RATE`
//! (random N and rate) and, while the turns run, injects random faults:
//! connection cuts,
//! stalls, delays, control-plane SIGKILL and restart (same database, same
//! port), daemon SIGKILL or SIGTERM and restart. When every turn has ended
//! the new part of each log is read back from the control plane and
//! checked: seqs 1, 2, 3 … with no gap or repeat, one TurnEnded per turn,
//! and the `chunk <i>` events of each turn exactly 1..=N once, in order (a
//! turn interrupted by a daemon restart must hold a gapless prefix; a turn
//! that never ends counts its missing chunks as lost). Then the sessions
//! are deleted (a fresh world — database, daemon — every 3 minutes).
//!
//! Progress and anything odd (a turn that failed to start, a panic in a
//! log) go to stderr; stdout gets exactly one line:
//! `events sent S / stored T / lost L / duplicated D / out of order O`.
//! The exit code is 1 when L, D or O is not 0, 2 when the run could not
//! finish its checks.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use oma_integration_tests::faults::{self, SeqReport};
use oma_integration_tests::{TestDatabase, World};
use oma_proto::pb;
use oma_proto::pb::session_event::Kind;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

const AGENT_ARGS: &[&str] = &["--reconnect-max", "1"];
/// Longest a round may take once its faults stop.
const ROUND_DEADLINE: Duration = Duration::from_secs(180);

struct Options {
    minutes: f64,
    sessions: usize,
    seed: u64,
    postgres: bool,
    build: bool,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        minutes: 10.0,
        sessions: 4,
        seed: rand::random(),
        postgres: false,
        build: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--minutes" => options.minutes = value("--minutes")?.parse().context("--minutes")?,
            "--sessions" => options.sessions = value("--sessions")?.parse().context("--sessions")?,
            "--seed" => options.seed = value("--seed")?.parse().context("--seed")?,
            "--postgres" => options.postgres = true,
            "--no-build" => options.build = false,
            "-h" | "--help" => {
                println!(
                    "usage: soak [--minutes N] [--sessions N] [--seed N] [--postgres] [--no-build]\n\
                     prints `events sent S / stored T / lost L / duplicated D / out of order O`"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    anyhow::ensure!(options.minutes > 0.0, "--minutes must be positive");
    anyhow::ensure!(options.sessions > 0, "--sessions must be positive");
    Ok(options)
}

/// `cargo run --bin soak` builds only this binary: build the ones it runs.
fn build_binaries() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace dir")?
        .to_path_buf();
    let exe = std::env::current_exe()?;
    let release = exe.parent().and_then(|d| d.file_name()).is_some_and(|n| n == "release");
    let mut command = std::process::Command::new(cargo);
    command
        .current_dir(&workspace)
        // The whole workspace, as `cargo build --workspace` does: the same
        // features, so nothing the tests built is built again.
        .args(["build", "--workspace", "--bins"]);
    if release {
        command.arg("--release");
    }
    eprintln!("soak: building the binaries it runs");
    let status = command.status()?;
    anyhow::ensure!(status.success(), "building the binaries failed");
    Ok(())
}

#[derive(Default, Debug)]
struct Totals {
    sent: u64,
    stored: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    turns: u64,
    interrupted: u64,
    faults: HashMap<&'static str, u64>,
    problems: Vec<String>,
}

impl Totals {
    fn line(&self) -> String {
        format!(
            "events sent {} / stored {} / lost {} / duplicated {} / out of order {}",
            self.sent, self.stored, self.lost, self.duplicated, self.out_of_order
        )
    }

    fn problem(&mut self, text: String) {
        eprintln!("soak: PROBLEM: {text}");
        self.problems.push(text);
    }
}

/// One control plane, a proxy, one daemon (logs in files), and the
/// sessions of the current round.
struct Soak {
    world: World,
    sessions: Vec<SessionTrack>,
}

struct SessionTrack {
    id: String,
    /// Checked up to this seq.
    verified: u64,
    /// Turns prompted and not yet verified: turn id → chunk count.
    turns: HashMap<String, u64>,
}

async fn world(options: &Options) -> anyhow::Result<Soak> {
    let database = if options.postgres {
        TestDatabase::postgres("soak")?.context("--postgres needs OMA_TEST_POSTGRES_URL")?
    } else {
        TestDatabase::sqlite()?
    };
    let world = World::builder()
        .database(database)
        .through_proxy()
        .logs_to_files()
        .daemon_args_exactly(AGENT_ARGS)
        .online_deadline(Duration::from_secs(60))
        .agent_name("soak")
        .system_prompt("")
        .start()
        .await?;
    Ok(Soak {
        world,
        sessions: Vec::new(),
    })
}

impl Soak {
    /// Prompts a session, retrying while the runtime is away.
    async fn prompt(&self, session_id: &str, text: &str) -> anyhow::Result<String> {
        let start = Instant::now();
        loop {
            match self.world.clients.prompt(session_id, text).await {
                Ok(turn) => return Ok(turn.id),
                Err(e) if start.elapsed() < Duration::from_secs(60) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if start.elapsed() > Duration::from_secs(50) {
                        eprintln!("soak: prompt still refused: {e}");
                    }
                }
                Err(e) => bail!("prompt {session_id}: {e}"),
            }
        }
    }

    async fn all_turns_ended(&self) -> bool {
        for session in &self.sessions {
            match faults::session_status(&self.world.clients, &session.id).await {
                Ok(pb::SessionStatus::Running) | Ok(pb::SessionStatus::Pending) | Err(_) => return false,
                Ok(_) => {}
            }
        }
        true
    }

    async fn inject(&mut self, rng: &mut StdRng, totals: &mut Totals) -> anyhow::Result<()> {
        let pick = rng.random_range(0..100);
        let name = match pick {
            0..40 => {
                self.world.proxy().cut();
                "cut"
            }
            40..55 => {
                self.world.proxy().stall();
                tokio::time::sleep(Duration::from_millis(rng.random_range(200..2500))).await;
                self.world.proxy().resume();
                "stall"
            }
            55..65 => {
                self.world.proxy().delay(Duration::from_millis(rng.random_range(5..60)));
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..3000))).await;
                self.world.proxy().resume();
                "delay"
            }
            65..80 => {
                let old = self.world.cp.addr;
                let addr = tokio::task::block_in_place(|| {
                    faults::kill_control_plane(&mut self.world.cp)?;
                    std::thread::sleep(Duration::from_millis(200));
                    faults::restart_control_plane(&mut self.world.cp)
                })?;
                self.world.proxy().set_target(addr);
                if addr != old {
                    self.world.clients = self.world.cp.clients().await?;
                }
                "control-plane kill -9"
            }
            80..90 => {
                tokio::task::block_in_place(|| {
                    faults::kill_agent(&mut self.world.machine)?;
                    faults::start_agent(&mut self.world.machine, AGENT_ARGS)
                })?;
                "daemon kill -9"
            }
            _ => {
                tokio::task::block_in_place(|| {
                    let status = faults::term_agent(&mut self.world.machine, Duration::from_secs(60))?;
                    anyhow::ensure!(status.success(), "SIGTERM: the daemon exited {status}");
                    faults::start_agent(&mut self.world.machine, AGENT_ARGS)
                })?;
                "daemon SIGTERM"
            }
        };
        *totals.faults.entry(name).or_default() += 1;
        Ok(())
    }

    /// Reads what each session stored since the last check and accounts it.
    async fn verify(&mut self, totals: &mut Totals) -> anyhow::Result<()> {
        for session in &mut self.sessions {
            let last = faults::last_seq(&self.world.clients, &session.id).await?;
            let mut sessions = self.world.clients.sessions.clone();
            let mut stream = sessions
                .watch_session(pb::WatchSessionRequest {
                    session_id: session.id.clone(),
                    from_seq: session.verified + 1,
                    until_turn_end: false,
                })
                .await?
                .into_inner();
            let mut events = Vec::new();
            while events.len() as u64 + session.verified < last {
                let event = tokio::time::timeout(Duration::from_secs(60), stream.message())
                    .await
                    .context("reading the log stalled")??
                    .context("the watch ended early")?;
                events.push(event);
            }
            // Seqs continue exactly where the last check stopped.
            let seqs = SeqReport::of(
                events.iter().map(|e| e.seq.saturating_sub(session.verified)),
                Some(last - session.verified),
            );
            if !seqs.is_clean() {
                totals.lost += seqs.missing.len() as u64;
                totals.duplicated += seqs.duplicated.len() as u64;
                totals.out_of_order += seqs.out_of_order;
                totals.problem(format!("{}: seqs after {}: {seqs:?}", session.id, session.verified));
            }
            for (turn, n) in std::mem::take(&mut session.turns) {
                totals.turns += 1;
                let ends: Vec<&pb::TurnEnded> = events
                    .iter()
                    .filter(|e| e.turn_id == turn)
                    .filter_map(|e| match &e.kind {
                        Some(Kind::TurnEnded(end)) => Some(end),
                        _ => None,
                    })
                    .collect();
                let chunks = faults::chunk_numbers(&events, &turn);
                let expected = match ends.as_slice() {
                    [end] if end.stop_reason == pb::StopReason::EndTurn as i32 => Some(n),
                    [end] if end.error.contains("interrupted") => {
                        totals.interrupted += 1;
                        None
                    }
                    [] => {
                        totals.problem(format!("{}: turn {turn} never ended", session.id));
                        Some(n)
                    }
                    other => {
                        totals.problem(format!("{}: turn {turn} ended {other:?}", session.id));
                        None
                    }
                };
                let report = SeqReport::of(chunks.iter().copied(), expected);
                totals.sent += expected.unwrap_or_else(|| chunks.iter().copied().max().unwrap_or(0));
                totals.stored += report.count;
                totals.lost += report.missing.len() as u64;
                totals.duplicated += report.duplicated.len() as u64;
                totals.out_of_order += report.out_of_order;
                if !report.is_clean() {
                    totals.problem(format!(
                        "{}: turn {turn}: {} chunks of {n}: missing {:?}, duplicated {:?}, {} out of order",
                        session.id,
                        report.count,
                        &report.missing[..report.missing.len().min(20)],
                        &report.duplicated[..report.duplicated.len().min(20)],
                        report.out_of_order
                    ));
                }
            }
            session.verified = last;
        }
        Ok(())
    }

    /// One round: fresh sessions, a turn in each, faults while they run.
    async fn round(
        &mut self,
        rng: &mut StdRng,
        totals: &mut Totals,
        until: Instant,
        sessions: usize,
    ) -> anyhow::Result<()> {
        self.world.wait_online().await?;
        for _ in 0..sessions {
            let id = self.world.clients.create_session(&self.world.agent_id, "soak").await?;
            self.sessions.push(SessionTrack {
                id,
                verified: 0,
                turns: HashMap::new(),
            });
        }
        for i in 0..self.sessions.len() {
            let n: u64 = rng.random_range(300..3000);
            let rate: u64 = rng.random_range(1000..4000);
            let id = self.sessions[i].id.clone();
            let turn = self.prompt(&id, &format!("chunks {n} {rate}")).await?;
            self.sessions[i].turns.insert(turn, n);
        }
        let started = Instant::now();
        // Faults while the turns run (and not past the end of the soak).
        while started.elapsed() < Duration::from_secs(20) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(rng.random_range(100..800))).await;
            if self.all_turns_ended().await {
                break;
            }
            self.inject(rng, totals).await?;
        }
        self.world.proxy().resume();
        let settle = Instant::now();
        while !self.all_turns_ended().await {
            if settle.elapsed() > ROUND_DEADLINE {
                let stuck: Vec<&str> = self.sessions.iter().map(|s| s.id.as_str()).collect();
                totals.problem(format!(
                    "turns did not end within {ROUND_DEADLINE:?} of the last fault: {stuck:?}"
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.verify(totals).await?;
        for session in std::mem::take(&mut self.sessions) {
            self.world
                .clients
                .sessions
                .delete_session(pb::DeleteSessionRequest {
                    session_id: session.id,
                    ..Default::default()
                })
                .await?;
        }
        Ok(())
    }
}

async fn soak(options: &Options, totals: &mut Totals) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(options.seed);
    let until = Instant::now() + Duration::from_secs_f64(options.minutes * 60.0);
    let mut worlds = 0;
    while Instant::now() < until {
        // A fresh world every few minutes: new database, daemon, sessions.
        let mut run = world(options).await?;
        worlds += 1;
        let world_until = (Instant::now() + Duration::from_secs(180)).min(until);
        let mut rounds = 0;
        while Instant::now() < world_until {
            run.round(&mut rng, totals, until, options.sessions).await?;
            rounds += 1;
            eprintln!(
                "soak: world {worlds} round {rounds}: {} turns ({} interrupted), faults {:?}; {}",
                totals.turns,
                totals.interrupted,
                totals.faults,
                totals.line()
            );
        }
        let panics = faults::panics_in(&faults::control_plane_log(&run.world.cp));
        let panics_agent = faults::panics_in(&faults::agent_log(&run.world.machine));
        for panic in panics.into_iter().chain(panics_agent) {
            totals.problem(format!("panic: {panic}"));
        }
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let options = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("soak: {e:#}");
            return ExitCode::from(2);
        }
    };
    if options.build
        && let Err(e) = tokio::task::block_in_place(build_binaries)
    {
        eprintln!("soak: {e:#}");
        return ExitCode::from(2);
    }
    eprintln!(
        "soak: {} minutes, {} sessions, seed {}, {}",
        options.minutes,
        options.sessions,
        options.seed,
        if options.postgres { "PostgreSQL" } else { "SQLite" }
    );
    let mut totals = Totals::default();
    let result = soak(&options, &mut totals).await;
    eprintln!(
        "soak: {} turns ({} interrupted by daemon restarts), faults {:?}, {} problems",
        totals.turns,
        totals.interrupted,
        totals.faults,
        totals.problems.len()
    );
    println!("{}", totals.line());
    if let Err(e) = &result {
        eprintln!("soak: could not finish: {e:#}");
        return ExitCode::from(2);
    }
    if totals.lost + totals.duplicated + totals.out_of_order > 0 {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
