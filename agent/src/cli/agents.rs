//! `oma-agent agents`: lists the ACP agents found on this machine and how each is launched.

use oma_agent::paths::Paths;

use super::detected::detect_agents;

pub(crate) fn agents(paths: &Paths) -> anyhow::Result<i32> {
    let report = detect_agents(paths)?;
    if report.agents.is_empty() {
        println!(
            "no ACP agent found on PATH or in {}",
            paths.agents_config_file().display()
        );
    }
    for agent in &report.agents {
        let mut line = format!("{:<10} {}", agent.id, agent.command.display());
        for arg in &agent.args {
            line.push(' ');
            line.push_str(arg);
        }
        match &agent.package {
            Some(package) => println!("{line}    ({:?}, {package})", agent.source),
            None => println!("{line}    ({:?})", agent.source),
        }
        for problem in &agent.problems {
            println!("           problem: {problem}");
        }
    }
    for missing in &report.missing {
        println!("missing    {missing}");
    }
    for disabled in &report.disabled {
        println!("disabled   {disabled}");
    }
    Ok(0)
}
