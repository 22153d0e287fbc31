//! Any bytes a client sends kilnd's API, on the UNIX socket or on TCP,
//! through kilnd's real connection handling (`api::serve_conn`: hyper's
//! parser with kilnd's limits, the access policy, the router, the
//! handlers) of a daemon with no services, over an in-memory pipe.
//!
//! Properties: no panic, the connection ends once the client has sent
//! everything and closed its side, and on TCP nothing succeeds (2xx)
//! unless the request carried the token.
#![no_main]

use kilnd::api::{self, Api};
use kilnd::daemon::{Daemon, Verbosity};
use kilnd_api::Token;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The TCP API's token in this harness (the seed corpus uses it).
const TOKEN: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

struct World {
    rt: tokio::runtime::Runtime,
    api: Arc<Api>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let api = rt.block_on(async {
            Arc::new(Api {
                // No services; a reload reads a file that is not there.
                daemon: Daemon::new(
                    "/nonexistent/kiln".into(),
                    "/nonexistent/services.toml".into(),
                    Verbosity::Quiet,
                ),
                quit: Arc::new(tokio::sync::Notify::new()),
                token: Token::from_hex(TOKEN),
            })
        });
        World { rt, api }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, request)) = data.split_first() else {
        return;
    };
    let tcp = mode & 1 == 1;
    let w = world();
    let out = w.rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(16 * 1024);
        let local = tcp.then(|| "127.0.0.1:7070".parse().unwrap());
        let conn = tokio::spawn(api::serve_conn(server, w.api.clone(), local));
        let (mut rd, mut wr) = tokio::io::split(&mut client);
        let send = async {
            let _ = wr.write_all(request).await;
            let _ = wr.shutdown().await;
        };
        let mut out = Vec::new();
        let recv = rd.read_to_end(&mut out);
        let _ = tokio::join!(send, recv);
        conn.await.expect("the connection task does not panic");
        out
    });
    if tcp
        && !request
            .windows(TOKEN.len())
            .any(|w| w.eq_ignore_ascii_case(TOKEN.as_bytes()))
    {
        for status in statuses(&out) {
            assert!(
                !(200..300).contains(&status),
                "a TCP request without the token succeeded: {}",
                String::from_utf8_lossy(&out)
            );
        }
    }
});

/// The status of each response in `out` (heads found one after the other,
/// each body skipped by its Content-Length, so that text in a body is
/// never taken for a status line).
fn statuses(mut out: &[u8]) -> Vec<u16> {
    let mut found = Vec::new();
    while let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&out[..end]);
        let status = head.get(9..12).and_then(|s| s.parse::<u16>().ok());
        assert!(head.starts_with("HTTP/1.") && status.is_some(), "{head}");
        found.extend(status);
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        out = &out[(end + 4 + length).min(out.len())..];
    }
    found
}
