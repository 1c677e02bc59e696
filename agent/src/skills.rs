//! Local skills: the skills Claude Code finds on this machine by itself, and
//! the per-agent blocklist that hides some of them from a session.
//!
//! Claude Code reads skills from its config dir (`~/.claude`, or
//! `$CLAUDE_CONFIG_DIR` when the user set it):
//!
//! * global skills: `<root>/skills/<id>/SKILL.md`;
//! * plugin skills: `<root>/plugins/…/<plugin root>/skills/<id>/SKILL.md`, at
//!   whatever depth the plugin layout uses (`marketplaces/<m>/plugins/<p>/`,
//!   `cache/<m>/<p>/<version>/`, `<p>/`, …).
//!
//! [`scan`] lists them (for the manifest, see [`to_manifest`]) and
//! [`build_config_dir`] builds a private `CLAUDE_CONFIG_DIR` for one session
//! made of symlinks to the user's real config, minus the blocked skills. The
//! user's own config dir is only ever read.
//!
//! # Naming skills in a blocklist
//!
//! The manifest reports every skill with its folder name as `id`; plugin
//! skills also carry `plugin_name`. A blocklist entry is either
//!
//! * `<id>`: hides every skill with that id, global or from any plugin; or
//! * `<plugin>:<id>`: hides only that plugin's skill of that id.
//!
//! See [`is_blocked`].
//!
//! # What counts as a skill
//!
//! A folder directly inside a `skills/` folder, named by a valid
//! [`local_skill_id`] (no `/`, no leading dot, …), holding a `SKILL.md`. A skill
//! folder may be a symlink only if it resolves inside its own `skills/` folder;
//! one pointing elsewhere is ignored with a warning. `SKILL.md` must be a file
//! (or a symlink resolving inside that `skills/` folder). Within `plugins/` no
//! symlinked directory is descended into. The scan is bounded: at most
//! [`MAX_SKILLS`] skills, plugin roots at most [`MAX_PLUGIN_DEPTH`] folders
//! below `plugins/`, hidden folders and `node_modules` skipped.
//!
//! The built config dir exposes exactly the skills [`scan`] reports that are
//! not blocked: every `skills/` folder the scan visited is rebuilt, so nothing
//! it ignored (hidden folders, bad ids, outside symlinks) is reachable through
//! it. `skills/` folders beyond the scan's bounds are neither reported nor
//! filtered.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, DirBuilder};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, symlink};
use std::path::{Path, PathBuf};

use oma_proto::model::local_skill_id;
use oma_proto::pb;

use crate::fsutil;

/// At most this many skills are reported (global and plugin together).
pub const MAX_SKILLS: usize = 10_000;
/// Plugin roots (the folders holding a `skills/` folder) are looked for at
/// most this many folders below `<root>/plugins/`.
pub const MAX_PLUGIN_DEPTH: usize = 8;
/// The folder [`build_config_dir`] creates in a session directory.
pub const CONFIG_DIR_NAME: &str = ".claude-config";

/// Directory entries the plugin walk looks at before giving up.
const MAX_WALK_ENTRIES: usize = 200_000;
/// Bytes of `SKILL.md` / `plugin.json` read: front matter lives at the top.
const MAX_READ_BYTES: u64 = 64 * 1024;
const MAX_NAME_CHARS: usize = 128;
const MAX_DESCRIPTION_CHARS: usize = 1024;
const TMP_PREFIX: &str = ".claude-config.tmp-";
const OLD_PREFIX: &str = ".claude-config.old-";

/// Where the user's Claude Code config lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkillSource {
    /// The user's Claude config dir: `~/.claude` or `$CLAUDE_CONFIG_DIR`.
    pub root: PathBuf,
}

impl SkillSource {
    /// `$CLAUDE_CONFIG_DIR` when set and non-empty (made absolute against the
    /// current directory if relative), otherwise `<home>/.claude`.
    pub fn from_env(home: &Path, claude_config_dir: Option<&OsStr>) -> SkillSource {
        let root = match claude_config_dir {
            Some(dir) if !dir.is_empty() => absolute(Path::new(dir)),
            _ => home.join(".claude"),
        };
        SkillSource { root }
    }
}

/// One skill found on the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundSkill {
    /// The skill's folder name.
    pub id: String,
    /// From the SKILL.md front matter; the id when it has none.
    pub name: String,
    /// From the SKILL.md front matter; empty when it has none.
    pub description: String,
    /// The plugin bundling it; `None` for a global skill.
    pub plugin: Option<String>,
    /// The skill folder (under the source root, not resolved).
    pub dir: PathBuf,
    /// The plugin's `skills/` folder holding `dir`; `None` for a global skill.
    pub plugin_skills_dir: Option<PathBuf>,
}

/// Whether `blocklist` hides `skill`: an entry equal to its id hides it
/// wherever it comes from; `<plugin>:<id>` hides only that plugin's skill.
pub fn is_blocked(skill: &FoundSkill, blocklist: &[String]) -> bool {
    blocklist.iter().any(|entry| {
        *entry == skill.id
            || skill.plugin.as_deref().is_some_and(|plugin| {
                entry
                    .strip_prefix(plugin)
                    .and_then(|rest| rest.strip_prefix(':'))
                    .is_some_and(|id| id == skill.id)
            })
    })
}

/// Lists the global and plugin skills under `source.root`, sorted by
/// (plugin, id, folder). Never fails: unreadable or hostile entries are
/// skipped (with a warning for the hostile ones).
pub fn scan(source: &SkillSource) -> Vec<FoundSkill> {
    scan_root(&absolute(&source.root)).skills
}

