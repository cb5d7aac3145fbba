//! The whole pipeline over in-memory ports, 64-byte frames, one core:
//! receive a batch of 32 (a copy into pool buffers, as a NIC's DMA would
//! make), run the pipeline, hand the outputs to the output port, which
//! gives the buffers back.
//!
//! Reference, in the same run: the same ports moving the same batches with
//! no pipeline in between (receive, then send): the cost floor of the
//! harness, which the pipeline figures include.
//!
//! Run: `cargo bench --bench pipeline`. Instructions per packet, which do
//! not drift with the machine: `scripts/instructions.sh`.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use podswitch_engine::encap::MacAddr;
use podswitch_engine::packet::{PacketPool, BATCH_SIZE, DEFAULT_BUF_SIZE};
use podswitch_engine::port::{MemoryPort, Port, PortId};

#[path = "support/frames.rs"]
mod frames;
#[path = "support/pipeline_cases.rs"]
mod pipeline_cases;
use frames::frame64;
use pipeline_cases::{cases, Runner};

const POD1_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02]);
const POD2_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x03]);

fn bench_pipeline(c: &mut Criterion) {
    let p = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    // Reference: port I/O alone.
    {
        let mut input = MemoryPort::replaying(
            "in",
            PortId(2),
            frame64(POD1_MAC, POD2_MAC, p("10.244.1.2"), p("10.244.1.3")),
        );
        let mut sink = MemoryPort::discarding("out", PortId(0));
        let mut pool = PacketPool::new(512, DEFAULT_BUF_SIZE);
        let mut batch = Vec::with_capacity(BATCH_SIZE);
        c.benchmark_group("pipeline")
            .throughput(Throughput::Elements(BATCH_SIZE as u64))
            .bench_function("reference-io-only", |b| {
                b.iter(|| {
                    input.recv(&mut pool, &mut batch).unwrap();
                    sink.send(black_box(&mut batch), &mut pool).unwrap();
                })
            });
    }
    for (name, setup) in cases() {
        let mut runner = Runner::new(name, setup);
        c.benchmark_group("pipeline")
            .throughput(Throughput::Elements(BATCH_SIZE as u64))
            .bench_function(name, |b| b.iter(|| runner.batch()));
    }
}

criterion_group!(benches, bench_pipeline);
criterion_main!(benches);
