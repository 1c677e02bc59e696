//! Attacks and the lab that plays them against a paired daemon.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, ensure};
use oma_proto::pb;
use oma_proto::pb::control_frame::Frame;
use prost::Message as _;

use super::canary::{Canary, snapshot};
use super::server::{HostileControlPlane, Outbound};
use super::{AGENTS_MD, CLAUDISH, DEADLINE, PLAIN, SKILL_MD};
use crate::faults::agent_text;
use crate::{AgentDaemon, bin, text_prompt, wait_until};

/// A named attack: steps played in order by [`Lab::run`].
#[derive(Debug)]
pub struct Attack {
    pub name: String,
    pub steps: Vec<Step>,
}

/// One step of an attack.
#[derive(Debug)]
pub enum Step {
    /// Put a frame (or bytes) on the stream.
    Send(Outbound),
    /// Send a StartSession; a session with a well-formed id is disposed of
    /// after the attack.
    Start(pb::StartSession),
    /// The daemon reports the session ready (its child runs).
    Ready(String),
    /// The daemon fails the session (SessionFailed, and an error event)
    /// with this code and a message containing `contains`, and no folder
    /// exists for it.
    Failed {
        session_id: String,
        code: String,
        contains: String,
    },
    /// The daemon refuses the session with a SessionFailed frame alone
    /// (there is no seq to number an event with), and no folder exists.
    Refused {
        session_id: String,
        code: String,
        contains: String,
    },
    /// Prompt the session with a test-agent script; the turn ends and its
    /// agent text contains `expect`.
    Turn {
        session_id: String,
        script: String,
        expect: String,
    },
    /// The session logged a message containing `contains`.
    Logged { session_id: String, contains: String },
    /// The session recorded an error event with this code and a message
    /// containing `contains` (and went on: it did not fail).
    Errored {
        session_id: String,
        code: String,
        contains: String,
    },
    /// `<session dir>/<relative>` is a regular file (not a symlink) whose
    /// text contains `contains`.
    File {
        session_id: String,
        relative: String,
        contains: String,
    },
    /// The attack broke the stream: the daemon connects again.
    Reconnects,
    /// The stream the attack began on is still the one up (put it after a
    /// step that proves the daemon read what came before, e.g. a turn).
    SameStream,
    /// Nothing exists where the daemon would put this session's folder
    /// (joined as is: a path-like id names a place outside), and the
    /// session was never reported ready.
    Absent(String),
}

impl Step {
    /// A short description for error messages (frames can be huge).
    fn describe(&self) -> String {
        match self {
            Step::Send(Outbound::Frame(frame)) => {
                let kind = format!("{:?}", frame.frame).chars().take(120).collect::<String>();
                format!("send a {}-byte frame {kind}…", frame.encoded_len())
            }
            Step::Send(Outbound::Raw(bytes)) => format!("send {} raw bytes", bytes.len()),
            Step::Start(start) => format!(
                "start session {:?} of {:?} ({} bytes)",
                start.session_id,
                start.acp_agent_id,
                start.encoded_len()
            ),
            other => format!("{other:?}").chars().take(300).collect(),
        }
    }
}

impl Attack {
    pub fn new(name: impl Into<String>) -> Attack {
        Attack {
            name: name.into(),
            steps: Vec::new(),
        }
    }

    pub fn step(mut self, step: Step) -> Attack {
        self.steps.push(step);
        self
    }

    pub fn send(self, frame: impl Into<Outbound>) -> Attack {
        self.step(Step::Send(frame.into()))
    }

    pub fn start(self, start: pb::StartSession) -> Attack {
        self.step(Step::Start(start))
    }

    pub fn ready(self, session_id: &str) -> Attack {
        self.step(Step::Ready(session_id.to_owned()))
    }

    pub fn failed(self, session_id: &str, code: &str, contains: &str) -> Attack {
        self.step(Step::Failed {
            session_id: session_id.to_owned(),
            code: code.to_owned(),
            contains: contains.to_owned(),
        })
    }

    pub fn refused(self, session_id: &str, code: &str, contains: &str) -> Attack {
        self.step(Step::Refused {
            session_id: session_id.to_owned(),
            code: code.to_owned(),
            contains: contains.to_owned(),
        })
    }

