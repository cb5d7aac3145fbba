//! Leases in etcd (v3 API, through etcd-client), as flanneld keeps them
//! (pkg/subnet/etcd/registry.go and local_manager.go in flannel-io/flannel):
//!
//! - **acquire**: reuse the lease that already carries this node's
//!   PublicIP, else the subnet the node held before, else a free one
//!   picked at random among the first hundred; a new lease is written by
//!   a transaction that succeeds only if the key does not exist yet, so
//!   that two nodes never hold one subnet, also when they start at once;
//! - **renew**: a new etcd lease of 24 h and a put of the same value, an
//!   hour before expiry;
//! - **follow**: read every lease, then watch `<prefix>/subnets/` from the
//!   revision after that read; a watch that fell behind compaction, or a
//!   connection that dropped, is resumed or resynchronised from a full
//!   read, with backoff, while the caller keeps what it had.
//!
//! Where podswitch differs from flanneld: when its own lease vanishes
//! (deleted, or expired while the store was away) flanneld exits; podswitchd
//! writes it again and goes on forwarding, since its pods are still there.
//! A node given a `pod_cidr` leases exactly that subnet, or fails to start
//! if another node holds it.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use podswitch_engine::fib::Prefix;
use podswitch_protocol::StoreStatus;

use crate::flannel::{
    parse_subnet_key, subnet_key, LeaseAttrs, NetworkConfig, LEASE_TTL_SECS, RENEW_MARGIN_SECS,
};

/// How to reach the store.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Client URLs, `http://` or `https://`.
    pub endpoints: Vec<String>,
    /// The key prefix (flannel's `--etcd-prefix`).
    pub prefix: String,
    /// CA certificate (PEM) that signed the servers' certificates.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM).
    pub key_file: Option<PathBuf>,
    /// Deadline of one request.
    pub timeout: Duration,
}

/// This node's lease.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The subnet leased.
    pub subnet: Prefix,
    /// What the lease says.
    pub attrs: LeaseAttrs,
    /// When it expires (seconds since the epoch); None for a reservation
    /// (a key without an etcd lease, which never expires).
    pub expires: Option<u64>,
}

impl Lease {
    fn renew_in(&self) -> Duration {
        match self.expires {
            None => Duration::from_secs(365 * 24 * 3600),
            Some(at) => {
                let due = at.saturating_sub(RENEW_MARGIN_SECS as u64);
                Duration::from_secs(due.saturating_sub(unix_now()))
            }
        }
    }
}

/// A change of another node's lease, for the caller to apply.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseEvent {
    /// Every lease but ours, after a full read: anything not in it is gone.
    Snapshot(Vec<(Prefix, LeaseAttrs)>),
    /// A lease was written (new, renewed or changed).
    Set(Prefix, LeaseAttrs),
    /// A lease was deleted or expired.
    Removed(Prefix),
}

/// The store's health, for `podswitchctl status` and the metrics.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<HealthState>,
}

#[derive(Debug, Default, Clone)]
struct HealthState {
    connected: bool,
    last_error: Option<String>,
    leases: usize,
    own: Option<(Prefix, Option<u64>)>,
    resyncs: u64,
    errors: u64,
    bad_leases: u64,
}

impl Health {
    fn update(&self, f: impl FnOnce(&mut HealthState)) {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// One log line per change of state, not one per retry.
    fn failed(&self, error: &str) {
        let was_connected = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let was = s.connected || s.errors == 0;
            s.connected = false;
            s.errors += 1;
            s.last_error = Some(error.to_string());
            was
        };
        if was_connected {
            tracing::warn!("lease store unreachable, keeping the last known peers: {error}");
        }
    }

