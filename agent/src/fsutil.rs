//! Every file and directory the daemon writes goes through here, so none of
//! them trusts what is already on disk.
//!
//! A session directory is the ACP child's cwd: the child (or anything it
//! runs) can put a symlink at any name in it, e.g. `AGENTS.md` → `~/.bashrc`
//! or `.claude` → `~/.claude`, and the daemon prepares that directory again
//! on every child start. So:
//!
//! * a file is never opened through an existing name: it is created fresh
//!   (`O_CREAT|O_EXCL`, plus `O_NOFOLLOW`: a planted link makes the open fail)
//!   or written to a fresh temporary sibling and renamed over the target
//!   ([`write_atomic`]); `rename(2)` replaces a symlink itself, never what it
//!   points to;
//! * a tree (skills) is built in a fresh temporary directory and swapped in
//!   whole ([`replace`]), the old entry moved aside and removed without
//!   following links ([`remove_any`]);
//! * a directory on the way is checked with `symlink_metadata`, and a planted
//!   link or file there is replaced by a real directory ([`real_dir`]).
//!
//! Files are created 0600 and directories 0700 (the data dir holds start
//! bundles, transcripts and logs) by passing the mode to each call: the
//! process umask is left alone, because children inherit it and would then
//! create private files in the user's repositories.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Files holding anything of the daemon's: state, outbox, logs, credentials,
/// and what it writes into a session directory.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// The daemon's directories.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Whether [`write_atomic`] waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync before the rename: the new content survives a power cut
    /// (credentials, a compacted log).
    Synced,
    /// No fsync: survives a crash of the process (the page cache), not of
    /// the machine. For small files rewritten often, whose loss costs only a
    /// resend (state files, ack cursors).
    Cached,
}

/// Creates `dir` and any missing parents with mode 0700 (existing
/// directories keep their mode).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(PRIVATE_DIR_MODE).create(dir)
}

/// Makes `path` a real directory: one already there is kept; a symlink or a
/// file someone put there is removed (the link itself, never its target) and
/// a fresh 0700 directory takes its place. Missing parents are created.
pub fn real_dir(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => {
            tracing::warn!(path = %path.display(), "replacing a symlink or file where a directory belongs");
            fs::remove_file(path)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                create_private_dir(parent)?;
            }
        }
        Err(e) => return Err(e),
    }
    DirBuilder::new().mode(PRIVATE_DIR_MODE).create(path)
}

/// Sets `path`'s permission bits to `mode` if it grants more than `mode`.
/// A symlink is left alone (chmod would change its target). Returns whether
/// the mode changed.
pub fn restrict(path: &Path, mode: u32) -> io::Result<bool> {
    let meta = fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() || meta.permissions().mode() & 0o777 & !mode == 0 {
        return Ok(false);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(true)
}

/// Writes `contents` to `path` atomically: a fresh temporary file with
/// `mode` beside it, then a rename over `path`. A reader sees the old file
/// or the new one, never a partial write; a symlink at `path` is replaced,
/// never written through. The parent directory must exist.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32, durability: Durability) -> io::Result<()> {
    write_atomic_with(path, mode, durability, |file| file.write_all(contents))
}

