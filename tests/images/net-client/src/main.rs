//! Outbound traffic through a real network device: `net-client tcp|udp
//! ADDR:PORT MESSAGE` connects (or sends a datagram) to ADDR:PORT, sends
//! MESSAGE and prints the first reply as `net-client: reply MESSAGE`, then
//! exits 0. Waits for DHCP first when the tender asked for it. Failures
//! print `net-client: ...` and exit 1; 5 seconds without a reply is a
//! failure.
//!
//! With user-mode networking the host's loopback is reachable at the
//! gateway: `kiln run net-client.kiln -- tcp 10.0.2.2:7000 hello`.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use core::net::SocketAddr;
use core::time::Duration;
use kiln_rt::net::{self, TcpStream, UdpSocket};
use kiln_rt::time::timeout;
use kiln_rt::{block_on, println};

kiln_rt::entry!(main, net = ["service0"]);

const LIMIT: Duration = Duration::from_secs(5);

async fn tcp(addr: SocketAddr, message: &str) -> Result<String, String> {
    let mut stream = timeout(LIMIT, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect to {addr} timed out"))?
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream
        .write_all(message.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 1024];
    let n = timeout(LIMIT, stream.read(&mut buf))
        .await
        .map_err(|_| String::from("no reply"))?
        .map_err(|e| format!("read: {e}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

async fn udp(addr: SocketAddr, message: &str) -> Result<String, String> {
    let socket = UdpSocket::bind(0).map_err(|e| format!("bind: {e}"))?;
    socket
        .send_to(message.as_bytes(), addr)
        .await
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut buf = [0u8; 1024];
    let (n, _) = timeout(LIMIT, socket.recv_from(&mut buf))
        .await
        .map_err(|_| String::from("no reply"))?
        .map_err(|e| format!("recv: {e}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn main() -> i32 {
    let mut args = kiln_rt::env::args().skip(1);
    let (Some(proto), Some(addr), Some(message)) = (args.next(), args.next(), args.next()) else {
        println!("net-client: usage: net-client tcp|udp ADDR:PORT MESSAGE");
        return 2;
    };
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        println!("net-client: not an address: {addr}");
        return 2;
    };
    let result = block_on(async move {
        timeout(LIMIT, net::wait_configured())
            .await
            .map_err(|_| String::from("no address (DHCP) in time"))?
            .map_err(|e| format!("network: {e}"))?;
        match proto {
            "tcp" => tcp(addr, message).await,
            "udp" => udp(addr, message).await,
            other => Err(format!("unknown protocol {other}")),
        }
    });
    match result {
        Ok(reply) => {
            println!("net-client: reply {reply}");
            0
        }
        Err(e) => {
            println!("net-client: {e}");
            1
        }
    }
}
