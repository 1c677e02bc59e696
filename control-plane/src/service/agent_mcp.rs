//! An agent's MCP servers against what its runtime reported: the machine
//! decides (it refuses anything its local policy does not allow at every
//! session start), so the control plane refuses early what it already knows
//! the machine will refuse, with the valid choices listed.

use oma_proto::mcp_url::{AllowedUrl, check_allowed};
use oma_proto::model::{McpServer, McpTransport};
use oma_proto::pb;
use oma_proto::validate::ValidationError;

/// Checks `servers` against the runtime's manifest: a local reference must
/// name a local MCP server the runtime reported, and an HTTP/SSE URL must be
/// on its reported allow-list. A runtime that never connected (`reported` is
/// false) has reported nothing yet: everything is accepted, and its machine
/// checks at session start.
pub(super) fn check(
    runtime_id: &str,
    reported: bool,
    manifest: &pb::Manifest,
    servers: &[McpServer],
) -> Result<(), ValidationError> {
    if !reported {
        return Ok(());
    }
    // Entries the control plane cannot parse cover nothing (the machine
    // refuses them when it loads its policy, so they cannot be reported by a
    // well-behaved machine).
    let allow_list: Vec<AllowedUrl> = manifest
        .mcp_url_allow_list
        .iter()
        .filter_map(|entry| AllowedUrl::parse(entry).ok())
        .collect();
    for (i, server) in servers.iter().enumerate() {
        let field = format!("spec.mcp_servers[{i}]");
        match &server.transport {
            McpTransport::Local { server_id } => {
                if manifest.local_mcp_servers.iter().any(|s| &s.id == server_id) {
                    continue;
                }
                let valid = if manifest.local_mcp_servers.is_empty() {
                    "it reports none (its owner defines them as [[mcp_server]] in the machine's policy.toml)".to_owned()
                } else {
                    let ids: Vec<&str> = manifest.local_mcp_servers.iter().map(|s| s.id.as_str()).collect();
                    format!("valid ids: {}", ids.join(", "))
                };
                return Err(ValidationError::new(
                    format!("{field}.local.server_id"),
                    format!("runtime {runtime_id} has no local MCP server {server_id:?}; {valid}"),
                ));
            }
            McpTransport::Http { url, .. } | McpTransport::Sse { url, .. } => {
                let kind = if matches!(server.transport, McpTransport::Http { .. }) {
                    "http"
                } else {
                    "sse"
                };
                if let Err(why) = check_allowed(url, &allow_list) {
                    return Err(ValidationError::new(
                        format!("{field}.{kind}.url"),
                        format!(
                            "outside the MCP URL allow-list of runtime {runtime_id}: {why}; its owner allows URLs with `mcp_url_allow_list` in the machine's policy.toml"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> pb::Manifest {
        pb::Manifest {
            local_mcp_servers: vec![
                pb::LocalMcpServer {
                    id: "fs".into(),
                    name: "Files".into(),
                    description: String::new(),
                },
                pb::LocalMcpServer {
                    id: "git".into(),
                    ..Default::default()
                },
            ],
            mcp_url_allow_list: vec!["https://mcp.example/tools".into(), "not a url".into()],
            ..Default::default()
        }
    }

    fn local(id: &str) -> McpServer {
        McpServer {
            name: "x".into(),
            transport: McpTransport::Local { server_id: id.into() },
        }
    }

    fn sse(url: &str) -> McpServer {
        McpServer {
            name: "x".into(),
            transport: McpTransport::Sse {
                url: url.into(),
                headers: vec![],
            },
        }
    }

    #[test]
    fn reported_local_ids_and_allowed_urls_pass() {
        let servers = [local("fs"), local("git"), sse("https://mcp.example/tools/search")];
        check("rt_1", true, &manifest(), &servers).unwrap();
    }

    #[test]
    fn an_unknown_local_id_lists_the_valid_ones() {
        let err = check("rt_1", true, &manifest(), &[local("fs"), local("shell")]).unwrap_err();
        assert_eq!(err.field, "spec.mcp_servers[1].local.server_id");
        assert!(
            err.message.contains("\"shell\"") && err.message.contains("valid ids: fs, git"),
            "{err}"
        );
        let err = check("rt_1", true, &pb::Manifest::default(), &[local("fs")]).unwrap_err();
        assert!(err.message.contains("reports none"), "{err}");
    }

    #[test]
    fn a_url_outside_the_allow_list_is_refused() {
        for bad in [
            "https://mcp.example/toolsx",
            "https://mcp.example.evil.example/tools",
            "https://mcp.example@evil.example/tools",
            "http://mcp.example/tools",
        ] {
            let err = check("rt_1", true, &manifest(), &[sse(bad)]).unwrap_err();
            assert_eq!(err.field, "spec.mcp_servers[0].sse.url", "{bad}");
            assert!(err.message.contains("allow-list"), "{err}");
        }
        let err = check("rt_1", true, &pb::Manifest::default(), &[sse("https://mcp.example/")]).unwrap_err();
        assert!(err.message.contains("empty"), "{err}");
    }

    #[test]
    fn a_runtime_that_never_reported_accepts_anything() {
        check(
            "rt_1",
            false,
            &pb::Manifest::default(),
            &[local("x"), sse("https://a.example/")],
        )
        .unwrap();
    }
}