/// The manifest entries for `skills`: one per (plugin, id), in order.
pub fn to_manifest(skills: &[FoundSkill]) -> Vec<pb::LocalSkill> {
    let mut seen = HashSet::new();
    skills
        .iter()
        .filter(|s| seen.insert((s.plugin.as_deref(), s.id.as_str())))
        .map(|s| pb::LocalSkill {
            id: s.id.clone(),
            name: s.name.clone(),
            description: s.description.clone(),
            source: match s.plugin {
                Some(_) => pb::local_skill::Source::Plugin,
                None => pb::local_skill::Source::Global,
            } as i32,
            plugin_name: s.plugin.clone().unwrap_or_default(),
        })
        .collect()
}

/// A stable hash of everything the manifest and the config dir depend on,
/// independent of the order of `skills`; compare two to see whether a
/// rescan found a change.
pub fn fingerprint(skills: &[FoundSkill]) -> u64 {
    let mut sorted: Vec<&FoundSkill> = skills.iter().collect();
    sorted.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
    let mut hash = Fnv::new();
    hash.write_usize(sorted.len());
    for s in sorted {
        hash.write_str(&s.id);
        hash.write_str(&s.name);
        hash.write_str(&s.description);
        match &s.plugin {
            Some(p) => {
                hash.write_usize(1);
                hash.write_str(p);
            }
            None => hash.write_usize(0),
        }
        hash.write_bytes(s.dir.as_os_str().as_encoded_bytes());
    }
    hash.0
}

/// Builds `<session_dir>/.claude-config/`: a private `CLAUDE_CONFIG_DIR` for
/// one session.
///
/// Every entry of `source.root` becomes a symlink to the original, except
/// `skills/` and `plugins/`, which are rebuilt as real directories:
/// `skills/` holds a symlink per allowed global skill; `plugins/` mirrors the
/// original with symlinks, real directories only on the way to each plugin's
/// `skills/` folder, which is rebuilt to hold a symlink per allowed skill of
/// that plugin. Everything else (files and folders alike) is a symlink to
/// its original path, never followed or copied.
///
/// The tree is built in a temporary directory next to the target and renamed
/// into place, replacing one from an earlier start, or a symlink the child
/// put at its name (the link itself, never its target; left-over temporary
/// directories of other processes are removed). Nothing is written into
/// `source.root`; `session_dir` must not be inside it. A missing source root
/// gives an empty (valid) config dir. Returns the path to set as
/// `CLAUDE_CONFIG_DIR`.
pub fn build_config_dir(source: &SkillSource, session_dir: &Path, blocklist: &[String]) -> io::Result<PathBuf> {
    let root = absolute(&source.root);
    let session_dir = absolute(session_dir);
    if session_dir.starts_with(&root)
        || fs::canonicalize(&root).is_ok_and(|real_root| resolve_existing(&session_dir).starts_with(real_root))
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "refusing to build a Claude config dir in {} inside the source {}",
                session_dir.display(),
                root.display()
            ),
        ));
    }
    fsutil::real_dir(&session_dir)?;
    fsutil::remove_stale(&session_dir, &[TMP_PREFIX, OLD_PREFIX]);
    let target = session_dir.join(CONFIG_DIR_NAME);
    let tmp = fsutil::temp_dir(&session_dir, TMP_PREFIX)?;
    let built = populate(&root, &tmp, &target, blocklist)
        .and_then(|()| keep_what_the_agent_wrote(&target, &tmp))
        .and_then(|()| fsutil::replace(&tmp, &target, OLD_PREFIX));
    if let Err(e) = built {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(target)
}

// ---------------------------------------------------------------------------
// Scanning

#[derive(Default)]
struct Scan {
    skills: Vec<FoundSkill>,
    /// Every `skills/` folder found under `plugins/`, relative to it,
    /// including ones that held no valid skill or could not be scanned.
    plugin_skills_dirs: Vec<PathBuf>,
    truncated: bool,
}

fn sort_key(s: &FoundSkill) -> (Option<&str>, &str, &Path) {
    (s.plugin.as_deref(), s.id.as_str(), s.dir.as_path())
}

fn scan_root(root: &Path) -> Scan {
    let mut scan = Scan::default();
    let skills_dir = root.join("skills");
    if is_dir(&skills_dir) {
        scan_skills_folder(&skills_dir, None, &mut scan);
    }
    let plugins_dir = root.join("plugins");
    if is_dir(&plugins_dir) {
        walk_plugins(&plugins_dir, &mut scan);
    }
    scan.skills.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
    scan
}

/// Adds the skills directly inside `folder` (a `skills/` folder).
fn scan_skills_folder(folder: &Path, plugin: Option<&str>, scan: &mut Scan) {
    let boundary = match fs::canonicalize(folder) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(path = %folder.display(), error = %e, "cannot resolve skills folder; skipping it");
            return;
        }
    };
    let entries = match fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(path = %folder.display(), error = %e, "cannot read skills folder; skipping it");
            return;
        }
    };
    for entry in entries.flatten() {
        if scan.skills.len() >= MAX_SKILLS {
            if !scan.truncated {
                tracing::warn!(
                    limit = MAX_SKILLS,
                    "too many local skills; reporting only the first ones"
                );
                scan.truncated = true;
            }
            return;
        }
        let path = entry.path();
        let Ok(file_type) = entry.file_type() else { continue };
        // Plain files (README.md, .DS_Store, …) are simply not skills.
        if !file_type.is_dir() && !file_type.is_symlink() {
            continue;
        }
        let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
            tracing::warn!(path = %path.display(), "ignoring skill folder with a non-UTF-8 name");
            continue;
        };
        if let Err(e) = local_skill_id("skill id", &id) {
            tracing::warn!(path = %path.display(), error = %e, "ignoring skill folder");
            continue;
        }
        if file_type.is_symlink() {
            match fs::canonicalize(&path) {
                Ok(target) if target != boundary && target.starts_with(&boundary) && target.is_dir() => {}
                Ok(target) if !target.starts_with(&boundary) || target == boundary => {
                    tracing::warn!(
                        path = %path.display(),
                        target = %target.display(),
                        "ignoring skill folder: a symlink pointing outside its skills folder"
                    );
                    continue;
                }
                // Dangling, or a link to a file: not a skill.
                _ => continue,
            }
        }
        let Some(text) = read_skill_md(&path.join("SKILL.md"), &boundary) else {
            tracing::debug!(path = %path.display(), "no SKILL.md; not a skill");
            continue;
        };
        let front = FrontMatter::parse(&text);
        scan.skills.push(FoundSkill {
            name: front.name.unwrap_or_else(|| id.clone()),
            description: front.description.unwrap_or_default(),
            id,
            plugin: plugin.map(str::to_owned),
            dir: path,
            plugin_skills_dir: plugin.map(|_| folder.to_path_buf()),
        });
    }
}

