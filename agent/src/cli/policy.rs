//! `oma-agent policy`: shows this machine's local policy (policy.toml).

use oma_agent::paths::Paths;
use oma_agent::policy::Policy;

pub(crate) fn show_policy(paths: &Paths) -> anyhow::Result<i32> {
    let file = paths.policy_file();
    let policy = Policy::load_with_process_path(&file)?;
    if file.exists() {
        println!("policy: {}", file.display());
    } else {
        println!("policy: {} (absent: nothing below is allowed)", file.display());
    }
    println!("local MCP servers (agents name them with --mcp-local NAME=ID):");
    if policy.mcp_servers.is_empty() {
        println!("  none");
    }
    for server in &policy.mcp_servers {
        let mut line = format!("  {:<10} {}", server.id, server.command.display());
        for arg in &server.args {
            line.push(' ');
            line.push_str(arg);
        }
        if !server.env.is_empty() {
            // Names only: values may be secrets.
            let names: Vec<&str> = server.env.keys().map(String::as_str).collect();
            line.push_str(&format!("    (env: {})", names.join(", ")));
        }
        println!("{line}");
    }
    println!("MCP URL allow-list (http/sse servers):");
    if policy.mcp_url_allow_list.is_empty() {
        println!("  none: no HTTP/SSE MCP server is allowed");
    }
    for url in &policy.mcp_url_allow_list {
        println!("  {url}");
    }
    if policy.accept_credentials_for.is_empty() {
        println!("server-sent credentials: taken for no ACP agent");
    } else {
        let ids: Vec<&str> = policy.accept_credentials_for.iter().map(String::as_str).collect();
        println!("server-sent credentials: taken for {}", ids.join(", "));
    }
    println!(
        "server-set base URLs (*_BASE_URL): {}",
        if policy.allow_server_base_url {
            "allowed"
        } else {
            "not allowed"
        }
    );
    Ok(0)
}
