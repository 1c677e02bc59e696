//! Masking every string a session event carries.
//!
//! Each message is taken apart with an exhaustive pattern (no `..`) and
//! each oneof with an exhaustive `match`: a field or a kind added to the
//! protos does not compile here until it is masked or named as left alone.
//!
//! Left alone, by design: ids the control plane routes by and matches an
//! answer against (`session_id`, `turn_id`, the permission `request_id`
//! and `option_id`: a masked one could never be answered; the raw JSON of
//! the request, which carries the agent's own ids, is masked), numbers,
//! enums, flags and timestamps.

use crate::pb;
use crate::pb::session_event::Kind;

use super::Masker;

impl Masker {
    /// Masks every string and byte field of `event` but the ids named in
    /// the module doc.
    pub fn mask_event(&self, event: &mut pb::SessionEvent) {
        if self.is_empty() {
            return;
        }
        let pb::SessionEvent {
            session_id: _,
            seq: _,
            time: _,
            turn_id: _,
            kind,
        } = event;
        let Some(kind) = kind else { return };
        match kind {
            Kind::Update(update) => self.update(update),
            Kind::TurnStarted(pb::TurnStarted {
                prompt,
                requested_by_user_id,
            }) => {
                prompt.iter_mut().for_each(|block| self.content_block(block));
                self.mask_string(requested_by_user_id);
            }
            Kind::TurnEnded(pb::TurnEnded {
                stop_reason: _,
                error,
                usage_json,
            }) => {
                self.mask_string(error);
                self.mask_string(usage_json);
            }
            Kind::PermissionRequested(pb::PermissionRequested {
                request_id: _,
                tool_call,
                options,
                raw_json,
            }) => {
                if let Some(tool_call) = tool_call {
                    self.tool_call(tool_call);
                }
                for pb::PermissionOption {
                    option_id: _,
                    name,
                    kind: _,
                } in options
                {
                    self.mask_string(name);
                }
                self.mask_string(raw_json);
            }
            Kind::PermissionDecided(pb::PermissionDecided {
                request_id: _,
                option_id: _,
                cancelled: _,
                decided_by,
            }) => {
                self.mask_string(decided_by);
            }
            Kind::StatusChanged(pb::SessionStatusChanged {
                status: _,
                acp_session_id,
            }) => {
                self.mask_string(acp_session_id);
            }
            Kind::Error(error) => self.mask_error(error),
            Kind::Log(pb::SessionLog { message }) => {
                self.mask_string(message);
            }
            Kind::WorkspaceChanges(pb::WorkspaceChanges {
                base_commit,
                files_changed: _,
                insertions: _,
                deletions: _,
                files,
                truncated: _,
            }) => {
                self.mask_string(base_commit);
                for pb::FileChange {
                    path,
                    status,
                    insertions: _,
                    deletions: _,
                    binary: _,
                } in files
                {
                    self.mask_string(path);
                    self.mask_string(status);
                }
            }
            Kind::OptionsChanged(options) => self.session_options(options),
        }
    }

    /// Masks a session error (an event's, or a SessionFailed frame's).
    pub fn mask_error(&self, error: &mut pb::SessionError) {
        let pb::SessionError { code, message } = error;
        self.mask_string(code);
        self.mask_string(message);
    }

    fn update(&self, update: &mut pb::SessionUpdate) {
        use pb::session_update::Typed;
        let pb::SessionUpdate { kind, raw_json, typed } = update;
        self.mask_string(kind);
        self.mask_string(raw_json);
        let Some(typed) = typed else { return };
        match typed {
            Typed::UserMessageChunk(chunk) | Typed::AgentMessageChunk(chunk) | Typed::AgentThoughtChunk(chunk) => {
                let pb::ContentChunk { content } = chunk;
                if let Some(block) = content {
                    self.content_block(block);
                }
            }
            Typed::ToolCall(call) | Typed::ToolCallUpdate(call) => self.tool_call(call),
            Typed::Plan(pb::Plan { entries }) => {
                for pb::PlanEntry {
                    content,
                    priority,
                    status,
                } in entries
                {
                    self.mask_string(content);
                    self.mask_string(priority);
                    self.mask_string(status);
                }
            }
            Typed::AvailableCommandsUpdate(pb::AvailableCommands { commands }) => {
                for pb::AvailableCommand {
                    name,
                    description,
                    input_hint,
                } in commands
                {
                    self.mask_string(name);
                    self.mask_string(description);
                    self.mask_string(input_hint);
                }
            }
            Typed::CurrentModeUpdate(pb::CurrentMode { current_mode_id }) => {
                self.mask_string(current_mode_id);
            }
            Typed::ConfigOptionUpdate(pb::ConfigOptionUpdate { config_options_json }) => {
                self.mask_string(config_options_json);
            }
            Typed::SessionInfoUpdate(pb::SessionInfo { title, updated_at }) => {
                self.mask_string(title);
                self.mask_string(updated_at);
            }
            Typed::UsageUpdate(pb::Usage {
                used: _,
                size: _,
                cost_json,
            }) => {
                self.mask_string(cost_json);
            }
        }
    }

