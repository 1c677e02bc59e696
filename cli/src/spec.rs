//! Agent specs from files and flags.
//!
//! [`SpecFile`] is the YAML/JSON form of `oma.v1.AgentSpec` read by
//! `agents create|update --from-file` and shown by `agents get -o yaml|json`
//! (so a spec printed by `get` can be fed back). Field names are the proto
//! names (lowerCamelCase aliases are accepted); text content is plain
//! strings, and a few conveniences load content from files next to the spec.
//!
//! [`Edit`] collects the fields a file and the flags set, so an update's
//! mask names exactly those fields.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::ValueEnum;
use oma_proto::{model::AgentField, pb};
use serde::{Deserialize, Serialize};

use crate::error::{Failure, exit};

/// How the control plane answers the agent's permission requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Wait for a person to approve or deny.
    #[serde(alias = "PERMISSION_POLICY_ASK")]
    Ask,
    /// Approve each request once.
    #[serde(alias = "allow-once", alias = "PERMISSION_POLICY_ALLOW_ONCE")]
    AllowOnce,
    /// Reject each request.
    #[serde(alias = "PERMISSION_POLICY_REJECT")]
    Reject,
}

impl Policy {
    pub fn to_pb(self) -> i32 {
        match self {
            Policy::Ask => pb::PermissionPolicy::Ask as i32,
            Policy::AllowOnce => pb::PermissionPolicy::AllowOnce as i32,
            Policy::Reject => pb::PermissionPolicy::Reject as i32,
        }
    }

    /// From the wire; unspecified (and unknown) values mean `ask`, as on
    /// the server.
    pub fn from_pb(value: i32) -> Policy {
        match pb::PermissionPolicy::try_from(value) {
            Ok(pb::PermissionPolicy::AllowOnce) => Policy::AllowOnce,
            Ok(pb::PermissionPolicy::Reject) => Policy::Reject,
            _ => Policy::Ask,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Policy::Ask => "ask",
            Policy::AllowOnce => "allow_once",
            Policy::Reject => "reject",
        }
    }
}

/// An agent spec file. Every field is optional: on update, the fields
/// present are the ones changed.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpecFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(alias = "systemPrompt", skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// Reads the system prompt from this file (relative to the spec file).
    #[serde(alias = "systemPromptFile", skip_serializing_if = "Option::is_none")]
    pub system_prompt_file: Option<PathBuf>,
    #[serde(alias = "appendablePrompts", skip_serializing_if = "Option::is_none")]
    pub appendable_prompts: Option<Vec<PromptEntry>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skills: Option<Vec<SkillEntry>>,
    #[serde(alias = "mcpServers", skip_serializing_if = "Option::is_none")]
    pub mcp_servers: Option<Vec<McpEntry>>,
    #[serde(alias = "permissionPolicy", skip_serializing_if = "Option::is_none")]
    pub permission_policy: Option<Policy>,
    #[serde(alias = "runtimeBinding", skip_serializing_if = "Option::is_none")]
    pub runtime_binding: Option<BindingEntry>,
    /// The ACP session mode / model new sessions start in.
    #[serde(alias = "defaultModeId", skip_serializing_if = "Option::is_none")]
    pub default_mode_id: Option<String>,
    #[serde(alias = "defaultModelId", skip_serializing_if = "Option::is_none")]
    pub default_model_id: Option<String>,
    /// Bind `ask` to an agent its machine cannot make ask.
    #[serde(alias = "acceptUnenforcedAsk", skip_serializing_if = "Option::is_none")]
    pub accept_unenforced_ask: Option<bool>,
}

/// An appendable prompt: `content`, or `file` to read it from.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptEntry {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// A skill: `name` and `files`, or `dir` to read a folder (named after the
/// folder unless `name` is given).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkillEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileEntry>>,
}

/// A skill file: UTF-8 `content`, or `content_base64` for binary files.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, alias = "contentBase64", skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
}

/// An MCP server with exactly one of `local`, `http` or `sse`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpEntry {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse: Option<HttpEntry>,
    /// Removed (a command line the control plane would send to machines);
    /// read only to say what replaces it.
    #[serde(default, skip_serializing)]
    pub stdio: Option<serde_norway::Value>,
}

