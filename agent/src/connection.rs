//! The daemon's one stream to the control plane: dial (TLS rules), Hello and
//! Welcome, heartbeats, routing frames to the session manager, and
//! reconnecting with capped exponential backoff and full jitter, so a fleet
//! does not reconnect in lockstep after a control-plane restart.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oma_proto::pb;
use oma_proto::pb::runtime_stream_service_client::RuntimeStreamServiceClient;
use rand::Rng as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use crate::session::manager::Manager;

/// Why the daemon's connection loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum DaemonExit {
    /// SIGTERM/SIGINT.
    Shutdown,
    /// Another daemon with the same credentials took over.
    Superseded,
    /// The control plane refused the credentials for good (revoked token,
    /// deleted runtime, another machine's token): retrying cannot help.
    Refused(String),
}

/// Reconnect pacing.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    /// A stream that stayed up this long resets the backoff.
    pub healthy_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(250),
            cap: Duration::from_secs(30),
            healthy_after: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// Full jitter: a uniform delay between 0 and the capped exponential.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
        let ceiling = exp.min(self.cap);
        Duration::from_millis(rand::rng().random_range(0..=ceiling.as_millis() as u64))
    }
}

/// Builds the endpoint for `server_url`: https uses rustls with the system
/// roots (or only `ca_file`); plaintext is allowed to loopback only unless
/// `insecure`.
pub fn endpoint(server_url: &str, ca_file: Option<&Path>, insecure: bool) -> Result<Endpoint, String> {
    let endpoint = Endpoint::from_shared(server_url.to_owned())
        .map_err(|e| format!("{server_url:?} is not a valid server URL: {e}"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    let uri = endpoint.uri().clone();
    match uri.scheme_str() {
        Some("https") => {
            let mut tls = ClientTlsConfig::new();
            match ca_file {
                Some(path) => {
                    let pem =
                        std::fs::read(path).map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
                    tls = tls.ca_certificate(Certificate::from_pem(pem));
                }
                None => tls = tls.with_native_roots(),
            }
            endpoint.tls_config(tls).map_err(|e| format!("TLS setup failed: {e}"))
        }
        Some("http") => {
            let host = uri.host().unwrap_or_default();
            if !oma_proto::net::is_loopback_host(host) && !insecure {
                return Err(format!(
                    "refusing plaintext to {host}: use an https:// URL, or pass --insecure for a trusted network"
                ));
            }
            Ok(endpoint)
        }
        _ => Err(format!("{server_url:?} must start with https:// or http://")),
    }
}

/// Where the connection stands, each time it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionStatus {
    /// Welcomed by the control plane.
    Connected { epoch: u64 },
    /// The stream failed or ended; the daemon retries.
    Lost(String),
    /// The control plane refused the credentials; the daemon stops.
    Refused(String),
}

impl ConnectionStatus {
    /// Whether the stream is up.
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnectionStatus::Connected { .. })
    }

    /// The error, when the stream failed.
    pub fn error(&self) -> Option<&str> {
        match self {
            ConnectionStatus::Connected { .. } => None,
            ConnectionStatus::Lost(why) | ConnectionStatus::Refused(why) => Some(why),
        }
    }
}

impl std::fmt::Display for ConnectionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectionStatus::Connected { epoch } => write!(f, "connected (epoch {epoch})"),
            ConnectionStatus::Lost(why) => write!(f, "disconnected: {why}"),
            ConnectionStatus::Refused(why) => write!(f, "refused: {why}"),
        }
    }
}

/// Receives the connection's status whenever it changes.
pub type StatusSink = Box<dyn Fn(&ConnectionStatus) + Send + Sync>;

/// Everything the connection loop needs.
pub struct Daemon {
    /// The control plane's replicas, in order: the one paired with first.
    /// Each lost stream moves the next attempt to the next one (any replica
    /// serves any runtime), so a dead replica costs one failed attempt.
    pub endpoints: Vec<Endpoint>,
    pub machine_token: String,
    pub hello: pb::Hello,
    pub manager: Arc<Manager>,
    pub backoff: Backoff,
    /// Called with a one-line status whenever the connection changes (the
    /// daemon writes it where `oma-agent status` reads it).
    pub on_status: StatusSink,
    /// Rescans what the machine offers; `Some` when it changed since the
    /// last call (sent as a ManifestUpdate).
    pub refresh_manifest: ManifestSource,
}

/// See [`Daemon::refresh_manifest`].
pub type ManifestSource = Arc<dyn Fn() -> Option<pb::Manifest> + Send + Sync>;

/// How often local skills are rescanned.
const MANIFEST_RESCAN: Duration = Duration::from_secs(10);

enum StreamEnd {
    Shutdown,
    Superseded,
    Lost(String),
    Refused(String),
}

