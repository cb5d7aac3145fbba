//! `podswitchctl lab`: the commands over the lab library
//! ([`podswitch::lab`]): build, remove, show and enter simulated clusters.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use podswitch::lab::{down, status_json, up, Lab, UpArgs};

#[derive(Debug, Subcommand)]
pub(crate) enum LabCommand {
    /// Build a simulated cluster (a stale lab of the same name is removed first).
    Up(UpArgs),
    /// Remove a lab: daemons, namespaces, links, files.
    Down(NameArg),
    /// Nodes, pods and daemon health.
    Status(NameArg),
    /// Run a command in a pod's network namespace: lab exec POD -- CMD...
    Exec(ExecArgs),
}

#[derive(Debug, Args)]
pub(crate) struct NameArg {
    /// The lab's name.
    #[arg(long, default_value = "lab")]
    name: String,
}

#[derive(Debug, Args)]
pub(crate) struct ExecArgs {
    /// The lab's name.
    #[arg(long, default_value = "lab")]
    name: String,
    /// The pod (as `lab status` names it).
    pod: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Runs a lab command.
pub(crate) fn run_command(command: &LabCommand, json_out: bool) -> ExitCode {
    let result = match command {
        LabCommand::Up(args) => up(args).map(|lab| {
            eprintln!(
                "lab {}: {} nodes, {} pods, {} on {} ({} mode)",
                lab.name,
                lab.nodes.len(),
                lab.pods.len(),
                lab.backend,
                lab.dataplane,
                lab.gateway_mode
            );
            print_status(&lab, json_out);
        }),
        LabCommand::Down(n) => down(&n.name),
        LabCommand::Status(n) => Lab::load(&n.name).map(|lab| print_status(&lab, json_out)),
        LabCommand::Exec(e) => exec(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podswitchctl lab: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn print_status(lab: &Lab, json_out: bool) {
    let v = status_json(lab);
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("JSON values serialise")
        );
        return;
    }
    let pods_read_as = lab
        .port_kind
        .map(|kind| format!(", {kind} pod ports"))
        .unwrap_or_default();
    println!(
        "lab {} ({} dataplane, {}, {}{pods_read_as})",
        lab.name, lab.dataplane, lab.backend, lab.gateway_mode
    );
    println!("{:<8} {:<16} {:<16} DAEMON", "NODE", "UNDERLAY", "POD CIDR");
    for n in v["nodes"].as_array().into_iter().flatten() {
        println!(
            "{:<8} {:<16} {:<16} {}",
            n["name"].as_str().unwrap_or(""),
            n["underlay_ip"].as_str().unwrap_or(""),
            n["pod_cidr"].as_str().unwrap_or(""),
            match n["daemon"].as_str() {
                Some(state) => state.to_string(),
                None => format!("- ({})", n["dataplane"].as_str().unwrap_or("kernel")),
            }
        );
    }
    println!("{:<10} {:<8} IP", "POD", "NODE");
    for p in &lab.pods {
        println!("{:<10} {:<8} {}", p.name, p.node, p.ip);
    }
}

fn exec(args: &ExecArgs) -> Result<()> {
    let lab = Lab::load(&args.name)?;
    let pod = lab.pod(&args.pod)?;
    let err = Command::new("ip")
        .args(["netns", "exec", &pod.netns])
        .args(&args.command)
        .exec();
    Err(err).context("ip netns exec")
}