/// An MCP server the runtime's machine defines (policy.toml), by its id.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalEntry {
    #[serde(alias = "serverId")]
    pub server_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpEntry {
    pub url: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<NameValue>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingEntry {
    #[serde(alias = "runtimeId")]
    pub runtime_id: String,
    #[serde(alias = "acpAgentId")]
    pub acp_agent_id: String,
    #[serde(default, alias = "localSkillBlocklist", skip_serializing_if = "Vec::is_empty")]
    pub local_skill_blocklist: Vec<String>,
}

/// A partial runtime binding from flags or a file; completed from the
/// stored binding on update.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BindingPatch {
    pub runtime_id: Option<String>,
    pub acp_agent_id: Option<String>,
    pub blocklist: Option<Vec<String>>,
    /// Clear the binding.
    pub unbind: bool,
}

impl BindingPatch {
    /// Whether anything about the binding was asked for.
    pub fn touched(&self) -> bool {
        self.unbind || self.runtime_id.is_some() || self.acp_agent_id.is_some() || self.blocklist.is_some()
    }

    /// Whether the patch says everything, so the stored binding is not
    /// needed.
    pub fn complete(&self) -> bool {
        self.unbind || (self.runtime_id.is_some() && self.acp_agent_id.is_some() && self.blocklist.is_some())
    }

    /// The binding to send: the patch's parts, the rest from `stored`.
    pub fn resolve(&self, stored: Option<&pb::RuntimeBinding>) -> Result<Option<pb::RuntimeBinding>> {
        if self.unbind {
            return Ok(None);
        }
        let runtime_id = self.runtime_id.clone().or_else(|| stored.map(|b| b.runtime_id.clone()));
        let acp_agent_id = self
            .acp_agent_id
            .clone()
            .or_else(|| stored.map(|b| b.acp_agent_id.clone()));
        let (Some(runtime_id), Some(acp_agent_id)) = (runtime_id, acp_agent_id) else {
            return Err(Failure::usage("a runtime binding needs both --runtime and --acp-agent").into());
        };
        let local_skill_blocklist = self
            .blocklist
            .clone()
            .or_else(|| stored.map(|b| b.local_skill_blocklist.clone()))
            .unwrap_or_default();
        Ok(Some(pb::RuntimeBinding {
            runtime_id,
            acp_agent_id,
            local_skill_blocklist,
        }))
    }
}

/// The fields a command sets, with their values.
#[derive(Debug, Default)]
pub struct Edit {
    pub spec: pb::AgentSpec,
    fields: Vec<AgentField>,
    pub binding: BindingPatch,
}

impl Edit {
    /// Marks `field` as set.
    pub fn set(&mut self, field: AgentField) {
        if !self.fields.contains(&field) {
            self.fields.push(field);
        }
    }

    /// The update mask: the fields set, in proto order.
    pub fn mask(&self) -> Vec<String> {
        AgentField::ALL
            .into_iter()
            .filter(|f| self.fields.contains(f) || (*f == AgentField::RuntimeBinding && self.binding.touched()))
            .map(|f| f.path().to_owned())
            .collect()
    }

    /// Applies a spec file; relative paths in it are taken from `base`.
    pub fn apply_file(&mut self, file: SpecFile, base: &Path) -> Result<()> {
        if let Some(name) = file.name {
            self.spec.name = name;
            self.set(AgentField::Name);
        }
        if let Some(description) = file.description {
            self.spec.description = description;
            self.set(AgentField::Description);
        }
        match (file.system_prompt, file.system_prompt_file) {
            (Some(_), Some(_)) => bail!("the spec file sets both system_prompt and system_prompt_file: keep one"),
            (Some(prompt), None) => self.set_system_prompt(prompt),
            (None, Some(path)) => self.set_system_prompt(read_text(&base.join(path))?),
            (None, None) => {}
        }
        if let Some(prompts) = file.appendable_prompts {
            let prompts = prompts
                .into_iter()
                .map(|p| {
                    let content = match (p.content, p.file) {
                        (Some(content), None) => content,
                        (None, Some(path)) => read_text(&base.join(path))?,
                        _ => bail!("appendable prompt {:?} needs exactly one of content and file", p.name),
                    };
                    Ok(pb::AppendablePrompt { name: p.name, content })
                })
                .collect::<Result<_>>()?;
            self.set_appendable_prompts(prompts);
        }
        if let Some(skills) = file.skills {
            let skills = skills.into_iter().map(|s| s.into_pb(base)).collect::<Result<_>>()?;
            self.set_skills(skills);
        }
        if let Some(servers) = file.mcp_servers {
            let servers = servers.into_iter().map(McpEntry::into_pb).collect::<Result<_>>()?;
            self.set_mcp_servers(servers);
        }
        if let Some(policy) = file.permission_policy {
            self.set_policy(policy);
        }
        if let Some(mode) = file.default_mode_id {
            self.set_default_mode(mode);
        }
        if let Some(model) = file.default_model_id {
            self.set_default_model(model);
        }
        if let Some(accept) = file.accept_unenforced_ask {
            self.set_accept_unenforced_ask(accept);
        }
        if let Some(b) = file.runtime_binding {
            self.binding = BindingPatch {
                runtime_id: Some(b.runtime_id),
                acp_agent_id: Some(b.acp_agent_id),
                blocklist: Some(b.local_skill_blocklist),
                unbind: false,
            };
        }
        Ok(())
    }