impl Daemon {
    /// Connects and reconnects until shut down, superseded or refused.
    pub async fn run(&self, shutdown: CancellationToken) -> DaemonExit {
        let mut attempt = 0u32;
        let mut current = 0usize;
        loop {
            let started = Instant::now();
            let end = match self.endpoints.get(current) {
                Some(endpoint) => self.stream_once(endpoint, &shutdown).await,
                None => StreamEnd::Refused("no control-plane URL is configured".into()),
            };
            self.manager.disconnected().await;
            match end {
                StreamEnd::Shutdown => return DaemonExit::Shutdown,
                StreamEnd::Superseded => return DaemonExit::Superseded,
                StreamEnd::Refused(why) => {
                    (self.on_status)(&ConnectionStatus::Refused(why.clone()));
                    return DaemonExit::Refused(why);
                }
                StreamEnd::Lost(why) => {
                    if started.elapsed() >= self.backoff.healthy_after {
                        attempt = 0;
                    }
                    let delay = self.backoff.delay(attempt);
                    attempt = attempt.saturating_add(1);
                    current = (current + 1) % self.endpoints.len();
                    tracing::warn!(
                        reason = why,
                        retry_in = ?delay,
                        next = %self.endpoints[current].uri(),
                        "disconnected from the control plane"
                    );
                    (self.on_status)(&ConnectionStatus::Lost(why));
                    tokio::select! {
                        _ = shutdown.cancelled() => return DaemonExit::Shutdown,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn stream_once(&self, endpoint: &Endpoint, shutdown: &CancellationToken) -> StreamEnd {
        let channel: Channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => return StreamEnd::Lost(format!("cannot connect to {}: {}", endpoint.uri(), error_chain(&e))),
        };
        let token: tonic::metadata::MetadataValue<_> = match format!("Bearer {}", self.machine_token).parse() {
            Ok(t) => t,
            Err(_) => return StreamEnd::Refused("the stored machine token is not valid ASCII".into()),
        };
        let mut client = RuntimeStreamServiceClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            req.metadata_mut()
                .insert(oma_proto::AUTHORIZATION_HEADER, token.clone());
            Ok(req)
        })
        .max_decoding_message_size(oma_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(oma_proto::MAX_MESSAGE_BYTES);

        let (tx, rx) = mpsc::channel::<pb::AgentFrame>(1024);
        let mut hello = self.hello.clone();
        hello.sessions = self.manager.held().await;
        let _ = tx
            .send(pb::AgentFrame {
                frame: Some(pb::agent_frame::Frame::Hello(hello)),
            })
            .await;
        let response = tokio::select! {
            _ = shutdown.cancelled() => return StreamEnd::Shutdown,
            r = client.open_stream(ReceiverStream::new(rx)) => r,
        };
        let mut inbound = match response {
            Ok(r) => r.into_inner(),
            Err(status) => return classify(status),
        };
        let welcome = match tokio::time::timeout(Duration::from_secs(30), inbound.message()).await {
            Ok(Ok(Some(pb::ControlFrame {
                frame: Some(pb::control_frame::Frame::Welcome(w)),
            }))) => w,
            Ok(Ok(Some(_))) => return StreamEnd::Lost("the first frame was not Welcome".into()),
            Ok(Ok(None)) => return StreamEnd::Lost("the stream closed before Welcome".into()),
            Ok(Err(status)) => return classify(status),
            Err(_) => return StreamEnd::Lost("no Welcome within 30s".into()),
        };
        let interval = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(100)));
        tracing::info!(
            runtime_id = welcome.runtime_id,
            epoch = welcome.connection_epoch,
            "connected"
        );
        (self.on_status)(&ConnectionStatus::Connected {
            epoch: welcome.connection_epoch,
        });
        self.manager.connected(tx.clone(), &welcome).await;

        let mut rescan = tokio::time::interval(MANIFEST_RESCAN);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval(interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The server answers every heartbeat: silence for three intervals
        // means the stream is dead even if sends still "succeed".
        let dead_after = interval * 3;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return StreamEnd::Shutdown,
                _ = heartbeat.tick() => {
                    // Never wait here: this loop must keep reading what the
                    // control plane sends. A full queue means frames are
                    // flowing anyway.
                    let beat = pb::Heartbeat { sent_at_ms: now_ms() };
                    if let Err(mpsc::error::TrySendError::Closed(_)) =
                        tx.try_send(pb::AgentFrame { frame: Some(pb::agent_frame::Frame::Heartbeat(beat)) })
                    {
                        return StreamEnd::Lost("the outbound stream closed".into());
                    }
                }
                _ = rescan.tick() => {
                    // A walk of the skill folders: off the runtime's one
                    // thread, which relays every session's events.
                    let refresh = self.refresh_manifest.clone();
                    if let Ok(Some(manifest)) = tokio::task::spawn_blocking(move || refresh()).await {
                        tracing::info!("local agents or skills changed; reporting the new manifest");
                        let update = pb::ManifestUpdate { manifest: Some(manifest) };
                        let frame = pb::AgentFrame { frame: Some(pb::agent_frame::Frame::ManifestUpdate(update)) };
                        match tx.try_send(frame) {
                            Ok(()) => {}
                            // Busy: the next Hello carries the fresh manifest.
                            Err(mpsc::error::TrySendError::Full(_)) => tracing::warn!("stream busy; manifest update deferred to the next connection"),
                            Err(mpsc::error::TrySendError::Closed(_)) => return StreamEnd::Lost("the outbound stream closed".into()),
                        }
                    }
                }
                next = tokio::time::timeout(dead_after, inbound.message()) => match next {
                    Err(_) => return StreamEnd::Lost(format!("no frame from the control plane for {dead_after:?}")),
                    Ok(Ok(None)) => return StreamEnd::Lost("the control plane closed the stream".into()),
                    Ok(Err(status)) => return classify(status),
                    Ok(Ok(Some(frame))) => match frame.frame {
                        Some(pb::control_frame::Frame::Superseded(s)) => {
                            tracing::info!(by = s.by_instance_id, "superseded by another oma-agent with these credentials");
                            return StreamEnd::Superseded;
                        }
                        Some(frame) => self.manager.handle(frame).await,
                        None => {}
                    },
                }
            }
        }
    }
}

