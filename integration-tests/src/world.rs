//! A world for the live path: a control plane, a paired `oma-agent` (the
//! scripted test agent is its ACP agent `test`), online, and an agent bound
//! to it; and what the tests do in it: create sessions, prompt, read a
//! turn's events, wait for an event, answer permission requests.
//!
//! ```ignore
//! let world = World::paired(pb::PermissionPolicy::Ask).await;
//! let session = world.session().await;
//! let turn = world.prompt(&session, "permission").await;
//! world.answer_next_permission(&turn, world::option("allow")).await;
//! let events = world.collect(&turn).await;
//! assert!(world::agent_text(&events).contains("selected allow"));
//! ```
//!
//! Every wait has a deadline (no sleeps). The helpers are for tests: they
//! panic with what they saw; only [`WorldBuilder::start`], [`World::wait_online`]
//! and [`World::start_sessions`] return errors (the bench shares them).

use std::time::Duration;

use oma_proto::pb;
use oma_proto::pb::answer_permission_request::Answer;
use oma_proto::pb::session_event::Kind;

use crate::faults::{self, Proxy, RawMachine, RawStream};
use crate::{
    AgentDaemon, Clients, ControlPlane, ControlPlaneOptions, DAEMON_RUN_ARGS, READ_LIMIT, TestDatabase, collect_turn,
    test_agent_spec, test_agents_toml, wait_until,
};

/// How long a turn may take unless the builder says otherwise.
pub const TURN_DEADLINE: Duration = Duration::from_secs(60);
/// How long the daemon may take to come online unless the builder says
/// otherwise.
pub const ONLINE_DEADLINE: Duration = Duration::from_secs(30);

/// A prompted turn: its session, its id, and the seq its events start at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub session_id: String,
    pub id: String,
    pub from_seq: u64,
}

/// Fields drop in order: the daemon stops before the control plane.
pub struct World {
    pub machine: AgentDaemon,
    /// The bootstrap admin's clients.
    pub clients: Clients,
    /// Between the daemon and the control plane, when the builder asked.
    pub proxy: Option<Proxy>,
    pub cp: ControlPlane,
    /// The agent bound to the machine (empty when the builder made none).
    pub agent_id: String,
    /// The runtime as it first came online (`None` when not started).
    pub runtime: Option<pb::Runtime>,
    /// How long [`World::collect`], [`World::watch_until`] and the like wait.
    pub turn_deadline: Duration,
    pub online_deadline: Duration,
    /// The agent spec of [`World::agent_id`]; [`World::create_agent_on`]
    /// binds copies of it elsewhere.
    spec: pb::AgentSpec,
    /// Whether the processes' stderr goes to files (see [`crate::faults`]).
    logs_to_files: bool,
}

/// What [`WorldBuilder::prepare`] runs on the paired machine.
type Prepare = Box<dyn FnOnce(&mut AgentDaemon) + Send>;

/// How to build a [`World`]; [`World::builder`] has the defaults.
pub struct WorldBuilder {
    database: Option<TestDatabase>,
    serve_args: Vec<String>,
    proxy: bool,
    logs_to_files: bool,
    agents_toml: Option<String>,
    daemon_args: Vec<String>,
    prepare: Option<Prepare>,
    start_daemon: bool,
    create_agent: bool,
    agent_name: String,
    system_prompt: String,
    policy: pb::PermissionPolicy,
    acp_agent: String,
    online_deadline: Duration,
    turn_deadline: Duration,
}

impl WorldBuilder {
    /// The control plane's database (default: a fresh SQLite one).
    pub fn database(mut self, database: TestDatabase) -> Self {
        self.database = Some(database);
        self
    }