/// Reads the start of a SKILL.md that is a file, or a symlink resolving
/// inside `boundary`.
fn read_skill_md(path: &Path, boundary: &Path) -> Option<String> {
    let meta = fs::symlink_metadata(path).ok()?;
    if meta.file_type().is_symlink() {
        let target = fs::canonicalize(path).ok()?;
        if !target.starts_with(boundary) {
            tracing::warn!(path = %path.display(), "ignoring SKILL.md: a symlink pointing outside its skills folder");
            return None;
        }
        if !target.is_file() {
            return None;
        }
    } else if !meta.is_file() {
        return None;
    }
    read_head(path)
}

fn read_head(path: &Path) -> Option<String> {
    let mut bytes = Vec::new();
    fs::File::open(path)
        .ok()?
        .take(MAX_READ_BYTES)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Walks `plugins/` looking for plugin `skills/` folders, without following
/// symlinked directories.
fn walk_plugins(plugins_dir: &Path, scan: &mut Scan) {
    let boundary = match fs::canonicalize(plugins_dir) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(path = %plugins_dir.display(), error = %e, "cannot resolve plugins folder; skipping it");
            return;
        }
    };
    let mut budget = MAX_WALK_ENTRIES;
    let mut stack = vec![(plugins_dir.to_path_buf(), PathBuf::new(), 0usize)];
    while let Some((dir, rel, depth)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            if budget == 0 {
                tracing::warn!(
                    limit = MAX_WALK_ENTRIES,
                    path = %plugins_dir.display(),
                    "plugins folder too large; some plugin skills are not reported"
                );
                return;
            }
            budget -= 1;
            let Ok(file_type) = entry.file_type() else { continue };
            let name = entry.file_name();
            let path = entry.path();
            if name == "skills" {
                if file_type.is_dir() {
                    scan.plugin_skills_dirs.push(rel.join(&name));
                    scan_plugin_skills(&dir, &rel, &path, scan);
                } else if file_type.is_symlink() {
                    // Rebuilt in the config dir either way, so what it points
                    // to is only reachable through the scan.
                    scan.plugin_skills_dirs.push(rel.join(&name));
                    match fs::canonicalize(&path) {
                        Ok(target) if target.starts_with(&boundary) && target.is_dir() => {
                            scan_plugin_skills(&dir, &rel, &path, scan)
                        }
                        _ => tracing::warn!(
                            path = %path.display(),
                            "ignoring plugin skills folder: a symlink pointing outside the plugins folder"
                        ),
                    }
                }
                continue;
            }
            let hidden = name.as_encoded_bytes().starts_with(b".");
            if file_type.is_dir() && !hidden && name != "node_modules" && depth < MAX_PLUGIN_DEPTH {
                stack.push((path, rel.join(&name), depth + 1));
            }
        }
    }
}

fn scan_plugin_skills(plugin_root: &Path, rel: &Path, skills_dir: &Path, scan: &mut Scan) {
    match plugin_name(plugin_root, rel) {
        Some(plugin) => scan_skills_folder(skills_dir, Some(&plugin), scan),
        None => tracing::warn!(path = %skills_dir.display(), "ignoring plugin skills: cannot tell the plugin's name"),
    }
}

/// The plugin's name: `name` in `.claude-plugin/plugin.json` when valid,
/// otherwise the folder holding `skills/`, skipping version folders
/// (`cache/<market>/<plugin>/<version>/skills`).
fn plugin_name(plugin_root: &Path, rel: &Path) -> Option<String> {
    let manifest = plugin_root.join(".claude-plugin").join("plugin.json");
    if fs::symlink_metadata(&manifest).is_ok_and(|m| m.is_file())
        && let Some(text) = read_head(&manifest)
    {
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(json) => {
                if let Some(name) = json.get("name").and_then(|n| n.as_str()) {
                    match local_skill_id("plugin name", name) {
                        Ok(name) => return Some(name),
                        Err(e) => tracing::warn!(path = %manifest.display(), error = %e, "ignoring plugin name"),
                    }
                }
            }
            Err(e) => tracing::debug!(path = %manifest.display(), error = %e, "unreadable plugin.json"),
        }
    }
    let folders: Vec<&str> = rel.iter().filter_map(OsStr::to_str).collect();
    let last = folders.len().checked_sub(1)?;
    let pick = match folders[last] {
        version if looks_like_version(version) && last > 0 => folders[last - 1],
        folder => folder,
    };
    local_skill_id("plugin name", pick).ok()
}

fn looks_like_version(folder: &str) -> bool {
    let bytes = folder.as_bytes();
    let digit_start = match bytes {
        [b'v' | b'V', rest @ ..] => rest.first().is_some_and(u8::is_ascii_digit),
        [first, ..] => first.is_ascii_digit(),
        [] => false,
    };
    let commit = bytes.len() >= 7 && bytes.iter().all(u8::is_ascii_hexdigit);
    digit_start || commit
}

/// `name` and `description` from a SKILL.md's YAML front matter.
#[derive(Debug, Default, PartialEq, Eq)]
struct FrontMatter {
    name: Option<String>,
    description: Option<String>,
}

