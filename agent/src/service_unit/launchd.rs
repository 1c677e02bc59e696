//! The launchd agent (`~/Library/LaunchAgents/dev.oma.agent.plist`).
//!
//! Logging: launchd discards a job's stdout and stderr unless
//! `StandardOutPath`/`StandardErrorPath` are set, and the unified log
//! (`log stream --predicate 'process == "oma-agent"'`) would only show our
//! output if the daemon logged through `os_log`, which it does not (tracing
//! writes to stderr). So the plist sends both streams to
//! `~/Library/Logs/oma-agent.log`, where Console.app also finds it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{ServiceError, UnitSpec};

/// The job's label, also its name in `launchctl print gui/<uid>/<label>`.
pub const LABEL: &str = "dev.oma.agent";

/// Renders the plist for `spec`, with stdout and stderr appended to
/// `log_file`. Every string is XML-escaped. Call [`UnitSpec::validate`]
/// first (XML cannot carry most control characters).
pub fn render(spec: &UnitSpec, log_file: &Path) -> String {
    let mut out = String::new();
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(
        "<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n",
    );
    out.push_str("<!-- Written by `oma-agent service install`: run it again rather than editing this file. -->\n");
    out.push_str("<plist version=\"1.0\">\n<dict>\n");
    key_string(&mut out, "Label", LABEL);

    out.push_str("\t<key>ProgramArguments</key>\n\t<array>\n");
    let _ = writeln!(out, "\t\t<string>{}</string>", escape(&spec.exe.to_string_lossy()));
    for arg in &spec.args {
        let _ = writeln!(out, "\t\t<string>{}</string>", escape(arg));
    }
    out.push_str("\t</array>\n");

    if !spec.env.is_empty() {
        out.push_str("\t<key>EnvironmentVariables</key>\n\t<dict>\n");
        for (name, value) in &spec.env {
            let _ = writeln!(
                out,
                "\t\t<key>{}</key>\n\t\t<string>{}</string>",
                escape(name),
                escape(value)
            );
        }
        out.push_str("\t</dict>\n");
    }

    out.push_str("\t<key>RunAtLoad</key>\n\t<true/>\n");
    // Restart when it exits with an error or a signal; a clean exit stays down.
    out.push_str("\t<key>KeepAlive</key>\n\t<dict>\n\t\t<key>SuccessfulExit</key>\n\t\t<false/>\n\t</dict>\n");
    // Like systemd's RestartSec=5 (launchd's default is 10 s).
    out.push_str("\t<key>ThrottleInterval</key>\n\t<integer>5</integer>\n");
    // Time between SIGTERM and SIGKILL on stop, like TimeoutStopSec=30.
    out.push_str("\t<key>ExitTimeOut</key>\n\t<integer>30</integer>\n");
    // `Standard`, not `Background`: the coding agents it starts are real work
    // a person waits for, and Background throttles their CPU and I/O.
    key_string(&mut out, "ProcessType", "Standard");
    // Session folders, outboxes and logs are the owner's alone (0077).
    out.push_str("\t<key>Umask</key>\n\t<integer>63</integer>\n");
    let log = log_file.to_string_lossy();
    key_string(&mut out, "StandardOutPath", &log);
    key_string(&mut out, "StandardErrorPath", &log);
    out.push_str("</dict>\n</plist>\n");
    out
}

/// `~/Library/LaunchAgents/dev.oma.agent.plist`.
pub fn plist_path() -> Result<PathBuf, ServiceError> {
    let home = dirs::home_dir().ok_or(ServiceError::NoHome)?;
    Ok(home.join("Library/LaunchAgents").join(format!("{LABEL}.plist")))
}

/// `~/Library/Logs/oma-agent.log`: where the daemon's stdout and stderr go.
pub fn log_path() -> Result<PathBuf, ServiceError> {
    let home = dirs::home_dir().ok_or(ServiceError::NoHome)?;
    Ok(home.join("Library/Logs/oma-agent.log"))
}

fn key_string(out: &mut String, key: &str, value: &str) {
    let _ = writeln!(
        out,
        "\t<key>{}</key>\n\t<string>{}</string>",
        escape(key),
        escape(value)
    );
}

