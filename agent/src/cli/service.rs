//! `oma-agent service`: installs, removes and shows the systemd user unit / launchd agent that runs the daemon.

use oma_agent::logging::LogFormat;
use oma_agent::paths::Paths;
use oma_agent::service_unit::{self, ServiceManager, UnitSpec};

use crate::ServiceCommand;

pub(crate) fn service(paths: &Paths, command: ServiceCommand, log_format: LogFormat) -> anyhow::Result<i32> {
    let manager = ServiceManager::current()?;
    match command {
        ServiceCommand::Install { dry_run, run } => {
            let mut args = vec!["run".to_owned()];
            args.extend(["--config-dir".to_owned(), paths.config_dir.display().to_string()]);
            args.extend(["--data-dir".to_owned(), paths.data_dir.display().to_string()]);
            if log_format == LogFormat::Json {
                args.extend(["--log-format".to_owned(), "json".to_owned()]);
            }
            args.extend(run.to_args());
            let spec = UnitSpec::for_current_exe(args)?;
            let report = service_unit::install(&spec, manager, dry_run)?;
            println!("{} unit: {}", report.manager, report.unit_path.display());
            if dry_run {
                println!("{}", report.contents);
            }
            for command in report.commands {
                println!("{}: {command}", if dry_run { "would run" } else { "ran" });
            }
            for note in report.notes {
                println!("note: {note}");
            }
        }
        ServiceCommand::Uninstall { dry_run } => {
            let report = service_unit::uninstall(manager, dry_run)?;
            println!(
                "{} unit {}: {}",
                report.manager,
                report.unit_path.display(),
                if report.removed { "removed" } else { "not present" }
            );
            for warning in report.warnings {
                println!("note: {warning}");
            }
        }
        ServiceCommand::Status => {
            let report = service_unit::status(manager)?;
            println!("{}", report.output);
            return Ok(report.exit_code.unwrap_or(1));
        }
    }
    Ok(0)
}
