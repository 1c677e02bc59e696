//! The control plane alone: a synthetic runtime (this process, speaking the
//! stream protocol) sends pre-built events as fast as the stream takes them,
//! and the clock stops when the EventAck for the last one arrives (acks are
//! sent only after the events are durable). This isolates the control
//! plane's store path from `oma-agent` and the test agent, and shows what
//! batching frames would buy.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use oma_proto::pb;

use super::env::Env;
use super::procs::cpu_time;
use super::scale::{open, pair};

pub struct CpOnly {
    pub sessions: usize,
    pub per_frame: usize,
    pub events: u64,
    pub elapsed: Duration,
    pub cp_cpu: Duration,
}

impl CpOnly {
    pub fn per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn cpu_per_event_ns(&self) -> u64 {
        (self.cp_cpu.as_nanos() / u128::from(self.events.max(1))) as u64
    }
}

/// An agent_message_chunk shaped like the test agent's (≈ 200 bytes of JSON).
fn chunk(session_id: &str, seq: u64) -> pb::SessionEvent {
    let text = format!("chunk {seq}\n");
    let raw = format!(
        r#"{{"sessionUpdate":"agent_message_chunk","content":{{"type":"text","text":"chunk {seq}\n"}},"_meta":{{"oma_test":{{"seq":{seq},"sent_unix_ns":{}}}}}}}"#,
        super::stats::unix_ns()
    );
    pb::SessionEvent {
        session_id: session_id.to_owned(),
        seq,
        time: Some(prost_types::Timestamp::default()),
        turn_id: "turn_bench".into(),
        kind: Some(pb::session_event::Kind::Update(pb::SessionUpdate {
            kind: "agent_message_chunk".into(),
            raw_json: raw,
            typed: Some(pb::session_update::Typed::AgentMessageChunk(pb::ContentChunk {
                content: Some(pb::ContentBlock {
                    block: Some(pb::content_block::Block::Text(pb::TextContent { text })),
                }),
            })),
        })),
    }
}

/// A synthetic runtime's open stream and sessions of an agent bound to it.
struct Synthetic {
    tx: tokio::sync::mpsc::Sender<pb::AgentFrame>,
    inbound: tonic::Streaming<pb::ControlFrame>,
    ids: Vec<String>,
}

/// Pairs a synthetic runtime, opens its stream and creates `sessions`
/// sessions on it.
async fn synthetic(env: &mut Env, sessions: usize, tag: &str) -> anyhow::Result<Synthetic> {
    let retries = AtomicUsize::new(0);
    let machine = pair(&env.cp, 1, &format!("synthetic-{tag}"), &retries)
        .await?
        .pop()
        .context("no machine")?;
    let channel = env.cp.channel().await?;
    let (tx, inbound, _) = open(&channel, &machine, &retries).await.map_err(anyhow::Error::msg)?;
    let runtime_id = env
        .clients
        .runtimes
        .list_runtimes(pb::ListRuntimesRequest {
            page: Some(pb::PageRequest {
                page_size: 1000,
                page_token: String::new(),
            }),
        })
        .await?
        .into_inner()
        .runtimes
        .into_iter()
        .find(|r| r.machine_id == machine.machine_id)
        .context("the synthetic runtime is not listed")?
        .id;
    let agent_id = env
        .clients
        .create_agent(pb::AgentSpec {
            system_prompt: "synthetic".into(),
            ..oma_integration_tests::test_agent_spec(
                &format!("synthetic-{tag}"),
                &runtime_id,
                pb::PermissionPolicy::AllowOnce,
            )
        })
        .await?;
    let mut ids = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        ids.push(env.create_session(&agent_id).await?);
    }
    Ok(Synthetic { tx, inbound, ids })
}

