//! Prometheus metrics over HTTP (`[metrics] listen = "127.0.0.1:9469"`):
//! the counters `podswitchctl stats` shows, per-worker load, table sizes
//! and control requests, in the OpenMetrics text format that Prometheus
//! scrapes.
//!
//! A scrape reads the same atomics the control socket reads and the
//! published snapshot; it never talks to a worker, takes no lock a worker
//! takes, and allocates only on its own thread. The endpoint runs on a
//! thread of its own (tiny_http reads requests on its own threads too) and
//! writes each response from a thread of its own (at most 16 at once, then
//! 503), so a scraper that stops reading holds only its own connection, and
//! forwarding never waits on any of it.
//!
//! Names follow Prometheus's conventions: a `podswitch_` prefix, counters
//! ending in `_total` (the encoder adds it), base units (seconds, bytes),
//! one family per quantity with labels for ports, reasons and workers.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::protocol::StoreStatus;
use podswitch_engine::drop::DropReason;
use podswitch_engine::tables::Tables;
use podswitch_engine::worker::{WorkerStats, BATCH_BUCKETS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Requests the control socket answered, by outcome.
#[derive(Debug, Default)]
pub struct ControlCounters {
    /// Answered with a result.
    pub ok: AtomicU64,
    /// Answered with an error (bad request or refused change).
    pub failed: AtomicU64,
}

impl ControlCounters {
    /// Counts one answered request.
    pub fn count(&self, ok: bool) {
        let counter = if ok { &self.ok } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a scrape reads.
#[derive(Debug, Clone)]
pub struct Metrics {
    tables: Arc<Tables>,
    workers: Vec<Arc<WorkerStats>>,
    control: Arc<ControlCounters>,
    store: Option<StoreHealth>,
    before_scrape: Option<BeforeScrape>,
}

/// What brings the counters up to date before a scrape (the drops the
/// ports' kernel devices counted, `Datapath::count_device_drops`).
#[derive(Clone)]
pub struct BeforeScrape(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for BeforeScrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeforeScrape")
    }
}

/// The lease store's health as `status` reports it, read at each scrape.
#[derive(Clone)]
pub struct StoreHealth(pub Arc<dyn Fn() -> StoreStatus + Send + Sync>);

impl std::fmt::Debug for StoreHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreHealth")
    }
}

