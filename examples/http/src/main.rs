//! An HTTP/1.1 server on port 80 (or `$PORT`): `/` plain text, `/json` a
//! JSON document, `/health` "ok", 404 otherwise; keep-alive, pipelining,
//! partial requests, and 400/431 for malformed or oversized heads. The
//! request logic is `handler.rs`, shared with the native baseline
//! `bench/native-http`.
//!
//! ```text
//! kiln build examples/http
//! kiln run -p 8080:80 target/kiln/http.kiln      # curl http://127.0.0.1:8080/
//! ```
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use core::time::Duration;
use http::handler::{respond, Step, MAX_HEAD, MAX_RESPONSE};
use kiln_rt::net::{self, TcpListener, TcpStream};
use kiln_rt::time::timeout;
use kiln_rt::{block_on, println, spawn};

kiln_rt::entry!(main, net = ["service0"]);

/// A connection with no complete request for this long is closed.
const IDLE: Duration = Duration::from_secs(30);
/// Responses to pipelined requests are gathered into one write of up to
/// this many bytes.
const OUT_BUFFER: usize = 4096;

fn main() -> i32 {
    let port = match kiln_rt::env::var("PORT").map(str::parse::<u16>) {
        None => 80,
        Some(Ok(port)) if port != 0 => port,
        Some(_) => {
            println!("http: PORT must be a port number (1-65535)");
            return 2;
        }
    };
    block_on(async move {
        let listener = match TcpListener::bind(port) {
            Ok(listener) => listener,
            Err(e) => {
                println!("http: cannot listen on port {port}: {e}");
                return 1;
            }
        };
        println!("http: listening on :{port}");
        spawn(async {
            if net::wait_configured().await.is_ok() {
                for (addr, prefix) in net::addresses() {
                    println!("http: address {addr}/{prefix}");
                }
            }
        });
        loop {
            let stream = listener.accept().await;
            spawn(serve(stream));
        }
    })
}

/// Serves one connection until the client closes it, an error response
/// closes it, or it idles.
async fn serve(mut stream: TcpStream) {
    stream.set_nodelay(true);
    let mut input = vec![0u8; MAX_HEAD];
    let mut out = vec![0u8; OUT_BUFFER];
    // input[start..end] is unparsed; `skip` body bytes are still to come.
    let (mut start, mut end, mut skip) = (0usize, 0usize, 0u64);
    loop {
        if end == input.len() && start > 0 {
            input.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        let n = match timeout(IDLE, stream.read(&mut input[end..])).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return,
        };
        let fresh = end;
        end += n;
        let mut written = 0;
        let mut close = false;
        // A head can only have completed if a line ended in the new bytes,
        // or if a body ended and a pipelined head was waiting behind it.
        let mut try_parse =
            skip > 0 || input[fresh..end].contains(&b'\n') || end - start >= MAX_HEAD;
        loop {
            let discard = skip.min((end - start) as u64) as usize;
            start += discard;
            skip -= discard as u64;
            if skip > 0 || start == end || !try_parse {
                break;
            }
            if out.len() - written < MAX_RESPONSE {
                if stream.write_all(&out[..written]).await.is_err() {
                    return;
                }
                written = 0;
            }
            match respond(&input[start..end], &mut out[written..]) {
                Step::NeedMore => break,
                Step::Done(done) => {
                    written += done.written;
                    start += done.head;
                    skip = done.body;
                    if done.close {
                        close = true;
                        break;
                    }
                }
            }
            try_parse = true;
        }
        if written > 0 && stream.write_all(&out[..written]).await.is_err() {
            return;
        }
        if close {
            let _ = stream.shutdown();
            return;
        }
        if start == end {
            start = 0;
            end = 0;
        }
    }
}
