//! Runs one pipeline case for a number of batches and nothing else, for
//! counting instructions under valgrind (`scripts/instructions.sh`): the
//! count does not drift with the machine the way time does, so a change
//! to the data path shows its cost per packet exactly. Same cases as
//! `benches/pipeline.rs`.
//!
//! Usage: `instructions CASE BATCHES` (no arguments: the case names).

#[path = "support/frames.rs"]
mod frames;
#[path = "support/pipeline_cases.rs"]
mod pipeline_cases;

use pipeline_cases::{cases, Runner};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let all = cases();
    let (Some(name), Some(batches)) = (args.first(), args.get(1)) else {
        for (name, _) in &all {
            println!("{name}");
        }
        return;
    };
    let batches: u64 = batches.parse().expect("BATCHES: a number");
    let setup = all
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no case {name}"))
        .1;
    let mut runner = Runner::new(name, setup);
    for _ in 0..batches {
        runner.batch();
    }
}