/// Escapes the five XML special characters.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn spec() -> UnitSpec {
        UnitSpec {
            exe: "/Users/me/bin/oma agent".into(),
            args: vec![
                "run".into(),
                "--data-dir".into(),
                "/Users/me/a&b <c>".into(),
                "100% \"q\" 'a'".into(),
            ],
            env: vec![
                ("OMA_LOG".into(), "info".into()),
                ("PATH".into(), "/opt/homebrew/bin:/usr/bin:/bin".into()),
            ],
        }
    }

    /// A loose XML check: tags balance, entities are known, and the text of
    /// every `<string>` and `<key>` element is returned unescaped, in order.
    fn check_xml(xml: &str) -> Result<Vec<String>, String> {
        let mut stack: Vec<String> = Vec::new();
        let mut texts = Vec::new();
        let mut rest = xml;
        while let Some(start) = rest.find('<') {
            let text = &rest[..start];
            if !stack.is_empty() && !text.trim().is_empty() {
                let top = stack.last().map(String::as_str);
                if !matches!(top, Some("string" | "key" | "integer")) {
                    return Err(format!("text {text:?} inside <{top:?}>"));
                }
            }
            if matches!(stack.last().map(String::as_str), Some("string" | "key")) {
                texts.push(unescape(text)?);
            }
            let after = &rest[start + 1..];
            let end = after.find('>').ok_or("unterminated tag")?;
            let tag = &after[..end];
            rest = &after[end + 1..];
            if tag.starts_with('?') || tag.starts_with('!') {
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                match stack.pop() {
                    Some(open) if open == name => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
            } else if tag.ends_with('/') {
                continue;
            } else {
                let name = tag.split_whitespace().next().ok_or("empty tag")?;
                stack.push(name.to_owned());
            }
        }
        if !stack.is_empty() || !rest.trim().is_empty() {
            return Err(format!("unclosed {stack:?}"));
        }
        Ok(texts)
    }

    fn unescape(text: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(amp) = rest.find('&') {
            out.push_str(&rest[..amp]);
            let semi = rest[amp..].find(';').ok_or_else(|| format!("bare & in {text:?}"))?;
            out.push(match &rest[amp..amp + semi + 1] {
                "&amp;" => '&',
                "&lt;" => '<',
                "&gt;" => '>',
                "&quot;" => '"',
                "&apos;" => '\'',
                other => return Err(format!("unknown entity {other}")),
            });
            rest = &rest[amp + semi + 1..];
        }
        if rest.contains('<') || rest.contains('>') {
            return Err(format!("raw angle bracket in {text:?}"));
        }
        out.push_str(rest);
        Ok(out)
    }

    #[test]
    fn render_escapes_and_keeps_every_argument() {
        let plist = render(&spec(), Path::new("/Users/me/Library/Logs/oma-agent.log"));
        assert!(
            plist.contains("<string>/Users/me/a&amp;b &lt;c&gt;</string>"),
            "{plist}"
        );
        assert!(
            plist.contains("<string>100% &quot;q&quot; &apos;a&apos;</string>"),
            "{plist}"
        );
        assert!(
            plist.contains("<key>Label</key>\n\t<string>dev.oma.agent</string>"),
            "{plist}"
        );
        assert!(plist.contains("<key>RunAtLoad</key>\n\t<true/>"), "{plist}");
        assert!(plist.contains("<key>SuccessfulExit</key>\n\t\t<false/>"), "{plist}");
        assert!(
            plist.contains("<key>ProcessType</key>\n\t<string>Standard</string>"),
            "{plist}"
        );
        assert!(
            plist.contains("<key>StandardErrorPath</key>\n\t<string>/Users/me/Library/Logs/oma-agent.log</string>")
        );

        let texts = check_xml(&plist).unwrap();
        let s = spec();
        let program: Vec<String> = std::iter::once(s.exe.to_string_lossy().into_owned())
            .chain(s.args)
            .collect();
        let at = texts.iter().position(|t| t == "ProgramArguments").unwrap();
        assert_eq!(texts[at + 1..at + 1 + program.len()], program[..]);
        let env_at = texts.iter().position(|t| t == "EnvironmentVariables").unwrap();
        assert_eq!(
            texts[env_at + 1..env_at + 5],
            ["OMA_LOG", "info", "PATH", "/opt/homebrew/bin:/usr/bin:/bin"]
        );
    }

    #[test]
    fn no_environment_means_no_dict() {
        let mut s = spec();
        s.env.clear();
        let plist = render(&s, Path::new("/l.log"));
        assert!(!plist.contains("EnvironmentVariables"));
        check_xml(&plist).unwrap();
    }

    #[test]
    fn the_checker_catches_broken_xml() {
        assert!(check_xml("<a><b></a></b>").is_err());
        assert!(check_xml("<plist><string>a & b</string></plist>").is_err());
        assert!(check_xml("<plist><string>a</string>").is_err());
    }

    #[test]
    fn plutil_lints_the_plist_when_present() {
        let has_plutil =
            std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("plutil").is_file()));
        if !has_plutil {
            eprintln!("notice: plutil not on PATH: skipping plist lint (the XML check above still ran)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.oma.agent.plist");
        std::fs::write(&path, render(&spec(), Path::new("/tmp/oma-agent.log"))).unwrap();
        let out = Command::new("plutil").arg("-lint").arg(&path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    }
}
