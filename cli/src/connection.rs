//! Reaching the control plane: which server and token to use (flags over the
//! context), the TLS rules, the bearer-token interceptor, size limits, and
//! paging through list RPCs.

use std::{fs, future::Future, path::PathBuf, time::Duration};

use anyhow::Result;
use http::Uri;
use oma_proto::{
    AUTHORIZATION_HEADER, MAX_MESSAGE_BYTES,
    pb::{
        self, agent_service_client::AgentServiceClient, audit_service_client::AuditServiceClient,
        identity_service_client::IdentityServiceClient, runtime_service_client::RuntimeServiceClient,
        secret_service_client::SecretServiceClient, session_service_client::SessionServiceClient,
    },
    validate::MAX_PAGE_SIZE,
};
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use crate::{
    GlobalArgs,
    config::Config,
    error::{Failure, exit},
};

/// The resolved connection settings of one invocation.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The server URL as configured (also printed in setup commands).
    pub server: String,
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub insecure: bool,
}

impl Settings {
    /// Flags (and their `OMA_*` variables) override the selected context:
    /// `--context`, else the config's current context. A context whose
    /// server is replaced by a different `--server` lends nothing else, so
    /// its token is never sent to another server.
    pub fn resolve(global: &GlobalArgs, config: &Config) -> Result<Settings> {
        let name = global.context.as_ref().or(config.current_context.as_ref());
        let context = name
            .map(|n| config.context(n))
            .transpose()?
            .filter(|c| global.server.as_ref().is_none_or(|s| *s == c.server));
        let server = global
            .server
            .clone()
            .or_else(|| context.map(|c| c.server.clone()))
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                Failure::usage(
                    "no control plane given: pass --server URL, set OMA_SERVER, or create a context with `omactl context set NAME --server URL`",
                )
            })?;
        Ok(Settings {
            server,
            token: global.token.clone().or_else(|| context.and_then(|c| c.token.clone())),
            ca_file: global
                .ca_file
                .clone()
                .or_else(|| context.and_then(|c| c.ca_file.clone())),
            insecure: global.insecure || context.is_some_and(|c| c.insecure),
        })
    }
}

/// The endpoint for `settings`, enforcing the TLS rules: `https://` with
/// the system roots or the given CA; `http://` only to loopback unless
/// `insecure`.
pub fn endpoint(settings: &Settings) -> Result<Endpoint, Failure> {
    let server = &settings.server;
    let invalid = |why: &dyn std::fmt::Display| Failure::usage(format!("{server:?} is not a valid server URL: {why}"));
    let uri: Uri = server.parse().map_err(|e| invalid(&e))?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| invalid(&"it has no host"))?;
    let endpoint = Endpoint::from_shared(server.clone())
        .map_err(|e| invalid(&e))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .tcp_nodelay(true);
    match uri.scheme_str() {
        Some("https") => {
            let tls = match &settings.ca_file {
                Some(path) => ClientTlsConfig::new().ca_certificate(read_ca(path)?),
                None => ClientTlsConfig::new().with_native_roots(),
            };
            endpoint.tls_config(tls).map_err(|e| {
                Failure::new(
                    exit::GENERIC,
                    format!("cannot set up TLS: {}", crate::error::cause_chain(&e)),
                )
            })
        }
        Some("http") if settings.insecure || oma_proto::net::is_loopback_host(host) => Ok(endpoint),
        Some("http") => Err(Failure::usage(format!(
            "refusing plaintext http:// to {host}, which is not a loopback host: use an https:// URL, or pass --insecure if the network is trusted"
        ))),
        _ => Err(invalid(&"it must start with https:// or http://")),
    }
}

fn read_ca(path: &PathBuf) -> Result<Certificate, Failure> {
    let pem = fs::read(path).map_err(|e| {
        Failure::new(
            exit::GENERIC,
            format!("cannot read the CA file {}: {e}", path.display()),
        )
    })?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(Failure::new(
            exit::GENERIC,
            format!("the CA file {} holds no PEM certificate", path.display()),
        ));
    }
    Ok(Certificate::from_pem(pem))
}

/// Adds `authorization: Bearer <token>` to every request, when it has one.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    fn new(token: &str) -> Result<Self, Failure> {
        let mut value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            Failure::new(
                exit::UNAUTHENTICATED,
                "the token contains characters that cannot be sent: check --token, OMA_TOKEN or the context",
            )
        })?;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(AUTHORIZATION_HEADER, value.clone());
        }
        Ok(request)
    }
}

/// A channel that sends the bearer token.
pub type Authed = InterceptedService<Channel, Bearer>;

/// A connected channel and its credentials; hands out service clients.
pub struct Api {
    channel: Channel,
    bearer: Bearer,
}