    pub fn set_system_prompt(&mut self, prompt: String) {
        self.spec.system_prompt = prompt;
        self.set(AgentField::SystemPrompt);
    }

    pub fn set_appendable_prompts(&mut self, prompts: Vec<pb::AppendablePrompt>) {
        self.spec.appendable_prompts = prompts;
        self.set(AgentField::AppendablePrompts);
    }

    pub fn set_skills(&mut self, skills: Vec<pb::Skill>) {
        self.spec.skills = skills;
        self.set(AgentField::Skills);
    }

    pub fn set_mcp_servers(&mut self, servers: Vec<pb::McpServer>) {
        self.spec.mcp_servers = servers;
        self.set(AgentField::McpServers);
    }

    pub fn set_policy(&mut self, policy: Policy) {
        self.spec.permission_policy = policy.to_pb();
        self.set(AgentField::PermissionPolicy);
    }

    pub fn set_default_mode(&mut self, mode: String) {
        self.spec.default_mode_id = mode;
        self.set(AgentField::DefaultModeId);
    }

    pub fn set_default_model(&mut self, model: String) {
        self.spec.default_model_id = model;
        self.set(AgentField::DefaultModelId);
    }

    pub fn set_accept_unenforced_ask(&mut self, accept: bool) {
        self.spec.accept_unenforced_ask = accept;
        self.set(AgentField::AcceptUnenforcedAsk);
    }
}

/// Reads a spec file: JSON when it ends in `.json`, else YAML; `-` is stdin.
pub fn load_file(path: &Path) -> Result<SpecFile> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("cannot read the spec from stdin")?
    } else {
        read_text(path)?
    };
    let invalid = |e: &dyn std::fmt::Display| {
        Failure::new(
            exit::REJECTED,
            format!("the spec file {} is not valid: {e}", path.display()),
        )
    };
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| invalid(&e).into())
    } else {
        serde_norway::from_str(&text).map_err(|e| invalid(&e).into())
    }
}

fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

impl SkillEntry {
    fn into_pb(self, base: &Path) -> Result<pb::Skill> {
        match (self.dir, self.files) {
            (Some(dir), None) => {
                let mut skill = load_skill_dir(&base.join(dir))?;
                if let Some(name) = self.name {
                    skill.name = name;
                }
                Ok(skill)
            }
            (None, Some(files)) => {
                let name = self.name.ok_or_else(|| anyhow!("a skill with files needs a name"))?;
                let files = files
                    .into_iter()
                    .map(|f| {
                        let content = match (f.content, f.content_base64) {
                            (Some(text), None) => text.into_bytes(),
                            (None, Some(b64)) => BASE64.decode(b64.trim()).with_context(|| {
                                format!("skill {name:?} file {:?}: content_base64 is not base64", f.path)
                            })?,
                            _ => bail!(
                                "skill {name:?} file {:?} needs exactly one of content and content_base64",
                                f.path
                            ),
                        };
                        Ok(pb::SkillFile { path: f.path, content })
                    })
                    .collect::<Result<_>>()?;
                Ok(pb::Skill { name, files })
            }
            _ => bail!("each skill needs exactly one of dir and files"),
        }
    }
}