    /// More `oma-control-plane serve` flags.
    pub fn serve_args(mut self, args: &[&str]) -> Self {
        self.serve_args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// The daemon is paired with (and reaches the control plane through) a
    /// fault [`Proxy`].
    pub fn through_proxy(mut self) -> Self {
        self.proxy = true;
        self
    }

    /// Both processes log at [`faults::log_level`] to files
    /// ([`faults::control_plane_log`], [`faults::agent_log`]), whose tails
    /// are printed when a test panics; [`World::assert_no_panic`] reads them.
    pub fn logs_to_files(mut self) -> Self {
        self.logs_to_files = true;
        self
    }

    /// The machine's `agents.toml` (default: [`test_agents_toml`]).
    pub fn agents_toml(mut self, agents_toml: String) -> Self {
        self.agents_toml = Some(agents_toml);
        self
    }

    /// More `oma-agent run` flags, after `--reconnect-max 2`.
    pub fn daemon_args(mut self, extra: &[&str]) -> Self {
        self.daemon_args = DAEMON_RUN_ARGS.iter().chain(extra).map(|a| a.to_string()).collect();
        self
    }

    /// Exactly these `oma-agent run` flags.
    pub fn daemon_args_exactly(mut self, args: &[&str]) -> Self {
        self.daemon_args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Runs on the paired machine before its daemon starts (its
    /// environment, its policy file…).
    pub fn prepare(mut self, prepare: impl FnOnce(&mut AgentDaemon) + Send + 'static) -> Self {
        self.prepare = Some(Box::new(prepare));
        self
    }

    /// Pairs the machine but starts no daemon (and so creates no agent).
    pub fn unstarted(mut self) -> Self {
        self.start_daemon = false;
        self
    }

    /// Creates no agent.
    pub fn no_agent(mut self) -> Self {
        self.create_agent = false;
        self
    }

    /// The agent's name (default `test-agent`).
    pub fn agent_name(mut self, name: &str) -> Self {
        self.agent_name = name.into();
        self
    }

    /// The agent's system prompt (default `You are a test.`; empty: none).
    pub fn system_prompt(mut self, prompt: &str) -> Self {
        self.system_prompt = prompt.into();
        self
    }

    /// The agent's permission policy (default allow_once).
    pub fn policy(mut self, policy: pb::PermissionPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The ACP agent of the machine the agent is bound to (default `test`).
    pub fn acp_agent(mut self, id: &str) -> Self {
        self.acp_agent = id.into();
        self
    }

    /// How long the daemon may take to come online (default 30 s).
    pub fn online_deadline(mut self, deadline: Duration) -> Self {
        self.online_deadline = deadline;
        self
    }

    /// How long a turn may take (default 60 s).
    pub fn turn_deadline(mut self, deadline: Duration) -> Self {
        self.turn_deadline = deadline;
        self
    }

    /// Starts the control plane, pairs the machine, starts its daemon,
    /// waits until it is online and its manifest names the ACP agent, and
    /// creates the agent.
    pub async fn start(self) -> anyhow::Result<World> {
        let database = match self.database {
            Some(database) => database,
            None => TestDatabase::sqlite()?,
        };
        let serve_args: Vec<&str> = self.serve_args.iter().map(String::as_str).collect();
        let options = if self.logs_to_files {
            faults::logged_options(&database, &serve_args)
        } else {
            ControlPlaneOptions {
                extra_args: self.serve_args.clone(),
                ..Default::default()
            }
        };
        let cp = ControlPlane::start(database, options)?;
        let mut clients = cp.clients().await?;
        let proxy = if self.proxy { Some(Proxy::start(cp.addr)?) } else { None };
        let server = proxy.as_ref().map_or_else(|| cp.url(), Proxy::url);
        let code = clients.connect_code().await?;
        let agents_toml = self.agents_toml.unwrap_or_else(test_agents_toml);
        let mut machine = AgentDaemon::setup_with_agents_toml(&server, &code, &agents_toml)?;
        if self.logs_to_files {
            faults::log_agent_to_file(&mut machine);
        }
        if let Some(prepare) = self.prepare {
            prepare(&mut machine);
        }
        let spec = pb::AgentSpec {
            system_prompt: self.system_prompt,
            runtime_binding: Some(pb::RuntimeBinding {
                runtime_id: machine.runtime_id.clone(),
                acp_agent_id: self.acp_agent.clone(),
                local_skill_blocklist: vec![],
            }),
            ..test_agent_spec(&self.agent_name, &machine.runtime_id, self.policy)
        };
        let mut world = World {
            machine,
            clients,
            proxy,
            cp,
            agent_id: String::new(),
            runtime: None,
            turn_deadline: self.turn_deadline,
            online_deadline: self.online_deadline,
            spec,
            logs_to_files: self.logs_to_files,
        };
        if !self.start_daemon {
            return Ok(world);
        }
        let args: Vec<&str> = self.daemon_args.iter().map(String::as_str).collect();
        world.machine.start_exactly(&args)?;
        let runtime = world.wait_online().await?;
        let ids: Vec<&str> = runtime
            .manifest
            .iter()
            .flat_map(|m| &m.acp_agents)
            .map(|a| a.id.as_str())
            .collect();
        anyhow::ensure!(
            ids.contains(&self.acp_agent.as_str()),
            "the manifest lacks the ACP agent {:?}: {ids:?}",
            self.acp_agent
        );
        world.runtime = Some(runtime);
        if self.create_agent {
            world.agent_id = world.clients.create_agent(world.spec.clone()).await?;
        }
        Ok(world)
    }
}

impl World {
    /// A SQLite control plane, a paired daemon whose `test` ACP agent is
    /// the scripted agent, online, and an agent bound to it with `policy`
    /// (its system prompt: `You are a test.`); panics when it cannot start.
    pub async fn paired(policy: pb::PermissionPolicy) -> World {
        World::builder()
            .policy(policy)
            .start()
            .await
            .unwrap_or_else(|e| panic!("the world did not start: {e:#}"))
    }

    /// The defaults: SQLite, no proxy, stderr inherited, the scripted test
    /// agent, `oma-agent run --reconnect-max 2`, an agent `test-agent` with
    /// policy allow_once and system prompt `You are a test.`.
    pub fn builder() -> WorldBuilder {
        WorldBuilder {
            database: None,
            serve_args: Vec::new(),
            proxy: false,
            logs_to_files: false,
            agents_toml: None,
            daemon_args: DAEMON_RUN_ARGS.iter().map(|a| a.to_string()).collect(),
            prepare: None,
            start_daemon: true,
            create_agent: true,
            agent_name: "test-agent".into(),
            system_prompt: "You are a test.".into(),
            policy: pb::PermissionPolicy::AllowOnce,
            acp_agent: "test".into(),
            online_deadline: ONLINE_DEADLINE,
            turn_deadline: TURN_DEADLINE,
        }
    }

    /// The fault proxy between the daemon and the control plane; panics
    /// when the world has none ([`WorldBuilder::through_proxy`]).
    pub fn proxy(&self) -> &Proxy {
        self.proxy
            .as_ref()
            .expect("the world has no proxy: build it with through_proxy")
    }

    /// Waits until the machine's runtime is online.
    pub async fn wait_online(&mut self) -> anyhow::Result<pb::Runtime> {
        crate::wait_online(&mut self.clients, &self.machine.runtime_id, self.online_deadline).await
    }

    /// The spec of the world's agent, bound to `runtime_id` instead, under
    /// a name of its own.
    pub fn spec_on(&self, runtime_id: &str) -> pb::AgentSpec {
        let mut spec = self.spec.clone();
        spec.name = format!("{}-{:08x}", spec.name, rand::random::<u32>());
        rebind(spec, runtime_id)
    }

    /// Creates an agent like the world's, bound to `runtime_id`.
    pub async fn create_agent_on(&mut self, runtime_id: &str) -> String {
        let spec = self.spec_on(runtime_id);
        self.clients
            .create_agent(spec)
            .await
            .unwrap_or_else(|e| panic!("create an agent on {runtime_id}: {e:#}"))
    }

    /// A raw machine (the test speaks its runtime stream) paired by the
    /// admin, with an agent like the world's bound to it and a session of
    /// that agent, which the server has started on it
    /// ([`faults::raw_machine_with_session`]). Returns the machine, its
    /// open stream and the session id.
    pub async fn raw_machine_with_session(&mut self, name: &str) -> (RawMachine, RawStream, String) {
        let spec = self.spec_on("");
        faults::raw_machine_with_session(&self.cp, &mut self.clients, name, |runtime_id| rebind(spec, runtime_id))
            .await
            .unwrap_or_else(|e| panic!("a raw machine with a session: {e:#}"))
    }

    /// Creates a session of the world's agent; returns its id.
    pub async fn session(&self) -> String {
        self.session_of(&self.agent_id).await
    }

    /// Creates a session of `agent_id`; returns its id.
    pub async fn session_of(&self, agent_id: &str) -> String {
        self.clients
            .create_session(agent_id, "")
            .await
            .unwrap_or_else(|e| panic!("create a session of {agent_id}: {e:#}"))
    }

    /// The session as the control plane has it now.
    pub async fn get_session(&self, session_id: &str) -> pb::Session {
        self.clients
            .get_session(session_id)
            .await
            .unwrap_or_else(|e| panic!("get session {session_id}: {e:#}"))
    }

    /// Prompts the session with `text` ([`Clients::prompt`]).
    pub async fn try_prompt(&self, session_id: &str, text: &str) -> Result<Turn, tonic::Status> {
        self.clients.prompt(session_id, text).await
    }

    /// Prompts the session with `text`; panics when refused.
    pub async fn prompt(&self, session_id: &str, text: &str) -> Turn {
        self.try_prompt(session_id, text)
            .await
            .unwrap_or_else(|e| panic!("prompt {text:?}: {e}"))
    }

    /// The turn's events, from its first, until its end.
    pub async fn collect(&self, turn: &Turn) -> Vec<pb::SessionEvent> {
        self.collect_from(turn, turn.from_seq).await
    }

    /// The session's events from `from_seq` until the turn's end.
    pub async fn collect_from(&self, turn: &Turn, from_seq: u64) -> Vec<pb::SessionEvent> {
        collect_turn(&self.clients, &turn.session_id, from_seq, &turn.id, self.turn_deadline)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Prompts and collects the turn's events until its end.
    pub async fn run_turn(&self, session_id: &str, text: &str) -> Vec<pb::SessionEvent> {
        let turn = self.prompt(session_id, text).await;
        self.collect(&turn).await
    }

    /// Watches the turn from its first event until `pick` takes one, and
    /// returns what it took; panics when the turn ends first or nothing is
    /// taken within the turn deadline.
    pub async fn watch_until<T>(&self, turn: &Turn, mut pick: impl FnMut(&pb::SessionEvent) -> Option<T>) -> T {
        let deadline = self.turn_deadline;
        let mut seen = Vec::new();
        let found = tokio::time::timeout(deadline, async {
            let mut stream = self
                .clients
                .sessions
                .clone()
                .max_decoding_message_size(READ_LIMIT)
                .watch_session(pb::WatchSessionRequest {
                    session_id: turn.session_id.clone(),
                    from_seq: turn.from_seq,
                    until_turn_end: true,
                })
                .await
                .unwrap_or_else(|e| panic!("watch {}: {e}", turn.session_id))
                .into_inner();
            while let Some(event) = stream
                .message()
                .await
                .unwrap_or_else(|e| panic!("watch {}: {e}", turn.session_id))
            {
                if let Some(found) = pick(&event) {
                    return Some(found);
                }
                seen.push(event);
            }
            None
        })
        .await;
        match found {
            Ok(Some(found)) => found,
            Ok(None) => panic!(
                "turn {} ended before the event waited for; its events: {seen:#?}",
                turn.id
            ),
            Err(_) => panic!(
                "turn {}: no event waited for within {deadline:?}; its events so far: {seen:#?}",
                turn.id
            ),
        }
    }

    /// Waits for the turn's next permission request.
    pub async fn next_permission(&self, turn: &Turn) -> pb::PermissionRequested {
        self.watch_until(turn, |event| match &event.kind {
            Some(Kind::PermissionRequested(request)) => Some(request.clone()),
            _ => None,
        })
        .await
    }

    /// Answers a permission request of the session.
    pub async fn answer(&self, session_id: &str, request_id: &str, answer: Answer) -> Result<(), tonic::Status> {
        self.clients
            .sessions
            .clone()
            .answer_permission(pb::AnswerPermissionRequest {
                session_id: session_id.into(),
                request_id: request_id.into(),
                answer: Some(answer),
            })
            .await
            .map(|_| ())
    }

    /// Waits for the turn's next permission request and answers it;
    /// returns the request.
    pub async fn answer_next_permission(&self, turn: &Turn, answer: Answer) -> pb::PermissionRequested {
        let request = self.next_permission(turn).await;
        self.answer(&turn.session_id, &request.request_id, answer)
            .await
            .unwrap_or_else(|e| panic!("answer {}: {e}", request.request_id));
        request
    }

    /// The whole stored log of the session (from seq 1 to its `last_seq`),
    /// read within `deadline`.
    pub async fn read_log(&self, session_id: &str, deadline: Duration) -> Vec<pb::SessionEvent> {
        faults::read_log(&self.clients, session_id, deadline)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Waits until the session is idle (started, no turn running).
    pub async fn wait_idle(&self, session_id: &str, deadline: Duration) -> pb::Session {
        wait_until(&format!("session {session_id} to be idle"), deadline, || async {
            let session = self.clients.get_session(session_id).await.ok()?;
            (session.status == pb::SessionStatus::Idle as i32).then_some(session)
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The process group of the session's ACP child, once the daemon has
    /// recorded it.
    pub fn child_pgid(&self, session_id: &str) -> Option<i32> {
        crate::one_machine::child_pgid(self.machine.data_dir.path(), session_id)
    }

    /// Creates `n` sessions of the world's agent and waits until each has
    /// started its child; returns the children's process groups.
    pub async fn start_sessions(&mut self, n: usize) -> anyhow::Result<Vec<i32>> {
        let mut session_ids = Vec::new();
        for _ in 0..n {
            session_ids.push(self.clients.create_session(&self.agent_id, "").await?);
        }
        wait_until("every session's child to start", Duration::from_secs(120), || {
            let pids: Option<Vec<i32>> = session_ids.iter().map(|id| self.child_pgid(id)).collect();
            async move { pids }
        })
        .await
    }

    /// Asserts that neither process logged a panic (with
    /// [`WorldBuilder::logs_to_files`]).
    pub fn assert_no_panic(&self) {
        assert!(
            self.logs_to_files,
            "assert_no_panic reads the logs: build with logs_to_files"
        );
        let panics = faults::panics_in(&faults::control_plane_log(&self.cp));
        assert!(panics.is_empty(), "the control plane panicked: {panics:#?}");
        let panics = faults::panics_in(&faults::agent_log(&self.machine));
        assert!(panics.is_empty(), "the daemon panicked: {panics:#?}");
    }
}

impl Drop for World {
    /// With logs in files, a failing test shows their tails
    /// (`OMA_FAULTS_TAIL` lines, default 60).
    fn drop(&mut self) {
        if !self.logs_to_files || !std::thread::panicking() {
            return;
        }
        let lines: usize = std::env::var("OMA_FAULTS_TAIL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60);
        let tail = |log: String| {
            let all: Vec<&str> = log.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        };
        eprintln!(
            "---- control-plane stderr (tail) ----\n{}",
            tail(faults::control_plane_log(&self.cp))
        );
        eprintln!(
            "---- oma-agent stderr (tail) ----\n{}",
            tail(faults::agent_log(&self.machine))
        );
    }
}

/// `spec` bound to `runtime_id` instead.
fn rebind(mut spec: pb::AgentSpec, runtime_id: &str) -> pb::AgentSpec {
    if let Some(binding) = &mut spec.runtime_binding {
        binding.runtime_id = runtime_id.into();
    }
    spec
}

/// An answer choosing the option `option_id`.
pub fn option(option_id: &str) -> Answer {
    Answer::OptionId(option_id.into())
}

/// An answer rejecting the request.
pub fn reject() -> Answer {
    Answer::Reject(true)
}

/// The text of an agent_message_chunk event.
pub fn agent_text_of(event: &pb::SessionEvent) -> Option<&str> {
    match &event.kind {
        Some(Kind::Update(u)) => match &u.typed {
            Some(pb::session_update::Typed::AgentMessageChunk(c)) => match &c.content.as_ref()?.block {
                Some(pb::content_block::Block::Text(t)) => Some(&t.text),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// All agent text of some events, concatenated.
pub fn agent_text(events: &[pb::SessionEvent]) -> String {
    events.iter().filter_map(agent_text_of).collect()
}

/// The end of a turn whose events [`World::collect`] returned: the last
/// event, which must be its TurnEnded.
pub fn turn_end(events: &[pb::SessionEvent]) -> pb::TurnEnded {
    match &events.last().expect("no events").kind {
        Some(Kind::TurnEnded(end)) => end.clone(),
        other => panic!("last event is not TurnEnded: {other:?}"),
    }
}

/// The first permission decision among `events`; panics when there is none.
pub fn permission_decided(events: &[pb::SessionEvent]) -> pb::PermissionDecided {
    events
        .iter()
        .find_map(|e| match &e.kind {
            Some(Kind::PermissionDecided(d)) => Some(d.clone()),
            _ => None,
        })
        .expect("the request was decided")
}

/// The kinds of the update events, in order.
pub fn update_kinds(events: &[pb::SessionEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Update(u)) => Some(u.kind.clone()),
            _ => None,
        })
        .collect()
}