    fn tool_call(&self, call: &mut pb::ToolCall) {
        let pb::ToolCall {
            tool_call_id,
            title,
            kind: _,
            status: _,
            content_json,
            locations_json,
            raw_input_json,
            raw_output_json,
        } = call;
        for text in [
            tool_call_id,
            title,
            content_json,
            locations_json,
            raw_input_json,
            raw_output_json,
        ] {
            self.mask_string(text);
        }
    }

    fn content_block(&self, block: &mut pb::ContentBlock) {
        use pb::content_block::Block;
        use pb::embedded_resource::Contents;
        let pb::ContentBlock { block } = block;
        let Some(block) = block else { return };
        match block {
            Block::Text(pb::TextContent { text }) => {
                self.mask_string(text);
            }
            Block::Image(pb::ImageContent { mime_type, data, uri }) => {
                self.mask_string(mime_type);
                self.mask_bytes(data);
                self.mask_string(uri);
            }
            Block::Audio(pb::AudioContent { mime_type, data }) => {
                self.mask_string(mime_type);
                self.mask_bytes(data);
            }
            Block::ResourceLink(pb::ResourceLink {
                uri,
                name,
                mime_type,
                title,
                description,
                size: _,
            }) => {
                for text in [uri, name, mime_type, title, description] {
                    self.mask_string(text);
                }
            }
            Block::Resource(pb::EmbeddedResource {
                uri,
                mime_type,
                contents,
            }) => {
                self.mask_string(uri);
                self.mask_string(mime_type);
                match contents {
                    Some(Contents::Text(text)) => {
                        self.mask_string(text);
                    }
                    Some(Contents::Blob(blob)) => {
                        self.mask_bytes(blob);
                    }
                    None => {}
                }
            }
        }
    }

