//! Delegated IPAM: the plugin named by `ipam.type`, found in CNI_PATH and
//! run as the runtime runs plugins (SPEC.md, "Delegated plugins"), in the
//! newest CNI version both it and the configuration speak.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::cni::{version_key, CniError, Code, Env, NetConf, SUPPORTED};

/// An IPAM plugin ready to run.
#[derive(Debug)]
pub(crate) struct Ipam {
    binary: PathBuf,
    /// The version its requests use.
    pub(crate) version: String,
    /// It knows GC (CNI 1.1.0).
    pub(crate) has_gc: bool,
}

impl Ipam {
    /// Finds `ipam.type` in CNI_PATH and agrees on a version with it.
    pub(crate) fn find(conf: &NetConf, env: &Env) -> Result<Ipam, CniError> {
        let binary = env
            .path
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| PathBuf::from(d).join(&conf.ipam_type))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                CniError::new(
                    Code::InvalidConfig,
                    format!("IPAM plugin {:?} is not in CNI_PATH", conf.ipam_type),
                )
                .details(format!("CNI_PATH={}", env.path))
            })?;
        let answer = run(
            &binary,
            "VERSION",
            &json!({ "cniVersion": conf.cni_version }),
            &[],
        )?;
        let theirs: Vec<String> = answer["supportedVersions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let ours = version_key(&conf.cni_version);
        let version = theirs
            .iter()
            .filter(|v| SUPPORTED.contains(&v.as_str()) && version_key(v) <= ours)
            .max_by_key(|v| version_key(v))
            .cloned()
            .ok_or_else(|| {
                CniError::new(
                    Code::IncompatibleVersion,
                    format!(
                        "IPAM plugin {} speaks none of our versions up to {}",
                        conf.ipam_type, conf.cni_version
                    ),
                )
                .details(format!("it speaks {}", theirs.join(", ")))
            })?;
        Ok(Ipam {
            has_gc: theirs.iter().any(|v| version_key(v) >= (1, 1, 0)),
            binary,
            version,
        })
    }

    /// Runs `command` for the attachment (container id, ifname).
    pub(crate) fn run(
        &self,
        command: &str,
        conf: &NetConf,
        container_id: &str,
        ifname: &str,
    ) -> Result<Value, CniError> {
        let mut stdin = conf.with_version(&self.version);
        if command == "GC" {
            // Our version for GC: the plugin said it speaks 1.1.0.
            stdin["cniVersion"] = Value::from("1.1.0");
        }
        run(
            &self.binary,
            command,
            &stdin,
            &[("CNI_CONTAINERID", container_id), ("CNI_IFNAME", ifname)],
        )
    }
}

fn run(
    binary: &PathBuf,
    command: &str,
    stdin: &Value,
    env: &[(&str, &str)],
) -> Result<Value, CniError> {
    let name = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut child = Command::new(binary)
        .env("CNI_COMMAND", command)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            CniError::new(Code::Failed, format!("cannot run IPAM plugin {name}")).details(e)
        })?;
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.to_string().as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(Code::Failed, format!("IPAM plugin {name}")).details(e))?;
    let value: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if !out.status.success() {
        // Pass the delegate's own error on, code included.
        let code = match value["code"].as_u64() {
            Some(11) => Code::TryAgainLater,
            Some(7) => Code::InvalidConfig,
            _ => Code::Failed,
        };
        let msg = value["msg"].as_str().unwrap_or("failed");
        return Err(
            CniError::new(code, format!("IPAM plugin {name} {command}: {msg}")).details(
                value["details"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned()),
            ),
        );
    }
    Ok(value)
}