    fn reached(&self) {
        let was_down = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let was = !s.connected && s.errors > 0;
            s.connected = true;
            was
        };
        if was_down {
            tracing::info!("lease store reachable again");
        }
    }

    /// Whether the last exchange with the store worked.
    pub fn connected(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .connected
    }

    /// Failed exchanges so far.
    pub fn errors(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).errors
    }

    /// The state as `podswitchctl status` shows it.
    pub fn status(&self) -> StoreStatus {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        StoreStatus {
            connected: s.connected,
            leases: s.leases,
            subnet: s.own.map(|(p, _)| p),
            expires: s.own.and_then(|(_, e)| e),
            resyncs: s.resyncs,
            errors: s.errors,
            bad_leases: s.bad_leases,
            last_error: s.last_error,
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_index(len: usize) -> usize {
    // std's per-process random hash keys are enough to spread nodes that
    // start together over the free subnets; no cryptography is needed.
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() % len.max(1) as u64) as usize
}

/// A connection to the store; its calls block the calling thread.
pub struct Store {
    runtime: tokio::runtime::Runtime,
    client: Client,
    options: EtcdOptions,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("endpoints", &self.options.endpoints)
            .field("prefix", &self.options.prefix)
            .finish_non_exhaustive()
    }
}

/// Why acquiring failed.
fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

