//! A real etcd (Debian's etcd-server) inside a test namespace, and the
//! keys the tests write and read through etcd's own JSON gateway
//! (`/v3/kv/*`, base64 keys and values) with Python's urllib: an
//! independent client, not podswitch's.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{unique, Netns};

/// An etcd server; killed and its data removed on drop.
pub struct Etcd {
    child: Option<Child>,
    ns_name: String,
    /// Where the daemons reach it.
    pub url: String,
    /// Where this helper reaches it (loopback in the same namespace), so
    /// that a test can cut the daemons off and still write.
    local_url: String,
    data_dir: std::path::PathBuf,
    log: std::path::PathBuf,
    /// More options (TLS).
    extra: Vec<String>,
    name: String,
    peer_url: String,
    initial_cluster: String,
}

const CLIENT: &str = "import base64, json, sys, urllib.request
def b64(s): return base64.b64encode(s.encode()).decode()
url, op, key = sys.argv[1], sys.argv[2], sys.argv[3]
body = {'key': b64(key)}
if op == 'put': body['value'] = b64(sys.argv[4])
if op == 'range' and key.endswith('/'):
    body['range_end'] = b64(key[:-1] + chr(ord(key[-1]) + 1))
if op == 'compaction': body = {'revision': int(key)}
if op == 'status': body = {}
path = {'put': 'kv/put', 'range': 'kv/range', 'deleterange': 'kv/deleterange', 'compaction': 'kv/compaction', 'status': 'maintenance/status'}[op]
req = urllib.request.Request(url + '/v3/' + path, data=json.dumps(body).encode(), headers={'Content-Type': 'application/json'})
reply = json.load(urllib.request.urlopen(req, timeout=5))
if op == 'range':
    for kv in reply.get('kvs', []):
        print(base64.b64decode(kv['key']).decode(), base64.b64decode(kv.get('value', '')).decode(), kv.get('lease', '0'), sep='\\t')
    print('revision', reply['header']['revision'], sep='\\t')
elif op == 'status':
    print('leader' if reply.get('leader') == reply['header']['member_id'] else 'follower')
else:
    print(reply['header']['revision'])";

impl Etcd {
    fn member(ns: &Netns, name: &str, url: String, local_port: u16, peer_url: String) -> Etcd {
        Etcd {
            child: None,
            ns_name: ns.name.clone(),
            url,
            local_url: format!("http://127.0.0.1:{local_port}"),
            data_dir: std::env::temp_dir().join(unique("etcd")),
            log: std::env::temp_dir().join(unique("etcd.log")),
            extra: Vec::new(),
            name: name.to_string(),
            initial_cluster: format!("{name}={peer_url}"),
            peer_url,
        }
    }

    /// Starts etcd in `ns`, serving clients on `ip`:2379, and waits until
    /// it answers.
    pub fn start(ns: &Netns, ip: &str) -> Etcd {
        let mut etcd = Etcd::member(
            ns,
            "test",
            format!("http://{ip}:2379"),
            2379,
            "http://127.0.0.1:2380".into(),
        );
        etcd.spawn();
        etcd.wait_ready();
        etcd
    }

    /// Starts etcd in `ns` serving clients over TLS on `ip`:2379, with
    /// client certificates required (signed by `certs`' CA).
    pub fn start_tls(ns: &Netns, ip: &str, certs: &Certs) -> Etcd {
        let mut etcd = Etcd::member(
            ns,
            "test",
            format!("https://{ip}:2379"),
            2379,
            "http://127.0.0.1:2380".into(),
        );
        let dir = certs.dir.display().to_string();
        etcd.extra = vec![
            "--cert-file".into(),
            format!("{dir}/server.pem"),
            "--key-file".into(),
            format!("{dir}/server-key.pem"),
            "--trusted-ca-file".into(),
            format!("{dir}/ca.pem"),
            "--client-cert-auth".into(),
        ];
        etcd.spawn();
        etcd.wait_ready();
        etcd
    }