    pub fn turn(self, session_id: &str, script: &str, expect: &str) -> Attack {
        self.step(Step::Turn {
            session_id: session_id.to_owned(),
            script: script.to_owned(),
            expect: expect.to_owned(),
        })
    }

    pub fn logged(self, session_id: &str, contains: &str) -> Attack {
        self.step(Step::Logged {
            session_id: session_id.to_owned(),
            contains: contains.to_owned(),
        })
    }

    pub fn errored(self, session_id: &str, code: &str, contains: &str) -> Attack {
        self.step(Step::Errored {
            session_id: session_id.to_owned(),
            code: code.to_owned(),
            contains: contains.to_owned(),
        })
    }

    pub fn file(self, session_id: &str, relative: &str, contains: &str) -> Attack {
        self.step(Step::File {
            session_id: session_id.to_owned(),
            relative: relative.to_owned(),
            contains: contains.to_owned(),
        })
    }

    pub fn reconnects(self) -> Attack {
        self.step(Step::Reconnects)
    }

    pub fn same_stream(self) -> Attack {
        self.step(Step::SameStream)
    }

    pub fn absent(self, session_id: &str) -> Attack {
        self.step(Step::Absent(session_id.to_owned()))
    }
}

/// A fresh, well-formed session id.
pub fn session_id() -> String {
    format!("ses_{:032x}", rand::random::<u128>())
}