    fn session_options(&self, options: &mut pb::SessionOptions) {
        let pb::SessionOptions {
            mode_id,
            modes,
            model_id,
            models,
        } = options;
        self.mask_string(mode_id);
        self.mask_string(model_id);
        for pb::SessionChoice { id, name, description } in modes.iter_mut().chain(models.iter_mut()) {
            self.mask_string(id);
            self.mask_string(name);
            self.mask_string(description);
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::pb::session_update::Typed;

    const SECRET: &str = "sk-test-0123456789abcdef";

    /// A text holding the secret, as a field's value.
    fn s() -> String {
        format!("before {SECRET} after")
    }

    fn b() -> Vec<u8> {
        s().into_bytes()
    }

    fn tool_call() -> pb::ToolCall {
        pb::ToolCall {
            tool_call_id: s(),
            title: s(),
            kind: 1,
            status: 1,
            content_json: s(),
            locations_json: s(),
            raw_input_json: s(),
            raw_output_json: s(),
        }
    }

    fn blocks() -> Vec<pb::ContentBlock> {
        use pb::content_block::Block;
        let block = |b| pb::ContentBlock { block: Some(b) };
        vec![
            block(Block::Text(pb::TextContent { text: s() })),
            block(Block::Image(pb::ImageContent {
                mime_type: s(),
                data: b(),
                uri: s(),
            })),
            block(Block::Audio(pb::AudioContent {
                mime_type: s(),
                data: b(),
            })),
            block(Block::ResourceLink(pb::ResourceLink {
                uri: s(),
                name: s(),
                mime_type: s(),
                title: s(),
                description: s(),
                size: 1,
            })),
            block(Block::Resource(pb::EmbeddedResource {
                uri: s(),
                mime_type: s(),
                contents: Some(pb::embedded_resource::Contents::Text(s())),
            })),
            block(Block::Resource(pb::EmbeddedResource {
                uri: s(),
                mime_type: s(),
                contents: Some(pb::embedded_resource::Contents::Blob(b())),
            })),
        ]
    }

    fn choice() -> pb::SessionChoice {
        pb::SessionChoice {
            id: s(),
            name: s(),
            description: s(),
        }
    }

    /// Every kind of event, every field set; a string field holds the
    /// secret unless it is one of the ids left alone.
    fn every_event() -> Vec<pb::SessionEvent> {
        let update = |typed| {
            Kind::Update(pb::SessionUpdate {
                kind: s(),
                raw_json: s(),
                typed: Some(typed),
            })
        };
        let mut kinds = vec![
            update(Typed::ToolCall(tool_call())),
            update(Typed::ToolCallUpdate(tool_call())),
            update(Typed::Plan(pb::Plan {
                entries: vec![pb::PlanEntry {
                    content: s(),
                    priority: s(),
                    status: s(),
                }],
            })),
            update(Typed::AvailableCommandsUpdate(pb::AvailableCommands {
                commands: vec![pb::AvailableCommand {
                    name: s(),
                    description: s(),
                    input_hint: s(),
                }],
            })),
            update(Typed::CurrentModeUpdate(pb::CurrentMode { current_mode_id: s() })),
            update(Typed::ConfigOptionUpdate(pb::ConfigOptionUpdate {
                config_options_json: s(),
            })),
            update(Typed::SessionInfoUpdate(pb::SessionInfo {
                title: s(),
                updated_at: s(),
            })),
            update(Typed::UsageUpdate(pb::Usage {
                used: 1,
                size: 2,
                cost_json: s(),
            })),
            Kind::Update(pb::SessionUpdate {
                kind: s(),
                raw_json: s(),
                typed: None,
            }),
            Kind::TurnStarted(pb::TurnStarted {
                prompt: blocks(),
                requested_by_user_id: s(),
            }),
            Kind::TurnEnded(pb::TurnEnded {
                stop_reason: 6,
                error: s(),
                usage_json: s(),
            }),
            Kind::PermissionRequested(pb::PermissionRequested {
                request_id: "g1.7".into(),
                tool_call: Some(tool_call()),
                options: vec![pb::PermissionOption {
                    option_id: "allow".into(),
                    name: s(),
                    kind: 1,
                }],
                raw_json: s(),
            }),
            Kind::PermissionDecided(pb::PermissionDecided {
                request_id: "g1.7".into(),
                option_id: "allow".into(),
                cancelled: true,
                decided_by: s(),
            }),
            Kind::StatusChanged(pb::SessionStatusChanged {
                status: 2,
                acp_session_id: s(),
            }),
            Kind::Error(pb::SessionError {
                code: s(),
                message: s(),
            }),
            Kind::Log(pb::SessionLog { message: s() }),
            Kind::WorkspaceChanges(pb::WorkspaceChanges {
                base_commit: s(),
                files_changed: 1,
                insertions: 2,
                deletions: 3,
                files: vec![pb::FileChange {
                    path: s(),
                    status: s(),
                    insertions: 1,
                    deletions: 1,
                    binary: true,
                }],
                truncated: true,
            }),
            Kind::OptionsChanged(pb::SessionOptions {
                mode_id: s(),
                modes: vec![choice()],
                model_id: s(),
                models: vec![choice()],
            }),
        ];
        for block in blocks() {
            let chunk = || pb::ContentChunk {
                content: Some(block.clone()),
            };
            kinds.push(update(Typed::UserMessageChunk(chunk())));
            kinds.push(update(Typed::AgentMessageChunk(chunk())));
            kinds.push(update(Typed::AgentThoughtChunk(chunk())));
        }
        kinds
            .into_iter()
            .map(|kind| pb::SessionEvent {
                session_id: "ses_0123456789abcdef0123456789abcdef".into(),
                seq: 7,
                time: Some(prost_types::Timestamp { seconds: 1, nanos: 2 }),
                turn_id: "trn_1".into(),
                kind: Some(kind),
            })
            .collect()
    }

    fn count(haystack: &[u8], needle: &[u8]) -> usize {
        haystack.windows(needle.len()).filter(|w| *w == needle).count()
    }

    #[test]
    fn no_field_of_any_event_keeps_the_secret() {
        let masker = Masker::new([("OPENAI_API_KEY", SECRET)]).unwrap();
        for mut event in every_event() {
            let secrets = count(&event.encode_to_vec(), SECRET.as_bytes());
            assert!(secrets > 0);
            masker.mask_event(&mut event);
            let encoded = event.encode_to_vec();
            assert_eq!(count(&encoded, SECRET.as_bytes()), 0, "{event:?}");
            // Each secret became one marker (no field was dropped), and the
            // ids, numbers and flags are as they were.
            assert_eq!(count(&encoded, b"[masked:OPENAI_API_KEY]"), secrets, "{event:?}");
            assert_eq!(event.seq, 7);
            assert_eq!(event.turn_id, "trn_1");
        }
    }

    #[test]
    fn an_empty_masker_changes_nothing() {
        for mut event in every_event() {
            let before = event.clone();
            Masker::default().mask_event(&mut event);
            assert_eq!(event, before);
        }
    }

    #[test]
    fn the_routing_ids_are_left_alone() {
        let masker = Masker::new([("K", "g1.7-allow")]).unwrap();
        let mut event = pb::SessionEvent {
            kind: Some(Kind::PermissionDecided(pb::PermissionDecided {
                request_id: "g1.7-allow".into(),
                option_id: "g1.7-allow".into(),
                cancelled: false,
                decided_by: "g1.7-allow".into(),
            })),
            ..Default::default()
        };
        masker.mask_event(&mut event);
        let Some(Kind::PermissionDecided(decided)) = event.kind else {
            panic!("kind changed")
        };
        assert_eq!(decided.request_id, "g1.7-allow");
        assert_eq!(decided.option_id, "g1.7-allow");
        assert_eq!(decided.decided_by, "[masked:K]");
    }
}
