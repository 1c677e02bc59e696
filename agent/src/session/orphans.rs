//! Reaping what a daemon killed with SIGKILL left behind: the ACP child
//! groups its sessions' state files still name.

use super::state::ChildRecord;

/// Kills a child group an earlier daemon left running (it was SIGKILLed and
/// could not stop it), if that pid still runs the same command: a reused
/// pid of an unrelated process is left alone.
pub(super) fn reap_orphan(record: &ChildRecord) {
    let cmdline = match std::fs::read(format!("/proc/{}/cmdline", record.pgid)) {
        Ok(c) => c,
        Err(_) => return, // gone (or no /proc: nothing to check against)
    };
    let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let command = record.command.as_os_str().as_encoded_bytes();
    if argv.iter().take(2).any(|arg| *arg == command) {
        tracing::warn!(pgid = record.pgid, command = %record.command.display(), "killing an ACP agent left by an earlier daemon");
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(record.pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