impl Store {
    /// Connects to the first endpoint that answers.
    pub fn connect(options: EtcdOptions) -> Result<Store, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| err("runtime", e))?;
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.timeout)
            .with_timeout(options.timeout)
            .with_keep_alive(Duration::from_secs(10), options.timeout);
        if options.ca_file.is_some() || options.cert_file.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &options.ca_file {
                let pem = std::fs::read(ca).map_err(|e| err(&ca.display().to_string(), e))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            match (&options.cert_file, &options.key_file) {
                (Some(cert), Some(key)) => {
                    let cert =
                        std::fs::read(cert).map_err(|e| err(&cert.display().to_string(), e))?;
                    let key = std::fs::read(key).map_err(|e| err(&key.display().to_string(), e))?;
                    tls = tls.identity(Identity::from_pem(cert, key));
                }
                (None, None) => {}
                _ => {
                    return Err(
                        "a client certificate needs its key, and a key its certificate".into(),
                    )
                }
            }
            connect = connect.with_tls(tls);
        }
        let client = runtime
            .block_on(Client::connect(&options.endpoints, Some(connect)))
            .map_err(|e| err(&format!("etcd at {}", options.endpoints.join(",")), e))?;
        Ok(Store {
            runtime,
            client,
            options,
        })
    }

    fn key(&self, tail: &str) -> String {
        format!("{}/{tail}", self.options.prefix.trim_end_matches('/'))
    }

    /// `<prefix>/config`, checked.
    pub fn network(&self) -> Result<NetworkConfig, String> {
        let key = self.key("config");
        let mut client = self.client.clone();
        let got = self
            .runtime
            .block_on(client.get(key.as_str(), None))
            .map_err(|e| err(&key, e))?;
        let kv = got.kvs().first().ok_or_else(|| {
            format!("{key}: flannel config not found in etcd store (write it with the etcd v3 API)")
        })?;
        NetworkConfig::parse(&String::from_utf8_lossy(kv.value())).map_err(|e| err(&key, e))
    }

    /// Writes `<prefix>/config` (checked first: what flanneld would
    /// refuse is not written), as `etcdctl put` does when a cluster is set
    /// up.
    pub fn write_network(&self, text: &str) -> Result<NetworkConfig, String> {
        let config = NetworkConfig::parse(text)?;
        let key = self.key("config");
        let mut client = self.client.clone();
        self.runtime
            .block_on(client.put(key.as_str(), text, None))
            .map_err(|e| err(&key, e))?;
        Ok(config)
    }

    /// Every lease in the store: subnet and value (keys that are not
    /// leases are skipped).
    pub fn leases(&self) -> Result<Vec<(Prefix, LeaseAttrs)>, String> {
        let mut client = self.client.clone();
        let (leases, _) = self
            .runtime
            .block_on(list(&mut client, &self.key("subnets/"), None))?;
        Ok(leases.into_iter().map(|(s, a, _)| (s, a)).collect())
    }

    /// Takes a lease for this node, as flanneld does (see the module
    /// documentation); `wanted` is a subnet the configuration fixes,
    /// `previous` one the node held before (from its subnet file).
    pub fn acquire(
        &self,
        network: &NetworkConfig,
        attrs: &LeaseAttrs,
        wanted: Option<Prefix>,
        previous: Option<Prefix>,
    ) -> Result<Lease, String> {
        let mut client = self.client.clone();
        let prefix = self.key("subnets/");
        self.runtime.block_on(async {
            // A lost race (another node wrote the key between our read
            // and our transaction) is retried from a fresh read.
            for _ in 0..10 {
                let (leases, _) = list(&mut client, &prefix, None).await?;
                let holder = |subnet: &Prefix| leases.iter().find(|(s, _, _)| s == subnet);
                if let Some(subnet) = wanted {
                    if let Some((_, held, etcd_lease)) = holder(&subnet) {
                        if held.public_ip != attrs.public_ip {
                            return Err(format!(
                                "{subnet} is leased to the node at {}",
                                held.public_ip
                            ));
                        }
                        return update(&mut client, &prefix, subnet, attrs, *etcd_lease != 0).await;
                    }
                    match create(&mut client, &prefix, subnet, attrs).await? {
                        Some(lease) => return Ok(lease),
                        None => continue,
                    }
                }
                if let Some((subnet, _, etcd_lease)) = leases
                    .iter()
                    .find(|(_, a, _)| a.public_ip == attrs.public_ip)
                {
                    if network.fits(subnet) {
                        return update(&mut client, &prefix, *subnet, attrs, *etcd_lease != 0)
                            .await;
                    }
                    // Left from another network config: flanneld deletes it.
                    let key = format!("{prefix}{}", subnet_key(subnet));
                    client
                        .delete(key.as_str(), None)
                        .await
                        .map_err(|e| err(&key, e))?;
                }
                let taken: Vec<Prefix> = leases.iter().map(|(s, _, _)| *s).collect();
                let subnet = match previous.filter(|p| {
                    network.fits(p) && !taken.iter().any(|t| t.covers(p) || p.covers(t))
                }) {
                    Some(p) => p,
                    None => {
                        let free = network.free_subnets(&taken, 100);
                        if free.is_empty() {
                            return Err(format!("out of subnets in {}", network.network));
                        }
                        free[random_index(free.len())]
                    }
                };
                if let Some(lease) = create(&mut client, &prefix, subnet, attrs).await? {
                    return Ok(lease);
                }
            }
            Err("another node took each subnet picked, ten times in a row".into())
        })
    }

    /// Follows the other nodes' leases until `stop` says so, calling
    /// `apply` for each change, and keeps `own` renewed and present. Never
    /// returns an error: a store that cannot be reached is retried with
    /// backoff (100 ms doubling to 5 s), `health` saying so meanwhile.
    pub fn follow(
        self,
        mut own: Lease,
        health: Arc<Health>,
        mut stop: tokio::sync::watch::Receiver<bool>,
        mut apply: impl FnMut(LeaseEvent),
    ) {
        let prefix = self.key("subnets/");
        let own_key = format!("{prefix}{}", subnet_key(&own.subnet));
        let mut client = self.client;
        health.update(|s| s.own = Some((own.subnet, own.expires)));
        self.runtime.block_on(async move {
            let mut since: Option<i64> = None;
            let mut backoff = Duration::from_millis(100);
            let mut renew_at = tokio::time::Instant::now() + own.renew_in();
            'session: loop {
                if *stop.borrow() {
                    return;
                }
                if since.is_none() {
                    match list(&mut client, &prefix, Some(&health)).await {
                        Ok((leases, revision)) => {
                            let mut others = Vec::new();
                            let mut own_present = false;
                            for (subnet, attrs, _) in leases {
                                if subnet == own.subnet {
                                    own_present = attrs.public_ip == own.attrs.public_ip;
                                } else {
                                    others.push((subnet, attrs));
                                }
                            }
                            health.reached();
                            health.update(|s| {
                                s.leases = others.len();
                                s.resyncs += 1;
                            });
                            apply(LeaseEvent::Snapshot(others));
                            if !own_present {
                                rewrite_own(&mut client, &prefix, &mut own, &health).await;
                            }
                            since = Some(revision + 1);
                            backoff = Duration::from_millis(100);
                        }
                        Err(e) => {
                            health.failed(&e);
                            if pause(&mut stop, &mut backoff).await {
                                return;
                            }
                            continue;
                        }
                    }
                }
                let options = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(since.unwrap_or(0));
                let mut stream = match client.watch(prefix.as_str(), Some(options)).await {
                    Ok(stream) => stream,
                    Err(e) => {
                        health.failed(&err("watch", e));
                        if pause(&mut stop, &mut backoff).await {
                            return;
                        }
                        continue;
                    }
                };
                loop {
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep_until(renew_at) => {
                            renew_at = tokio::time::Instant::now()
                                + match update(&mut client, &prefix, own.subnet, &own.attrs, own.expires.is_some()).await {
                                    Ok(renewed) => {
                                        own = renewed;
                                        health.update(|s| s.own = Some((own.subnet, own.expires)));
                                        own.renew_in()
                                    }
                                    Err(e) => {
                                        // flanneld's pace: again in a minute.
                                        health.failed(&err("renewing our lease", e));
                                        Duration::from_secs(60)
                                    }
                                };
                        }
                        message = stream.message() => {
                            let response = match message {
                                Ok(Some(r)) => r,
                                Ok(None) => {
                                    health.failed("watch ended by the store");
                                    if pause(&mut stop, &mut backoff).await { return; }
                                    continue 'session;
                                }
                                Err(e) => {
                                    health.failed(&err("watch", e));
                                    if pause(&mut stop, &mut backoff).await { return; }
                                    continue 'session;
                                }
                            };
                            if response.compact_revision() > 0 || response.canceled() {
                                // Fell behind compaction: what was missed
                                // is only in a full read.
                                since = None;
                                continue 'session;
                            }
                            backoff = Duration::from_millis(100);
                            health.reached();
                            if let Some(header) = response.header() {
                                since = Some(header.revision() + 1);
                            }
                            for event in response.events() {
                                let Some(kv) = event.kv() else { continue };
                                let key = String::from_utf8_lossy(kv.key());
                                let Some(subnet) = parse_subnet_key(&key) else { continue };
                                let deleted = event.event_type() == EventType::Delete;
                                if key == own_key {
                                    if deleted {
                                        rewrite_own(&mut client, &prefix, &mut own, &health).await;
                                    }
                                    continue;
                                }
                                if deleted {
                                    health.update(|s| s.leases = s.leases.saturating_sub(1));
                                    apply(LeaseEvent::Removed(subnet));
                                    continue;
                                }
                                match LeaseAttrs::parse(kv.value()) {
                                    Ok(attrs) => {
                                        if kv.version() == 1 {
                                            health.update(|s| s.leases += 1);
                                        }
                                        apply(LeaseEvent::Set(subnet, attrs));
                                    }
                                    Err(e) => health.update(|s| {
                                        s.bad_leases += 1;
                                        s.last_error = Some(format!("{key}: {e}"));
                                    }),
                                }
                            }
                        }
                    }
                }
            }
        });
    }
}

