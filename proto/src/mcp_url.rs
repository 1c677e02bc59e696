//! The MCP URL allow-list rule, shared by the machine (which enforces it on
//! every session start) and the control plane (which refuses an agent early
//! when its runtime's reported allow-list does not cover a URL).
//!
//! An entry is `scheme://host[:port][/path]`. A URL matches it when the
//! scheme, host and port are equal (after the WHATWG parsing of the `url`
//! crate: lowercase host, IDNA, default ports, `.`/`..` segments resolved)
//! and the URL's path is the entry's path or continues it after a `/`. A URL
//! or entry with user info (`user@host`) is refused outright: it is how
//! `https://allowed.example@evil.example/` hides its real host from a reader.
//! A path holding an encoded `/`, `\` or `.` is refused too: servers differ
//! in how they decode them, so `/mcp/..%2fadmin` could leave the prefix.

use std::fmt;

use url::{Host, Url};

/// Longest URL accepted, in bytes (as in the agent spec).
pub const MAX_URL_BYTES: usize = 2048;

/// Why a URL or allow-list entry is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UrlError(String);

/// An MCP URL as the machine will call it: http or https, with a host, no
/// user info, no ambiguous encoded separators.
pub fn parse_mcp_url(text: &str) -> Result<Url, UrlError> {
    if text.len() > MAX_URL_BYTES {
        return Err(UrlError(format!("is longer than {MAX_URL_BYTES} bytes")));
    }
    let url = Url::parse(text).map_err(|e| UrlError(format!("{text:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlError(format!("{text:?} must be an http:// or https:// URL")));
    }
    if url.host().is_none() {
        return Err(UrlError(format!("{text:?} has no host")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError(format!(
            "{text:?} carries user info (`user@host`): refused, it hides the real host"
        )));
    }
    let lower = url.path().to_ascii_lowercase();
    if ["%2f", "%5c", "%2e"].iter().any(|encoded| lower.contains(encoded)) {
        return Err(UrlError(format!(
            "{text:?} has an encoded '/', '\\' or '.' in its path: refused, servers decode them differently"
        )));
    }
    Ok(url)
}

/// One allow-list entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedUrl {
    /// The entry as written (for messages and the manifest).
    pub text: String,
    scheme: String,
    host: Host<String>,
    port: Option<u16>,
    /// The path without its trailing `/`; empty allows every path.
    path: String,
}

impl AllowedUrl {
    /// Parses an entry: `scheme://host[:port][/path]`, no user info, query
    /// or fragment.
    pub fn parse(text: &str) -> Result<AllowedUrl, UrlError> {
        let url = parse_mcp_url(text)?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(UrlError(format!(
                "{text:?} has a query or fragment: an entry is scheme://host[:port][/path]"
            )));
        }
        Ok(AllowedUrl {
            text: text.to_owned(),
            scheme: url.scheme().to_owned(),
            host: url.host().expect("checked by parse_mcp_url").to_owned(),
            port: url.port_or_known_default(),
            path: url.path().trim_end_matches('/').to_owned(),
        })
    }

    /// Whether `url` (already through [`parse_mcp_url`]) is covered.
    pub fn allows(&self, url: &Url) -> bool {
        let path = url.path();
        url.scheme() == self.scheme
            && url.host().map(|h| h.to_owned()).as_ref() == Some(&self.host)
            && url.port_or_known_default() == self.port
            && url.username().is_empty()
            && url.password().is_none()
            && (path == self.path
                || path
                    .strip_prefix(self.path.as_str())
                    .is_some_and(|rest| rest.starts_with('/')))
    }
}

impl fmt::Display for AllowedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Checks `text` against `allow_list`: `Ok` with the parsed URL when an
/// entry covers it, else why not.
pub fn check_allowed(text: &str, allow_list: &[AllowedUrl]) -> Result<Url, UrlError> {
    let url = parse_mcp_url(text)?;
    if allow_list.iter().any(|entry| entry.allows(&url)) {
        return Ok(url);
    }
    Err(UrlError(if allow_list.is_empty() {
        format!("{text:?} is not allowed: the allow-list is empty (no HTTP/SSE MCP server is allowed)")
    } else {
        format!(
            "{text:?} matches no allow-list entry (same scheme, host and port, path under the entry's): {}",
            allow_list
                .iter()
                .map(|e| e.text.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Vec<AllowedUrl> {
        entries.iter().map(|e| AllowedUrl::parse(e).unwrap()).collect()
    }

    #[test]
    fn scheme_host_port_and_path_prefix_must_match() {
        let allow = list(&["https://allowed.example/mcp", "http://127.0.0.1:8080/"]);
        for ok in [
            "https://allowed.example/mcp",
            "https://allowed.example/mcp/",
            "https://allowed.example/mcp/tools?x=1",
            "https://ALLOWED.example:443/mcp/a/b",
            "https://allowed.example/x/../mcp/y",
            "http://127.0.0.1:8080/anything",
            "http://127.0.0.1:8080",
        ] {
            assert!(check_allowed(ok, &allow).is_ok(), "{ok} should be allowed");
        }
        for bad in [
            "http://allowed.example/mcp",           // scheme
            "https://allowed.example:8443/mcp",     // port
            "https://allowed.example/mcpx",         // not a segment boundary
            "https://allowed.example/mc",           // shorter
            "https://allowed.example/",             // above the prefix
            "https://allowed.example/mcp/../admin", // resolved before matching
            "https://allowed.example.evil.example/mcp",
            "https://evil.example/mcp",
            "https://allowed.example./mcp", // trailing dot is another name
            "http://127.0.0.1:8081/",
            "http://127.0.0.2:8080/",
            "http://localhost:8080/",
        ] {
            assert!(check_allowed(bad, &allow).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn hostile_shapes_are_refused() {
        let allow = list(&["https://allowed.example/mcp"]);
        for bad in [
            "https://allowed.example@evil.example/",
            "https://user:pw@allowed.example/mcp",
            "https://allowed.example@evil.example/mcp",
            "https://allowed.example/mcp/..%2fadmin",
            "https://allowed.example/mcp/%2E%2E/admin",
            "https://allowed.example/mcp/a%5c..%5c..%5cb",
            "https://allowed.example/mcp%2f../admin",
            "file:///etc/passwd",
            "ftp://allowed.example/",
            "javascript:alert(1)",
            "not a url",
            "",
        ] {
            let err = check_allowed(bad, &allow).unwrap_err();
            assert!(!err.to_string().is_empty(), "{bad}");
        }
        // Encoded dots are resolved like plain ones, before matching.
        assert!(check_allowed("https://allowed.example/mcp/%2e%2e/mcp/x", &allow).is_ok());
        let long = format!("https://allowed.example/mcp/{}", "a".repeat(MAX_URL_BYTES));
        assert!(check_allowed(&long, &allow).is_err());
        assert!(
            check_allowed("https://allowed.example@evil.example/", &allow)
                .unwrap_err()
                .to_string()
                .contains("user info")
        );
    }

    #[test]
    fn an_empty_list_allows_nothing() {
        let err = check_allowed("https://mcp.example/", &[]).unwrap_err();
        assert!(err.to_string().contains("allow-list is empty"), "{err}");
    }

    #[test]
    fn entries_are_checked() {
        for bad in [
            "https://a.example/?q=1",
            "https://a.example/#f",
            "https://u@a.example/",
            "mcp.example",
            "ws://a.example/",
        ] {
            assert!(AllowedUrl::parse(bad).is_err(), "{bad}");
        }
        // A trailing slash on the entry does not change what it covers.
        let with = list(&["https://a.example/api/"]);
        let without = list(&["https://a.example/api"]);
        for url in [
            "https://a.example/api",
            "https://a.example/api/x",
            "https://a.example/apix",
        ] {
            assert_eq!(
                check_allowed(url, &with).is_ok(),
                check_allowed(url, &without).is_ok(),
                "{url}"
            );
        }
    }
}
