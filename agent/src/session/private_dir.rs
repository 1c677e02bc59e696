//! A session's directory: the ACP agent's cwd, holding AGENTS.md and the
//! skills the control plane sent, written where that agent reads them.
//!
//! Nothing from the server becomes a path outside this directory: skill
//! names and file paths are validated, all of them before anything is
//! written. The child writes here too, and the directory is prepared again
//! on every child start, so nothing is written through what the child left
//! (see [`crate::fsutil`]): AGENTS.md is replaced by a rename, the skills
//! folder is built fresh and swapped in whole, and a session folder or
//! `.claude` turned into a symlink becomes a real folder again.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use oma_proto::pb;
use oma_proto::validate;

use crate::detect::SkillsLayout;
use crate::fsutil::{self, Durability, PRIVATE_FILE_MODE};

/// Where a skills folder is built before it is swapped in, and where the one
/// it replaces waits to be removed.
const SKILLS_TMP_PREFIX: &str = ".oma-skills.tmp-";
const SKILLS_OLD_PREFIX: &str = ".oma-skills.old-";

/// Where skills go for agents without a skills folder of their own (and
/// for every workspace session), inside the session's private folder.
pub const INLINE_SKILLS_DIR: &str = ".skills";

/// Writes AGENTS.md and the skills into `dir` (created if missing).
pub fn prepare(dir: &Path, start: &pb::StartSession, layout: SkillsLayout) -> io::Result<()> {
    let skills = validated_skills(start)?;
    fsutil::real_dir(dir)?;
    let mut agents_md = start.agents_md.clone();
    if !skills.is_empty() {
        let (parent, folder) = match layout {
            SkillsLayout::ClaudeSkillsDir => (dir.join(".claude"), "skills"),
            SkillsLayout::InlineAgentsMd => (dir.to_path_buf(), INLINE_SKILLS_DIR),
        };
        fsutil::real_dir(&parent)?;
        write_skills(&parent, folder, &skills)?;
    }
    if layout == SkillsLayout::InlineAgentsMd {
        for skill in &start.skills {
            agents_md.push_str(&inline_skill(&skill.name, skill, Path::new(INLINE_SKILLS_DIR)));
        }
    }
    fsutil::write_atomic(
        &dir.join("AGENTS.md"),
        agents_md.as_bytes(),
        PRIVATE_FILE_MODE,
        Durability::Cached,
    )
}

/// One skill's files, checked: (relative path, content).
type SkillFiles<'a> = (String, Vec<(PathBuf, &'a [u8])>);

/// Every skill name and file path of the bundle, checked before anything is
/// written (a bad one fails the whole start, never half of it).
fn validated_skills(start: &pb::StartSession) -> io::Result<Vec<SkillFiles<'_>>> {
    let mut names = HashSet::new();
    let mut skills = Vec::with_capacity(start.skills.len());
    for skill in &start.skills {
        let name = validate::slug("skill", &skill.name).map_err(invalid)?;
        if !names.insert(name.clone()) {
            return Err(invalid_input(format!("skill {name:?} is given twice")));
        }
        let mut paths = HashSet::new();
        let mut files = Vec::with_capacity(skill.files.len());
        for file in &skill.files {
            let relative = validate::relative_path("skill file", &file.path).map_err(invalid)?;
            if !paths.insert(relative.clone()) {
                return Err(invalid_input(format!("skill {name:?} gives file {relative:?} twice")));
            }
            files.push((PathBuf::from(relative), file.content.as_slice()));
        }
        skills.push((name, files));
    }
    Ok(skills)
}

