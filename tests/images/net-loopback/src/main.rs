//! Exercises kiln-rt's socket API end to end without any host device: a
//! stack on the in-image loopback device, echo servers and clients as
//! tasks. TCP round trips of 0, 1, 1500 and 100 000 bytes over IPv4 and
//! IPv6, UDP round trips, 50 concurrent connections, timeouts, refused
//! connections, and no sockets left over. Prints `net-loopback ok`, or
//! `net-loopback: ...` and exits 1.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use core::time::Duration;
use kiln_rt::executor::sleep;
use kiln_rt::net::{self, Error, TcpListener, TcpStream, UdpSocket};
use kiln_rt::time::{timeout, Instant};
use kiln_rt::{block_on, println, spawn};

kiln_rt::entry!(main);

fn v4(port: u16) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)
}

fn v6(port: u16) -> SocketAddr {
    SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port)
}

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251 + seed) as u8).collect()
}

/// Echoes one connection until the peer closes.
async fn echo(mut stream: TcpStream) {
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

/// Sends `data` while reading the echo, then half-closes and reads to EOF.
async fn round_trip(addr: SocketAddr, data: &[u8]) -> Result<Vec<u8>, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut received, mut sent) = (Vec::new(), 0);
    let mut buf = vec![0u8; 3000];
    while sent < data.len() {
        sent += stream
            .write(&data[sent..])
            .await
            .map_err(|e| format!("write: {e}"))?;
        while let Ok(Ok(n)) = timeout(Duration::from_millis(1), stream.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
        }
    }
    stream.shutdown().map_err(|e| format!("shutdown: {e}"))?;
    loop {
        let n = timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .map_err(|_| String::from("read timed out"))?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Ok(received);
        }
        received.extend_from_slice(&buf[..n]);
    }
}

async fn check_tcp() -> Result<(), String> {
    for addr in [v4(7), v6(7)] {
        for len in [0usize, 1, 1500, 100_000] {
            let data = pattern(len, 1);
            if round_trip(addr, &data).await? != data {
                return Err(format!("TCP {addr}: {len} bytes came back different"));
            }
        }
    }
    Ok(())
}

async fn check_concurrent() -> Result<(), String> {
    let clients: Vec<_> = (0..50)
        .map(|i| {
            spawn(async move {
                let data = pattern(2000 + i * 13, i);
                round_trip(v4(7), &data).await.map(|back| back == data)
            })
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        if !client.await? {
            return Err(format!("concurrent client {i}: wrong echo"));
        }
    }
    Ok(())
}

async fn check_udp() -> Result<(), String> {
    let server = UdpSocket::bind(7).map_err(|e| format!("udp bind: {e}"))?;
    spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = server.recv_from(&mut buf).await {
            let _ = server.send_to(&buf[..n], from).await;
        }
    });
    let client = UdpSocket::bind(0).map_err(|e| format!("udp bind 0: {e}"))?;
    for (addr, len) in [
        (v4(7), 0),
        (v4(7), 1),
        (v4(7), 1472),
        (v6(7), 100),
        (v6(7), 1452),
    ] {
        let data = pattern(len, 3);
        client
            .send_to(&data, addr)
            .await
            .map_err(|e| format!("udp send {len} to {addr}: {e}"))?;
        let mut buf = [0u8; 2048];
        let (n, from) = timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .map_err(|_| format!("udp echo of {len} bytes from {addr} never came"))?
            .map_err(|e| format!("udp recv: {e}"))?;
        if from != addr || buf[..n] != data[..] {
            return Err(format!(
                "udp echo of {len} bytes from {addr} is wrong ({n} from {from})"
            ));
        }
    }
    if client.send_to(&[0; 1473], v4(7)).await != Err(Error::MessageTooLong) {
        return Err("an oversized datagram was not refused".into());
    }
    Ok(())
}

async fn check_timeouts_and_refusal() -> Result<(), String> {
    let quiet = TcpListener::bind(9).map_err(|e| format!("bind 9: {e}"))?;
    let start = Instant::now();
    if timeout(Duration::from_millis(50), quiet.accept())
        .await
        .is_ok()
    {
        return Err("accept on a quiet port returned".into());
    }
    if start.elapsed() < Duration::from_millis(50) {
        return Err("timeout fired early".into());
    }
    match TcpStream::connect(v4(10)).await {
        Err(Error::ConnectionRefused) => {}
        other => return Err(format!("connect to a closed port: {other:?}")),
    }
    // A silent peer: connected, never answers; the read times out.
    let mut idle = TcpStream::connect(v4(9))
        .await
        .map_err(|e| format!("connect 9: {e}"))?;
    let mut buf = [0u8; 4];
    if timeout(Duration::from_millis(20), idle.read(&mut buf))
        .await
        .is_ok()
    {
        return Err("read from a silent peer returned".into());
    }
    Ok(())
}

async fn run() -> Result<(), String> {
    net::init_loopback().map_err(|e| format!("init: {e}"))?;
    let listener = TcpListener::bind(7).map_err(|e| format!("bind 7: {e}"))?;
    spawn(async move {
        loop {
            let stream = listener.accept().await;
            spawn(echo(stream));
        }
    });
    // The listener's backlog is set up; remember the socket count.
    let baseline = net::stats().tcp_sockets;
    check_tcp().await?;
    check_concurrent().await?;
    check_udp().await?;
    check_timeouts_and_refusal().await?;
    // Every closed connection is freed. Closing finishes in the background
    // (FIN exchanges on the stack's own timers), so wait for it, bounded: a
    // real leak still fails, a slow close under load does not.
    let mut stats = net::stats();
    for _ in 0..200 {
        if stats.tcp_sockets == baseline {
            break;
        }
        sleep(Duration::from_millis(50)).await;
        stats = net::stats();
    }
    if stats.tcp_sockets != baseline {
        return Err(format!("sockets leaked: {baseline} before, now {stats:?}"));
    }
    println!(
        "net-loopback: {} frames each way, {} TCP sockets at the end",
        stats.rx_frames, stats.tcp_sockets
    );
    Ok(())
}

fn main() -> i32 {
    match block_on(run()) {
        Ok(()) => {
            println!("net-loopback ok");
            0
        }
        Err(e) => {
            println!("net-loopback: {e}");
            1
        }
    }
}
