//! The ACP client side of the child's stdio: the typed connection with its
//! handlers for the agent's requests, and the startup handshake over it.

use std::io;
use std::path::Path;
use std::sync::Arc;

use agent_client_protocol::v1::schema::{
    ReadTextFileRequest, ReadTextFileResponse, RequestPermissionRequest, RequestPermissionResponse,
    WriteTextFileRequest, WriteTextFileResponse,
};
use agent_client_protocol::v1::{ConnectionTo, Responder};
use agent_client_protocol::{Agent, Client, Lines, UntypedMessage};
use futures::channel::mpsc as futures_mpsc;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::oneshot;

use super::files::{read_text_file, write_text_file};
use super::shared::Shared;
use super::supervisor::KillRequest;
use super::{AcpLaunch, AcpOutput, AcpStarted, ERROR_CHILD_EXITED};

/// initialize, then session/load or session/new.
pub(super) async fn handshake(
    shared: &Shared,
    launch: &AcpLaunch,
    cwd: &Path,
    cx_rx: oneshot::Receiver<ConnectionTo<Agent>>,
) -> Result<(ConnectionTo<Agent>, AcpStarted), String> {
    let cx = cx_rx
        .await
        .map_err(|_| "the ACP connection ended before it started".to_owned())?;
    let init = request(
        &cx,
        "initialize",
        json!({
            "protocolVersion": 1,
            "clientCapabilities": {
                "fs": {
                    "readTextFile": launch.advertise_read_text_file,
                    "writeTextFile": launch.advertise_write_text_file,
                },
                "terminal": false,
            },
            "clientInfo": { "name": "oma-agent", "version": env!("CARGO_PKG_VERSION") },
        }),
    )
    .await?;
    let capabilities = init.get("agentCapabilities").cloned().unwrap_or_else(|| json!({}));
    let can_load = capabilities.get("loadSession").and_then(Value::as_bool) == Some(true);
    let info = |key: &str| {
        init.get("agentInfo")
            .and_then(|info| info.get(key))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };

    let mut params = serde_json::Map::new();
    params.insert("cwd".into(), json!(cwd));
    let mcp_servers = match &launch.mcp_servers {
        Value::Null => json!([]),
        servers => servers.clone(),
    };
    params.insert("mcpServers".into(), mcp_servers);
    if let Some(prompt) = &launch.system_prompt_meta {
        params.insert("_meta".into(), json!({ "systemPrompt": { "append": prompt } }));
    }

    let mut resumed = None;
    let mut answer = Value::Null;
    if let Some(id) = &launch.resume_acp_session_id {
        if can_load {
            let mut load = params.clone();
            load.insert("sessionId".into(), json!(id));
            match request(&cx, "session/load", Value::Object(load)).await {
                Ok(loaded) => {
                    resumed = Some(id.clone());
                    answer = loaded;
                }
                Err(err) if shared.is_gone() => return Err(err),
                Err(err) => {
                    shared
                        .emit(AcpOutput::Log(format!(
                            "{err}: started a new session; earlier context was lost"
                        )))
                        .await;
                }
            }
        } else {
            shared
                .emit(AcpOutput::Log(
                    "session/load is not supported by this agent: started a new session; earlier context was lost"
                        .to_owned(),
                ))
                .await;
        }
    }
    let (acp_session_id, resumed) = match resumed {
        Some(id) => (id, true),
        None => {
            let created = request(&cx, "session/new", Value::Object(params)).await?;
            let id = crate::session::translate::session_id_from_acp(&created)?;
            answer = created;
            (id, false)
        }
    };
    Ok((
        cx,
        AcpStarted {
            acp_session_id,
            resumed,
            agent_name: info("name"),
            agent_version: info("version"),
            capabilities_json: capabilities.to_string(),
            options: oma_proto::session_options::from_session_answer(&answer),
            model_config_id: answer
                .get("configOptions")
                .and_then(oma_proto::session_options::model_config_id),
        },
    ))
}

/// Sends a request and waits for its result (never call this in a handler).
pub(super) async fn request(cx: &ConnectionTo<Agent>, method: &str, params: Value) -> Result<Value, String> {
    let message = UntypedMessage::new(method, params).map_err(|err| format!("{method}: {}", rpc_error_text(&err)))?;
    cx.send_request(message)
        .block_task()
        .await
        .map_err(|err| format!("{method} failed: {}", rpc_error_text(&err)))
}

pub(super) fn rpc_error_text(err: &agent_client_protocol::Error) -> String {
    let mut text = format!("{} (code {})", err.message, i32::from(err.code));
    if let Some(data) = &err.data {
        text.push_str(&format!(": {data}"));
    }
    text
}

/// Runs the typed ACP connection over the lines the supervisor hands on and
/// the child's stdin. When it ends, the supervisor is told to stop the child.
pub(super) async fn run_connection(
    shared: Arc<Shared>,
    stdin: tokio::process::ChildStdin,
    from_reader: futures_mpsc::UnboundedReceiver<io::Result<String>>,
    cx_tx: oneshot::Sender<ConnectionTo<Agent>>,
) {
    let to_child = futures::sink::unfold(stdin, async |mut stdin, line: String| {
        let mut bytes = line.into_bytes();
        bytes.push(b'\n');
        stdin.write_all(&bytes).await?;
        stdin.flush().await?;
        Ok::<_, io::Error>(stdin)
    });
    let transport = Lines::new(to_child, from_reader);
    let result = Client
        .v1()
        .name("oma-agent")
        .on_receive_request(
            {
                let shared = shared.clone();
                async move |request: RequestPermissionRequest,
                            responder: Responder<RequestPermissionResponse>,
                            _cx: ConnectionTo<Agent>| {
                    shared.permission_dispatched(request, responder);
                    Ok(())
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            {
                let shared = shared.clone();
                async move |request: ReadTextFileRequest,
                            responder: Responder<ReadTextFileResponse>,
                            _cx: ConnectionTo<Agent>| {
                    if !shared.advertise_read {
                        return responder.respond_with_error(agent_client_protocol::Error::method_not_found());
                    }
                    let cwd = shared.cwd.clone();
                    tokio::spawn(async move {
                        let result = read_text_file(&cwd, &request).await;
                        let _ = responder.respond_with_result(result);
                    });
                    Ok(())
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            {
                let shared = shared.clone();
                async move |request: WriteTextFileRequest,
                            responder: Responder<WriteTextFileResponse>,
                            _cx: ConnectionTo<Agent>| {
                    if !shared.advertise_write {
                        return responder.respond_with_error(agent_client_protocol::Error::method_not_found());
                    }
                    let cwd = shared.cwd.clone();
                    tokio::spawn(async move {
                        let result = write_text_file(&cwd, &request).await;
                        let _ = responder.respond_with_result(result);
                    });
                    Ok(())
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        // Other notifications were relayed (or ignored) by the reader already.
        .on_receive_notification(
            async |_notification: UntypedMessage, _cx: ConnectionTo<Agent>| Ok(()),
            agent_client_protocol::on_receive_notification!(),
        )
        .connect_with(transport, async move |cx: ConnectionTo<Agent>| {
            let _ = cx_tx.send(cx.clone());
            cx.incoming_closed().await;
            Ok(())
        })
        .await;
    let message = match result {
        Ok(()) => "the ACP connection closed".to_owned(),
        Err(err) => format!("the ACP connection failed: {err}"),
    };
    let _ = shared.kills.send(KillRequest {
        code: ERROR_CHILD_EXITED,
        message,
    });
}
