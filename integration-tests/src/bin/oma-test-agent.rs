//! `oma-test-agent`: a scripted ACP agent for the OMA runtime's tests.
//!
//! It speaks ACP (JSON-RPC 2.0, one object per line) on stdin/stdout, logs to
//! stderr, and never needs a network or a model. The text of each
//! `session/prompt` is a script of directives (one per line, or separated by
//! `;`) that says what the agent does in that turn; see `test_agent/script.rs`
//! for the list and `test_agent/turn.rs` for what each one sends.
//!
//! Environment:
//! - `OMA_TEST_AGENT_LOAD_SESSION=0`: do not offer `session/load`.
//! - `OMA_TEST_AGENT_START_MODE=yolo`: sessions start in mode `yolo`, where
//!   `permission` acts without asking (like Claude's `auto`).
//! - `OMA_TEST_AGENT_STATE_DIR=PATH`: keep transcripts there, not in the cwd.
//! - `OMA_TEST_AGENT_IGNORE_EOF=1`: keep running after stdin closes (until killed).
//! - `OMA_TEST_AGENT_STARTUP_DELAY_MS=N`: sleep N ms before reading stdin.
//! - `OMA_TEST_AGENT_STDERR_LINES=N`: print N lines to stderr at startup.
//! - `OMA_TEST_AGENT_STARTED_FILE=PATH`: append a line (`started <pid>`) to
//!   PATH at startup, so a test can prove a child was (or was never) spawned.

/// Writes one line to stderr. Unlike `eprintln!`, never panics when stderr
/// is closed or full of errors.
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

#[path = "../test_agent/agent.rs"]
mod agent;
#[path = "../test_agent/io.rs"]
mod io;
#[path = "../test_agent/script.rs"]
mod script;
#[path = "../test_agent/session.rs"]
mod session;
#[path = "../test_agent/turn.rs"]
mod turn;

use std::sync::Arc;
use std::time::Duration;

use agent_client_protocol::schema::ProtocolVersion;
use agent_client_protocol::v1::schema::{
    AgentCapabilities, CancelNotification, Implementation, InitializeRequest, InitializeResponse, LoadSessionRequest,
    LoadSessionResponse, NewSessionRequest, NewSessionResponse, PromptCapabilities, PromptRequest, PromptResponse,
    SessionConfigOptionValue, SetSessionConfigOptionRequest, SetSessionConfigOptionResponse, SetSessionModeRequest,
    SetSessionModeResponse,
};
use agent_client_protocol::v1::{ConnectionTo, Responder};
use agent_client_protocol::{Agent, Client, Error, Lines, UntypedMessage};

use crate::agent::{MODELS, MODES, TestAgent, offered_config, offered_modes, system_prompt};
use crate::io::{Markers, Out};
use crate::session::Session;
use crate::turn::Turn;

struct Config {
    load_session: bool,
    ignore_eof: bool,
    startup_delay: Duration,
    stderr_lines: u64,
    started_file: Option<std::path::PathBuf>,
}

impl Config {
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok();
        let number = |name: &str| {
            var(name)
                .and_then(|value| value.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        Self {
            load_session: var("OMA_TEST_AGENT_LOAD_SESSION").is_none_or(|value| value.trim() != "0"),
            ignore_eof: var("OMA_TEST_AGENT_IGNORE_EOF").is_some_and(|value| value.trim() == "1"),
            startup_delay: Duration::from_millis(number("OMA_TEST_AGENT_STARTUP_DELAY_MS")),
            stderr_lines: number("OMA_TEST_AGENT_STDERR_LINES"),
            started_file: std::env::var_os("OMA_TEST_AGENT_STARTED_FILE").map(Into::into),
        }
    }
}

fn main() {
    let config = Config::from_env();
    if let Some(path) = &config.started_file {
        use std::io::Write as _;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut file| writeln!(file, "started {}", std::process::id()));
        if let Err(err) = written {
            log!("oma-test-agent: cannot append to {}: {err}", path.display());
        }
    }
    for line in 1..=config.stderr_lines {
        log!("oma-test-agent: stderr line {line} of {}", config.stderr_lines);
    }
    if !config.startup_delay.is_zero() {
        log!("oma-test-agent: startup delay {:?}", config.startup_delay);
        std::thread::sleep(config.startup_delay);
    }
    // One thread: a scripted agent waits on timers and pipes, and hundreds
    // of them share the bench's two cores (a worker pool each cost more
    // than the relay they feed).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    let code = runtime.block_on(run(config));
    // Never reached when the writer thread exits the process; kept as a fallback.
    std::process::exit(code);
}

