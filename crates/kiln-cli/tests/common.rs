//! Shared by the boot tests: building images once and running `kiln`.
//! What the other crates' tests share too is in kiln-testkit.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub use kiln_testkit::root;

/// The kiln binary under test.
pub fn kiln() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.current_dir(root());
    c
}

/// Builds the crate at `dir` (relative to the root) with the kiln under
/// test, once per test process, and returns the image path.
pub fn image(dir: &str) -> std::path::PathBuf {
    kiln_testkit::image(Path::new(env!("CARGO_BIN_EXE_kiln")), dir)
}

/// Whether hvt can run here; prints a loud notice when it cannot.
pub fn hvt_available() -> bool {
    kiln_testkit::hvt_available("hvt boot tests")
}

/// The tenders to test on this host.
pub fn tenders() -> Vec<&'static str> {
    kiln_testkit::tenders("hvt boot tests")
}

/// Result of one `kiln run`.
pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

fn finish(out: Output) -> Run {
    use std::os::unix::process::ExitStatusExt;
    Run {
        status: out
            .status
            .code()
            .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0)),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `kiln run --tender T [extra...] IMAGE [args...]`.
pub fn run(tender: &str, image: &Path, extra: &[&str], args: &[&str]) -> Run {
    let mut c = kiln();
    c.args(["run", "--tender", tender]).args(extra).arg(image);
    if !args.is_empty() {
        c.arg("--").args(args);
    }
    finish(c.output().expect("run kiln"))
}

/// An Ethernet frame carrying a TCP SYN (no options but the MSS) from
/// `src` to `dst`, with correct IPv4 and TCP checksums.
pub fn tcp_syn_frame(
    (src_mac, src_ip, src_port): ([u8; 6], [u8; 4], u16),
    (dst_mac, dst_ip, dst_port): ([u8; 6], [u8; 4], u16),
) -> Vec<u8> {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Address,
        Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    };
    let (src, dst) = (Ipv4Address::from(src_ip), Ipv4Address::from(dst_ip));
    let tcp = TcpRepr {
        src_port,
        dst_port,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(1),
        ack_number: None,
        window_len: 65_535,
        window_scale: None,
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(src_mac),
        dst_addr: EthernetAddress(dst_mac),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut bytes = vec![0u8; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
    let caps = ChecksumCapabilities::default();
    let mut frame = EthernetFrame::new_unchecked(&mut bytes[..]);
    eth.emit(&mut frame);
    let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut packet, &caps);
    let mut segment = TcpPacket::new_unchecked(packet.payload_mut());
    tcp.emit(&mut segment, &src.into(), &dst.into(), &caps);
    bytes
}