/// [`write_atomic`] with the content written by `fill` (for content too
/// large to build in memory first).
pub fn write_atomic_with(
    path: &Path,
    mode: u32,
    durability: Durability,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = temp_sibling(path)?;
    let result = (|| {
        let mut file = create_new(&tmp, mode)?;
        fill(&mut file)?;
        if durability == Durability::Synced {
            file.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `path` with `contents` and `mode` only if it does not exist yet.
/// Returns `false` (and leaves the existing entry alone) when it does. The
/// file appears complete or not at all, even with concurrent callers.
pub fn create_atomic_if_absent(path: &Path, contents: &[u8], mode: u32) -> io::Result<bool> {
    let tmp = temp_sibling(path)?;
    let result = (|| {
        let mut file = create_new(&tmp, mode)?;
        file.write_all(contents)?;
        file.sync_all()?;
        // A hard link fails if the target exists (a symlink included): an
        // atomic "create if absent" that never exposes a half-written file.
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(err) => Err(err),
        }
    })();
    let _ = fs::remove_file(&tmp);
    result
}

/// Opens `path` for appending, creating it with `mode` if missing. Refuses
/// a symlink at `path`.
pub fn open_append(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// Writes a new file at `root/relative`, creating the folders on the way
/// (0700). Meant for a tree being built in a fresh directory: nothing may
/// exist at the file's name yet, and every folder on the way must be a real
/// directory (a symlink there is refused, not followed). `relative` must be
/// a plain relative path (no `..`, no root).
pub fn create_file_in(root: &Path, relative: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut path = root.to_path_buf();
    let mut components = relative.components().peekable();
    while let Some(component) = components.next() {
        let Component::Normal(name) = component else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a plain relative path", relative.display()),
            ));
        };
        path.push(name);
        if components.peek().is_none() {
            break;
        }
        match DirBuilder::new().mode(PRIVATE_DIR_MODE).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !fs::symlink_metadata(&path)?.is_dir() {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} is not a directory", path.display()),
                    ));
                }
            }
            Err(e) => return Err(e),
        }
    }
    let mut file = create_new(&path, mode)?;
    file.write_all(contents)
}

