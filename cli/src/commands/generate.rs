//! `omactl completion SHELL` and `omactl man DIR`: shell completions and
//! man pages, generated from the same clap definitions that parse the
//! command line, so they never fall behind it.

use std::path::Path;

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;

use crate::Cli;

/// Writes the completion script for `shell` to stdout.
pub fn completion(shell: clap_complete::Shell) -> Result<()> {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "omactl", &mut std::io::stdout());
    Ok(())
}

/// Writes `omactl.1` and one page per subcommand (`omactl-sessions-create.1`,
/// …) into `dir`, and prints their paths.
pub fn man(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write the pages into {}", dir.display()))?;
    let mut pages: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "1"))
        .collect();
    pages.sort();
    for path in pages {
        println!("{}", path.display());
    }
    Ok(())
}