fn is_session_id(id: &str) -> bool {
    id.strip_prefix("ses_")
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// A hostile control plane, a real daemon paired with it (its `HOME` is the
/// canary's), and a normal session started before any attack.
pub struct Lab {
    pub cp: HostileControlPlane,
    pub daemon: AgentDaemon,
    pub canary: Canary,
    /// A `plain` session started before any attack; prompted after each.
    pub normal: String,
    config_before: Vec<(String, String)>,
    turns: AtomicU64,
}

impl Lab {
    /// Pairs and starts a daemon (`oma-agent run --max-sessions
    /// max_sessions`) and its normal session.
    pub async fn start(max_sessions: u32) -> anyhow::Result<Lab> {
        Self::start_with_policy(max_sessions, None).await
    }

    /// [`Lab::start`] with the owner's `policy.toml` (written before the
    /// daemon starts; the config dir must not change after that).
    pub async fn start_with_policy(max_sessions: u32, policy_toml: Option<&str>) -> anyhow::Result<Lab> {
        Self::start_with_config(max_sessions, policy_toml, None).await
    }

    /// [`Lab::start_with_policy`] with the owner's `workspaces.toml` too.
    pub async fn start_with_config(
        max_sessions: u32,
        policy_toml: Option<&str>,
        workspaces_toml: Option<&str>,
    ) -> anyhow::Result<Lab> {
        let canary = Canary::new()?;
        let cp = HostileControlPlane::start()?;
        let agents_toml = format!(
            "[[agent]]\nid = \"{CLAUDISH}\"\nname = \"Scripted agent as Claude\"\ncommand = \"{bin}\"\nclaude = true\n\n\
             [[agent]]\nid = \"{PLAIN}\"\nname = \"Scripted agent\"\ncommand = \"{bin}\"\n",
            bin = bin("oma-test-agent").display()
        );
        let mut daemon = AgentDaemon::setup_with_agents_toml(&cp.url(), cp.connect_code(), &agents_toml)?;
        daemon.env = vec![("HOME".into(), canary.home.display().to_string())];
        if let Some(policy) = policy_toml {
            daemon.set_policy(policy)?;
        }
        if let Some(workspaces) = workspaces_toml {
            std::fs::write(daemon.config_dir.path().join("workspaces.toml"), workspaces)?;
        }
        daemon.start(&["--max-sessions", &max_sessions.to_string()])?;
        cp.wait_connected(0).await?;
        let config_before = snapshot(daemon.config_dir.path());
        let lab = Lab {
            cp,
            daemon,
            canary,
            normal: session_id(),
            config_before,
            turns: AtomicU64::new(0),
        };
        lab.cp.send(Frame::StartSession(lab.bundle(PLAIN, &lab.normal))).await?;
        lab.wait_ready(&lab.normal).await?;
        lab.assert_unharmed("no attack yet").await?;
        Ok(lab)
    }

    /// A well-formed start: AGENTS.md [`AGENTS_MD`] and one skill, `lint`.
    pub fn bundle(&self, acp_agent_id: &str, session_id: &str) -> pb::StartSession {
        pb::StartSession {
            session_id: session_id.to_owned(),
            acp_agent_id: acp_agent_id.to_owned(),
            agents_md: AGENTS_MD.to_owned(),
            system_prompt: AGENTS_MD.to_owned(),
            skills: vec![pb::SkillBundle {
                name: "lint".into(),
                files: vec![
                    pb::SkillBundleFile {
                        path: "SKILL.md".into(),
                        content: SKILL_MD.as_bytes().to_vec(),
                    },
                    pb::SkillBundleFile {
                        path: "bin/run.sh".into(),
                        content: b"#!/bin/sh\necho lint\n".to_vec(),
                    },
                ],
            }],
            ..Default::default()
        }
    }

    /// The folder of a session on the machine.
    pub fn session_dir(&self, session_id: &str) -> PathBuf {
        self.daemon.session_dir(session_id)
    }

    pub async fn wait_ready(&self, session_id: &str) -> anyhow::Result<()> {
        wait_until(&format!("session {session_id} to be ready"), DEADLINE, || async {
            if let Some(error) = self.cp.failure(session_id) {
                return Some(Err(anyhow::anyhow!("session {session_id} failed: {error:?}")));
            }
            self.cp.is_ready(session_id).then_some(Ok(()))
        })
        .await?
    }

    /// Prompts a session with a test-agent script and returns the turn's
    /// agent text once it ended.
    pub async fn turn(&self, session_id: &str, script: &str) -> anyhow::Result<String> {
        let n = self.turns.fetch_add(1, Ordering::Relaxed);
        let turn_id = format!("trn_{n:04}{:028x}", rand::random::<u128>() >> 16);
        self.cp
            .send(Frame::Prompt(pb::Prompt {
                session_id: session_id.to_owned(),
                turn_id: turn_id.clone(),
                prompt: text_prompt(script),
                requested_by_user_id: String::new(),
            }))
            .await?;
        let events = wait_until(&format!("turn {turn_id} of {session_id} to end"), DEADLINE, || async {
            let events: Vec<_> = self
                .cp
                .events(session_id)
                .into_iter()
                .filter(|e| e.turn_id == turn_id)
                .collect();
            events
                .iter()
                .any(|e| matches!(e.kind, Some(pb::session_event::Kind::TurnEnded(_))))
                .then_some(events)
        })
        .await?;
        Ok(agent_text(&events))
    }

    /// Plays an attack, checks that nothing got through, and disposes of
    /// the sessions it started.
    pub async fn run(&self, attack: Attack) -> anyhow::Result<()> {
        let name = attack.name.clone();
        let streams = self.cp.streams();
        let mut started = Vec::new();
        for (i, step) in attack.steps.into_iter().enumerate() {
            let what = step.describe();
            self.step(step, streams, &mut started)
                .await
                .with_context(|| format!("attack {name:?}, step {i}: {what}"))?;
        }
        self.assert_unharmed(&name)
            .await
            .with_context(|| format!("after attack {name:?}"))?;
        self.dispose(&started)
            .await
            .with_context(|| format!("disposing of the sessions of attack {name:?}"))
    }

    async fn step(&self, step: Step, streams: u64, started: &mut Vec<String>) -> anyhow::Result<()> {
        match step {
            Step::Send(out) => self.cp.send(out).await?,
            Step::Start(start) => {
                if is_session_id(&start.session_id) {
                    started.push(start.session_id.clone());
                }
                self.cp.send(Frame::StartSession(start)).await?;
            }
            Step::Ready(session_id) => self.wait_ready(&session_id).await?,
            Step::Failed {
                session_id,
                code,
                contains,
            } => {
                let error = self.refusal(&session_id, &code, &contains).await?;
                let logged = self.cp.events(&session_id).into_iter().any(|e| {
                    matches!(&e.kind, Some(pb::session_event::Kind::Error(logged)) if *logged == error)
                });
                ensure!(logged, "no error event for {session_id}: {:?}", self.cp.events(&session_id));
            }
            Step::Refused {
                session_id,
                code,
                contains,
            } => {
                self.refusal(&session_id, &code, &contains).await?;
            }
            Step::Turn {
                session_id,
                script,
                expect,
            } => {
                let text = self.turn(&session_id, &script).await?;
                ensure!(text.contains(&expect), "expected {expect:?} in the agent's text {text:?}");
            }
            Step::Logged { session_id, contains } => {
                wait_until(&format!("{session_id} to log {contains:?}"), DEADLINE, || async {
                    self.cp
                        .events(&session_id)
                        .iter()
                        .any(|e| matches!(&e.kind, Some(pb::session_event::Kind::Log(l)) if l.message.contains(&contains)))
                        .then_some(())
                })
                .await?
            }
            Step::Errored {
                session_id,
                code,
                contains,
            } => {
                wait_until(&format!("{session_id} to record error {code}"), DEADLINE, || async {
                    self.cp
                        .events(&session_id)
                        .iter()
                        .any(|e| {
                            matches!(&e.kind, Some(pb::session_event::Kind::Error(err))
                                if err.code == code && err.message.contains(&contains))
                        })
                        .then_some(())
                })
                .await?
            }
            Step::File {
                session_id,
                relative,
                contains,
            } => {
                let path = self.session_dir(&session_id).join(&relative);
                let meta = std::fs::symlink_metadata(&path).with_context(|| path.display().to_string())?;
                ensure!(meta.is_file(), "{} is not a regular file: {meta:?}", path.display());
                let text = std::fs::read_to_string(&path)?;
                ensure!(text.contains(&contains), "{} holds {text:?}", path.display());
            }
            Step::Reconnects => self.cp.wait_connected(streams).await?,
            Step::SameStream => ensure!(
                self.cp.streams() == streams && self.cp.connected(),
                "the daemon reconnected ({} streams, was {streams})",
                self.cp.streams()
            ),
            Step::Absent(session_id) => {
                let dir = self.session_dir(&session_id);
                ensure!(
                    std::fs::symlink_metadata(&dir).is_err(),
                    "{} exists",
                    dir.display()
                );
                ensure!(!self.cp.is_ready(&session_id), "{session_id:?} was started");
            }
        }
        Ok(())
    }

    /// Waits for the SessionFailed of a session and checks its error, that
    /// it never ran and that no folder was made for it.
    async fn refusal(&self, session_id: &str, code: &str, contains: &str) -> anyhow::Result<pb::SessionError> {
        let error = wait_until(&format!("session {session_id} to fail"), DEADLINE, || async {
            self.cp.failure(session_id)
        })
        .await?;
        ensure!(
            error.code == code && error.message.contains(contains),
            "expected a {code} error naming {contains:?}, got {error:?}"
        );
        ensure!(!self.cp.is_ready(session_id), "{session_id} failed and was ready");
        let dir = self.session_dir(session_id);
        ensure!(
            !dir.exists(),
            "a folder was made for a refused session: {}",
            dir.display()
        );
        Ok(error)
    }

    /// Disposes of sessions and waits until the daemon says so and their
    /// folders are gone.
    pub async fn dispose(&self, sessions: &[String]) -> anyhow::Result<()> {
        for session_id in sessions {
            self.cp
                .send(Frame::DisposeSession(pb::DisposeSession {
                    session_id: session_id.clone(),
                    delete_branch: false,
                }))
                .await?;
        }
        wait_until("the sessions to be disposed of", DEADLINE, || async {
            sessions
                .iter()
                .all(|id| self.cp.is_disposed(id) && !self.session_dir(id).exists())
                .then_some(())
        })
        .await
    }

    /// The canary is untouched, the data dir holds only what the daemon
    /// keeps (private), the config dir is unchanged, the daemon keeps
    /// heartbeating, and the normal session completes a turn.
    /// The turn comes first: once it ended, the daemon has handled every
    /// frame sent before it.
    pub async fn assert_unharmed(&self, case: &str) -> anyhow::Result<()> {
        let beats = self.cp.heartbeats();
        // `;` and newlines separate directives in a script.
        let alive = format!("alive after {}", case.replace([';', '\n'], ","));
        let text = self.turn(&self.normal, &format!("echo {alive}")).await?;
        ensure!(text.contains(&alive), "the normal session answered {text:?}");
        wait_until("two more heartbeats", DEADLINE, || async {
            (self.cp.heartbeats() >= beats + 2).then_some(())
        })
        .await?;
        self.canary.check(&self.daemon)?;
        self.check_data_dir()?;
        ensure!(
            snapshot(self.daemon.config_dir.path()) == self.config_before,
            "the config dir changed"
        );
        Ok(())
    }

    /// Only `sessions/<id>/`, `outbox/<id>.*`, `logs/<id>.*` and
    /// `state.json`, with 0700 folders and 0600 files.
    fn check_data_dir(&self) -> anyhow::Result<()> {
        let data = self.daemon.data_dir.path();
        let mode = |path: &Path| std::fs::symlink_metadata(path).map(|m| m.permissions().mode() & 0o777);
        for dir in [
            data.to_path_buf(),
            data.join("sessions"),
            data.join("outbox"),
            data.join("logs"),
        ] {
            ensure!(mode(&dir)? == 0o700, "{} is not 0700", dir.display());
        }
        ensure!(
            self.session_dir(&self.normal).is_dir(),
            "the normal session's folder is gone"
        );
        let names = |dir: &Path| -> anyhow::Result<Vec<String>> {
            std::fs::read_dir(dir)?
                .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
                .collect()
        };
        for name in names(data)? {
            let temporary = name.starts_with(".state.json.tmp-");
            ensure!(
                ["sessions", "outbox", "logs", "state.json"].contains(&name.as_str()) || temporary,
                "unexpected {name:?} in the data dir"
            );
            if name == "state.json" {
                ensure!(
                    mode(&data.join(&name)).is_ok_and(|m| m == 0o600),
                    "state.json is not 0600"
                );
            }
        }
        for name in names(&data.join("sessions"))? {
            ensure!(is_session_id(&name), "unexpected sessions/{name:?}");
        }
        for folder in ["outbox", "logs"] {
            for name in names(&data.join(folder))? {
                let id = name.trim_start_matches('.').split('.').next().unwrap_or_default();
                ensure!(is_session_id(id), "unexpected {folder}/{name:?}");
                if let Ok(m) = mode(&data.join(folder).join(&name)) {
                    ensure!(m == 0o600, "{folder}/{name} is {m:o}, not 0600");
                }
            }
        }
        Ok(())
    }
}

/// The attacks on a session's files that need the child's help: it swaps
/// what the daemon wrote for symlinks to the user's files, crashes, and the
/// daemon prepares the folder again for the next child.
pub fn swapped_for_symlinks(lab: &Lab, acp_agent_id: &str) -> Vec<Attack> {
    let home = lab.canary.home.display().to_string();
    let skills_dir = if acp_agent_id == CLAUDISH {
        ".claude/skills"
    } else {
        ".skills"
    };
    let mut attacks = Vec::new();
    let plants = |links: &[(&str, String)]| {
        let script: Vec<String> = links
            .iter()
            .map(|(link, target)| format!("symlink {target} {link}"))
            .collect();
        let said: String = links
            .iter()
            .map(|(link, target)| format!("symlink {link} -> {target}"))
            .collect();
        (format!("{}; crash", script.join("; ")), said)
    };
    let scripts = [
        (
            "AGENTS.md, .claude, .claude-config and .skills swapped for symlinks into the home",
            plants(&[
                ("AGENTS.md", format!("{home}/.bashrc")),
                (".claude", format!("{home}/.claude")),
                (".claude-config", format!("{home}/.claude")),
                (".skills", format!("{home}/.claude/skills")),
            ]),
        ),
        (
            "the skills folder swapped for a symlink to the user's skills",
            plants(&[(skills_dir, format!("{home}/.claude/skills"))]),
        ),
        (
            "a skill swapped for a symlink to the user's skill",
            plants(&[(&format!("{skills_dir}/lint"), format!("{home}/.claude/skills/mine"))]),
        ),
    ];
    for (name, (script, said)) in scripts {
        let session = session_id();
        attacks.push(
            Attack::new(format!("{acp_agent_id}: {name}"))
                .start(lab.bundle(acp_agent_id, &session))
                .ready(&session)
                .turn(&session, &script, &said)
                .logged(&session, "the agent process ended")
                // The next prompt starts a new child: the folder is prepared again.
                .turn(&session, "cat AGENTS.md", AGENTS_MD)
                .file(&session, "AGENTS.md", AGENTS_MD)
                .file(&session, &format!("{skills_dir}/lint/SKILL.md"), "Run the linter.")
                .turn(&session, &format!("cat {skills_dir}/lint/SKILL.md"), "Run the linter."),
        );
    }
    attacks
}
