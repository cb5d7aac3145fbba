//! Shared helpers of the integration tests: checking for root and tools,
//! network namespaces that delete themselves, and tcpdump captures.
//!
//! Every namespace a test makes is named `psw-t<pid>-<n>-<what>`, lives in a
//! [`Netns`] guard and is deleted when the guard drops, panics included.
//! A run that was killed (SIGKILL, a CI timeout) drops no guard: the first
//! namespace a test process makes sweeps away those whose test process is
//! gone, with the daemons still running in them.
//! Test traffic stays inside these namespaces, on DESIGN.md's address plan.

#![allow(dead_code, unreachable_pub)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use podswitch::lab::Namespace;
use podswitch_encap::pcap::PcapReader;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The CNI plugin's binary. It is its own package (podswitch-cni, so that
/// it links no data path), so Cargo gives this package no
/// `CARGO_BIN_EXE_podswitch`: it sits beside podswitchd in the target
/// directory, built by the same `cargo test` (the plugin's package has
/// tests of its own, which makes Cargo build its binary).
pub fn cni_plugin() -> PathBuf {
    let plugin = Path::new(env!("CARGO_BIN_EXE_podswitchd")).with_file_name("podswitch");
    assert!(
        plugin.is_file(),
        "no CNI plugin at {}: build it with `cargo build -p podswitch-cni` \
         (`cargo test` at the workspace's top builds it)",
        plugin.display()
    );
    plugin
}

/// Panics with a clear message unless we are root and every tool exists.
/// CI runs as root with everything installed (scripts/setup.sh).
pub fn require(tools: &[&str]) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    assert_eq!(
        euid, "0",
        "this test needs root (network namespaces); run the suite as root"
    );
    for tool in tools {
        let found = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "this test needs `{tool}` on PATH: run scripts/setup.sh"
        );
    }
}

/// A unique name for this process's `what`.
/// Clock ticks (user and system) process `pid` has used, from
/// /proc/PID/stat.
#[allow(dead_code)]
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Clock ticks process `pid` uses in 2 s, from half a second from now.
#[allow(dead_code)]
pub fn idle_ticks(pid: u32) -> u64 {
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    cpu_ticks(pid) - before
}

pub fn unique(what: &str) -> String {
    format!(
        "psw-t{}-{}-{what}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command, panicking with its stderr if it fails.
pub fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What `program args...` printed, checked as [`run`] checks it.
pub fn stdout_of(program: &str, args: &[&str]) -> String {
    String::from_utf8_lossy(&run(program, args).stdout).into_owned()
}

/// A network namespace deleted on drop: the lab library's
/// [`Namespace`] guard, under a name unique to this test process.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    /// Deletes the namespace when the test lets go of it.
    _deleted_on_drop: Namespace,
}

/// Deletes the namespaces of test processes that no longer run, after
/// killing whatever still runs inside them (a podswitchd, a tcpdump).
fn sweep_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("psw-t")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue; // its test process still runs
        }
        if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
            for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        eprintln!("swept {name}, left by a test run that was killed");
    }
}

impl Netns {
    pub fn new(what: &str) -> Netns {
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(sweep_stale_namespaces);
        let name = unique(what);
        let namespace = Namespace::add(&name).unwrap_or_else(|e| panic!("namespace {name}: {e:#}"));
        Netns {
            name,
            _deleted_on_drop: namespace,
        }
    }

    /// `ip -n NAME args...`.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// `ip netns exec NAME program args...`, checked.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// The same, as a child process.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"))
    }

    /// The MAC address of `dev` inside the namespace.
    pub fn mac(&self, dev: &str) -> podswitch_encap::MacAddr {
        let out = self.ip(&["-br", "link", "show", "dev", dev]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .nth(2)
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("no MAC in {text:?}"))
    }

    /// Sends raw Ethernet frames out of `dev` through an AF_PACKET socket
    /// (Python's standard library: the bytes go out exactly as given).
    pub fn send_raw(&self, dev: &str, frames: &[Vec<u8>]) {
        let hex: Vec<String> = frames
            .iter()
            .map(|f| podswitch_encap::hex::encode(f))
            .collect();
        let mut args = vec![
            "-c",
            "import socket, sys\n\
             s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
             s.bind((sys.argv[1], 0))\n\
             for h in sys.argv[2:]: s.send(bytes.fromhex(h))",
            dev,
        ];
        args.extend(hex.iter().map(String::as_str));
        self.exec("/usr/bin/python3", &args);
    }
}