impl FrontMatter {
    fn parse(text: &str) -> FrontMatter {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut lines = text.split_inclusive('\n');
        if lines.next().map(str::trim_end) != Some("---") {
            return FrontMatter::default();
        }
        let mut yaml = String::new();
        let mut closed = false;
        for line in lines {
            let bare = line.trim_end();
            if bare == "---" || bare == "..." {
                closed = true;
                break;
            }
            yaml.push_str(line);
        }
        if !closed {
            return FrontMatter::default();
        }
        let (name, description) = match serde_norway::from_str::<serde_norway::Value>(&yaml) {
            Ok(serde_norway::Value::Mapping(map)) => {
                let field = |key: &str| map.get(key).and_then(scalar);
                (field("name"), field("description"))
            }
            Ok(_) => (None, None),
            // Hand-written front matter is often not valid YAML (an unquoted
            // `description: Use when: …`); read `key: value` lines instead.
            Err(_) => (lenient_field(&yaml, "name"), lenient_field(&yaml, "description")),
        };
        FrontMatter {
            name: clean(name, MAX_NAME_CHARS),
            description: clean(description, MAX_DESCRIPTION_CHARS),
        }
    }
}

fn scalar(value: &serde_norway::Value) -> Option<String> {
    match value {
        serde_norway::Value::String(s) => Some(s.clone()),
        serde_norway::Value::Number(n) => Some(n.to_string()),
        serde_norway::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn lenient_field(yaml: &str, key: &str) -> Option<String> {
    yaml.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        if k.trim_end() != key {
            return None;
        }
        let v = v.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|q| v.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(v);
        Some(unquoted.to_owned())
    })
}

fn clean(value: Option<String>, max_chars: usize) -> Option<String> {
    let value = value?;
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return None;
    }
    // Control characters become spaces: the control plane refuses a
    // manifest that holds any (and with it the machine's stream).
    Some(
        trimmed
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(max_chars)
            .collect(),
    )
}

// ---------------------------------------------------------------------------
// Building the config dir

/// `dest` is where the tree is built; `final_dest` where it will live (the
/// paths written into rewritten plugin registries point there).
fn populate(root: &Path, dest: &Path, final_dest: &Path, blocklist: &[String]) -> io::Result<()> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory => {
            tracing::info!(root = %root.display(), "no Claude config dir; the session gets an empty one");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let scan = scan_root(root);
    for entry in entries {
        let name = entry?.file_name();
        let src = root.join(&name);
        let dst = dest.join(&name);
        if name == "skills" && is_dir(&src) {
            make_dir(&dst)?;
            for skill in scan.skills.iter().filter(|s| s.plugin.is_none()) {
                link_skill(skill, &dst, blocklist)?;
            }
        } else if name == "plugins" && is_dir(&src) {
            mirror_plugins(&src, &dst, &scan, blocklist)?;
            rewrite_plugin_registries(&src, &dst, &final_dest.join("plugins"))?;
        } else {
            symlink(&src, &dst)?;
        }
    }
    Ok(())
}

/// Moves into the new build what Claude itself wrote into the previous one
/// (its transcripts under `projects/`, `.claude.json`, todos…): the real
/// files and folders of `old` that the new build does not have. Without
/// this, every child start would lose the sessions `session/load` needs
/// on a machine whose own config has no `projects/`. Symlinks are never
/// carried over (a child could have planted one), and nothing is written
/// through anything: entries are renamed whole, within the session folder.
fn keep_what_the_agent_wrote(old: &Path, new: &Path) -> io::Result<()> {
    let entries = match fs::symlink_metadata(old) {
        Ok(meta) if meta.is_dir() => fs::read_dir(old)?,
        _ => return Ok(()),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_symlink() {
            continue;
        }
        let name = entry.file_name();
        if name == "skills" || name == "plugins" {
            continue; // views this build makes (with the current blocklist), never the agent's
        }
        let target = new.join(&name);
        if fs::symlink_metadata(&target).is_ok() {
            continue; // the new build's own (a link to the user's, or the skills view)
        }
        fs::rename(entry.path(), target)?;
    }
    Ok(())
}

fn link_skill(skill: &FoundSkill, skills_dst: &Path, blocklist: &[String]) -> io::Result<()> {
    if is_blocked(skill, blocklist) {
        return Ok(());
    }
    // The id was validated as a single folder name; check again before
    // it becomes a path.
    if local_skill_id("skill id", &skill.id).is_err() {
        return Ok(());
    }
    symlink(&skill.dir, skills_dst.join(&skill.id))
}

struct PluginMirror<'a> {
    /// Plugin `skills/` folders (relative to `plugins/`) and their skills.
    skills_dirs: HashMap<PathBuf, Vec<&'a FoundSkill>>,
    /// Folders (relative) on the way to a `skills/` folder.
    ancestors: HashSet<PathBuf>,
    blocklist: &'a [String],
}

fn mirror_plugins(src: &Path, dst: &Path, scan: &Scan, blocklist: &[String]) -> io::Result<()> {
    let mut skills_dirs: HashMap<PathBuf, Vec<&FoundSkill>> = scan
        .plugin_skills_dirs
        .iter()
        .map(|rel| (rel.clone(), Vec::new()))
        .collect();
    for skill in &scan.skills {
        if let Some(dir) = &skill.plugin_skills_dir
            && let Ok(rel) = dir.strip_prefix(src)
            && let Some(list) = skills_dirs.get_mut(rel)
        {
            list.push(skill);
        }
    }
    let ancestors = scan
        .plugin_skills_dirs
        .iter()
        .flat_map(|rel| rel.ancestors().skip(1).map(Path::to_path_buf))
        .collect();
    let mirror = PluginMirror {
        skills_dirs,
        ancestors,
        blocklist,
    };
    mirror.dir(src, dst, Path::new(""))
}