macro_rules! clients {
    ($($(#[$doc:meta])* $method:ident: $client:ident;)*) => {$(
        $(#[$doc])*
        pub fn $method(&self) -> $client<Authed> {
            $client::with_interceptor(self.channel.clone(), self.bearer.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        }
    )*};
}

impl Api {
    /// Connects to `settings.server`; with `authenticate`, a token is
    /// required and sent with every request.
    pub async fn connect(settings: &Settings, authenticate: bool) -> Result<Api> {
        let endpoint = endpoint(settings)?;
        let bearer = if authenticate {
            let token = settings.token.as_deref().filter(|t| !t.is_empty()).ok_or_else(|| {
                Failure::new(
                    exit::UNAUTHENTICATED,
                    "no API token given: pass --token, set OMA_TOKEN, or store one with `omactl context set NAME --server URL --token TOKEN`",
                )
            })?;
            Bearer::new(token)?
        } else {
            Bearer(None)
        };
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Failure::unreachable(&settings.server, &e))?;
        Ok(Api { channel, bearer })
    }

    clients! {
        identity: IdentityServiceClient;
        runtimes: RuntimeServiceClient;
        agents: AgentServiceClient;
        sessions: SessionServiceClient;
        audit: AuditServiceClient;
        secrets: SecretServiceClient;
    }
}

/// Calls `fetch` page after page, following `next_page_token`, until the
/// last page or `limit` items.
pub async fn collect_pages<T, F, Fut>(limit: Option<u32>, mut fetch: F) -> Result<Vec<T>, Status>
where
    F: FnMut(pb::PageRequest) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), Status>>,
{
    let limit = limit.map(|l| l as usize);
    let mut items = Vec::new();
    let mut page_token = String::new();
    loop {
        let want = limit.map_or(MAX_PAGE_SIZE, |l| (l - items.len()).min(MAX_PAGE_SIZE));
        let request = pb::PageRequest {
            page_size: want as u32,
            page_token: page_token.clone(),
        };
        let (page, next) = fetch(request).await?;
        items.extend(page);
        if let Some(limit) = limit.filter(|&l| items.len() >= l) {
            items.truncate(limit);
            break;
        }
        if next.is_empty() || next == page_token {
            break;
        }
        page_token = next;
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(server: &str, insecure: bool) -> Settings {
        Settings {
            server: server.into(),
            token: None,
            ca_file: None,
            insecure,
        }
    }

    #[test]
    fn flags_override_the_context_and_a_new_server_drops_its_token() {
        use clap::Parser;
        let mut config = Config::default();
        config.contexts.insert(
            "prod".into(),
            crate::config::Context {
                server: "https://oma.example".into(),
                token: Some("oma_stored".into()),
                ca_file: Some("/ca.pem".into()),
                insecure: false,
            },
        );
        config.current_context = Some("prod".into());
        let resolve = |args: &[&str]| {
            let cli = crate::Cli::try_parse_from(["omactl"].iter().chain(args).chain(&["whoami"])).unwrap();
            Settings::resolve(&cli.global, &config).unwrap()
        };
        let s = resolve(&[]);
        assert_eq!(
            (s.server.as_str(), s.token.as_deref()),
            ("https://oma.example", Some("oma_stored"))
        );
        assert_eq!(resolve(&["--token", "oma_flag"]).token.as_deref(), Some("oma_flag"));
        assert_eq!(
            resolve(&["--server", "https://oma.example"]).token.as_deref(),
            Some("oma_stored")
        );
        let other = resolve(&["--server", "http://127.0.0.1:1"]);
        assert_eq!((other.token, other.ca_file), (None, None));
    }

    #[test]
    fn plaintext_only_to_loopback_unless_insecure() {
        assert!(endpoint(&settings("http://127.0.0.1:50051", false)).is_ok());
        assert!(endpoint(&settings("http://[::1]:50051", false)).is_ok());
        let refused = endpoint(&settings("http://oma.example:50051", false)).unwrap_err();
        assert_eq!(refused.exit, exit::USAGE);
        assert!(refused.message.contains("refusing plaintext"), "{}", refused.message);
        assert!(endpoint(&settings("http://oma.example:50051", true)).is_ok());
        assert!(endpoint(&settings("ftp://oma.example", false)).is_err());
        assert!(endpoint(&settings("oma.example:50051", false)).is_err());
    }

    #[tokio::test]
    async fn pages_until_the_last_or_the_limit() {
        let fetch = |req: pb::PageRequest| async move {
            let start: usize = req.page_token.parse().unwrap_or(0);
            // A server that sends at most 10 per page.
            let end = (start + (req.page_size as usize).min(10)).min(25);
            let next = if end < 25 { end.to_string() } else { String::new() };
            Ok::<_, Status>(((start..end).collect::<Vec<_>>(), next))
        };
        assert_eq!(collect_pages(None, fetch).await.unwrap().len(), 25);
        assert_eq!(
            collect_pages(Some(17), fetch).await.unwrap(),
            (0..17).collect::<Vec<_>>()
        );
    }
}
