//! The agent's `fs/read_text_file` and `fs/write_text_file` requests,
//! confined to the session directory.

use std::io;
use std::path::{Component, Path, PathBuf};

use agent_client_protocol::v1::schema::{
    ReadTextFileRequest, ReadTextFileResponse, WriteTextFileRequest, WriteTextFileResponse,
};

/// The largest file `fs/read_text_file` reads.
const MAX_READ_FILE_BYTES: u64 = 64 * 1024 * 1024;

fn fs_error(message: impl Into<String>) -> agent_client_protocol::Error {
    agent_client_protocol::Error::new(-32602, message.into())
}

fn io_fs_error(path: &Path, err: &io::Error) -> agent_client_protocol::Error {
    let code = if err.kind() == io::ErrorKind::NotFound {
        -32002
    } else {
        -32603
    };
    agent_client_protocol::Error::new(code, format!("{}: {err}", path.display()))
}

/// Resolves a path an agent asked for: absolute, without `..`, inside the
/// session directory `cwd` (canonical) also after resolving symlinks. For a
/// write, missing parent directories inside `cwd` are created.
async fn confine(cwd: &Path, requested: &Path, for_write: bool) -> Result<PathBuf, agent_client_protocol::Error> {
    if !requested.is_absolute() {
        return Err(fs_error(format!("{}: the path must be absolute", requested.display())));
    }
    if requested.components().any(|part| matches!(part, Component::ParentDir)) {
        return Err(fs_error(format!(
            "{}: the path must not contain `..`",
            requested.display()
        )));
    }
    let outside = || {
        fs_error(format!(
            "{}: the path is outside the session directory {}",
            requested.display(),
            cwd.display()
        ))
    };
    if !requested.starts_with(cwd) {
        return Err(outside());
    }
    match tokio::fs::canonicalize(requested).await {
        Ok(real) if real.starts_with(cwd) => Ok(real),
        Ok(_) => Err(outside()),
        Err(err) if err.kind() == io::ErrorKind::NotFound && for_write => {
            if tokio::fs::symlink_metadata(requested).await.is_ok() {
                return Err(fs_error(format!(
                    "{}: the path is a dangling symlink",
                    requested.display()
                )));
            }
            let (Some(parent), Some(name)) = (requested.parent(), requested.file_name()) else {
                return Err(outside());
            };
            // The nearest existing ancestor must be inside before anything is created.
            let mut ancestor = parent;
            let real_ancestor = loop {
                match tokio::fs::canonicalize(ancestor).await {
                    Ok(real) => break real,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => match ancestor.parent() {
                        Some(up) => ancestor = up,
                        None => return Err(io_fs_error(requested, &err)),
                    },
                    Err(err) => return Err(io_fs_error(requested, &err)),
                }
            };
            if !real_ancestor.starts_with(cwd) {
                return Err(outside());
            }
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|err| io_fs_error(parent, &err))?;
            let real_parent = tokio::fs::canonicalize(parent)
                .await
                .map_err(|err| io_fs_error(parent, &err))?;
            if !real_parent.starts_with(cwd) {
                return Err(outside());
            }
            Ok(real_parent.join(name))
        }
        Err(err) => Err(io_fs_error(requested, &err)),
    }
}

pub(super) async fn read_text_file(
    cwd: &Path,
    request: &ReadTextFileRequest,
) -> Result<ReadTextFileResponse, agent_client_protocol::Error> {
    let path = confine(cwd, &request.path, false).await?;
    let metadata = tokio::fs::metadata(&path)
        .await
        .map_err(|err| io_fs_error(&path, &err))?;
    if !metadata.is_file() {
        return Err(fs_error(format!("{}: not a file", request.path.display())));
    }
    if metadata.len() > MAX_READ_FILE_BYTES {
        return Err(fs_error(format!(
            "{}: the file is larger than {MAX_READ_FILE_BYTES} bytes",
            request.path.display()
        )));
    }
    let bytes = tokio::fs::read(&path).await.map_err(|err| io_fs_error(&path, &err))?;
    let text = String::from_utf8(bytes).map_err(|_| fs_error(format!("{}: not UTF-8 text", request.path.display())))?;
    if request.line.is_none() && request.limit.is_none() {
        return Ok(ReadTextFileResponse::new(text));
    }
    let skip = request.line.map_or(0, |line| line.saturating_sub(1)) as usize;
    let take = request.limit.map_or(usize::MAX, |limit| limit as usize);
    let selected: String = text.split_inclusive('\n').skip(skip).take(take).collect();
    Ok(ReadTextFileResponse::new(selected))
}

pub(super) async fn write_text_file(
    cwd: &Path,
    request: &WriteTextFileRequest,
) -> Result<WriteTextFileResponse, agent_client_protocol::Error> {
    let path = confine(cwd, &request.path, true).await?;
    tokio::fs::write(&path, request.content.as_bytes())
        .await
        .map_err(|err| io_fs_error(&path, &err))?;
    Ok(WriteTextFileResponse::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fs_paths_are_confined_to_the_session_dir() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().canonicalize().unwrap();
        std::fs::write(cwd.join("notes.txt"), "a\nb\nc\nd\n").unwrap();
        std::fs::write(outside.path().join("secret.txt"), "secret").unwrap();
        std::os::unix::fs::symlink(outside.path(), cwd.join("escape")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("nothing"), cwd.join("dangling")).unwrap();

        let read = |path: PathBuf, line: Option<u32>, limit: Option<u32>| {
            let mut request = ReadTextFileRequest::new("s", path);
            request.line = line;
            request.limit = limit;
            request
        };
        let cwd_ref = &cwd;
        let content = |request: ReadTextFileRequest| async move {
            read_text_file(cwd_ref, &request).await.map(|response| response.content)
        };
        assert_eq!(
            content(read(cwd.join("notes.txt"), None, None)).await.unwrap(),
            "a\nb\nc\nd\n"
        );
        assert_eq!(
            content(read(cwd.join("notes.txt"), Some(2), Some(2))).await.unwrap(),
            "b\nc\n"
        );
        assert_eq!(
            content(read(cwd.join("./notes.txt"), Some(4), None)).await.unwrap(),
            "d\n"
        );
        for path in [
            PathBuf::from("notes.txt"),
            cwd.join("../notes.txt"),
            cwd.join("escape/secret.txt"),
            outside.path().join("secret.txt"),
            cwd.join("missing.txt"),
            cwd.clone(),
        ] {
            assert!(
                content(read(path.clone(), None, None)).await.is_err(),
                "{}",
                path.display()
            );
        }

        let write = |path: PathBuf| WriteTextFileRequest::new("s", path, "written");
        write_text_file(&cwd, &write(cwd.join("new/deeper/file.txt")))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(cwd.join("new/deeper/file.txt")).unwrap(),
            "written"
        );
        write_text_file(&cwd, &write(cwd.join("notes.txt"))).await.unwrap();
        assert_eq!(std::fs::read_to_string(cwd.join("notes.txt")).unwrap(), "written");
        for path in [
            cwd.join("escape/new.txt"),
            cwd.join("escape/sub/new.txt"),
            cwd.join("dangling"),
            cwd.join("a/../../x.txt"),
            outside.path().join("x.txt"),
            PathBuf::from("relative.txt"),
        ] {
            assert!(
                write_text_file(&cwd, &write(path.clone())).await.is_err(),
                "{}",
                path.display()
            );
        }
        assert!(!outside.path().join("new.txt").exists());
        assert!(!outside.path().join("sub").exists());
        assert!(!outside.path().join("nothing").exists());
    }
}
