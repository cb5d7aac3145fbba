//! `podswitchctl explain`: a frame layer by layer.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use podswitch_encap::dissect::{dissect, DissectOptions};
use podswitch_encap::{hex, pcap};

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["file", "hex"])))]
pub(crate) struct ExplainArgs {
    /// A pcap file (Ethernet link type) whose frames to explain.
    file: Option<PathBuf>,
    /// A frame given as hex digits instead of a file (spaces and colons allowed).
    #[arg(long, value_name = "HEX")]
    hex: Option<String>,
    /// Explain only frame N of the file (1-based, as Wireshark numbers them).
    #[arg(long, short = 'n', value_name = "N")]
    frame: Option<usize>,
    /// Extra UDP port to read as VXLAN (4789 and 8472 always are).
    #[arg(long, value_name = "PORT")]
    vxlan_port: Vec<u16>,
    /// Extra UDP port to read as flannel IP-in-UDP (8285 always is).
    #[arg(long, value_name = "PORT")]
    udp_port: Vec<u16>,
}

pub(crate) fn explain(args: &ExplainArgs) -> Result<bool> {
    let mut options = DissectOptions::default();
    options.vxlan_ports.extend(&args.vxlan_port);
    options.ip_in_udp_ports.extend(&args.udp_port);
    let frames: Vec<Vec<u8>> = if let Some(text) = &args.hex {
        vec![hex::decode(text).context("--hex")?]
    } else {
        let path = args.file.as_ref().expect("clap requires a file or --hex");
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let reader = pcap::PcapReader::new(BufReader::new(file))
            .with_context(|| format!("{}", path.display()))?;
        if reader.linktype() != pcap::LINKTYPE_ETHERNET {
            bail!(
                "{}: link type {} is not Ethernet (1)",
                path.display(),
                reader.linktype()
            );
        }
        reader
            .records()
            .with_context(|| format!("{}", path.display()))?
            .into_iter()
            .map(|r| r.data)
            .collect()
    };
    let selected: Vec<(usize, &Vec<u8>)> = match args.frame {
        Some(n) if n == 0 || n > frames.len() => bail!(
            "frame {n} does not exist: the input has {} frame(s)",
            frames.len()
        ),
        Some(n) => vec![(n, &frames[n - 1])],
        None => frames.iter().enumerate().map(|(i, f)| (i + 1, f)).collect(),
    };
    let mut clean = true;
    for (n, frame) in selected {
        if frames.len() > 1 {
            println!("=== frame {n}");
        }
        let d = dissect(frame, &options);
        clean &= d.problems().is_empty();
        print!("{d}");
    }
    Ok(clean)
}
