//! `podswitchctl`: the command-line tool of podswitch.
//!
//! It explains frames (`explain`) and talks to podswitchd over its control
//! socket (ports, routes, peers, FDB, neighbours, stats, trace, status),
//! printing tables for people and JSON with `--json`.

mod control;
mod explain;
mod lab;
mod top;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The control socket podswitchd listens on by default.
const DEFAULT_SOCKET: &str = "/run/podswitch/podswitchd.sock";

/// podswitch's command-line tool.
#[derive(Debug, Parser)]
#[command(
    name = "podswitchctl",
    version,
    about = "podswitch's command-line tool: explain frames; program and inspect podswitchd over its control socket"
)]
struct Cli {
    /// podswitchd's control socket.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET, env = "PODSWITCH_SOCKET")]
    socket: PathBuf,
    /// Print JSON instead of tables: the daemon's reply, a lab's status,
    /// a bench run's record.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a frame layer by layer: outer headers, tunnel header, inner
    /// headers, with offsets, values and bytes, and what is wrong with it.
    Explain(explain::ExplainArgs),
    /// Measure podswitch against the kernel path on lab clusters, in one
    /// run with alternated rounds; print a table of medians and ratios.
    Bench(podswitch::bench::BenchArgs),
    /// Simulated clusters in network namespaces: lab up, down, status, exec.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Rates per port, drops per second by reason and worker load,
    /// refreshed in the terminal (`--once`: one frame).
    Top(top::TopArgs),
    #[command(flatten)]
    Control(control::ControlCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Explain(args) => match explain::explain(args) {
            Ok(true) => ExitCode::SUCCESS,
            // The explanation was printed; a malformed frame still exits 1
            // so scripts can tell.
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("podswitchctl: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Lab(command) => lab::run_command(command, cli.json),
        Command::Bench(args) => match podswitch::bench::run(args, cli.json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("podswitchctl bench: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Top(args) => top::run(args, &cli.socket),
        Command::Control(command) => control::run(command, &cli.socket, cli.json),
    }
}