impl PluginMirror<'_> {
    fn dir(&self, src: &Path, dst: &Path, rel: &Path) -> io::Result<()> {
        make_dir(dst)?;
        for entry in fs::read_dir(src)? {
            let entry = entry?;
            let name = entry.file_name();
            let child_rel = rel.join(&name);
            let src_child = src.join(&name);
            let dst_child = dst.join(&name);
            if let Some(skills) = self.skills_dirs.get(&child_rel) {
                make_dir(&dst_child)?;
                for skill in skills {
                    link_skill(skill, &dst_child, self.blocklist)?;
                }
            } else if self.ancestors.contains(&child_rel) && entry.file_type()?.is_dir() {
                self.dir(&src_child, &dst_child, &child_rel)?;
            } else {
                symlink(&src_child, &dst_child)?;
            }
        }
        Ok(())
    }
}

/// Claude Code loads plugins from the absolute `installPath`s recorded in
/// `plugins/installed_plugins.json` (and marketplaces from
/// `known_marketplaces.json`). Left as symlinks, they would send it to the
/// user's unfiltered plugin folders, so they become copies whose paths under
/// the real `plugins/` point into the filtered mirror instead. (Plugin
/// installs made during the session therefore stay in the session.)
fn rewrite_plugin_registries(src: &Path, dst: &Path, final_dst: &Path) -> io::Result<()> {
    let prefixes: Vec<String> = [Some(src.to_path_buf()), fs::canonicalize(src).ok()]
        .into_iter()
        .flatten()
        .map(|p| p.display().to_string())
        .collect();
    let replacement = final_dst.display().to_string();
    for name in ["installed_plugins.json", "known_marketplaces.json"] {
        let Ok(text) = fs::read_to_string(src.join(name)) else {
            continue;
        };
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&text) else {
            tracing::warn!(file = name, "plugin registry is not JSON; leaving it linked");
            continue;
        };
        rewrite_paths(&mut value, &prefixes, &replacement);
        // Replaces the symlink the mirror put there.
        fsutil::write_atomic(
            &dst.join(name),
            &serde_json::to_vec_pretty(&value).map_err(io::Error::other)?,
            fsutil::PRIVATE_FILE_MODE,
            fsutil::Durability::Cached,
        )?;
    }
    Ok(())
}

fn rewrite_paths(value: &mut serde_json::Value, prefixes: &[String], replacement: &str) {
    match value {
        serde_json::Value::String(s) => {
            for prefix in prefixes {
                if let Some(rest) = s.strip_prefix(prefix.as_str())
                    && (rest.is_empty() || rest.starts_with('/'))
                {
                    *s = format!("{replacement}{rest}");
                    break;
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| rewrite_paths(v, prefixes, replacement)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| rewrite_paths(v, prefixes, replacement)),
        _ => {}
    }
}

fn make_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(fsutil::PRIVATE_DIR_MODE).create(path)
}

/// A directory, following symlinks.
fn is_dir(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_dir())
}

