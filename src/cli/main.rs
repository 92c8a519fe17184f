//! `vlm-perception`: the command-line front end over the `vlm_perception` library.
//! Exit codes: 0 success, 1 error (printed with its causes), 2 bad usage.

mod args;
mod ask;
mod caption;
mod classify;
mod detect;
mod segment;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let kept = vlm_perception::pipeline::host_memory::keep_freed_memory();
    tracing::debug!(kept, "heap: freed memory kept for reuse");
    let result = match &cli.command {
        Command::Detect(a) => detect::run(a),
        Command::Segment(a) => segment::run(a),
        Command::Ask(a) => ask::run(a),
        Command::Classify(a) => classify::run(a),
        Command::Caption(a) => caption::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