impl McpEntry {
    fn into_pb(self) -> Result<pb::McpServer> {
        use pb::mcp_server::Transport;
        let nv = |items: Vec<NameValue>| {
            items
                .into_iter()
                .map(|i| pb::NameValue {
                    name: i.name,
                    value: i.value,
                })
                .collect()
        };
        let http = |h: HttpEntry| pb::McpHttp {
            url: h.url,
            headers: nv(h.headers),
        };
        if self.stdio.is_some() {
            bail!(
                "MCP server {:?}: `stdio` was removed (the control plane never sends a command line to a machine); \
                 define the server as [[mcp_server]] in the machine's policy.toml and use `local: {{ server_id: ID }}`",
                self.name
            );
        }
        let transport = match (self.local, self.http, self.sse) {
            (Some(l), None, None) => Transport::Local(pb::McpLocal { server_id: l.server_id }),
            (None, Some(h), None) => Transport::Http(http(h)),
            (None, None, Some(h)) => Transport::Sse(http(h)),
            _ => bail!("MCP server {:?} needs exactly one of local, http and sse", self.name),
        };
        Ok(pb::McpServer {
            name: self.name,
            transport: Some(transport),
        })
    }
}

impl From<&pb::AgentSpec> for SpecFile {
    fn from(spec: &pb::AgentSpec) -> Self {
        use pb::mcp_server::Transport;
        let nv = |items: &[pb::NameValue]| {
            items
                .iter()
                .map(|i| NameValue {
                    name: i.name.clone(),
                    value: i.value.clone(),
                })
                .collect()
        };
        let http = |h: &pb::McpHttp| HttpEntry {
            url: h.url.clone(),
            headers: nv(&h.headers),
        };
        SpecFile {
            name: Some(spec.name.clone()),
            description: Some(spec.description.clone()),
            system_prompt: Some(spec.system_prompt.clone()),
            system_prompt_file: None,
            appendable_prompts: Some(
                spec.appendable_prompts
                    .iter()
                    .map(|p| PromptEntry {
                        name: p.name.clone(),
                        content: Some(p.content.clone()),
                        file: None,
                    })
                    .collect(),
            ),
            skills: Some(
                spec.skills
                    .iter()
                    .map(|s| SkillEntry {
                        name: Some(s.name.clone()),
                        dir: None,
                        files: Some(
                            s.files
                                .iter()
                                .map(|f| match std::str::from_utf8(&f.content) {
                                    Ok(text) => FileEntry {
                                        path: f.path.clone(),
                                        content: Some(text.to_owned()),
                                        content_base64: None,
                                    },
                                    Err(_) => FileEntry {
                                        path: f.path.clone(),
                                        content: None,
                                        content_base64: Some(BASE64.encode(&f.content)),
                                    },
                                })
                                .collect(),
                        ),
                    })
                    .collect(),
            ),
            mcp_servers: Some(
                spec.mcp_servers
                    .iter()
                    .map(|m| {
                        let mut entry = McpEntry {
                            name: m.name.clone(),
                            local: None,
                            http: None,
                            sse: None,
                            stdio: None,
                        };
                        match &m.transport {
                            Some(Transport::Local(l)) => {
                                entry.local = Some(LocalEntry {
                                    server_id: l.server_id.clone(),
                                })
                            }
                            Some(Transport::Http(h)) => entry.http = Some(http(h)),
                            Some(Transport::Sse(h)) => entry.sse = Some(http(h)),
                            None => {}
                        }
                        entry
                    })
                    .collect(),
            ),
            permission_policy: Some(Policy::from_pb(spec.permission_policy)),
            runtime_binding: spec.runtime_binding.as_ref().map(|b| BindingEntry {
                runtime_id: b.runtime_id.clone(),
                acp_agent_id: b.acp_agent_id.clone(),
                local_skill_blocklist: b.local_skill_blocklist.clone(),
            }),
            default_mode_id: (!spec.default_mode_id.is_empty()).then(|| spec.default_mode_id.clone()),
            default_model_id: (!spec.default_model_id.is_empty()).then(|| spec.default_model_id.clone()),
            accept_unenforced_ask: spec.accept_unenforced_ask.then_some(true),
        }
    }
}

/// Reads a skill folder recursively: named after the folder, files relative
/// and `/`-separated, sorted; `SKILL.md` must be at its top.
pub fn load_skill_dir(dir: &Path) -> Result<pb::Skill> {
    let real = dir
        .canonicalize()
        .with_context(|| format!("cannot read the skill folder {}", dir.display()))?;
    if !real.is_dir() {
        bail!(
            "{} is not a folder: --skill takes a skill folder holding SKILL.md",
            dir.display()
        );
    }
    let name = real
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("the skill folder {} has no usable name", dir.display()))?
        .to_owned();
    let mut files = Vec::new();
    walk(&real, "", 0, &mut files)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    if !files.iter().any(|f| f.path == "SKILL.md") {
        bail!("the skill folder {} has no SKILL.md", dir.display());
    }
    Ok(pb::Skill { name, files })
}

