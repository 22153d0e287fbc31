//! The native baseline of the kiln http example: the very same request
//! handler (`examples/http/src/handler.rs`, included below) served by an
//! ordinary Linux process, so that `wrk` against the unikernel and against
//! this process compares the platforms, not two different servers.
//!
//! ```text
//! native-http [PORT] [--threads]
//! ```
//!
//! Default: one thread running an epoll loop (non-blocking sockets, level
//! triggered), which is what the unikernel is too — one thread, an event
//! loop. `--threads` serves each connection on its own thread with blocking
//! I/O instead. Port 8080 unless given. Prints `native-http: listening on
//! :PORT` when ready.

#[path = "../../../examples/http/src/handler.rs"]
mod handler;

mod epoll;

use handler::{respond, Step, MAX_HEAD, MAX_RESPONSE};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// Responses to pipelined requests are gathered into one write of up to
/// this many bytes (as in the image).
const OUT_BUFFER: usize = 4096;
/// A connection with no request for this long is closed (as in the image).
const IDLE: Duration = Duration::from_secs(30);

/// Parsing state of one connection, shared by both server modes: the
/// same loop as the image's `serve`.
pub struct Conn {
    input: Vec<u8>,
    start: usize,
    end: usize,
    skip: u64,
}

/// What to do after feeding a connection its new bytes.
pub struct Fed {
    /// Response bytes to send (in the caller's output buffer).
    pub written: usize,
    /// Close after sending.
    pub close: bool,
}

impl Conn {
    pub fn new() -> Self {
        Conn {
            input: vec![0; MAX_HEAD],
            start: 0,
            end: 0,
            skip: 0,
        }
    }

    /// Room for the next read (compacting first if needed).
    pub fn spare(&mut self) -> &mut [u8] {
        if self.end == self.input.len() && self.start > 0 {
            self.input.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.input[self.end..]
    }

    /// `n` bytes were read into [`spare`](Self::spare): answer what can be
    /// answered. `flush` is called when `out` fills up.
    pub fn feed(&mut self, n: usize, out: &mut [u8], mut flush: impl FnMut(&[u8]) -> bool) -> Fed {
        let fresh = self.end;
        self.end += n;
        let mut written = 0;
        let mut try_parse = self.skip > 0
            || self.input[fresh..self.end].contains(&b'\n')
            || self.end - self.start >= MAX_HEAD;
        loop {
            let discard = self.skip.min((self.end - self.start) as u64) as usize;
            self.start += discard;
            self.skip -= discard as u64;
            if self.skip > 0 || self.start == self.end || !try_parse {
                break;
            }
            if out.len() - written < MAX_RESPONSE {
                if !flush(&out[..written]) {
                    return Fed {
                        written: 0,
                        close: true,
                    };
                }
                written = 0;
            }
            match respond(&self.input[self.start..self.end], &mut out[written..]) {
                Step::NeedMore => break,
                Step::Done(done) => {
                    written += done.written;
                    self.start += done.head;
                    self.skip = done.body;
                    if done.close {
                        return Fed {
                            written,
                            close: true,
                        };
                    }
                }
            }
            try_parse = true;
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Fed {
            written,
            close: false,
        }
    }
}

impl Default for Conn {
    fn default() -> Self {
        Self::new()
    }
}

/// Thread-per-connection: blocking reads and writes.
fn serve_blocking(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IDLE));
    let mut conn = Conn::new();
    let mut out = vec![0u8; OUT_BUFFER];
    loop {
        let n = match stream.read(conn.spare()) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut writer = &stream;
        let fed = conn.feed(n, &mut out, |bytes| writer.write_all(bytes).is_ok());
        if fed.written > 0 && (&stream).write_all(&out[..fed.written]).is_err() {
            return;
        }
        if fed.close {
            let _ = stream.shutdown(std::net::Shutdown::Write);
            return;
        }
    }
}

fn main() -> ExitCode {
    let mut port = 8080u16;
    let mut threads = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--threads" => threads = true,
            "-h" | "--help" => {
                println!("usage: native-http [PORT] [--threads]");
                return ExitCode::SUCCESS;
            }
            p => match p.parse() {
                Ok(p) => port = p,
                Err(_) => {
                    eprintln!("native-http: not a port: {p}");
                    return ExitCode::from(2);
                }
            },
        }
    }
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("native-http: cannot listen on port {port}: {e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "native-http: listening on :{port} ({})",
        if threads {
            "thread per connection"
        } else {
            "epoll, one thread"
        }
    );
    if threads {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve_blocking(stream));
        }
        ExitCode::SUCCESS
    } else {
        match epoll::serve(listener) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("native-http: {e}");
                ExitCode::from(1)
            }
        }
    }
}