/// The OpenMetrics content type the endpoint answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Metrics {
    /// Metrics of a node's tables, its workers and its control socket.
    pub fn new(
        tables: Arc<Tables>,
        workers: Vec<Arc<WorkerStats>>,
        control: Arc<ControlCounters>,
    ) -> Metrics {
        Metrics {
            tables,
            workers,
            control,
            store: None,
            before_scrape: None,
        }
    }

    /// Also runs `update` before each scrape.
    pub fn before_scrape(mut self, update: BeforeScrape) -> Metrics {
        self.before_scrape = Some(update);
        self
    }

    /// Also the lease store's health (`podswitch_lease_store_*`).
    pub fn with_store(mut self, store: StoreHealth) -> Metrics {
        self.store = Some(store);
        self
    }

    /// The exposition text, as of now.
    pub fn render(&self) -> String {
        if let Some(update) = &self.before_scrape {
            (update.0)();
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut text = String::new();
        // Writing into a String cannot fail; an encoder error would be a
        // bug in a name, caught by the tests.
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("metrics encode into a String");
        text
    }

    /// Serves `GET /metrics` on `listen` from a thread of its own.
    pub fn serve(self, listen: SocketAddr) -> io::Result<JoinHandle<()>> {
        let server = tiny_http::Server::http(listen).map_err(io::Error::other)?;
        std::thread::Builder::new()
            .name("podswitch-metrics".into())
            .spawn(move || {
                // At most this many responses in flight: each on a thread of
                // its own, so a client that stops reading stalls only its own.
                let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                for request in server.incoming_requests() {
                    let response = match (request.method(), request.url()) {
                        (tiny_http::Method::Get, "/metrics") => {
                            let header =
                                tiny_http::Header::from_bytes("Content-Type", CONTENT_TYPE)
                                    .expect("a valid header");
                            tiny_http::Response::from_string(self.render()).with_header(header)
                        }
                        (tiny_http::Method::Get, _) => {
                            tiny_http::Response::from_string("podswitch: metrics are at /metrics\n")
                                .with_status_code(404)
                        }
                        _ => tiny_http::Response::from_string("GET only\n").with_status_code(405),
                    };
                    if in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
                        in_flight.fetch_sub(1, Ordering::AcqRel);
                        let busy = tiny_http::Response::from_string("busy\n").with_status_code(503);
                        // Dropped if this client does not read either.
                        std::thread::spawn(move || drop(request.respond(busy)));
                        continue;
                    }
                    let counted = Arc::clone(&in_flight);
                    let spawned = std::thread::Builder::new()
                        .name("podswitch-metrics-reply".into())
                        .spawn(move || {
                            // A client that went away or stopped reading
                            // costs this thread only.
                            let _ = request.respond(response);
                            counted.fetch_sub(1, Ordering::AcqRel);
                        });
                    if spawned.is_err() {
                        in_flight.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            })
    }
}

/// One counter family with a label per sample.
fn counters<'a, N: EncodeCounterValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (&'a str, N)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in samples {
        ConstCounter::new(n).encode(family.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

/// One gauge family with a label per sample.
fn gauges<'a, N: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (&'a str, N)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value, v) in samples {
        ConstGauge::new(v).encode(family.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, n: u64) -> std::fmt::Result {
    let c = ConstCounter::new(n);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.tables.load();
        let stats = self.tables.stats.snapshot();
        let ports: Vec<(String, podswitch_engine::stats::PortStats)> = stats
            .ports
            .iter()
            .map(|(id, s)| {
                let name = snap.ports.name_or_number(*id);
                (name, *s)
            })
            .collect();
        type Field = fn(&podswitch_engine::stats::PortStats) -> u64;
        let per_port: [(&str, &str, Field); 14] = [
            (
                "podswitch_port_rx_packets",
                "Frames received on the port.",
                |s| s.rx_packets,
            ),
            (
                "podswitch_port_rx_bytes",
                "Bytes received on the port.",
                |s| s.rx_bytes,
            ),
            (
                "podswitch_port_tx_packets",
                "Frames forwarded to the port to send; those not sent also count in its drops.",
                |s| s.tx_packets,
            ),
            (
                "podswitch_port_tx_bytes",
                "Bytes of the frames forwarded to the port to send.",
                |s| s.tx_bytes,
            ),
            (
                "podswitch_port_drops",
                "Frames from or to the port dropped, every reason.",
                |s| s.drops,
            ),
            (
                "podswitch_port_super_frames_in",
                "GSO super-frames received whole.",
                |s| s.super_frames_in,
            ),
            (
                "podswitch_port_super_frames_out",
                "GSO super-frames sent whole.",
                |s| s.super_frames_out,
            ),
            (
                "podswitch_port_segmented",
                "Super-frames cut into segments in software.",
                |s| s.segmented,
            ),
            (
                "podswitch_port_segments_made",
                "Segments those cuts made.",
                |s| s.segments_made,
            ),
            (
                "podswitch_port_checksums_completed",
                "Partial checksums completed in software.",
                |s| s.checksums_completed,
            ),
            (
                "podswitch_port_coalesced",
                "Datagrams merged into received super-frames.",
                |s| s.coalesced,
            ),
            (
                "podswitch_port_big_tcp_cut",
                "BIG TCP super-frames cut into super-frames of at most 64 KiB.",
                |s| s.big_tcp_cut,
            ),
            (
                "podswitch_port_datagrams_batched",
                "Small datagrams of one flow sent together, one write per batch that the kernel cuts.",
                |s| s.datagrams_batched,
            ),
            (
                "podswitch_port_egress_held",
                "Frames of a pod that waited for its egress limit before they went on.",
                |s| s.egress_held,
            ),
        ];
        for (name, help, field) in per_port {
            counters(
                &mut encoder,
                name,
                help,
                "port",
                ports.iter().map(|(port, s)| (port.as_str(), field(s))),
            )?;
        }
        counters(
            &mut encoder,
            "podswitch_drops",
            "Frames dropped, by reason (podswitchctl stats lists the reasons).",
            "reason",
            stats.drops.iter().map(|(r, n)| (r.name(), *n)),
        )?;
        debug_assert_eq!(stats.drops.len(), DropReason::ALL.len());

        let workers: Vec<(String, _)> = self
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| (i.to_string(), w.snapshot()))
            .collect();
        counters(
            &mut encoder,
            "podswitch_worker_busy_seconds",
            "Seconds a worker was awake: forwarding or polling for more.",
            "worker",
            workers.iter().map(|(w, s)| (w.as_str(), s.busy_secs())),
        )?;
        counters(
            &mut encoder,
            "podswitch_worker_idle_seconds",
            "Seconds a worker slept in epoll_wait.",
            "worker",
            workers.iter().map(|(w, s)| (w.as_str(), s.idle_secs)),
        )?;
        counters(
            &mut encoder,
            "podswitch_worker_wakeups",
            "Times a worker woke from epoll_wait.",
            "worker",
            workers.iter().map(|(w, s)| (w.as_str(), s.wakeups)),
        )?;
        counters(
            &mut encoder,
            "podswitch_worker_spins_caught",
            "Busy-poll spins that ended with a packet (each saved a wake-up).",
            "worker",
            workers.iter().map(|(w, s)| (w.as_str(), s.spins_caught)),
        )?;
        counters(
            &mut encoder,
            "podswitch_worker_spins_expired",
            "Busy-poll spins that ended in sleep (each cost its window in CPU).",
            "worker",
            workers.iter().map(|(w, s)| (w.as_str(), s.spins_expired)),
        )?;
        counters(
            &mut encoder,
            "podswitch_worker_spins_preempted",
            "Busy-poll spins another task preempted (each paused spinning: the CPU was not idle).",
            "worker",
            workers.iter().map(|(w, s)| (w.as_str(), s.spins_preempted)),
        )?;
        counters(
            &mut encoder,
            "podswitch_worker_spins_rescued",
            "Preempted spins the worker's guard ended, moving it back to its working class (a busy task kept it off its CPU past its spin window).",
            "worker",
            workers.iter().map(|(w, s)| (w.as_str(), s.spins_rescued)),
        )?;
        counters(
            &mut encoder,
            "podswitch_worker_handed_off",
            "Frames a worker posted to the worker that owns their output port.",
            "worker",
            workers.iter().map(|(w, s)| (w.as_str(), s.handed_off)),
        )?;
        counters(
            &mut encoder,
            "podswitch_worker_yields",
            "Times a worker gave its CPU to the other workers after working a millisecond without sleeping.",
            "worker",
            workers.iter().map(|(w, s)| (w.as_str(), s.yields)),
        )?;
        gauges(
            &mut encoder,
            "podswitch_worker_realtime",
            "1 if the worker forwards in SCHED_FIFO, ahead of the pods; 0 if in SCHED_OTHER.",
            "worker",
            workers
                .iter()
                .map(|(w, s)| (w.as_str(), i64::from(s.realtime))),
        )?;
        gauges(
            &mut encoder,
            "podswitch_worker_spin_window_seconds",
            "How long a worker polls after its last packet from another CPU before it sleeps (adapted to the gaps between such packets, at most busy_poll_us; after a frame that arrived on its own CPU it sleeps at once).",
            "worker",
            workers.iter().map(|(w, s)| (w.as_str(), s.spin_window_secs)),
        )?;
        let mut family = encoder.encode_descriptor(
            "podswitch_worker_batch_size",
            "Packets per pipeline run (a super-frame counts once).",
            None,
            MetricType::Histogram,
        )?;
        for (w, s) in &workers {
            let buckets: Vec<(f64, u64)> = BATCH_BUCKETS
                .iter()
                .map(|b| *b as f64)
                .chain([f64::INFINITY])
                .zip(s.batch_sizes)
                .collect();
            family
                .encode_family(&[("worker", w.as_str())])?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                s.batch_packets as f64,
                s.batches,
                &buckets,
                None,
            )?;
        }

        let to_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        gauge(
            &mut encoder,
            "podswitch_routes",
            "Routes in the FIB.",
            to_i64(snap.fib.len()),
        )?;
        gauge(
            &mut encoder,
            "podswitch_peers",
            "Peer nodes.",
            to_i64(snap.peers.len()),
        )?;
        gauge(
            &mut encoder,
            "podswitch_ports",
            "Attached ports.",
            to_i64(snap.ports.iter().count()),
        )?;
        gauge(
            &mut encoder,
            "podswitch_neighbours",
            "Neighbour (ARP) entries of local pods.",
            to_i64(snap.neighbours.len()),
        )?;
        gauge(
            &mut encoder,
            "podswitch_fdb_entries",
            "MAC addresses in the bridge segment's forwarding database.",
            to_i64(self.tables.fdb.len()),
        )?;
        gauge(
            &mut encoder,
            "podswitch_host_connections",
            "Slots in use in the table of connections the host port handed on from a pod to a pod (Services): a connection takes one, its pair of addresses one more, and a timed-out one counts until its slot is reused.",
            to_i64(self.tables.host_connections.len()),
        )?;
        counter(
            &mut encoder,
            "podswitch_host_connections_evicted",
            "Live host connections replaced by new ones in a full bucket of the table.",
            self.tables.host_connections.evicted(),
        )?;
        counters(
            &mut encoder,
            "podswitch_control_requests",
            "Control socket requests answered, by outcome.",
            "outcome",
            [
                ("ok", self.control.ok.load(Ordering::Relaxed)),
                ("error", self.control.failed.load(Ordering::Relaxed)),
            ],
        )?;
        if let Some(store) = &self.store {
            let health = (store.0)();
            let gauge_of = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            gauge(
                &mut encoder,
                "podswitch_lease_store_connected",
                "1 while the last exchange with the lease store worked.",
                i64::from(health.connected),
            )?;
            gauge(
                &mut encoder,
                "podswitch_lease_store_leases",
                "Other nodes' leases known from the store.",
                gauge_of(health.leases as u64),
            )?;
            gauge(
                &mut encoder,
                "podswitch_lease_expiry_timestamp_seconds",
                "When this node's lease expires unless renewed (0: a reservation).",
                gauge_of(health.expires.unwrap_or(0)),
            )?;
            counter(
                &mut encoder,
                "podswitch_lease_store_errors",
                "Failed exchanges with the lease store.",
                health.errors,
            )?;
            counter(
                &mut encoder,
                "podswitch_lease_store_resyncs",
                "Full reads of every lease (at start, and after the watch fell behind compaction).",
                health.resyncs,
            )?;
            counter(
                &mut encoder,
                "podswitch_lease_store_bad_leases",
                "Keys under the subnets prefix that were not leases, skipped.",
                health.bad_leases,
            )?;
        }
        Ok(())
    }
}

/// Responses the endpoint writes at once; see [`Metrics::serve`].
const MAX_IN_FLIGHT: usize = 16;