/// Sleeps `backoff` (doubled for next time, at most 5 s); true if told
/// to stop meanwhile.
async fn pause(stop: &mut tokio::sync::watch::Receiver<bool>, backoff: &mut Duration) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
    tokio::select! {
        _ = stop.changed() => true,
        _ = tokio::time::sleep(wait) => *stop.borrow(),
    }
}

/// A full read of the leases: each with its subnet and etcd lease id (0
/// for a reservation), and the store's revision as of the read.
type Listing = (Vec<(Prefix, LeaseAttrs, i64)>, i64);

/// Every lease in the store (ours too). A key or value that is not a
/// lease is skipped and counted.
async fn list(
    client: &mut Client,
    prefix: &str,
    health: Option<&Health>,
) -> Result<Listing, String> {
    let got = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| err(prefix, e))?;
    let revision = got.header().map_or(0, |h| h.revision());
    let mut leases = Vec::new();
    for kv in got.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        let parsed = parse_subnet_key(&key)
            .ok_or_else(|| "not a subnet key".to_string())
            .and_then(|subnet| Ok((subnet, LeaseAttrs::parse(kv.value())?)));
        match parsed {
            Ok((subnet, attrs)) => leases.push((subnet, attrs, kv.lease())),
            Err(e) => {
                if let Some(h) = health {
                    h.update(|s| {
                        s.bad_leases += 1;
                        s.last_error = Some(format!("{key}: {e}"));
                    });
                }
            }
        }
    }
    Ok((leases, revision))
}

