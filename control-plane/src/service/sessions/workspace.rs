//! A session's workspace: which of its runtime's reported folders it works
//! in, and how (a worktree on a new branch, or the folder itself). Decided
//! here at creation from the runtime's manifest, stored with the session,
//! sent to the machine in StartSession — which checks it all again.

use oma_proto::pb;
use oma_proto::validate::ValidationError;
use oma_proto::workspace::{self as rules, default_branch_for};
use serde::{Deserialize, Serialize};

use crate::service::{ServiceError, ServiceResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceMode {
    Worktree,
    Direct,
}

/// A session's workspace as stored: mode and branch resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionWorkspace {
    pub workspace_id: String,
    pub mode: WorkspaceMode,
    /// Worktree: what the branch starts from; empty: the folder's HEAD.
    #[serde(default)]
    pub base_ref: String,
    /// Worktree: the session's branch.
    #[serde(default)]
    pub branch: String,
}

/// What CreateSession asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkspaceRequest {
    pub workspace_id: String,
    /// `None`: a worktree for a git workspace, direct for any other.
    pub mode: Option<WorkspaceMode>,
    pub base_ref: String,
    pub branch: String,
}

impl From<pb::SessionWorkspace> for WorkspaceRequest {
    fn from(w: pb::SessionWorkspace) -> Self {
        WorkspaceRequest {
            mode: match pb::WorkspaceMode::try_from(w.mode) {
                Ok(pb::WorkspaceMode::Worktree) => Some(WorkspaceMode::Worktree),
                Ok(pb::WorkspaceMode::Direct) => Some(WorkspaceMode::Direct),
                _ => None,
            },
            workspace_id: w.workspace_id,
            base_ref: w.base_ref,
            branch: w.branch,
        }
    }
}

impl From<&SessionWorkspace> for pb::SessionWorkspace {
    fn from(w: &SessionWorkspace) -> Self {
        pb::SessionWorkspace {
            workspace_id: w.workspace_id.clone(),
            mode: match w.mode {
                WorkspaceMode::Worktree => pb::WorkspaceMode::Worktree,
                WorkspaceMode::Direct => pb::WorkspaceMode::Direct,
            } as i32,
            base_ref: w.base_ref.clone(),
            branch: w.branch.clone(),
        }
    }
}

impl SessionWorkspace {
    /// Decodes the stored column (`None`: no workspace).
    pub fn from_stored(session_id: &str, stored: Option<&str>) -> ServiceResult<Option<SessionWorkspace>> {
        stored
            .map(|json| {
                serde_json::from_str(json).map_err(|e| {
                    crate::store::StoreError::Corrupt(format!("session {session_id} workspace: {e}")).into()
                })
            })
            .transpose()
    }

    pub fn to_stored(&self) -> String {
        serde_json::to_string(self).expect("a workspace serializes")
    }
}