fn classify(status: Status) -> StreamEnd {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => StreamEnd::Refused(status.message().to_owned()),
        _ => StreamEnd::Lost(format!("{}: {}", status.code(), status.message())),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Asks the control plane to forget this machine (`oma-agent uninstall`):
/// opens the runtime stream with `hello`, waits for Welcome, sends
/// Deregister and waits for the server to end the stream (its token is then
/// revoked). Errors say why it could not, in one line.
pub async fn deregister(endpoint: Endpoint, machine_token: &str, hello: pb::Hello) -> Result<(), String> {
    const WAIT: Duration = Duration::from_secs(10);
    let channel = tokio::time::timeout(WAIT, endpoint.connect())
        .await
        .map_err(|_| "the control plane did not answer within 10s".to_owned())?
        .map_err(|e| format!("cannot connect: {}", error_chain(&e)))?;
    let token: tonic::metadata::MetadataValue<_> = format!("Bearer {machine_token}")
        .parse()
        .map_err(|_| "the stored machine token is not valid ASCII".to_owned())?;
    let mut client = RuntimeStreamServiceClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut()
            .insert(oma_proto::AUTHORIZATION_HEADER, token.clone());
        Ok(req)
    });
    let (tx, rx) = mpsc::channel::<pb::AgentFrame>(4);
    let frame = |f| pb::AgentFrame { frame: Some(f) };
    let _ = tx.send(frame(pb::agent_frame::Frame::Hello(hello))).await;
    let wait = async {
        let mut inbound = client
            .open_stream(ReceiverStream::new(rx))
            .await
            .map_err(|s| s.message().to_owned())?
            .into_inner();
        match inbound.message().await {
            Ok(Some(pb::ControlFrame {
                frame: Some(pb::control_frame::Frame::Welcome(_)),
            })) => {}
            Ok(_) => return Err("the control plane did not welcome this machine".to_owned()),
            Err(status) => return Err(status.message().to_owned()),
        }
        let _ = tx
            .send(frame(pb::agent_frame::Frame::Deregister(pb::Deregister {})))
            .await;
        // Whatever else arrives (session starts…) is not for a machine that
        // is going away; the server ends the stream once it has forgotten it.
        loop {
            match inbound.message().await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return Ok(()),
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .map_err(|_| "the control plane did not confirm within 10s".to_owned())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
            healthy_after: Duration::from_secs(30),
        };
        for attempt in 0..40 {
            assert!(b.delay(attempt) <= Duration::from_secs(2));
        }
        let delays: std::collections::HashSet<Duration> = (0..50).map(|_| b.delay(10)).collect();
        assert!(delays.len() > 10, "full jitter spreads reconnects: {delays:?}");
    }

    #[test]
    fn plaintext_only_to_loopback() {
        assert!(endpoint("http://127.0.0.1:1", None, false).is_ok());
        assert!(endpoint("http://localhost:1", None, false).is_ok());
        assert!(endpoint("http://[::1]:1", None, false).is_ok());
        let err = endpoint("http://10.1.2.3:1", None, false).unwrap_err();
        assert!(err.contains("refusing plaintext"), "{err}");
        assert!(endpoint("http://10.1.2.3:1", None, true).is_ok());
        assert!(endpoint("ftp://x", None, false).is_err());
    }
}
