//! `kiln-bench peer`: what kilnd's protection of a link costs per frame.
//!
//! A guest (a second smoltcp interface in memory) streams TCP data to the
//! host end of a link, `kiln_peer::stack::Stack`, the endpoint kilnd runs
//! for every instance. Each round collects the frames the guest sends (a
//! window's worth of full segments) and times the host taking them in, in
//! three ways, interleaved round by round so that host noise hits each
//! alike:
//!
//! * `smoltcp alone`: `Stack::ingest_unguarded`, the baseline;
//! * `guarded`: `Stack::ingest`, the guard's parse and checks first (what
//!   kilnd runs);
//! * `guarded, catch per frame`: the same inside `catch_unwind` for every
//!   frame. kilnd catches once per wake-up of a link (up to 64 frames), so
//!   this is an upper bound of what the panic isolation costs.
//!
//! Usage: `kiln-bench peer [--rounds N]`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use kiln_peer::stack::{FrameSink, Stack};
use kiln_peer::LinkConfig;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr};

const GUEST_MAC: [u8; 6] = [0x02, 0x6b, 0x69, 0x6c, 0x6e, 0x02];

/// The guest's device: frames in from a list, frames out to a list.
struct Mem<'a> {
    rx: &'a mut Vec<Vec<u8>>,
    tx: &'a mut Vec<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.0.send(len, f)
    }
}

impl phy::Device for Mem<'_> {
    type RxToken<'b>
        = Rx
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'b>
    where
        Self: 'b;

    fn receive(&mut self, _: SmolInstant) -> Option<(Rx, Tx<'_>)> {
        if self.rx.is_empty() {
            return None;
        }
        let frame = self.rx.remove(0);
        Some((Rx(frame), Tx(self.tx)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<Tx<'_>> {
        Some(Tx(self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = kiln_peer::MAX_FRAME;
        caps
    }
}

/// Both ends of one connection, established, with the guest streaming.
struct Pair {
    host: Stack,
    host_conn: SocketHandle,
    guest: Interface,
    guest_sockets: SocketSet<'static>,
    guest_conn: SocketHandle,
    now: SmolInstant,
    /// Frames on their way to the guest.
    to_guest: Vec<Vec<u8>>,
}

impl Pair {
    fn new() -> Result<Pair, String> {
        let cfg = LinkConfig::default();
        let mut host = Stack::new(&cfg, 1).map_err(|e| e.to_string())?;
        let host_conn = host.connect(49152, 2).map_err(|e| e.to_string())?;
        let mut config = Config::new(EthernetAddress(GUEST_MAC).into());
        config.random_seed = 3;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut guest = Interface::new(
            config,
            &mut Mem {
                rx: &mut a,
                tx: &mut b,
            },
            SmolInstant::ZERO,
        );
        guest.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(cfg.guest_ip), cfg.prefix));
        });
        let mut guest_sockets = SocketSet::new(Vec::new());
        let mut listener = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
        );
        listener
            .listen(cfg.guest_port)
            .map_err(|e| format!("guest listen: {e}"))?;
        let guest_conn = guest_sockets.add(listener);
        let mut pair = Pair {
            host,
            host_conn,
            guest,
            guest_sockets,
            guest_conn,
            now: SmolInstant::ZERO,
            to_guest: Vec::new(),
        };
        for _ in 0..20 {
            let frames = pair.exchange();
            for f in &frames {
                pair.host.ingest(pair.now, f, &mut pair.to_guest).ok();
            }
            if pair.host.socket(host_conn).state() == tcp::State::Established {
                return Ok(pair);
            }
        }
        Err("the in-memory connection was not established".into())
    }

    /// Delivers what the host sent to the guest, lets the guest fill its
    /// send buffer and send; returns the guest's frames.
    fn exchange(&mut self) -> Vec<Vec<u8>> {
        self.now += smoltcp::time::Duration::from_millis(1);
        self.host.egress(self.now, &mut self.to_guest);
        let mut out = Vec::new();
        {
            let mut dev = Mem {
                rx: &mut self.to_guest,
                tx: &mut out,
            };
            self.guest.poll(self.now, &mut dev, &mut self.guest_sockets);
            let s = self.guest_sockets.get_mut::<tcp::Socket>(self.guest_conn);
            if s.can_send() {
                let _ = s.send(|buf| {
                    buf.fill(0x42);
                    (buf.len(), ())
                });
            }
            self.guest.poll(self.now, &mut dev, &mut self.guest_sockets);
        }
        out
    }

    /// The host's client reads everything that arrived.
    fn drain(&mut self) {
        let s = self.host.socket(self.host_conn);
        while s.can_recv() {
            if s.recv(|b| (b.len(), b.len())).unwrap_or(0) == 0 {
                break;
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Way {
    Unguarded,
    Guarded,
    GuardedCaught,
}

const WAYS: [(Way, &str); 3] = [
    (Way::Unguarded, "smoltcp alone (baseline)"),
    (Way::Guarded, "guarded (what kilnd runs)"),
    (Way::GuardedCaught, "guarded, catch_unwind per frame"),
];

/// Nanoseconds per frame for one batch taken in `way`.
fn take(pair: &mut Pair, frames: &[Vec<u8>], way: Way) -> f64 {
    let now = pair.now;
    let start = Instant::now();
    for f in frames {
        match way {
            Way::Unguarded => pair.host.ingest_unguarded(now, f, &mut pair.to_guest),
            Way::Guarded => {
                let _ = pair.host.ingest(now, f, &mut pair.to_guest);
            }
            Way::GuardedCaught => {
                let host = &mut pair.host;
                let sink = &mut pair.to_guest;
                let _ = catch_unwind(AssertUnwindSafe(|| host.ingest(now, f, sink)));
            }
        }
    }
    start.elapsed().as_nanos() as f64 / frames.len() as f64
}

pub fn main(args: Vec<String>) -> i32 {
    let mut rounds = 3000;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => match it.next().and_then(|v| v.parse().ok()) {
                Some(n) => rounds = n,
                None => {
                    eprintln!("--rounds takes a number");
                    return 2;
                }
            },
            _ => {
                println!("usage: kiln-bench peer [--rounds N]");
                return if a == "-h" || a == "--help" { 0 } else { 2 };
            }
        }
    }
    let mut pair = match Pair::new() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("kiln-bench peer: {e}");
            return 1;
        }
    };
    let mut samples: [Vec<f64>; 3] = Default::default();
    let mut frames_total = 0usize;
    for round in 0..rounds {
        let frames = pair.exchange();
        if frames.is_empty() {
            pair.drain();
            continue;
        }
        frames_total += frames.len();
        let i = round % WAYS.len();
        samples[i].push(take(&mut pair, &frames, WAYS[i].0));
        pair.drain();
    }
    let received = pair.host.socket(pair.host_conn).state();
    if received != tcp::State::Established {
        eprintln!("kiln-bench peer: the connection ended ({received}); figures are void");
        return 1;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let base = median(&mut samples[0].clone());
    println!(
        "Host end of a link taking in full TCP segments ({} frames in {} rounds; median of per-round ns/frame)",
        frames_total, rounds
    );
    println!("| way | ns per frame | vs smoltcp alone |");
    println!("|---|---:|---:|");
    for (i, (_, name)) in WAYS.iter().enumerate() {
        let m = median(&mut samples[i]);
        println!("| {name} | {m:.0} | {:.3}x |", m / base);
    }
    0
}
