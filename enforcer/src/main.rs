use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use enforcer::{agent, cli, commands, config, config::flags::LogFormat};
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Colour only for a person at a terminal: not in journald, files or pipes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Run(mut args) => {
            init_logging(config::log_format(cli.log_format, args.config.as_deref()), "info");
            args.log_format = cli.log_format;
            agent::run(*args).await
        }
        cli::Command::Sockets(args) => {
            init_logging(cli.log_format.unwrap_or_default(), "warn");
            commands::sockets::run(args)
        }
        cli::Command::Status(args) => {
            init_logging(cli.log_format.unwrap_or_default(), "warn");
            commands::status::run(args)
        }
        cli::Command::Kills(args) => {
            init_logging(cli.log_format.unwrap_or_default(), "warn");
            commands::kills::run(args).await
        }
        cli::Command::Top(args) => {
            init_logging(cli.log_format.unwrap_or_default(), "warn");
            commands::top::run(args).await
        }
        cli::Command::CheckConfig { file } => {
            init_logging(cli.log_format.unwrap_or_default(), "warn");
            config::check_config(&file).map(|_| ())
        }
        cli::Command::Completions { shell } => {
            clap_complete::generate(shell, &mut cli::Cli::command(), "enforcer", &mut std::io::stdout());
            Ok(())
        }
        cli::Command::MountBpffs => {
            init_logging(cli.log_format.unwrap_or_default(), "info");
            // ensure_bpffs takes a pin directory and makes sure its parent is a bpffs.
            enforcer::host::sys::ensure_bpffs(&std::path::Path::new(enforcer::host::sys::BPFFS_MOUNT).join("enforcer"))
        }
        cli::Command::Man { dir: None } => cli::man::render(cli::Cli::command(), &mut std::io::stdout())
            .map_err(|e| anyhow::anyhow!("writing the man page: {e}")),
        cli::Command::Man { dir: Some(dir) } => cli::man::write_all(cli::Cli::command(), &dir)
            .map_err(|e| anyhow::anyhow!("writing the man pages into {}: {e}", dir.display())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // Bad values exit 2, as clap does for bad flags.
            if e.downcast_ref::<config::UsageError>().is_some() { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}
