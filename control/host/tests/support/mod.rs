//! What the tests against the running kernel share: network namespaces
//! of their own, removed when dropped.

#![allow(dead_code, unreachable_pub)]

use std::process::Command;

/// A namespace deleted on drop.
pub struct Namespace(pub String);

impl Namespace {
    /// A new namespace named after the test process and `what` (needs
    /// root and iproute2, and says so when missing).
    pub fn new(what: &str) -> Namespace {
        let name = format!("psw-t{}-host-{what}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("ip netns add: this test needs iproute2");
        assert!(
            out.status.success(),
            "ip netns add (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Namespace(name)
    }

    /// Its path, for `setns`.
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }

    /// `ip -n NAME args`: its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.0])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
