//! Workspaces: the names the control plane may use for a machine's folders
//! and git refs. Both sides check them — the control plane to answer the
//! caller precisely, the machine because it trusts nothing it is sent (a
//! ref that starts with `-` would be an option to git).

use crate::pb;
use crate::validate::{Validated, ValidationError};

/// Longest branch name or base ref accepted.
pub const MAX_REF_CHARS: usize = 200;

/// Most workspaces one machine reports.
pub const MAX_WORKSPACES: usize = 256;

/// Most files a WorkspaceChanges event lists.
pub const MAX_CHANGED_FILES: usize = 200;

/// How a workspace session's instructions begin, in the text block put
/// before its first prompt (agents and tests can tell them from the user's
/// words).
pub const INSTRUCTIONS_HEADER: &str =
    "Instructions for this session from its operator (OMA); they are not files of this repository:";

/// A workspace id as the owner writes it in workspaces.toml and the control
/// plane names it: 1–64 characters of letters, digits, '.', '_' and '-',
/// starting with a letter or digit.
pub fn workspace_id(field: &str, value: &str) -> Validated<String> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return Err(ValidationError::new(
            field,
            format!(
                "{value:?} is not a valid workspace id: 1–64 characters of letters, digits, '.', '_' and '-', starting with a letter or digit"
            ),
        ));
    }
    Ok(value.to_owned())
}

/// A branch name the session may create: git's `check-ref-format --branch`
/// rules, plus printable ASCII only and no leading `-` (never an option).
pub fn branch_name(field: &str, value: &str) -> Validated<String> {
    ref_name(field, value, "branch name")
}

/// A base ref: a branch, tag or commit id, under the same rules as a branch
/// name (`HEAD~2`-style expressions are not accepted: name a commit).
pub fn base_ref(field: &str, value: &str) -> Validated<String> {
    ref_name(field, value, "base ref")
}

fn ref_name(field: &str, value: &str, what: &str) -> Validated<String> {
    let problem = ref_problem(value);
    match problem {
        None => Ok(value.to_owned()),
        Some(why) => Err(ValidationError::new(
            field,
            format!("{:?} is not a valid {what}: {why}", shorten(value)),
        )),
    }
}

fn ref_problem(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        return Some("it is empty");
    }
    if value.chars().count() > MAX_REF_CHARS {
        return Some("it is longer than 200 characters");
    }
    if value.starts_with('-') {
        return Some("it starts with '-'");
    }
    if let Some(_c) = value
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
    {
        return Some(
            "use letters, digits and '/', '.', '_', '-' only (no spaces, control characters or any of ~^:?*[\\)",
        );
    }
    if value.contains("..") {
        return Some("it contains '..'");
    }
    if value.contains("@{") || value == "@" {
        return Some("it contains '@{' or is '@'");
    }
    if value.contains("//") || value.starts_with('/') || value.ends_with('/') {
        return Some("it has an empty path component");
    }
    if value.ends_with('.') || value.ends_with(".lock") {
        return Some("it ends with '.' or '.lock'");
    }
    if value
        .split('/')
        .any(|part| part.starts_with('.') || part.ends_with(".lock"))
    {
        return Some("a path component starts with '.' or ends with '.lock'");
    }
    None
}

fn shorten(value: &str) -> String {
    value.chars().take(64).collect()
}

/// A workspace as a machine reports it: bounded, well-formed.
pub fn reported(workspace: &pb::Workspace) -> Validated<()> {
    workspace_id("id", &workspace.id)?;
    crate::validate::label("name", &workspace.name, crate::validate::MAX_MACHINE_LABEL_CHARS, false)?;
    crate::validate::label("current_branch", &workspace.current_branch, MAX_REF_CHARS * 2, false)?;
    crate::validate::label("default_branch", &workspace.default_branch, MAX_REF_CHARS * 2, false)?;
    crate::validate::label(
        "remote_url",
        &workspace.remote_url,
        crate::validate::MAX_ALLOWED_URL_CHARS,
        false,
    )?;
    crate::validate::text("problem", &workspace.problem, 1024, false)?;
    Ok(())
}

/// A WorkspaceChanges event: bounded list, one-line paths.
pub fn changes(changes: &pb::WorkspaceChanges) -> Validated<()> {
    crate::validate::opaque_id("base_commit", &changes.base_commit, false)?;
    if changes.files.len() > MAX_CHANGED_FILES {
        return Err(ValidationError::new(
            "files",
            format!("lists {} files; at most {MAX_CHANGED_FILES}", changes.files.len()),
        ));
    }
    for (i, file) in changes.files.iter().enumerate() {
        crate::validate::label(&format!("files[{i}].path"), &file.path, 4096, true)?;
        crate::validate::opaque_id(&format!("files[{i}].status"), &file.status, false)?;
    }
    Ok(())
}

/// The short branch a worktree session gets when none is named:
/// `oma/` and the first 12 hex digits of the session id.
pub fn default_branch_for(session_id: &str) -> String {
    let hex = session_id.strip_prefix("ses_").unwrap_or(session_id);
    format!("oma/{}", hex.chars().take(12).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_refs_pass() {
        for ok in [
            "main",
            "feature/x-1",
            "oma/0123abcd",
            "v1.2.3",
            "0123456789abcdef0123456789abcdef01234567",
            "a.b",
        ] {
            assert!(branch_name("b", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn hostile_refs_are_refused_with_the_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("-b", "'-'"),
            ("--upload-pack=x", "'-'"),
            ("a..b", "'..'"),
            ("a b", "no spaces"),
            ("a~1", "no spaces"),
            ("HEAD^", "no spaces"),
            ("a:b", "no spaces"),
            ("x\n", "no spaces"),
            ("héllo", "no spaces"),
            ("a/", "empty path component"),
            ("/a", "empty path component"),
            ("a//b", "empty path component"),
            ("a.lock", "'.lock'"),
            ("a/.hidden", "starts with '.'"),
            (".x", "starts with '.'"),
            ("a@{1}", "'@{'"),
            ("@", "'@'"),
            ("x.", "ends with '.'"),
        ] {
            let e = branch_name("workspace.branch", bad).unwrap_err();
            assert_eq!(e.field, "workspace.branch");
            assert!(e.message.contains(why), "{bad:?}: {}", e.message);
        }
        assert!(branch_name("b", &"a".repeat(201)).is_err());
    }

    #[test]
    fn workspace_ids() {
        assert!(workspace_id("id", "web-app_2.x").is_ok());
        for bad in ["", "-x", ".x", "a/b", "a b", &"a".repeat(65)] {
            assert!(workspace_id("id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_default_branch_is_short_and_valid() {
        let b = default_branch_for("ses_0123456789abcdef0123456789abcdef");
        assert_eq!(b, "oma/0123456789ab");
        assert!(branch_name("b", &b).is_ok());
    }
}
