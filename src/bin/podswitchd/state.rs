//! The daemon's port attachments on disk, so that a restarted podswitchd
//! (after a crash or `kill -9`) brings every pod port back by itself, with
//! no CNI call. The file is JSON, rewritten whole on every change through
//! a temporary file, fsync and rename: a crash leaves the old file or the
//! new one, never half of one.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One attached pod port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PortRecord {
    pub(crate) interface: String,
    pub(crate) ip: String,
    pub(crate) mac: String,
    pub(crate) container_id: Option<String>,
    pub(crate) ifname: Option<String>,
    pub(crate) kind: Option<String>,
    pub(crate) anti_spoof: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Contents {
    version: u32,
    ports: Vec<PortRecord>,
}

/// The state file and what it holds.
#[derive(Debug)]
pub(crate) struct StateFile {
    path: PathBuf,
    ports: Mutex<BTreeMap<String, PortRecord>>,
}

impl StateFile {
    /// Opens `path` and returns the ports it lists (none if it does not
    /// exist). The in-memory set starts empty: restored ports are put
    /// back one by one as they reattach.
    pub(crate) fn open(path: &Path) -> Result<(StateFile, Vec<PortRecord>), String> {
        let saved = match fs::read_to_string(path) {
            Ok(text) => {
                let contents: Contents = serde_json::from_str(&text)
                    .map_err(|e| format!("state file {}: {e}", path.display()))?;
                contents.ports
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("state file {}: {e}", path.display())),
        };
        let state = StateFile {
            path: path.to_path_buf(),
            ports: Mutex::default(),
        };
        Ok((state, saved))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PortRecord>> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a port and saves.
    pub(crate) fn put(&self, record: PortRecord) -> io::Result<()> {
        let mut ports = self.lock();
        ports.insert(record.interface.clone(), record);
        self.save(&ports)
    }

    /// Forgets a port and saves.
    pub(crate) fn remove(&self, interface: &str) -> io::Result<()> {
        let mut ports = self.lock();
        ports.remove(interface);
        self.save(&ports)
    }

    /// Saves what is recorded now.
    pub(crate) fn flush(&self) -> io::Result<()> {
        self.save(&self.lock())
    }

    fn save(&self, ports: &BTreeMap<String, PortRecord>) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let contents = Contents {
            version: 1,
            ports: ports.values().cloned().collect(),
        };
        let tmp = self.path.with_extension("tmp");
        let mut file = fs::File::create(&tmp)?;
        file.write_all(serde_json::to_string_pretty(&contents)?.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_reopen_and_a_bad_file_is_an_error() {
        let dir = std::env::temp_dir().join(format!("psw-state-{}", std::process::id()));
        let path = dir.join("ports.json");
        let (state, saved) = StateFile::open(&path).unwrap();
        assert!(saved.is_empty());
        let record = PortRecord {
            interface: "psw0123".into(),
            ip: "10.244.1.2".into(),
            mac: "02:00:0a:f4:01:02".into(),
            container_id: Some("c0ffee".into()),
            ifname: Some("eth0".into()),
            kind: None,
            anti_spoof: true,
        };
        state.put(record.clone()).unwrap();
        let (_, saved) = StateFile::open(&path).unwrap();
        assert_eq!(saved, vec![record]);
        state.remove("psw0123").unwrap();
        assert!(StateFile::open(&path).unwrap().1.is_empty());
        fs::write(&path, "{not json").unwrap();
        assert!(StateFile::open(&path).unwrap_err().contains("ports.json"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
