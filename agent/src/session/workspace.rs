//! A session's directory: the ACP agent's cwd, holding AGENTS.md and the
//! skills the control plane sent, written where that agent reads them.
//! Nothing from the server becomes a path outside this directory: skill
//! names and file paths are validated before they are joined.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use oma_proto::pb;
use oma_proto::validate;

use crate::detect::SkillsLayout;

/// Writes AGENTS.md and the skills into `dir` (created if missing).
pub fn prepare(dir: &Path, start: &pb::StartSession, layout: SkillsLayout) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut agents_md = start.agents_md.clone();
    for skill in &start.skills {
        let name = validate::slug("skill", &skill.name).map_err(invalid)?;
        let root = match layout {
            SkillsLayout::ClaudeSkillsDir => dir.join(".claude").join("skills").join(&name),
            SkillsLayout::InlineAgentsMd => dir.join(".skills").join(&name),
        };
        for file in &skill.files {
            let relative = validate::relative_path("skill file", &file.path).map_err(invalid)?;
            let path = root.join(&relative);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(&path, &file.content)?;
        }
        if layout == SkillsLayout::InlineAgentsMd {
            agents_md.push_str(&inline_skill(&name, skill));
        }
    }
    fs::write(dir.join("AGENTS.md"), agents_md)
}

/// The AGENTS.md section describing a skill for agents without a skills
/// folder: its SKILL.md inline, and where its other files are.
fn inline_skill(name: &str, skill: &pb::SkillBundle) -> String {
    let skill_md = skill
        .files
        .iter()
        .find(|f| f.path == "SKILL.md")
        .map(|f| String::from_utf8_lossy(&f.content).into_owned())
        .unwrap_or_default();
    let mut out = format!("\n\n## Skill: {name}\n\nFiles of this skill are in `.skills/{name}/`.\n\n{skill_md}");
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn invalid(e: validate::ValidationError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

/// Removes a session directory entirely (dispose).
pub fn remove(dir: &PathBuf) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> pb::StartSession {
        pb::StartSession {
            session_id: "ses_x".into(),
            agents_md: "You review code.".into(),
            skills: vec![pb::SkillBundle {
                name: "lint".into(),
                files: vec![
                    pb::SkillBundleFile {
                        path: "SKILL.md".into(),
                        content: b"Run the linter.".to_vec(),
                    },
                    pb::SkillBundleFile {
                        path: "bin/run.sh".into(),
                        content: b"#!/bin/sh".to_vec(),
                    },
                ],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn claude_gets_a_skills_folder() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path(), &start(), SkillsLayout::ClaudeSkillsDir).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("AGENTS.md")).unwrap(),
            "You review code."
        );
        assert!(dir.path().join(".claude/skills/lint/SKILL.md").is_file());
        assert!(dir.path().join(".claude/skills/lint/bin/run.sh").is_file());
    }

    #[test]
    fn others_get_skills_inlined() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path(), &start(), SkillsLayout::InlineAgentsMd).unwrap();
        let md = fs::read_to_string(dir.path().join("AGENTS.md")).unwrap();
        assert!(md.contains("## Skill: lint") && md.contains("Run the linter."), "{md}");
    }

    #[test]
    fn hostile_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut bad = start();
        bad.skills[0].files[1].path = "../../escape".into();
        assert!(prepare(dir.path(), &bad, SkillsLayout::ClaudeSkillsDir).is_err());
        let mut bad = start();
        bad.skills[0].name = "../up".into();
        assert!(prepare(dir.path(), &bad, SkillsLayout::ClaudeSkillsDir).is_err());
        assert!(!dir.path().parent().unwrap().join("escape").exists());
    }
}
