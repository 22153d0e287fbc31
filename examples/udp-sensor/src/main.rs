//! Receives sensor readings as UDP datagrams on port 9000 (or `$PORT`), one
//! reading per datagram: `SENSOR_ID VALUE` (for example `kitchen 21.5`).
//! Every second it prints count, min, max and mean per sensor for that
//! second; at exit (after `$SECONDS` seconds, or on a datagram `exit`) the
//! totals.
//!
//! ```text
//! kiln build examples/udp-sensor
//! kiln run -p 9000:9000 target/kiln/udp-sensor.kiln   # echo "kitchen 21.5" | nc -u -w0 127.0.0.1 9000
//! ```
#![no_std]
#![no_main]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::string::String;
use core::cell::RefCell;
use core::time::Duration;
use kiln_rt::executor::sleep_until;
use kiln_rt::net::UdpSocket;
use kiln_rt::time::Instant;
use kiln_rt::{block_on, println, spawn};

kiln_rt::entry!(main, net = ["service0"]);

/// Distinct sensors tracked at most (more are counted as rejected).
const MAX_SENSORS: usize = 1024;
/// Longest sensor id.
const MAX_ID: usize = 64;

/// Aggregates of one sensor.
#[derive(Clone, Copy, Debug)]
struct Agg {
    count: u64,
    min: f64,
    max: f64,
    sum: f64,
}

impl Agg {
    fn new(v: f64) -> Self {
        Agg {
            count: 1,
            min: v,
            max: v,
            sum: v,
        }
    }

    fn add(&mut self, v: f64) {
        self.count += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += v;
    }
}

#[derive(Default)]
struct State {
    window: BTreeMap<String, Agg>,
    total: BTreeMap<String, Agg>,
    rejected: u64,
    exit: bool,
}

/// A reading from a datagram, if it is one: `(sensor id, value)`.
fn parse(datagram: &[u8]) -> Option<(&str, f64)> {
    let text = core::str::from_utf8(datagram).ok()?.trim();
    let (id, value) = text.split_once(char::is_whitespace)?;
    let value: f64 = value.trim().parse().ok()?;
    let id_ok = !id.is_empty() && id.len() <= MAX_ID && id.bytes().all(|b| b.is_ascii_graphic());
    (id_ok && value.is_finite()).then_some((id, value))
}

fn record(map: &mut BTreeMap<String, Agg>, id: &str, value: f64) -> bool {
    if let Some(agg) = map.get_mut(id) {
        agg.add(value);
        return true;
    }
    if map.len() >= MAX_SENSORS {
        return false;
    }
    map.insert(String::from(id), Agg::new(value));
    true
}

fn print(label: &str, map: &BTreeMap<String, Agg>) {
    for (id, a) in map {
        println!(
            "udp-sensor: {label} {id}: count={} min={:.3} max={:.3} mean={:.3}",
            a.count,
            a.min,
            a.max,
            a.sum / a.count as f64
        );
    }
}

fn main() -> i32 {
    let port = match kiln_rt::env::var("PORT").map(str::parse::<u16>) {
        None => 9000,
        Some(Ok(port)) if port != 0 => port,
        Some(_) => {
            println!("udp-sensor: PORT must be a port number (1-65535)");
            return 2;
        }
    };
    let run_for = match kiln_rt::env::var("SECONDS").map(str::parse::<u64>) {
        None => None,
        Some(Ok(s)) => Some(Duration::from_secs(s)),
        Some(Err(_)) => {
            println!("udp-sensor: SECONDS must be a whole number");
            return 2;
        }
    };
    let socket = match UdpSocket::bind(port) {
        Ok(s) => s,
        Err(e) => {
            println!("udp-sensor: cannot listen on port {port}: {e}");
            return 1;
        }
    };
    println!("udp-sensor: listening on :{port}");
    let state = Rc::new(RefCell::new(State::default()));
    block_on(async move {
        let receiver = state.clone();
        spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, _from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let mut s = receiver.borrow_mut();
                if buf[..n].trim_ascii() == b"exit" {
                    s.exit = true;
                    continue;
                }
                let accepted = match parse(&buf[..n]) {
                    Some((id, value)) => {
                        let State { window, total, .. } = &mut *s;
                        record(total, id, value) && record(window, id, value)
                    }
                    None => false,
                };
                if !accepted {
                    s.rejected += 1;
                }
            }
        });
        let start = Instant::now();
        let mut tick = start;
        loop {
            tick += Duration::from_secs(1);
            sleep_until(tick).await;
            let mut s = state.borrow_mut();
            print("last second", &s.window);
            s.window.clear();
            let done = s.exit || run_for.is_some_and(|d| start.elapsed() >= d);
            if done {
                print("total", &s.total);
                println!("udp-sensor: {} datagrams rejected", s.rejected);
                return 0;
            }
        }
    })
}