fn walk(dir: &Path, prefix: &str, depth: usize, out: &mut Vec<pb::SkillFile>) -> Result<()> {
    if depth > 32 {
        bail!("{} is nested too deeply (a symlink loop?)", dir.display());
    }
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let path = entry.path();
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| anyhow!("{} has a name that is not UTF-8", path.display()))?;
        let relative = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let meta = fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_dir() {
            walk(&path, &relative, depth + 1, out)?;
        } else if meta.is_file() {
            let content = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            out.push(pb::SkillFile {
                path: relative,
                content,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skill_folder_is_read_recursively() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pdf");
        fs::create_dir_all(root.join("scripts/lib")).unwrap();
        fs::write(root.join("SKILL.md"), "---\nname: pdf\n---\n").unwrap();
        fs::write(root.join("scripts/lib/x.py"), [0u8, 1, 2]).unwrap();
        let skill = load_skill_dir(&root.join(".")).unwrap();
        assert_eq!(skill.name, "pdf");
        let paths: Vec<_> = skill.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["SKILL.md", "scripts/lib/x.py"]);
        fs::remove_file(root.join("SKILL.md")).unwrap();
        assert!(load_skill_dir(&root).is_err());
    }

    #[test]
    fn spec_file_round_trips_through_the_wire_form() {
        let yaml = r##"
name: reviewer
systemPrompt: You review code.
permission_policy: allow_once
skills:
  - name: pdf
    files:
      - { path: SKILL.md, content: "# pdf" }
      - { path: bin/x, content_base64: AAEC }
mcp_servers:
  - name: fs
    local: { server_id: files }
  - name: web
    http: { url: "https://mcp.example" }
runtime_binding: { runtime_id: rt_0123456789abcdef0123456789abcdef, acp_agent_id: claude }
"##;
        let file: SpecFile = serde_norway::from_str(yaml).unwrap();
        let mut edit = Edit::default();
        edit.apply_file(file, Path::new(".")).unwrap();
        assert_eq!(
            edit.mask(),
            [
                "name",
                "system_prompt",
                "skills",
                "mcp_servers",
                "permission_policy",
                "runtime_binding"
            ]
        );
        edit.spec.runtime_binding = edit.binding.resolve(None).unwrap();
        assert_eq!(edit.spec.skills[0].files[1].content, vec![0, 1, 2]);
        oma_proto::model::AgentSpec::try_from(edit.spec.clone()).unwrap();

        let printed = serde_json::to_string(&SpecFile::from(&edit.spec)).unwrap();
        let mut again = Edit::default();
        again
            .apply_file(serde_json::from_str(&printed).unwrap(), Path::new("."))
            .unwrap();
        again.spec.runtime_binding = again.binding.resolve(None).unwrap();
        assert_eq!(again.spec, edit.spec);
    }

    #[test]
    fn a_stdio_mcp_server_says_what_replaces_it() {
        let yaml = "mcp_servers:\n  - name: fs\n    stdio: { command: mcp-fs }\n";
        let file: SpecFile = serde_norway::from_str(yaml).unwrap();
        let err = Edit::default()
            .apply_file(file, Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.contains("policy.toml") && err.contains("local"), "{err}");
        let printed = serde_json::to_string(&SpecFile::from(&pb::AgentSpec::default())).unwrap();
        assert!(!printed.contains("stdio"), "{printed}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_norway::from_str::<SpecFile>("name: a\nsystem_promt: x\n").is_err());
    }

    #[test]
    fn binding_is_completed_from_the_stored_one() {
        let stored = pb::RuntimeBinding {
            runtime_id: "rt_a".into(),
            acp_agent_id: "claude".into(),
            local_skill_blocklist: vec!["pdf".into()],
        };
        let patch = BindingPatch {
            acp_agent_id: Some("codex".into()),
            ..Default::default()
        };
        assert!(!patch.complete());
        let merged = patch.resolve(Some(&stored)).unwrap().unwrap();
        assert_eq!(
            (
                merged.runtime_id.as_str(),
                merged.acp_agent_id.as_str(),
                merged.local_skill_blocklist.as_slice()
            ),
            ("rt_a", "codex", ["pdf".to_owned()].as_slice())
        );
        assert!(patch.resolve(None).is_err());
        let unbind = BindingPatch {
            unbind: true,
            ..Default::default()
        };
        assert!(unbind.complete() && unbind.resolve(Some(&stored)).unwrap().is_none());
    }
}
