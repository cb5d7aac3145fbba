//! What the `podswitch` package's binaries and its integration tests
//! share beyond the engine: host set-up for labs and tests.
//!
//! - [`run`]: a command whose failure carries its stderr.
//! - [`kernel_flannel`]: what flanneld makes a node's kernel do, written
//!   once for `podswitchctl lab`, `podswitchctl bench` and the tests that
//!   put a kernel flannel node beside podswitch.

pub mod kernel_flannel;

use std::process::Command;

use anyhow::{bail, Context, Result};

/// Runs a command, failing with its stderr; returns its stdout.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
