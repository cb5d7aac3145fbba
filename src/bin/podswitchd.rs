//! `podswitchd`: the podswitch daemon (ports, tables, workers, control socket).
//!
//! The daemon is not built yet; this binary says so instead of pretending.

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--version" || a == "-V") {
        println!("podswitchd {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "podswitchd {}: the daemon is not available in this build yet; \
         `podswitchctl explain` and examples/encap_walkthrough.rs show what exists",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(1)
}
