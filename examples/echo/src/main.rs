//! Echo on port 7 (or `$PORT`), over TCP (every connection, concurrently)
//! and UDP (every datagram back to its sender, up to the 65,507 bytes an
//! IPv4 datagram can carry).
//!
//! ```text
//! kiln build examples/echo
//! kiln run -p 7007:7 target/kiln/echo.kiln       # nc 127.0.0.1 7007
//! ```
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use kiln_rt::net::{TcpListener, TcpStream, UdpSocket};
use kiln_rt::{block_on, println, spawn};

kiln_rt::entry!(main, net = ["service0"]);

fn main() -> i32 {
    let port = match kiln_rt::env::var("PORT").map(str::parse::<u16>) {
        None => 7,
        Some(Ok(port)) if port != 0 => port,
        Some(_) => {
            println!("echo: PORT must be a port number (1-65535)");
            return 2;
        }
    };
    block_on(async move {
        let (listener, udp) = match (TcpListener::bind(port), UdpSocket::bind(port)) {
            (Ok(l), Ok(u)) => (l, u),
            (Err(e), _) | (_, Err(e)) => {
                println!("echo: cannot listen on port {port}: {e}");
                return 1;
            }
        };
        spawn(async move {
            // Room for the largest datagram (65,507 bytes over IPv4); a
            // shorter buffer would cut large datagrams short.
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match udp.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        if let Err(e) = udp.send_to(&buf[..n], from).await {
                            log::debug!("echo: udp reply to {from}: {e}");
                        }
                    }
                    Err(e) => log::warn!("echo: udp: {e}"),
                }
            }
        });
        println!("echo: listening on :{port} (tcp and udp)");
        loop {
            let stream = listener.accept().await;
            spawn(echo(stream));
        }
    })
}

/// Sends back everything the peer sends, until it closes.
async fn echo(mut stream: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