/// A fresh, empty 0700 directory in `parent`, named `<prefix><pid>-…` (see
/// [`remove_stale`]).
pub fn temp_dir(parent: &Path, prefix: &str) -> io::Result<PathBuf> {
    loop {
        let path = unique_name(parent, prefix);
        match DirBuilder::new().mode(PRIVATE_DIR_MODE).create(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Puts `tmp` at `target`, replacing whatever is there (a file, a tree, a
/// symlink: the entry itself, never what a link points to). `rename(2)`
/// cannot replace a non-empty directory, so an existing entry is first moved
/// aside under `<old_prefix><pid>-…` in `target`'s folder, then removed.
pub fn replace(tmp: &Path, target: &Path, old_prefix: &str) -> io::Result<()> {
    match fs::symlink_metadata(target) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::rename(tmp, target),
        Err(e) => Err(e),
        Ok(_) => {
            let parent = target.parent().unwrap_or(Path::new("."));
            let old = unique_name(parent, old_prefix);
            fs::rename(target, &old)?;
            if let Err(e) = fs::rename(tmp, target) {
                let _ = fs::rename(&old, target);
                return Err(e);
            }
            remove_any(&old)
        }
    }
}

/// Removes a file, symlink or directory tree; never follows a symlink.
pub fn remove_any(path: &Path) -> io::Result<()> {
    if fs::symlink_metadata(path)?.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

/// Removes what [`temp_dir`] and [`replace`] left in `parent` under any of
/// `prefixes` when an earlier process died midway. Entries of this process
/// (which may still be in use) are kept.
pub fn remove_stale(parent: &Path, prefixes: &[&str]) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    let own = format!("{}-", std::process::id());
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = prefixes.iter().find_map(|p| name.strip_prefix(p)) else {
            continue;
        };
        if !rest.starts_with(&own)
            && let Err(e) = remove_any(&entry.path())
        {
            tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a stale temporary entry");
        }
    }
}

fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

fn unique_name(parent: &Path, prefix: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    parent.join(format!("{prefix}{}-{n}-{nanos}", std::process::id()))
}

fn temp_sibling(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        )
    })?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    Ok(path.with_file_name(tmp_name))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn atomic_writes_are_private_and_leave_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("nested/a/file");
        create_private_dir(target.parent().unwrap()).unwrap();
        assert_eq!(mode(target.parent().unwrap()), 0o700);

        write_atomic(&target, b"one", PRIVATE_FILE_MODE, Durability::Synced).unwrap();
        write_atomic(&target, b"two", PRIVATE_FILE_MODE, Durability::Cached).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        assert_eq!(mode(&target), 0o600);

        let fresh = dir.path().join("nested/a/fresh");
        assert!(create_atomic_if_absent(&fresh, b"first", 0o600).unwrap());
        assert!(!create_atomic_if_absent(&fresh, b"second", 0o600).unwrap());
        assert_eq!(fs::read(&fresh).unwrap(), b"first");

        assert_eq!(names(target.parent().unwrap()), ["file", "fresh"]);
    }

    #[test]
    fn a_planted_symlink_is_replaced_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("bashrc");
        fs::write(&outside, "canary").unwrap();
        let session = dir.path().join("session");
        fs::create_dir(&session).unwrap();

        // A file name.
        symlink(&outside, session.join("AGENTS.md")).unwrap();
        write_atomic(&session.join("AGENTS.md"), b"prompt", 0o600, Durability::Cached).unwrap();
        assert!(fs::symlink_metadata(session.join("AGENTS.md")).unwrap().is_file());
        assert_eq!(fs::read_to_string(session.join("AGENTS.md")).unwrap(), "prompt");

        // Appending and creating refuse a link.
        symlink(&outside, session.join("log")).unwrap();
        assert!(open_append(&session.join("log"), 0o600).is_err());
        assert!(!create_atomic_if_absent(&session.join("log"), b"x", 0o600).unwrap());

        // A directory on the way.
        let home_claude = dir.path().join("dot-claude");
        fs::create_dir(&home_claude).unwrap();
        symlink(&home_claude, session.join(".claude")).unwrap();
        real_dir(&session.join(".claude")).unwrap();
        assert!(fs::symlink_metadata(session.join(".claude")).unwrap().is_dir());
        assert_eq!(mode(&session.join(".claude")), 0o700);

        // A whole tree swapped over a link to a directory.
        symlink(&home_claude, session.join("skills")).unwrap();
        let tmp = temp_dir(&session, ".skills.tmp-").unwrap();
        create_file_in(&tmp, Path::new("lint/bin/run.sh"), b"#!/bin/sh", 0o600).unwrap();
        replace(&tmp, &session.join("skills"), ".skills.old-").unwrap();
        assert_eq!(fs::read(session.join("skills/lint/bin/run.sh")).unwrap(), b"#!/bin/sh");

        assert_eq!(fs::read_to_string(&outside).unwrap(), "canary");
        assert!(names(&home_claude).is_empty(), "{:?}", names(&home_claude));
        assert!(fs::symlink_metadata(&outside).unwrap().is_file());
    }

    #[test]
    fn create_file_in_refuses_links_and_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        symlink(&outside, root.join("a")).unwrap();
        assert!(create_file_in(&root, Path::new("a/file"), b"x", 0o600).is_err());
        symlink(outside.join("f"), root.join("f")).unwrap();
        assert!(create_file_in(&root, Path::new("f"), b"x", 0o600).is_err());
        for bad in ["../x", "/x", "b/../../x", "./x"] {
            assert!(create_file_in(&root, Path::new(bad), b"x", 0o600).is_err(), "{bad}");
        }
        assert!(names(&outside).is_empty());
        assert!(!dir.path().join("x").exists());
    }

    #[test]
    fn restrict_tightens_but_never_follows() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, "x").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(restrict(&file, 0o600).unwrap());
        assert_eq!(mode(&file), 0o600);
        assert!(!restrict(&file, 0o600).unwrap());

        let target = dir.path().join("target");
        fs::write(&target, "x").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        symlink(&target, dir.path().join("link")).unwrap();
        assert!(!restrict(&dir.path().join("link"), 0o600).unwrap());
        assert_eq!(mode(&target), 0o644);
    }

    #[test]
    fn stale_temporaries_of_other_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(".x.tmp-1-0-0")).unwrap();
        fs::write(dir.path().join(".x.old-1-0-0"), "old").unwrap();
        let own = temp_dir(dir.path(), ".x.tmp-").unwrap();
        fs::write(dir.path().join("keep"), "").unwrap();
        remove_stale(dir.path(), &[".x.tmp-", ".x.old-"]);
        assert_eq!(names(dir.path()), [own.file_name().unwrap().to_str().unwrap(), "keep"]);
    }
}