/// `path` with its longest existing prefix resolved (symlinks followed).
fn resolve_existing(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut cur = path;
    loop {
        if let Ok(real) = fs::canonicalize(cur) {
            return rest.iter().rev().fold(real, |acc, part| acc.join(part));
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                cur = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// 64-bit FNV-1a: stable across processes and Rust versions.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write_bytes(&mut self, bytes: &[u8]) {
        self.write_usize(bytes.len());
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_str(&mut self, s: &str) {
        self.write_bytes(s.as_bytes());
    }

    fn write_usize(&mut self, n: usize) {
        for b in (n as u64).to_le_bytes() {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The fake `$HOME` of the module's tests.
    struct Home {
        _tmp: tempfile::TempDir,
        home: PathBuf,
        root: PathBuf,
        outside: PathBuf,
    }

    fn write(path: &Path, content: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn skill_md(name: &str, description: &str) -> String {
        format!("---\nname: {name}\ndescription: {description}\nallowed-tools: [Read, Bash]\n---\n\n# {name}\nBody.\n")
    }

    fn add_skill(skills: &Path, id: &str) {
        write(
            &skills.join(id).join("SKILL.md"),
            &skill_md(&format!("{id} name"), &format!("What {id} does")),
        );
        write(&skills.join(id).join("scripts/run.sh"), "#!/bin/sh\necho hi\n");
    }

    fn fake_home() -> Home {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let root = home.join(".claude");
        let outside = tmp.path().join("outside");
        write(&root.join("settings.json"), r#"{"theme":"dark"}"#);
        write(&root.join(".credentials.json"), r#"{"token":"secret"}"#);
        write(&root.join("CLAUDE.md"), "# Me\n");
        write(&root.join("projects/x/y.jsonl"), "{}\n");
        for id in ["alpha", "beta", "gamma"] {
            add_skill(&root.join("skills"), id);
        }
        add_skill(&root.join("skills"), ".secret");
        write(&root.join("skills/README.md"), "not a skill\n");
        fs::create_dir_all(root.join("skills/no-skill-md")).unwrap();
        add_skill(&outside, "evil");
        symlink(outside.join("evil"), root.join("skills/evil")).unwrap();
        // A symlink elsewhere in the tree is mirrored, not followed.
        fs::create_dir_all(outside.join("agents")).unwrap();
        symlink(outside.join("agents"), root.join("agents")).unwrap();

        let plugins = root.join("plugins");
        write(
            &plugins.join("installed_plugins.json"),
            &format!(
                r#"{{"version":2,"plugins":{{"p1@m":[{{"installPath":"{}/marketplaces/m/plugins/p1"}}],"x@y":[{{"installPath":"/elsewhere/p"}}]}}}}"#,
                plugins.display()
            ),
        );
        let p1 = plugins.join("marketplaces/m/plugins/p1");
        write(
            &p1.join(".claude-plugin/plugin.json"),
            r#"{"name":"p1","version":"0.1.0"}"#,
        );
        write(&p1.join("commands/foo.md"), "# foo\n");
        add_skill(&p1.join("skills"), "pdf");
        add_skill(&p1.join("skills"), "xlsx");
        add_skill(&p1.join("skills"), ".hidden");
        symlink(outside.join("evil"), p1.join("skills/evil")).unwrap();
        write(&plugins.join("marketplaces/m/.claude-plugin/marketplace.json"), "{}");
        let p2 = plugins.join("cache/m/p2/1.0.0");
        add_skill(&p2.join("skills"), "docx");
        write(&p2.join("README.md"), "p2\n");
        Home {
            _tmp: tmp,
            home,
            root,
            outside,
        }
    }

    fn source(h: &Home) -> SkillSource {
        SkillSource::from_env(&h.home, None)
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Node {
        Dir,
        File(Vec<u8>),
        Link(PathBuf),
    }

    /// Every path under `dir` (symlinks not followed) with its content.
    fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Node> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                let rel = path.strip_prefix(dir).unwrap().to_path_buf();
                let meta = fs::symlink_metadata(&path).unwrap();
                let node = if meta.file_type().is_symlink() {
                    Node::Link(fs::read_link(&path).unwrap())
                } else if meta.is_dir() {
                    stack.push(path.clone());
                    Node::Dir
                } else {
                    Node::File(fs::read(&path).unwrap())
                };
                out.insert(rel, node);
            }
        }
        out
    }

    fn ids(skills: &[FoundSkill]) -> Vec<(Option<&str>, &str)> {
        skills.iter().map(|s| (s.plugin.as_deref(), s.id.as_str())).collect()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    const P1_SKILLS: &str = "plugins/marketplaces/m/plugins/p1/skills";
    const P2_SKILLS: &str = "plugins/cache/m/p2/1.0.0/skills";

    #[test]
    fn scan_finds_global_and_plugin_skills() {
        let h = fake_home();
        let skills = scan(&source(&h));
        assert_eq!(
            ids(&skills),
            [
                (None, "alpha"),
                (None, "beta"),
                (None, "gamma"),
                (Some("p1"), "pdf"),
                (Some("p1"), "xlsx"),
                (Some("p2"), "docx"),
            ]
        );
        let alpha = &skills[0];
        assert_eq!(alpha.name, "alpha name");
        assert_eq!(alpha.description, "What alpha does");
        assert_eq!(alpha.dir, h.root.join("skills/alpha"));
        assert_eq!(alpha.plugin_skills_dir, None);
        let docx = &skills[5];
        assert_eq!(docx.name, "docx name");
        assert_eq!(docx.description, "What docx does");
        assert_eq!(
            docx.plugin_skills_dir.as_deref(),
            Some(h.root.join(P2_SKILLS).as_path())
        );

        let manifest = to_manifest(&skills);
        assert_eq!(manifest.len(), 6);
        assert_eq!(manifest[0].source, pb::local_skill::Source::Global as i32);
        assert_eq!(manifest[0].plugin_name, "");
        assert_eq!(manifest[3].id, "pdf");
        assert_eq!(manifest[3].source, pb::local_skill::Source::Plugin as i32);
        assert_eq!(manifest[3].plugin_name, "p1");
        assert_eq!(manifest[3].description, "What pdf does");
    }

    #[test]
    fn scan_of_a_missing_root_is_empty() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(scan(&SkillSource::from_env(tmp.path(), None)).is_empty());
    }

    #[test]
    fn build_filters_skills_and_links_everything_else() {
        let h = fake_home();
        let before = snapshot(&h.root);
        let outside_before = snapshot(&h.outside);
        let session = h.home.join("sessions/s1");
        let blocklist = ["beta".to_owned(), "p1:xlsx".to_owned()];
        let built = build_config_dir(&source(&h), &session, &blocklist).unwrap();
        assert_eq!(built, session.join(".claude-config"));

        assert_eq!(names(&built.join("skills")), ["alpha", "gamma"]);
        assert_eq!(names(&built.join(P1_SKILLS)), ["pdf"]);
        assert_eq!(names(&built.join(P2_SKILLS)), ["docx"]);
        assert_eq!(
            fs::read_to_string(built.join(P1_SKILLS).join("pdf/SKILL.md")).unwrap(),
            skill_md("pdf name", "What pdf does")
        );

        // Real directories only where skills are filtered; everything else
        // is a symlink to the original path, and there are no copies.
        let real_dirs = [
            "skills",
            "plugins",
            "plugins/marketplaces",
            "plugins/marketplaces/m",
            "plugins/marketplaces/m/plugins",
            "plugins/marketplaces/m/plugins/p1",
            P1_SKILLS,
            "plugins/cache",
            "plugins/cache/m",
            "plugins/cache/m/p2",
            "plugins/cache/m/p2/1.0.0",
            P2_SKILLS,
        ];
        let tree = snapshot(&built);
        for (rel, node) in &tree {
            match node {
                Node::Dir => assert!(real_dirs.contains(&rel.to_str().unwrap()), "unexpected dir {rel:?}"),
                Node::File(_) if rel == Path::new("plugins/installed_plugins.json") => {}
                Node::File(_) => panic!("unexpected copied file {rel:?}"),
                Node::Link(target) => assert_eq!(target, &h.root.join(rel), "link {rel:?}"),
            }
        }
        assert_eq!(tree.values().filter(|n| **n == Node::Dir).count(), real_dirs.len());
        for rel in [
            "settings.json",
            ".credentials.json",
            "CLAUDE.md",
            "projects",
            "agents",
            "skills/alpha",
            "plugins/marketplaces/m/.claude-plugin",
            "plugins/marketplaces/m/plugins/p1/.claude-plugin",
            "plugins/marketplaces/m/plugins/p1/commands",
            "plugins/cache/m/p2/1.0.0/README.md",
        ] {
            assert!(
                matches!(tree.get(Path::new(rel)), Some(Node::Link(_))),
                "{rel} should be a symlink"
            );
        }
        // The plugin registry points Claude at the filtered mirror, and
        // leaves paths outside the user's plugins folder alone.
        let registry: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(built.join("plugins/installed_plugins.json")).unwrap()).unwrap();
        assert_eq!(
            registry["plugins"]["p1@m"][0]["installPath"],
            built.join("plugins/marketplaces/m/plugins/p1").display().to_string()
        );
        assert_eq!(registry["plugins"]["x@y"][0]["installPath"], "/elsewhere/p");

        // Files below a linked folder resolve to the originals.
        let foo = built.join("plugins/marketplaces/m/plugins/p1/commands/foo.md");
        let original_foo = h.root.join("plugins/marketplaces/m/plugins/p1/commands/foo.md");
        assert_eq!(
            fs::canonicalize(&foo).unwrap(),
            fs::canonicalize(&original_foo).unwrap()
        );
        assert_eq!(
            fs::canonicalize(built.join("projects/x/y.jsonl")).unwrap(),
            fs::canonicalize(h.root.join("projects/x/y.jsonl")).unwrap()
        );
        // Hostile entries are never linked.
        assert!(!tree.contains_key(Path::new("skills/.secret")));
        assert!(!tree.contains_key(Path::new("skills/evil")));
        assert!(!tree.contains_key(&Path::new(P1_SKILLS).join("evil")));
        assert!(!tree.contains_key(&Path::new(P1_SKILLS).join(".hidden")));

        // Blocking a plain id hides it in every plugin.
        let built = build_config_dir(&source(&h), &session, &["docx".to_owned()]).unwrap();
        assert!(names(&built.join(P2_SKILLS)).is_empty());
        assert_eq!(names(&built.join(P1_SKILLS)), ["pdf", "xlsx"]);
        assert_eq!(names(&built.join("skills")), ["alpha", "beta", "gamma"]);

        assert_eq!(snapshot(&h.root), before, "the source tree changed");
        assert_eq!(snapshot(&h.outside), outside_before, "files outside the source changed");
    }

    #[test]
    fn rebuild_replaces_the_tree_and_leaves_no_temp_dirs() {
        let h = fake_home();
        let session = h.home.join("sessions/s2");
        fs::create_dir_all(&session).unwrap();
        fs::write(session.join("AGENTS.md"), "prompt").unwrap();
        // Left over by a crashed daemon.
        fs::create_dir_all(session.join(".claude-config.tmp-999999999-0-0/skills")).unwrap();

        let first = build_config_dir(&source(&h), &session, &["alpha".to_owned()]).unwrap();
        assert_eq!(names(&first.join("skills")), ["beta", "gamma"]);
        let second = build_config_dir(&source(&h), &session, &["gamma".to_owned(), "pdf".to_owned()]).unwrap();
        assert_eq!(first, second);
        assert_eq!(names(&second.join("skills")), ["alpha", "beta"]);
        assert_eq!(names(&second.join(P1_SKILLS)), ["xlsx"]);
        assert_eq!(names(&session), [".claude-config", "AGENTS.md"]);

        // A skill added later shows up in the next build.
        add_skill(&h.root.join("skills"), "delta");
        let third = build_config_dir(&source(&h), &session, &[]).unwrap();
        assert_eq!(names(&third.join("skills")), ["alpha", "beta", "delta", "gamma"]);
        assert_eq!(names(&session), [".claude-config", "AGENTS.md"]);
    }

    #[test]
    fn what_claude_wrote_survives_a_rebuild_and_planted_links_do_not() {
        let tmp = tempfile::tempdir().unwrap();
        // A user whose own config has no projects/ yet.
        let src = SkillSource::from_env(&tmp.path().join("nobody"), None);
        let session = tmp.path().join("session");
        let first = build_config_dir(&src, &session, &[]).unwrap();
        fs::create_dir_all(first.join("projects/-work-x")).unwrap();
        fs::write(first.join("projects/-work-x/abc.jsonl"), "{}\n").unwrap();
        fs::write(first.join(".claude.json"), "{}").unwrap();
        symlink(tmp.path(), first.join("planted")).unwrap();
        let second = build_config_dir(&src, &session, &[]).unwrap();
        assert_eq!(
            fs::read_to_string(second.join("projects/-work-x/abc.jsonl")).unwrap(),
            "{}\n"
        );
        assert!(second.join(".claude.json").is_file());
        assert!(
            fs::symlink_metadata(second.join("planted")).is_err(),
            "a planted link is dropped"
        );
    }

    #[test]
    fn a_config_dir_the_child_swapped_for_a_symlink_is_replaced() {
        let h = fake_home();
        let before = snapshot(&h.root);
        let session = h.home.join("sessions/s3");
        build_config_dir(&source(&h), &session, &[]).unwrap();
        // The child points the private config dir at the user's real one.
        fs::remove_dir_all(session.join(CONFIG_DIR_NAME)).unwrap();
        symlink(&h.root, session.join(CONFIG_DIR_NAME)).unwrap();
        let built = build_config_dir(&source(&h), &session, &["alpha".to_owned()]).unwrap();
        assert!(fs::symlink_metadata(&built).unwrap().is_dir());
        assert_eq!(names(&built.join("skills")), ["beta", "gamma"]);
        assert_eq!(snapshot(&h.root), before, "the user's config is untouched");
    }

    #[test]
    fn missing_source_gives_an_empty_config_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let src = SkillSource::from_env(&tmp.path().join("nobody"), None);
        let built = build_config_dir(&src, &tmp.path().join("session"), &["x".to_owned()]).unwrap();
        assert!(built.is_dir());
        assert!(names(&built).is_empty());
        assert!(!tmp.path().join("nobody").exists());
    }

    #[test]
    fn refuses_to_build_inside_the_source() {
        let h = fake_home();
        let before = snapshot(&h.root);
        let err = build_config_dir(&source(&h), &h.root.join("projects/x"), &[]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(snapshot(&h.root), before);
    }

    #[test]
    fn claude_config_dir_replaces_home_dot_claude() {
        let h = fake_home();
        let custom = h.home.join("work-claude");
        add_skill(&custom.join("skills"), "only-here");
        let src = SkillSource::from_env(&h.home, Some(custom.as_os_str()));
        assert_eq!(src.root, custom);
        assert_eq!(ids(&scan(&src)), [(None, "only-here")]);
        assert_eq!(SkillSource::from_env(&h.home, Some(OsStr::new(""))).root, h.root);
        assert_eq!(SkillSource::from_env(&h.home, None).root, h.root);

        let built = build_config_dir(&src, &h.home.join("sessions/s3"), &[]).unwrap();
        assert_eq!(names(&built), ["skills"]);
        assert_eq!(
            fs::read_link(built.join("skills/only-here")).unwrap(),
            custom.join("skills/only-here")
        );
    }

    #[test]
    fn fingerprint_changes_when_a_skill_is_added() {
        let h = fake_home();
        let first = fingerprint(&scan(&source(&h)));
        assert_eq!(first, fingerprint(&scan(&source(&h))));
        let mut reversed = scan(&source(&h));
        reversed.reverse();
        assert_eq!(first, fingerprint(&reversed));
        add_skill(&h.root.join("plugins/cache/m/p2/1.0.0/skills"), "pptx");
        let second = fingerprint(&scan(&source(&h)));
        assert_ne!(first, second);
        write(&h.root.join("skills/alpha/SKILL.md"), &skill_md("alpha", "Changed"));
        assert_ne!(second, fingerprint(&scan(&source(&h))));
    }

    #[test]
    fn blocklist_names_ids_or_plugin_ids() {
        let skill = |plugin: Option<&str>| FoundSkill {
            id: "pdf".into(),
            name: "pdf".into(),
            description: String::new(),
            plugin: plugin.map(str::to_owned),
            dir: PathBuf::from("/x/pdf"),
            plugin_skills_dir: None,
        };
        let list = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(is_blocked(&skill(None), &list(&["pdf"])));
        assert!(is_blocked(&skill(Some("p1")), &list(&["pdf"])));
        assert!(is_blocked(&skill(Some("p1")), &list(&["p1:pdf"])));
        assert!(!is_blocked(&skill(Some("p2")), &list(&["p1:pdf"])));
        assert!(!is_blocked(&skill(None), &list(&["p1:pdf"])));
        assert!(!is_blocked(&skill(Some("p1")), &list(&["p1:", ":pdf", "p1pdf", "pd"])));
    }

    #[test]
    fn plugin_names_come_from_plugin_json_or_folders() {
        let tmp = tempfile::tempdir().unwrap();
        let plugins = tmp.path().join(".claude/plugins");
        add_skill(&plugins.join("solo/skills"), "a");
        add_skill(&plugins.join("cache/m/tool/v2.1/skills"), "b");
        add_skill(&plugins.join("cache/m/hashy/0123abcdef99/skills"), "c");
        let named = plugins.join("cache/m/folder-name/1.0.0");
        write(&named.join(".claude-plugin/plugin.json"), r#"{"name":"real-name"}"#);
        add_skill(&named.join("skills"), "d");
        let bad = plugins.join("cache/m/bad-json/1.0.0");
        write(&bad.join(".claude-plugin/plugin.json"), r#"{"name":"../evil"}"#);
        add_skill(&bad.join("skills"), "e");
        let deep = plugins.join("1/2/3/4/5/6/7/8/9");
        add_skill(&deep.join("skills"), "too-deep");
        let skills = scan(&SkillSource::from_env(tmp.path(), None));
        assert_eq!(
            ids(&skills),
            [
                (Some("bad-json"), "e"),
                (Some("hashy"), "c"),
                (Some("real-name"), "d"),
                (Some("solo"), "a"),
                (Some("tool"), "b"),
            ]
        );
    }

    #[test]
    fn symlinks_inside_a_skills_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let skills = tmp.path().join(".claude/skills");
        add_skill(&skills, "real");
        symlink(skills.join("real"), skills.join("alias")).unwrap();
        symlink(&skills, skills.join("loop")).unwrap();
        symlink(tmp.path().join("nowhere"), skills.join("dangling")).unwrap();
        add_skill(&skills, "linked-md");
        let secret = tmp.path().join("secret.md");
        write(&secret, &skill_md("secret", "outside"));
        fs::remove_file(skills.join("linked-md/SKILL.md")).unwrap();
        symlink(&secret, skills.join("linked-md/SKILL.md")).unwrap();
        let found = scan(&SkillSource::from_env(tmp.path(), None));
        assert_eq!(ids(&found), [(None, "alias"), (None, "real")]);
    }

    #[test]
    fn front_matter_parsing() {
        let fm = FrontMatter::parse("---\nname: \"Quoted\"\ndescription: >\n  Folded\n  text\n---\nbody");
        assert_eq!(fm.name.as_deref(), Some("Quoted"));
        assert_eq!(fm.description.as_deref(), Some("Folded text"));
        // Not valid YAML (a second `: `): read leniently.
        let fm = FrontMatter::parse("\u{feff}---\r\nname: x\r\ndescription: Use when: things\r\n---\r\n");
        assert_eq!(fm.name.as_deref(), Some("x"));
        assert_eq!(fm.description.as_deref(), Some("Use when: things"));
        assert_eq!(FrontMatter::parse("# no front matter\n"), FrontMatter::default());
        assert_eq!(FrontMatter::parse("---\nname: never closed\n"), FrontMatter::default());
        let long = format!("---\ndescription: {}\n---\n", "d".repeat(5000));
        assert_eq!(
            FrontMatter::parse(&long).description.unwrap().len(),
            MAX_DESCRIPTION_CHARS
        );
        // Control characters (YAML escapes can make any) never reach the
        // manifest: the control plane would refuse it.
        let fm = FrontMatter::parse("---\nname: \"a\\tb\\0c\"\ndescription: \"x\\e[2Jy\"\n---\n");
        assert_eq!(fm.name.as_deref(), Some("a b c"));
        assert_eq!(fm.description.as_deref(), Some("x [2Jy"));
    }
}
