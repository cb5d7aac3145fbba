//! `podswitchctl top`: podswitchd's traffic as rates, refreshed in the
//! terminal, like `ovs-appctl dpif-netdev/pmd-stats-show` made live: per
//! port packets and bits per second, drops per second by reason, and each
//! worker's load. Rates are the difference of two `stats` replies over the
//! interval between them; `--once` prints one frame for scripts.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use podswitch_control::client::Client;
use podswitch_control::protocol::{PortCounters, Request, Stats, WorkerCounters};

/// `podswitchctl top`.
#[derive(Debug, Args)]
pub(crate) struct TopArgs {
    /// Seconds between two readings (the rates' window).
    #[arg(long, short = 'i', default_value_t = 1.0)]
    interval: f64,
    /// Print one frame and exit (for scripts).
    #[arg(long)]
    once: bool,
}

/// One reading of the daemon's counters.
struct Reading {
    at: Instant,
    stats: Stats,
}

fn read(client: &mut Client) -> Result<Reading, String> {
    let stats = client
        .call_for::<Stats>(&Request::Stats)
        .map_err(|e| e.to_string())?;
    Ok(Reading {
        at: Instant::now(),
        stats,
    })
}

/// `1234567` as `1.23M`.
fn si(x: f64) -> String {
    match x {
        x if x >= 1e9 => format!("{:.2}G", x / 1e9),
        x if x >= 1e6 => format!("{:.2}M", x / 1e6),
        x if x >= 1e3 => format!("{:.1}k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

/// The frame of rates between two readings.
fn frame(before: &Reading, after: &Reading) -> String {
    let secs_window = after.at.duration_since(before.at).as_secs_f64().max(1e-6);
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs_window;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "podswitch top: rates over the last {secs_window:.1} s\n"
    );
    let _ = writeln!(
        out,
        "{:<16} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "PORT", "RX PPS", "RX BIT/S", "TX PPS", "TX BIT/S", "DROPS/S"
    );
    for now in &after.stats.ports {
        let was = before.stats.ports.iter().find(|p| p.port == now.port);
        let delta = |count: fn(&PortCounters) -> u64| rate(was.map_or(0, count), count(now));
        let _ = writeln!(
            out,
            "{:<16} {:>10} {:>10} {:>10} {:>10} {:>10}",
            now.port,
            si(delta(|p| p.rx_packets)),
            si(delta(|p| p.rx_bytes) * 8.0),
            si(delta(|p| p.tx_packets)),
            si(delta(|p| p.tx_bytes) * 8.0),
            si(delta(|p| p.drops)),
        );
    }
    let dropping: Vec<(&String, f64)> = after
        .stats
        .drops
        .iter()
        .map(|(reason, now)| {
            let was = before.stats.drops.get(reason).copied().unwrap_or(0);
            (reason, rate(was, *now))
        })
        .filter(|(_, r)| *r > 0.0)
        .collect();
    let _ = writeln!(out, "\n{:<32} {:>10}", "DROP REASON", "DROPS/S");
    if dropping.is_empty() {
        let _ = writeln!(out, "{:<32} {:>10}", "(none)", "0");
    }
    for (reason, r) in dropping {
        let _ = writeln!(out, "{reason:<32} {:>10}", si(r));
    }
    let _ = writeln!(
        out,
        "\n{:<8} {:>7} {:>11} {:>11} {:>12} {:>11}",
        "WORKER", "BUSY", "WAKEUPS/S", "BATCHES/S", "PKTS/BATCH", "HANDOFFS/S"
    );
    for (i, now) in after.stats.workers.iter().enumerate() {
        let was = before.stats.workers.get(i);
        let grown =
            |count: fn(&WorkerCounters) -> u64| count(now).saturating_sub(was.map_or(0, count));
        let per_sec = |count: fn(&WorkerCounters) -> u64| grown(count) as f64 / secs_window;
        let secs = |secs: fn(&WorkerCounters) -> f64| secs(now) - was.map_or(0.0, secs);
        let busy = secs(|w| w.busy_secs);
        let awake = busy + secs(|w| w.idle_secs);
        let batches = grown(|w| w.batches);
        let per_batch = if batches == 0 {
            "-".to_string()
        } else {
            format!("{:.1}", grown(|w| w.batch_packets) as f64 / batches as f64)
        };
        let _ = writeln!(
            out,
            "{i:<8} {:>6.1}% {:>11} {:>11} {:>12} {:>11}",
            if awake > 0.0 {
                busy / awake * 100.0
            } else {
                0.0
            },
            si(per_sec(|w| w.wakeups)),
            si(per_sec(|w| w.batches)),
            per_batch,
            si(per_sec(|w| w.handed_off)),
        );
    }
    out
}

/// Runs `podswitchctl top`.
pub(crate) fn run(args: &TopArgs, socket: &Path) -> ExitCode {
    if !(args.interval.is_finite() && (0.05..=3600.0).contains(&args.interval)) {
        eprintln!(
            "podswitchctl: --interval {}: from 0.05 to 3600 seconds",
            args.interval
        );
        return ExitCode::from(2);
    }
    let interval = Duration::from_secs_f64(args.interval);
    let mut client = match Client::connect(socket, Duration::from_secs(10)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("podswitchctl: {}: {e}", socket.display());
            return ExitCode::from(2);
        }
    };
    let live = !args.once && std::io::stdout().is_terminal();
    let mut before = match read(&mut client) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("podswitchctl: {e}");
            return ExitCode::from(2);
        }
    };
    loop {
        std::thread::sleep(interval);
        let after = match read(&mut client) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("podswitchctl: {e}");
                return ExitCode::from(2);
            }
        };
        let text = frame(&before, &after);
        let mut stdout = std::io::stdout().lock();
        // Home and clear, then the frame: the terminal shows one frame.
        let shown = if live {
            write!(stdout, "\x1b[H\x1b[2J{text}")
        } else {
            write!(stdout, "{text}")
        };
        if shown.and_then(|()| stdout.flush()).is_err() || args.once {
            return ExitCode::SUCCESS;
        }
        if !live {
            let _ = writeln!(stdout);
        }
        before = after;
    }
}
