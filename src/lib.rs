//! What the `podswitch` package's binaries and its integration tests
//! share beyond the engine: labs, the bench, host set-up.
//!
//! - [`lab`]: simulated clusters in network namespaces, on podswitch or on
//!   the kernel's own flannel/Calico configuration (`podswitchctl lab`).
//! - [`bench`](mod@bench): both dataplanes measured on the same lab topology in one
//!   run (`podswitchctl bench`), and its chart.
//! - [`kernel_flannel`]: what flanneld makes a node's kernel do, written
//!   once for the lab, the bench and the tests that put a kernel flannel
//!   node beside podswitch.
//! - [`run`]: a command whose failure carries its stderr.

pub mod bench;
pub mod kernel_flannel;
pub mod lab;

use std::process::Command;

use anyhow::{bail, Context, Result};

/// Runs a command, failing with its stderr; returns its stdout.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let mut command = Command::new(program);
    command.args(args);
    run_command(command, &format!("`{program} {}`", args.join(" ")))
}

/// Runs `command`, which errors call `what`, failing with its stderr;
/// returns its stdout.
pub fn run_command(mut command: Command, what: &str) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