    /// A cluster of one member per address in `ips` (clients on :2379,
    /// peers on :2380), all in `ns`, each ready when this returns.
    pub fn start_cluster(ns: &Netns, ips: &[&str]) -> Vec<Etcd> {
        let mut members: Vec<Etcd> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                Etcd::member(
                    ns,
                    &format!("m{i}"),
                    format!("http://{ip}:2379"),
                    22379 + 10 * i as u16,
                    format!("http://{ip}:2380"),
                )
            })
            .collect();
        let initial: Vec<String> = members.iter().map(|m| m.initial_cluster.clone()).collect();
        for m in &mut members {
            m.initial_cluster = initial.join(",");
            m.spawn();
        }
        for m in &members {
            m.wait_ready();
        }
        members
    }

    /// Starts the server again on the same data (after [`Etcd::kill`]).
    pub fn resume(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "etcd already runs");
        let listen = if self.url == self.local_url {
            self.url.clone()
        } else {
            format!("{},{}", self.local_url, self.url)
        };
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns_name, "etcd", "--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args([
                "--listen-client-urls",
                &listen,
                "--advertise-client-urls",
                &self.url,
                "--listen-peer-urls",
                &self.peer_url,
                "--initial-advertise-peer-urls",
                &self.peer_url,
                "--initial-cluster",
                &self.initial_cluster,
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .spawn()
            .expect("etcd (Debian's etcd-server; scripts/setup.sh installs it)");
        self.child = Some(child);
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.try_call(&["range", "/"]).is_none() {
            assert!(
                Instant::now() < deadline,
                "etcd did not start: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// True if this member leads the cluster now.
    pub fn is_leader(&self) -> bool {
        self.try_call(&["status", "-"])
            .is_some_and(|out| out.trim() == "leader")
    }

    /// True while the server process runs.
    pub fn child_alive(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (its data stays).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn try_call(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns_name,
                "/usr/bin/python3",
                "-c",
                CLIENT,
            ])
            .arg(&self.local_url)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn call(&self, args: &[&str]) -> String {
        self.try_call(args)
            .unwrap_or_else(|| panic!("etcd {args:?} failed"))
    }

    /// Writes a key; returns the store's revision after it.
    pub fn put(&self, key: &str, value: &str) -> i64 {
        self.call(&["put", key, value]).trim().parse().unwrap()
    }

    /// Deletes a key.
    pub fn delete(&self, key: &str) {
        self.call(&["deleterange", key]);
    }

    /// Keys under `prefix` (ending in /) or one key, with their values and
    /// etcd lease ids, and the store's revision.
    pub fn range(&self, key: &str) -> (Vec<(String, String, String)>, i64) {
        let text = self.call(&["range", key]);
        let mut kvs = Vec::new();
        let mut revision = 0;
        for line in text.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            match fields.as_slice() {
                ["revision", r] => revision = r.parse().unwrap(),
                [k, v, l] => kvs.push((k.to_string(), v.to_string(), l.to_string())),
                _ => panic!("etcd range: {line:?}"),
            }
        }
        (kvs, revision)
    }

    /// One key's value.
    pub fn get(&self, key: &str) -> Option<String> {
        self.range(key).0.into_iter().next().map(|(_, v, _)| v)
    }

    /// Refuses (TCP reset) or serves again the daemons' connections to
    /// `url`; this helper's own, on loopback, always pass.
    pub fn cut_off(&self, cut: bool) {
        let ip = self
            .url
            .trim_start_matches("http://")
            .trim_end_matches(":2379");
        let script = if cut {
            format!(
                "add table inet psw_etcd_cut\n\
                 add chain inet psw_etcd_cut input {{ type filter hook input priority 0; }}\n\
                 add rule inet psw_etcd_cut input ip daddr {ip} tcp dport 2379 reject with tcp reset\n"
            )
        } else {
            "delete table inet psw_etcd_cut\n".to_string()
        };
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &self.ns_name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft");
        use std::io::Write;
        nft.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(nft.wait().unwrap().success(), "nft: {script}");
    }

    /// Compacts the history up to `revision`.
    pub fn compact(&self, revision: i64) {
        self.call(&["compaction", &revision.to_string()]);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A CA, a server certificate for one IP address and a client
/// certificate, made with openssl (ECDSA P-256) in a directory removed on
/// drop.
pub struct Certs {
    pub dir: std::path::PathBuf,
}

impl Certs {
    pub fn new(server_ip: &str) -> Certs {
        let dir = std::env::temp_dir().join(unique("certs"));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display().to_string();
        let ssl = |args: &[&str]| super::run("openssl", args);
        // A new P-256 key, unencrypted, with its request or certificate.
        let new_key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        ssl(&[
            &["req", "-x509"][..],
            &new_key,
            &[
                "-keyout",
                &format!("{d}/ca-key.pem"),
                "-out",
                &format!("{d}/ca.pem"),
                "-days",
                "2",
                "-subj",
                "/CN=podswitch test CA",
            ],
        ]
        .concat());
        for (name, ext) in [
            ("server", format!("subjectAltName=IP:{server_ip}")),
            ("client", "extendedKeyUsage=clientAuth".to_string()),
        ] {
            ssl(&[
                &["req"][..],
                &new_key,
                &[
                    "-keyout",
                    &format!("{d}/{name}-key.pem"),
                    "-out",
                    &format!("{d}/{name}.csr"),
                    "-subj",
                    &format!("/CN={name}"),
                ],
            ]
            .concat());
            std::fs::write(format!("{d}/{name}.ext"), &ext).unwrap();
            ssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{d}/{name}.csr"),
                "-CA",
                &format!("{d}/ca.pem"),
                "-CAkey",
                &format!("{d}/ca-key.pem"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{d}/{name}.ext"),
                "-out",
                &format!("{d}/{name}.pem"),
            ]);
        }
        Certs { dir }
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