/// Stores `each` events in each of `sessions` sessions of a synthetic
/// runtime, `per_frame` events per frame (sessions interleaved).
pub async fn run(env: &mut Env, sessions: usize, each: u64, per_frame: usize, tag: &str) -> anyhow::Result<CpOnly> {
    let Synthetic { tx, mut inbound, ids } = synthetic(env, sessions, tag).await?;

    // Every frame built before the clock starts.
    let mut frames = Vec::new();
    let mut pending: Vec<pb::SessionEvent> = Vec::with_capacity(per_frame);
    for seq in 1..=each {
        for id in &ids {
            pending.push(chunk(id, seq));
            if pending.len() == per_frame {
                frames.push(std::mem::take(&mut pending));
            }
        }
    }
    if !pending.is_empty() {
        frames.push(pending);
    }
    let frames: Vec<pb::AgentFrame> = frames
        .into_iter()
        .map(|events| pb::AgentFrame {
            frame: Some(if events.len() == 1 {
                pb::agent_frame::Frame::Event(pb::SessionEventFrame {
                    event: events.into_iter().next(),
                })
            } else {
                pb::agent_frame::Frame::Events(pb::SessionEventBatch { events })
            }),
        })
        .collect();

    let cp_pid = env.cp.pid();
    let cpu0 = cpu_time(cp_pid);
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        for frame in frames {
            if tx.send(frame).await.is_err() {
                return Err(anyhow::anyhow!("the stream closed while sending"));
            }
        }
        Ok(tx)
    });
    let mut acked: HashMap<String, u64> = HashMap::new();
    let deadline = Duration::from_secs(120) + Duration::from_millis(each * sessions as u64 / 2);
    while acked.len() < sessions || acked.values().any(|seq| *seq < each) {
        let left = deadline.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, inbound.message()).await {
            Ok(Ok(Some(pb::ControlFrame {
                frame: Some(pb::control_frame::Frame::EventAck(ack)),
            }))) => {
                let entry = acked.entry(ack.session_id).or_default();
                *entry = (*entry).max(ack.seq);
            }
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => bail!("the control plane closed the synthetic stream"),
            Ok(Err(status)) => bail!("the synthetic stream failed: {status}"),
            Err(_) => bail!("not every event was acked within {deadline:?}"),
        }
    }
    let elapsed = start.elapsed();
    let cp_cpu = cpu_time(cp_pid).saturating_sub(cpu0);
    let tx = sender.await??;
    drop(tx);
    Ok(CpOnly {
        sessions,
        per_frame,
        events: each * sessions as u64,
        elapsed,
        cp_cpu,
    })
}

/// The control plane's own share of the relay's latency: a synthetic
/// runtime sends one event per frame at `rate` per second, each stamped
/// when sent; a watcher of the session (in this process too) takes the time
/// it arrives. No oma-agent, no test agent: frame in → commit → watcher out.
pub async fn latency(env: &mut Env, rate: f64, count: u64) -> anyhow::Result<super::stats::Latency> {
    let Synthetic { tx, mut inbound, ids } = synthetic(env, 1, "latency").await?;
    let session_id = ids[0].clone();
    let mut watch = env.watch(&session_id, 1).await?;
    // Acks must be read, or the stream's window fills.
    let acks = tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        for seq in 1..=count {
            tick.tick().await;
            let frame = pb::AgentFrame {
                frame: Some(pb::agent_frame::Frame::Event(pb::SessionEventFrame {
                    event: Some(chunk(&session_id, seq)),
                })),
            };
            if tx.send(frame).await.is_err() {
                bail!("the control plane closed the synthetic stream");
            }
        }
        Ok(tx)
    });
    let mut pairs = Vec::with_capacity(count as usize);
    let deadline = Duration::from_secs(60) + Duration::from_secs_f64(count as f64 / rate);
    while (pairs.len() as u64) < count {
        let event = match tokio::time::timeout(deadline, watch.message()).await {
            Ok(Ok(Some(event))) => event,
            Ok(Ok(None)) => bail!("the watch ended"),
            Ok(Err(status)) => bail!("the watch failed: {status}"),
            Err(_) => bail!("not every event reached the watcher within {deadline:?}"),
        };
        let received = super::stats::unix_ns();
        if let Some(pb::session_event::Kind::Update(update)) = &event.kind
            && let Some(sent) = super::stats::sent_unix_ns(&update.raw_json)
        {
            pairs.push((received, sent));
        }
    }
    drop(sender.await??);
    acks.abort();
    Ok(super::stats::Latency::of_pairs(&pairs))
}
