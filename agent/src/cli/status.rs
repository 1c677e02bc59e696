//! `oma-agent status`: whether this machine is paired and its daemon runs.

use std::time::Duration;

use oma_agent::credentials;
use oma_agent::paths::Paths;
use oma_agent::status_file;

use super::detected::detect_agents;

fn pid_alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

/// Prints whether this machine is paired and its daemon runs (as text, or
/// one JSON object); exits 0 only when both hold (1 otherwise), so scripts
/// and health checks can rely on it.
pub(crate) fn status(paths: &Paths, json: bool) -> anyhow::Result<i32> {
    let creds = credentials::load(paths)?;
    let state = status_file::read(&paths.state_file()).filter(|s| pid_alive(s.pid));
    // Sessions the machine holds: one state file each, beside the outboxes.
    let sessions = std::fs::read_dir(paths.outbox_dir())
        .map(|dir| {
            dir.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".state.json"))
                .count()
        })
        .unwrap_or(0);
    let report = detect_agents(paths)?;
    let ids: Vec<&str> = report.agents.iter().map(|a| a.id.as_str()).collect();
    let ok = creds.is_some() && state.is_some();
    if json {
        let value = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "paired": creds.is_some(),
            "runtime_id": creds.as_ref().map(|c| c.runtime_id.clone()),
            "server": creds.as_ref().map(|c| c.server_url.clone()),
            "daemon": {
                "running": state.is_some(),
                "pid": state.as_ref().map(|s| s.pid),
                "connected": state.as_ref().is_some_and(|s| s.connected),
                "status": state.as_ref().map(|s| s.status.clone()),
                "since_unix": state.as_ref().map(|s| s.since_unix),
            },
            "sessions": sessions,
            "backlog": state.as_ref().map(|s| serde_json::json!({
                "total": s.backlog_total(),
                "sessions": s.backlog,
            })),
            "last_error": state.as_ref().and_then(|s| s.last_error.as_ref()).map(|e| serde_json::json!({
                "message": e.message,
                "at_unix": e.at_unix,
            })),
            "agents": ids,
        });
        println!("{value}");
        return Ok(if ok { 0 } else { 1 });
    }
    match &creds {
        None => println!("paired:    no (run `oma-agent setup --server URL --code CODE`)"),
        Some(c) => println!("paired:    yes, runtime {} at {}", c.runtime_id, c.server_url),
    }
    match &state {
        Some(s) => println!("daemon:    running (pid {}), {}", s.pid, s.status),
        None => println!("daemon:    not running"),
    }
    println!("sessions:  {sessions}");
    if let Some(s) = &state {
        let waiting: Vec<String> = s
            .backlog
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(id, n)| format!("{id} {n}"))
            .collect();
        if waiting.is_empty() {
            println!("backlog:   none (every stored event is acknowledged)");
        } else {
            println!(
                "backlog:   {} events not yet acknowledged ({})",
                s.backlog_total(),
                waiting.join(", ")
            );
        }
        if let Some(e) = &s.last_error {
            println!("last error: {} (at {})", e.message, unix_time(e.at_unix));
        }
    }
    println!(
        "agents:    {}",
        if ids.is_empty() {
            "none found".to_owned()
        } else {
            ids.join(", ")
        }
    );
    Ok(if ok { 0 } else { 1 })
}

/// A Unix time in RFC 3339 (UTC).
fn unix_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}