/// Writes a new lease if the key is free; None if another node wrote it
/// first.
async fn create(
    client: &mut Client,
    prefix: &str,
    subnet: Prefix,
    attrs: &LeaseAttrs,
) -> Result<Option<Lease>, String> {
    let key = format!("{prefix}{}", subnet_key(&subnet));
    let grant = client
        .lease_grant(LEASE_TTL_SECS, None)
        .await
        .map_err(|e| err("lease grant", e))?;
    let put = TxnOp::put(
        key.as_str(),
        attrs.to_json(),
        Some(PutOptions::new().with_lease(grant.id())),
    );
    let txn = Txn::new()
        .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
        .and_then([put]);
    let done = client.txn(txn).await;
    let won = matches!(&done, Ok(r) if r.succeeded());
    if !won {
        // Nothing holds the etcd lease: give it back now rather than in 24 h.
        let _ = client.lease_revoke(grant.id()).await;
    }
    done.map_err(|e| err(&key, e))?;
    Ok(won.then(|| Lease {
        subnet,
        attrs: attrs.clone(),
        expires: Some(unix_now() + grant.ttl() as u64),
    }))
}

/// Rewrites a lease we hold with a fresh etcd lease (flanneld's
/// `updateSubnet`: a new grant and a put; the old etcd lease expires with
/// nothing attached); a reservation stays one.
async fn update(
    client: &mut Client,
    prefix: &str,
    subnet: Prefix,
    attrs: &LeaseAttrs,
    expiring: bool,
) -> Result<Lease, String> {
    let key = format!("{prefix}{}", subnet_key(&subnet));
    let (options, expires) = if expiring {
        let grant = client
            .lease_grant(LEASE_TTL_SECS, None)
            .await
            .map_err(|e| err("lease grant", e))?;
        (
            Some(PutOptions::new().with_lease(grant.id())),
            Some(unix_now() + grant.ttl() as u64),
        )
    } else {
        (None, None)
    };
    client
        .put(key.as_str(), attrs.to_json(), options)
        .await
        .map_err(|e| err(&key, e))?;
    Ok(Lease {
        subnet,
        attrs: attrs.clone(),
        expires,
    })
}

/// Our lease vanished (deleted, or expired while the store was away):
/// write it again if the subnet is still free.
async fn rewrite_own(client: &mut Client, prefix: &str, own: &mut Lease, health: &Health) {
    match create(client, prefix, own.subnet, &own.attrs).await {
        Ok(Some(lease)) => {
            *own = lease;
            tracing::warn!(subnet = %own.subnet, "our lease vanished from the store: written again");
            health.update(|s| {
                s.own = Some((own.subnet, own.expires));
                s.last_error = Some(format!(
                    "our lease of {} vanished: written again",
                    own.subnet
                ));
            });
        }
        Ok(None) => {
            let e = format!(
                "our lease of {} vanished and another node took the subnet: pods here and there now overlap",
                own.subnet
            );
            tracing::error!("{e}");
            health.failed(&e);
        }
        Err(e) => health.failed(&err("writing our lease again", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(expires: Option<u64>) -> Lease {
        Lease {
            subnet: "10.244.1.0/24".parse().unwrap(),
            attrs: LeaseAttrs::own(std::net::Ipv4Addr::new(192, 168, 100, 1), "udp", 1, ""),
            expires,
        }
    }

    #[test]
    fn a_lease_is_renewed_an_hour_before_it_ends() {
        let now = unix_now();
        let day = lease(Some(now + LEASE_TTL_SECS as u64)).renew_in();
        let want = Duration::from_secs((LEASE_TTL_SECS - RENEW_MARGIN_SECS) as u64);
        assert!(
            day <= want && day + Duration::from_secs(5) >= want,
            "{day:?}"
        );
        // Inside the margin, or past the end (the store was away): now.
        assert_eq!(lease(Some(now + 600)).renew_in(), Duration::ZERO);
        assert_eq!(
            lease(Some(now.saturating_sub(600))).renew_in(),
            Duration::ZERO
        );
        // A reservation is never renewed in practice.
        assert!(lease(None).renew_in() > Duration::from_secs(300 * 24 * 3600));
    }

    #[test]
    fn health_reports_what_happened() {
        let health = Health::default();
        assert!(!health.connected());
        health.reached();
        health.failed("first");
        health.failed("second");
        let status = health.status();
        assert!(!status.connected);
        assert_eq!(status.errors, 2);
        assert_eq!(status.last_error.as_deref(), Some("second"));
        health.reached();
        assert!(health.connected());
        assert_eq!(health.errors(), 2);
    }
}
