//! The floor of the relay's architecture on this machine: `oma-relay-floor`
//! (a bare tonic relay, no database) measured like the control plane alone
//! ([`super::cp_only::latency`]): a publisher in this process sends one
//! stamped chunk per message at a fixed rate, a watcher in this process
//! takes its arrival.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use oma_integration_tests::relay_floor::relay_floor_client::RelayFloorClient;
use oma_integration_tests::relay_floor::{Chunk, Empty};
use tokio::io::AsyncBufReadExt as _;

use super::procs::bin;
use super::stats::{Latency, unix_ns};

/// About the size of a relayed agent_message_chunk's payload.
const PAYLOAD_BYTES: usize = 200;

pub async fn latency(rate: f64, count: u64) -> anyhow::Result<Latency> {
    let mut server = tokio::process::Command::new(bin("oma-relay-floor")?)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start oma-relay-floor")?;
    let stdout = server.stdout.take().context("no stdout")?;
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .context("oma-relay-floor did not say where it listens")??;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected first line {line:?}"))?
        .to_owned();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut watch = RelayFloorClient::new(channel.clone())
        .watch(Empty {})
        .await?
        .into_inner();
    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(1024);
    let publish = tokio::spawn({
        let mut client = RelayFloorClient::new(channel);
        async move { client.publish(tokio_stream::wrappers::ReceiverStream::new(rx)).await }
    });
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        for _ in 0..count {
            tick.tick().await;
            let chunk = Chunk {
                payload: vec![b'x'; PAYLOAD_BYTES],
                sent_unix_ns: unix_ns(),
            };
            if tx.send(chunk).await.is_err() {
                bail!("the publish stream closed");
            }
        }
        Ok(())
    });
    let mut pairs = Vec::with_capacity(count as usize);
    let deadline = Duration::from_secs(60) + Duration::from_secs_f64(count as f64 / rate);
    while (pairs.len() as u64) < count {
        match tokio::time::timeout(deadline, watch.message()).await {
            Ok(Ok(Some(chunk))) => pairs.push((unix_ns(), chunk.sent_unix_ns)),
            Ok(Ok(None)) => bail!("the watch ended"),
            Ok(Err(status)) => bail!("the watch failed: {status}"),
            Err(_) => bail!("not every chunk reached the watcher within {deadline:?}"),
        }
    }
    sender.await??;
    publish.abort();
    let _ = server.kill().await;
    Ok(Latency::of_pairs(&pairs))
}
