//! kilnd's test subject. Listens on port 80 after `$DELAY_MS` milliseconds
//! (default 0) and answers requests of the form
//!
//! ```text
//! VERB PATH HTTP/1.1\r\n ... Content-Length: N\r\n ... \r\n <N bytes>
//! ```
//!
//! on keep-alive connections:
//! * `/crash` panics the instance (exit status 134);
//! * `/exit` ends it with status 3;
//! * `/spin` burns CPU forever (for `cpu_limit`);
//! * anything else gets `200` whose body is `BOOT_ID N ` followed by the N
//!   request body bytes, so a test can see that nothing it sent was lost
//!   and which instance answered (`BOOT_ID` is the wall clock at boot in ns).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::vec::Vec;
use core::time::Duration;
use kiln_rt::net::{TcpListener, TcpStream};
use kiln_rt::{block_on, println, spawn};

kiln_rt::entry!(main, net = ["service0"]);

fn main() -> i32 {
    let boot = kiln_rt::time::wall_clock().as_nanos() as u64;
    let delay = kiln_rt::env::var("DELAY_MS")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    if delay > 0 {
        kiln_rt::time::sleep(Duration::from_millis(delay));
    }
    block_on(async move {
        let listener = match TcpListener::bind(80) {
            Ok(l) => l,
            Err(e) => {
                println!("probe: cannot listen: {e}");
                return 1;
            }
        };
        println!("probe: listening after {delay} ms");
        loop {
            let stream = listener.accept().await;
            spawn(serve(stream, boot));
        }
    })
}

async fn serve(mut s: TcpStream, boot: u64) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // One request: the head, then Content-Length bytes.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = core::str::from_utf8(&buf[..head_end]).unwrap_or("");
        let path = head.split_whitespace().nth(1).unwrap_or("/");
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        match path {
            "/crash" => panic!("crash requested"),
            "/exit" => kiln_rt::exit(3),
            "/spin" => loop {
                core::hint::spin_loop();
            },
            _ => {}
        }
        while buf.len() < head_end + length {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let prefix = format!("{boot} {length} ");
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{prefix}",
            prefix.len() + length
        );
        if s.write_all(reply.as_bytes()).await.is_err()
            || s.write_all(&buf[head_end..head_end + length]).await.is_err()
        {
            return;
        }
        buf.drain(..head_end + length);
    }
}