/// Builds `<parent>/<folder>/<skill>/<files>` in a fresh folder and swaps it
/// in, replacing whatever was at `<parent>/<folder>` (an earlier start's
/// skills, or a symlink the child put there).
fn write_skills(parent: &Path, folder: &str, skills: &[SkillFiles<'_>]) -> io::Result<()> {
    fsutil::remove_stale(parent, &[SKILLS_TMP_PREFIX, SKILLS_OLD_PREFIX]);
    let tmp = fsutil::temp_dir(parent, SKILLS_TMP_PREFIX)?;
    let built = (|| {
        for (name, files) in skills {
            for (relative, content) in files {
                fsutil::create_file_in(&tmp, &Path::new(name).join(relative), content, PRIVATE_FILE_MODE)?;
            }
        }
        fsutil::replace(&tmp, &parent.join(folder), SKILLS_OLD_PREFIX)
    })();
    if built.is_err() {
        let _ = fsutil::remove_any(&tmp);
    }
    built
}

/// A workspace session's instructions, given with its first prompt rather
/// than written into the workspace: AGENTS.md's text (system prompt and
/// appended prompts), then each skill inline with where its files are
/// (`skills_dir`, in the session's private folder).
pub fn instructions(start: &pb::StartSession, skills_dir: &Path) -> String {
    if start.agents_md.trim().is_empty() && start.skills.is_empty() {
        return String::new();
    }
    let mut text = format!("{}\n\n{}", oma_proto::workspace::INSTRUCTIONS_HEADER, start.agents_md);
    for skill in &start.skills {
        text.push_str(&inline_skill(&skill.name, skill, skills_dir));
    }
    text
}

/// The AGENTS.md section describing a skill for agents without a skills
/// folder: its SKILL.md inline, and where its other files are.
fn inline_skill(name: &str, skill: &pb::SkillBundle, skills_dir: &Path) -> String {
    let skill_md = skill
        .files
        .iter()
        .find(|f| f.path == "SKILL.md")
        .map(|f| String::from_utf8_lossy(&f.content).into_owned())
        .unwrap_or_default();
    let location = skills_dir.join(name);
    let mut out = format!(
        "\n\n## Skill: {name}\n\nFiles of this skill are in `{}/`.\n\n{skill_md}",
        location.display()
    );
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn invalid(e: validate::ValidationError) -> io::Error {
    invalid_input(e.to_string())
}

fn invalid_input(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
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
    fn hostile_names_and_paths_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let session = dir.path().join("session");
        let bad_paths = [
            "../../escape",
            "/tmp/escape",
            "a/../../escape",
            "./escape",
            "a//b",
            "a\\..\\..\\escape",
            "a\0b",
            "",
        ];
        for path in bad_paths {
            let mut bad = start();
            bad.skills[0].files[1].path = path.into();
            let err = prepare(&session, &bad, SkillsLayout::ClaudeSkillsDir).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{path:?}: {err}");
        }
        for name in ["../up", "..", ".", "/abs", "a/b", "a\\b", "a\0b", "", ".claude", "UP"] {
            let mut bad = start();
            bad.skills[0].name = name.into();
            let err = prepare(&session, &bad, SkillsLayout::InlineAgentsMd).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}: {err}");
        }
        // A good skill followed by a bad one: nothing at all is written.
        let mut bad = start();
        let mut second = bad.skills[0].clone();
        second.name = "second".into();
        second.files[0].path = "../x".into();
        bad.skills.push(second);
        assert!(prepare(&session, &bad, SkillsLayout::ClaudeSkillsDir).is_err());
        // Duplicates are refused with a clear message.
        let mut twice = start();
        twice.skills.push(twice.skills[0].clone());
        let err = prepare(&session, &twice, SkillsLayout::ClaudeSkillsDir).unwrap_err();
        assert!(err.to_string().contains("given twice"), "{err}");
        let mut twice = start();
        twice.skills[0].files[1].path = "SKILL.md".into();
        let err = prepare(&session, &twice, SkillsLayout::ClaudeSkillsDir).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");

        assert!(!session.exists(), "nothing was created for a refused bundle");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    /// What the child can do between two starts: point AGENTS.md at
    /// ~/.bashrc, `.claude` (or `.skills`, or `.claude/skills`) at the
    /// user's own folders, the whole session folder elsewhere.
    #[test]
    fn symlinks_the_child_planted_are_replaced_never_written_through() {
        use std::os::unix::fs::symlink;
        for layout in [SkillsLayout::ClaudeSkillsDir, SkillsLayout::InlineAgentsMd] {
            let root = tempfile::tempdir().unwrap();
            let home = root.path().join("home");
            fs::create_dir_all(home.join(".claude/skills/mine")).unwrap();
            fs::write(home.join(".bashrc"), "canary").unwrap();
            fs::write(home.join(".claude/skills/mine/SKILL.md"), "mine").unwrap();
            let session = root.path().join("session");
            prepare(&session, &start(), layout).unwrap();

            let plant = |name: &str, target: &Path| {
                let path = session.join(name);
                fsutil::remove_any(&path).ok();
                symlink(target, &path).unwrap();
            };
            plant("AGENTS.md", &home.join(".bashrc"));
            match layout {
                SkillsLayout::ClaudeSkillsDir => plant(".claude", &home.join(".claude")),
                SkillsLayout::InlineAgentsMd => plant(".skills", &home.join(".claude/skills")),
            }
            prepare(&session, &start(), layout).unwrap();
            if layout == SkillsLayout::ClaudeSkillsDir {
                plant(".claude/skills", &home.join(".claude/skills"));
                prepare(&session, &start(), layout).unwrap();
            }
            // The session folder itself swapped for a link to the home.
            fs::rename(&session, root.path().join("moved")).unwrap();
            symlink(&home, &session).unwrap();
            prepare(&session, &start(), layout).unwrap();

            assert_eq!(fs::read_to_string(home.join(".bashrc")).unwrap(), "canary");
            let home_entries: Vec<_> = fs::read_dir(&home).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(home_entries.len(), 2, "{home_entries:?}");
            let skills: Vec<_> = fs::read_dir(home.join(".claude/skills"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(skills, ["mine"], "{layout:?}");
            assert_eq!(
                fs::read_to_string(home.join(".claude/skills/mine/SKILL.md")).unwrap(),
                "mine"
            );

            let meta = fs::symlink_metadata(session.join("AGENTS.md")).unwrap();
            assert!(meta.is_file(), "{layout:?}");
            assert!(fs::symlink_metadata(&session).unwrap().is_dir());
            let skill_md = match layout {
                SkillsLayout::ClaudeSkillsDir => session.join(".claude/skills/lint/SKILL.md"),
                SkillsLayout::InlineAgentsMd => session.join(".skills/lint/SKILL.md"),
            };
            assert_eq!(fs::read_to_string(skill_md).unwrap(), "Run the linter.");
            // No temporaries are left behind.
            let leftovers: Vec<_> = [session.clone(), session.join(".claude")]
                .iter()
                .filter_map(|d| fs::read_dir(d).ok())
                .flatten()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.starts_with(".oma-skills") || n.contains(".tmp-"))
                .collect();
            assert!(leftovers.is_empty(), "{leftovers:?}");
        }
    }

    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let session = dir.path().join("s");
        prepare(&session, &start(), SkillsLayout::ClaudeSkillsDir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&session), 0o700);
        assert_eq!(mode(&session.join("AGENTS.md")), 0o600);
        assert_eq!(mode(&session.join(".claude/skills/lint/bin/run.sh")), 0o600);
        assert_eq!(mode(&session.join(".claude/skills/lint/bin")), 0o700);
    }
}