/// A veth pair between two namespaces (the lab's), both ends up.
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) {
    podswitch::lab::veth(&a.name, a_dev, &b.name, b_dev)
        .unwrap_or_else(|e| panic!("veth {a_dev} - {b_dev}: {e:#}"));
    a.ip(&["link", "set", a_dev, "up"]);
    b.ip(&["link", "set", b_dev, "up"]);
}

/// Asks `done` every 50 ms, for up to `seconds`, until it says true;
/// false if it never did. The caller asserts, with what it wants said.
pub fn eventually(seconds: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A file in the temp directory removed on drop.
#[derive(Debug)]
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(what: &str) -> TempFile {
        TempFile(std::env::temp_dir().join(unique(what)))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A running tcpdump writing a pcap file.
pub struct Capture {
    child: Child,
    file: TempFile,
    log: TempFile,
}

impl Capture {
    /// Starts `tcpdump -i dev -Q in -c count -w FILE filter` in `ns` and
    /// waits until it is listening.
    pub fn start(ns: &Netns, dev: &str, count: usize, filter: &str) -> Capture {
        Capture::start_in(&ns.name, dev, count, filter)
    }

    /// The same in the namespace called `ns` (a lab's, say).
    pub fn start_in(ns: &str, dev: &str, count: usize, filter: &str) -> Capture {
        let file = TempFile::new("cap.pcap");
        let log = TempFile::new("cap.log");
        let count = count.to_string();
        let child = Command::new("ip")
            .args([
                "netns", "exec", ns, "tcpdump", "-i", dev, "-Q", "in", "-U", "-c", &count, "-w",
            ])
            .arg(&file.0)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(File::create(&log.0).unwrap())
            .spawn()
            .expect("spawn tcpdump");
        let mut capture = Capture { child, file, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&capture.log.0).unwrap_or_default();
            if text.contains("listening on") {
                break;
            }
            if let Ok(Some(status)) = capture.child.try_wait() {
                panic!("tcpdump exited ({status}): {text}");
            }
            assert!(Instant::now() < deadline, "tcpdump did not start: {text}");
            std::thread::sleep(Duration::from_millis(20));
        }
        capture
    }

    /// Waits for tcpdump to capture its count and returns the frames.
    pub fn finish(mut self, timeout: Duration) -> Vec<Vec<u8>> {
        wait_child(&mut self.child, timeout, "tcpdump");
        read_pcap(&self.file.0)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a child to exit successfully within `timeout`.
pub fn wait_child(child: &mut Child, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            assert!(status.success(), "{what} exited with {status}");
            return;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every frame of a pcap file.
pub fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    PcapReader::new(std::io::BufReader::new(file))
        .unwrap()
        .records()
        .unwrap()
        .into_iter()
        .map(|r| r.data)
        .collect()
}

pub mod cluster;
pub mod etcd;
pub mod flannel;
pub mod traffic;

/// `frames` as tshark, an independent decoder, reads them from a pcap,
/// with `decode_as` (its `-d` rules: flannel's ports are not the
/// registered ones) and IPv4 and UDP checksums verified: per frame, the
/// `fields` asked for (`-e`), each field's occurrences joined by commas.
pub fn tshark_fields(frames: &[Vec<u8>], decode_as: &[&str], fields: &[&str]) -> Vec<Vec<String>> {
    let pcap = TempFile::new("tshark.pcap");
    let mut writer =
        podswitch_encap::pcap::PcapWriter::new(File::create(&pcap.0).unwrap()).unwrap();
    for (i, frame) in frames.iter().enumerate() {
        writer.write_frame(i as u64, frame).unwrap();
    }
    writer.finish().unwrap();
    let mut tshark = Command::new("tshark");
    tshark.arg("-r").arg(&pcap.0);
    for rule in decode_as {
        tshark.args(["-d", rule]);
    }
    tshark
        .args(["-o", "ip.check_checksum:TRUE"])
        .args(["-o", "udp.check_checksum:TRUE"])
        .args(["-T", "fields", "-E", "separator=;", "-E", "occurrence=a"])
        .args(["-E", "aggregator=,"]);
    for field in fields {
        tshark.args(["-e", field]);
    }
    let out = tshark.output().expect("run tshark");
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| line.split(';').map(str::to_string).collect())
        .collect()
}
