//! `herald`: run a coordinator, show status, or run the demo.
use clap::Parser;
use std::process::ExitCode;

use herald_coordinator::config::{self, Cli, Command, RunConfig};
use herald_coordinator::{coordinator::Coordinator, db, demo, shutdown, status};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // One thread: the coordinator only waits on PostgreSQL, and a single-threaded runtime
    // saves a cross-thread wake-up on every round trip.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(1, format!("cannot start the runtime: {e}")),
    };
    match cli.command {
        Command::Run(args) => {
            let config = match RunConfig::from_args(&args) {
                Ok(c) => c,
                Err(e) => return fail(2, e.to_string()),
            };
            runtime.block_on(async move {
                let (trigger, stop) = shutdown::channel();
                shutdown::on_signals(trigger);
                match Coordinator::new(config, stop).run().await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(1, e.to_string()),
                }
            })
        }
        Command::Status(args) => {
            let database = match config::parse_database(&args) {
                Ok(c) => c,
                Err(e) => return fail(2, e.to_string()),
            };
            runtime.block_on(async move {
                let client = match db::connect(&database, "status").await {
                    Ok(c) => c,
                    Err(e) => return fail(1, format!("cannot connect: {e}")),
                };
                match status::print(&client).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(1, format!("cannot read herald.queue_status: {e}")),
                }
            })
        }
        Command::Demo(args) => match runtime.block_on(demo::run(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(1, e),
        },
    }
}

fn fail(code: u8, message: String) -> ExitCode {
    eprintln!("herald: {message}");
    ExitCode::from(code)
}