/// Checks a request against what the runtime reported and resolves its
/// mode and branch. `others` are the runtime's live workspace sessions
/// (id, workspace), for the one-direct-session rule and branch names.
pub fn resolve(
    request: WorkspaceRequest,
    session_id: &str,
    runtime_id: &str,
    manifest: &pb::Manifest,
    others: &[(String, SessionWorkspace)],
) -> ServiceResult<SessionWorkspace> {
    let id = rules::workspace_id("workspace.workspace_id", &request.workspace_id)?;
    let Some(reported) = manifest.workspaces.iter().find(|w| w.id == id) else {
        let known: Vec<&str> = manifest.workspaces.iter().map(|w| w.id.as_str()).collect();
        let listed = match known.is_empty() {
            true => "it reports none (its owner declares them in the machine's workspaces.toml)".to_owned(),
            false => format!("it reports: {}", known.join(", ")),
        };
        return Err(ValidationError::new(
            "workspace.workspace_id",
            format!("runtime {runtime_id} has no workspace {id:?}; {listed}"),
        )
        .into());
    };
    if !reported.problem.is_empty() {
        return Err(ServiceError::FailedPrecondition(format!(
            "workspace {id:?} of runtime {runtime_id} cannot be used now: {}",
            reported.problem
        )));
    }
    let mode = match request.mode {
        Some(mode) => mode,
        None if reported.is_git => WorkspaceMode::Worktree,
        None => WorkspaceMode::Direct,
    };
    match mode {
        WorkspaceMode::Worktree if !reported.is_git => {
            return Err(ValidationError::new(
                "workspace.mode",
                format!("workspace {id:?} is not a git repository: only direct mode works there"),
            )
            .into());
        }
        WorkspaceMode::Direct if !reported.direct_allowed => {
            return Err(ServiceError::FailedPrecondition(format!(
                "the owner of runtime {runtime_id} has not allowed direct sessions in git workspace {id:?}; use a worktree"
            )));
        }
        WorkspaceMode::Direct if !request.base_ref.is_empty() || !request.branch.is_empty() => {
            return Err(ValidationError::new(
                "workspace.branch",
                "a direct session works on the folder as it is: base_ref and branch are for worktrees",
            )
            .into());
        }
        _ => {}
    }
    if mode == WorkspaceMode::Direct {
        if let Some((holder, _)) = others
            .iter()
            .find(|(_, w)| w.workspace_id == id && w.mode == WorkspaceMode::Direct)
        {
            return Err(ServiceError::FailedPrecondition(format!(
                "workspace {id:?} is in use by session {holder}: direct mode allows one live session per workspace"
            )));
        }
        return Ok(SessionWorkspace {
            workspace_id: id,
            mode,
            base_ref: String::new(),
            branch: String::new(),
        });
    }
    let branch = match request.branch.as_str() {
        "" => default_branch_for(session_id),
        named => rules::branch_name("workspace.branch", named)?,
    };
    if !request.base_ref.is_empty() {
        rules::base_ref("workspace.base_ref", &request.base_ref)?;
    }
    if let Some((holder, _)) = others.iter().find(|(_, w)| w.workspace_id == id && w.branch == branch) {
        return Err(ServiceError::FailedPrecondition(format!(
            "branch {branch:?} of workspace {id:?} belongs to session {holder}; name another branch"
        )));
    }
    Ok(SessionWorkspace {
        workspace_id: id,
        mode,
        base_ref: request.base_ref,
        branch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: &str = "ses_0123456789abcdef0123456789abcdef";

    fn manifest() -> pb::Manifest {
        pb::Manifest {
            workspaces: vec![
                pb::Workspace {
                    id: "web".into(),
                    is_git: true,
                    ..Default::default()
                },
                pb::Workspace {
                    id: "notes".into(),
                    direct_allowed: true,
                    ..Default::default()
                },
                pb::Workspace {
                    id: "gone".into(),
                    problem: "the workspace's folder does not exist".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn ask(id: &str) -> WorkspaceRequest {
        WorkspaceRequest {
            workspace_id: id.into(),
            ..Default::default()
        }
    }

    fn message(e: ServiceError) -> String {
        e.to_string()
    }

    #[test]
    fn git_defaults_to_a_worktree_on_a_short_branch_and_folders_to_direct() {
        let w = resolve(ask("web"), SESSION, "rt_1", &manifest(), &[]).unwrap();
        assert_eq!(
            (w.mode, w.branch.as_str()),
            (WorkspaceMode::Worktree, "oma/0123456789ab")
        );
        let n = resolve(ask("notes"), SESSION, "rt_1", &manifest(), &[]).unwrap();
        assert_eq!((n.mode, n.branch.as_str()), (WorkspaceMode::Direct, ""));
    }

    #[test]
    fn an_unreported_id_lists_the_reported_ones() {
        let e = message(resolve(ask("api"), SESSION, "rt_1", &manifest(), &[]).unwrap_err());
        assert!(
            e.contains("no workspace \"api\"") && e.contains("web, notes, gone"),
            "{e}"
        );
        let none = pb::Manifest::default();
        let e = message(resolve(ask("api"), SESSION, "rt_1", &none, &[]).unwrap_err());
        assert!(e.contains("reports none"), "{e}");
    }

    #[test]
    fn refusals_say_why() {
        let m = manifest();
        let worktree_on_folder = WorkspaceRequest {
            mode: Some(WorkspaceMode::Worktree),
            ..ask("notes")
        };
        assert!(
            message(resolve(worktree_on_folder, SESSION, "rt_1", &m, &[]).unwrap_err())
                .contains("not a git repository")
        );
        let direct_on_git = WorkspaceRequest {
            mode: Some(WorkspaceMode::Direct),
            ..ask("web")
        };
        assert!(matches!(
            resolve(direct_on_git, SESSION, "rt_1", &m, &[]),
            Err(ServiceError::FailedPrecondition(e)) if e.contains("not allowed direct sessions")
        ));
        assert!(message(resolve(ask("gone"), SESSION, "rt_1", &m, &[]).unwrap_err()).contains("does not exist"));
        for (branch, why) in [("a..b", "'..'"), ("-x", "'-'")] {
            let bad = WorkspaceRequest {
                branch: branch.into(),
                ..ask("web")
            };
            let e = message(resolve(bad, SESSION, "rt_1", &m, &[]).unwrap_err());
            assert!(e.contains("workspace.branch") && e.contains(why), "{e}");
        }
        let bad_base = WorkspaceRequest {
            base_ref: "--upload-pack=x".into(),
            ..ask("web")
        };
        assert!(message(resolve(bad_base, SESSION, "rt_1", &m, &[]).unwrap_err()).contains("workspace.base_ref"));
    }

    #[test]
    fn one_direct_session_per_workspace_and_one_session_per_branch() {
        let m = manifest();
        let holder = resolve(ask("notes"), "ses_1", "rt_1", &m, &[]).unwrap();
        let others = vec![("ses_1".to_owned(), holder)];
        let e = resolve(ask("notes"), SESSION, "rt_1", &m, &others).unwrap_err();
        assert!(
            matches!(e, ServiceError::FailedPrecondition(ref s) if s.contains("in use by session ses_1")),
            "{e}"
        );
        let named = WorkspaceRequest {
            branch: "fix/flaky".into(),
            ..ask("web")
        };
        let first = resolve(named.clone(), "ses_2", "rt_1", &m, &[]).unwrap();
        let others = vec![("ses_2".to_owned(), first)];
        let e = resolve(named, SESSION, "rt_1", &m, &others).unwrap_err();
        assert!(
            matches!(e, ServiceError::FailedPrecondition(ref s) if s.contains("belongs to session ses_2")),
            "{e}"
        );
    }
}