async fn run(config: Config) -> i32 {
    let markers = Markers::default();
    let out = io::spawn_writer(markers.clone());
    let transport = Lines::new(io::line_sink(out.clone()), io::stdin_lines(config.ignore_eof));
    let agent = Arc::new(TestAgent::new(config.load_session, markers));
    log!(
        "oma-test-agent {} started (pid {}, loadSession {}, ignore EOF {})",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        config.load_session,
        config.ignore_eof
    );

    let result = Agent
        .v1()
        .name("oma-test-agent")
        .on_receive_request(
            {
                let agent = agent.clone();
                async move |_request: InitializeRequest,
                            responder: Responder<InitializeResponse>,
                            _cx: ConnectionTo<Client>| {
                    responder.respond(
                        InitializeResponse::new(ProtocolVersion::V1)
                            .agent_capabilities(
                                AgentCapabilities::new()
                                    .load_session(agent.load_session)
                                    .prompt_capabilities(
                                        PromptCapabilities::new().image(true).audio(true).embedded_context(true),
                                    ),
                            )
                            .agent_info(Implementation::new("oma-test-agent", env!("CARGO_PKG_VERSION"))),
                    )
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            {
                let agent = agent.clone();
                async move |request: NewSessionRequest,
                            responder: Responder<NewSessionResponse>,
                            _cx: ConnectionTo<Client>| {
                    if !request.cwd.is_absolute() {
                        return responder.respond_with_error(
                            Error::invalid_params().data(format!("cwd must be absolute: {}", request.cwd.display())),
                        );
                    }
                    let id = session::new_session_id();
                    let prompt = system_prompt(request.meta.as_ref(), request.system_prompt.as_ref());
                    log!("oma-test-agent: new session {id} in {}", request.cwd.display());
                    let mcp_servers = serde_json::to_value(&request.mcp_servers).unwrap_or_default();
                    agent.insert_session(Arc::new(Session::new(id.clone(), request.cwd, prompt, mcp_servers)));
                    responder.respond(
                        NewSessionResponse::new(id)
                            .modes(offered_modes(&agent::start_mode()))
                            .config_options(offered_config(MODELS[0])),
                    )
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            {
                let agent = agent.clone();
                async move |request: LoadSessionRequest,
                            responder: Responder<LoadSessionResponse>,
                            cx: ConnectionTo<Client>| {
                    if !agent.load_session {
                        return responder.respond_with_error(Error::method_not_found());
                    }
                    let id = request.session_id.to_string();
                    let path = session::transcript_path(&request.cwd, &id);
                    let transcript = if session::is_safe_session_id(&id) && request.cwd.is_absolute() {
                        tokio::fs::read(&path).await.ok()
                    } else {
                        None
                    };
                    let Some(transcript) = transcript else {
                        log!("oma-test-agent: load {id}: no transcript at {}", path.display());
                        return responder.respond_with_error(Error::new(-32603, "No previous sessions found"));
                    };
                    let prompt = system_prompt(request.meta.as_ref(), request.system_prompt.as_ref());
                    let mcp_servers = serde_json::to_value(&request.mcp_servers).unwrap_or_default();
                    agent.insert_session(Arc::new(Session::new(id.clone(), request.cwd, prompt, mcp_servers)));
                    let mut replayed = 0usize;
                    for line in transcript.split(|&byte| byte == b'\n') {
                        let Ok(update) = serde_json::from_slice::<serde_json::Value>(line) else {
                            continue;
                        };
                        let params = serde_json::json!({ "sessionId": id, "update": update });
                        cx.send_notification(UntypedMessage::new("session/update", params)?)?;
                        replayed += 1;
                    }
                    log!("oma-test-agent: load {id}: replayed {replayed} updates");
                    responder.respond(
                        LoadSessionResponse::new()
                            .modes(offered_modes(&agent::start_mode()))
                            .config_options(offered_config(MODELS[0])),
                    )
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            {
                let agent = agent.clone();
                async move |request: PromptRequest, responder: Responder<PromptResponse>, cx: ConnectionTo<Client>| {
                    let Some(session) = agent.session(&request.session_id.to_string()) else {
                        return responder.respond_with_error(
                            Error::invalid_params().data(format!("unknown session {}", request.session_id)),
                        );
                    };
                    let (instructions, text) = turn::split_instructions(&request.prompt);
                    if let Some(instructions) = instructions {
                        *session.instructions.lock().unwrap() = Some(instructions);
                    }
                    let script = script::parse_script(&text);
                    // Created here, inside the dispatch loop, so a session/cancel
                    // that follows this prompt is seen by the turn.
                    let turn = Turn::new(agent.clone(), session, cx.clone());
                    cx.spawn(turn.run(script, responder))
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            {
                let agent = agent.clone();
                async move |request: SetSessionModeRequest,
                            responder: Responder<SetSessionModeResponse>,
                            _cx: ConnectionTo<Client>| {
                    let Some(session) = agent.session(&request.session_id.to_string()) else {
                        return responder.respond_with_error(Error::invalid_params().data("unknown session"));
                    };
                    let mode = request.mode_id.to_string();
                    if !MODES.contains(&mode.as_str()) {
                        return responder.respond_with_error(Error::invalid_params().data(format!("no mode {mode}")));
                    }
                    log!("oma-test-agent: session {}: mode {mode}", session.id);
                    *session.mode.lock().unwrap() = mode;
                    responder.respond(SetSessionModeResponse::new())
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            {
                let agent = agent.clone();
                async move |request: SetSessionConfigOptionRequest,
                            responder: Responder<SetSessionConfigOptionResponse>,
                            _cx: ConnectionTo<Client>| {
                    let Some(session) = agent.session(&request.session_id.to_string()) else {
                        return responder.respond_with_error(Error::invalid_params().data("unknown session"));
                    };
                    let model = match (&*request.config_id.0, &request.value) {
                        ("model", SessionConfigOptionValue::ValueId { value }) if MODELS.contains(&&*value.0) => {
                            value.0.to_string()
                        }
                        _ => {
                            return responder
                                .respond_with_error(Error::invalid_params().data("no such option or value"));
                        }
                    };
                    log!("oma-test-agent: session {}: model {model}", session.id);
                    *session.model.lock().unwrap() = model.clone();
                    responder.respond(SetSessionConfigOptionResponse::new(offered_config(&model)))
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_notification(
            {
                let agent = agent.clone();
                async move |notification: CancelNotification, _cx: ConnectionTo<Client>| {
                    match agent.session(&notification.session_id.to_string()) {
                        Some(session) => {
                            log!("oma-test-agent: session {}: cancel", session.id);
                            session.cancel();
                        }
                        None => log!("oma-test-agent: cancel for unknown session {}", notification.session_id),
                    }
                    Ok(())
                }
            },
            agent_client_protocol::on_receive_notification!(),
        )
        .connect_with(transport, {
            let agent = agent.clone();
            async move |cx: ConnectionTo<Client>| {
                cx.incoming_closed().await;
                // Let running turns finish (a hung one does not count), then stop.
                agent.turns_finished().await;
                Ok(())
            }
        })
        .await;

    let code = match result {
        Ok(()) => 0,
        Err(err) => {
            log!("oma-test-agent: connection failed: {err:?}");
            1
        }
    };
    // The writer exits the process once everything queued before this is written.
    let _ = out.send(Out::Exit(code));
    std::future::pending::<i32>().await
}
