//! `podswitch`: the CNI plugin that attaches pods to podswitchd.
//!
//! Not built yet. Until it is, it answers every CNI command with the
//! spec's error object, so a runtime that finds it reports a clear reason.

use std::process::ExitCode;

fn main() -> ExitCode {
    // CNI spec 1.1.0 §"Error": a JSON error object on stdout, non-zero exit.
    // Code 100+ is plugin-specific; 101 here means "plugin not implemented".
    println!(
        "{{\"cniVersion\":\"1.1.0\",\"code\":101,\"msg\":\"podswitch CNI plugin is not available in this build yet\"}}"
    );
    ExitCode::from(1)
}
