//! A private OpenSSH server on a random loopback port, for the `ssh
//! localhost` baseline: temp host key, a temp client key authorized for the
//! current user, nothing from the system's sshd configuration.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tempfile::TempDir;

use super::procs::free_port;

pub struct Sshd {
    child: Child,
    port: u16,
    dir: TempDir,
}

/// Where `sshd` is, if installed (it is not on PATH for non-root users).
fn sshd_path() -> Option<PathBuf> {
    ["/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl Sshd {
    /// Starts the server, or says why it cannot (no sshd, no ssh, …).
    pub fn start() -> anyhow::Result<Sshd> {
        let sshd = sshd_path().context("no sshd")?;
        let keygen = |path: &Path| -> anyhow::Result<()> {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .context("no ssh-keygen")?;
            anyhow::ensure!(status.success(), "ssh-keygen failed");
            Ok(())
        };
        let dir = tempfile::tempdir()?;
        let host_key = dir.path().join("host_key");
        let client_key = dir.path().join("client_key");
        keygen(&host_key)?;
        keygen(&client_key)?;
        std::fs::copy(dir.path().join("client_key.pub"), dir.path().join("authorized_keys"))?;
        // sshd refuses to start without its privilege separation folder.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = free_port()?;
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {auth}\nPidFile {pid}\n\
             UsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nLogLevel ERROR\n",
            host = host_key.display(),
            auth = dir.path().join("authorized_keys").display(),
            pid = dir.path().join("sshd.pid").display(),
        );
        let config_path = dir.path().join("sshd_config");
        std::fs::write(&config_path, config)?;
        let child = Command::new(&sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("sshd.log"))?)
            .spawn()
            .context("cannot start sshd")?;
        let mut sshd = Sshd { child, port, dir };
        // Ready when a login runs a command.
        let start = Instant::now();
        loop {
            if let Some(status) = sshd.child.try_wait()? {
                let log = std::fs::read_to_string(sshd.dir.path().join("sshd.log")).unwrap_or_default();
                bail!("sshd exited ({status}): {}", log.trim());
            }
            let ok = sshd
                .command("true")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(sshd);
            }
            if start.elapsed() > Duration::from_secs(15) {
                bail!("cannot log in to the private sshd within 15s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ssh -p PORT … 127.0.0.1 REMOTE_COMMAND`.
    pub fn command(&self, remote_command: &str) -> Command {
        let mut command = Command::new("ssh");
        command
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-i")
            .arg(self.dir.path().join("client_key"))
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
                "-T",
                "127.0.0.1",
            ])
            .arg(remote_command);
        command
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
