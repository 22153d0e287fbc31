//! The HTTP/1.1 request → response logic of the http example, free of I/O,
//! of `std` and of allocation, so that the kiln image and the native
//! baseline (`bench/native-http`, which includes this file) serve exactly
//! the same thing.
//!
//! The caller keeps the bytes it has read and calls [`respond`] on them:
//!
//! * [`Step::NeedMore`]: the request head is not complete yet; read more;
//! * [`Step::Done`]: one request was handled: the response is in the output
//!   buffer; drop `head` bytes of input, then discard `body` more bytes (the
//!   request's body, which may not have arrived yet), and close after
//!   sending if `close` is set. Call again for the next (pipelined)
//!   request.
//!
//! Routes (GET and HEAD): `/` plain text, `/json` a JSON document, `/health`
//! "ok"; anything else 404. Other methods get 405. Heads over
//! [`MAX_HEAD`] bytes or [`MAX_HEADERS`] lines get 431, malformed requests
//! 400, unsupported versions 505, `Transfer-Encoding` 501 — and the
//! connection is closed after each of those.

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most header lines accepted.
pub const MAX_HEADERS: usize = 64;
/// The output buffer must have room for this many bytes per response.
pub const MAX_RESPONSE: usize = 512;

/// Body of `/`.
pub const ROOT_BODY: &str = "Hello from kiln!\n";
/// Body of `/json`.
pub const JSON_BODY: &str = "{\"message\":\"Hello from kiln!\",\"server\":\"kiln\"}";

/// What [`respond`] did with the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The head is incomplete: read more input and call again.
    NeedMore,
    /// One request was answered.
    Done(Done),
}

/// One answered request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Done {
    /// Input bytes of the request head (to drop from the input).
    pub head: usize,
    /// Body bytes that follow the head (to discard as they arrive).
    pub body: u64,
    /// Bytes of response written to the output buffer.
    pub written: usize,
    /// Close the connection after sending the response.
    pub close: bool,
    /// The status code sent.
    pub status: u16,
}

/// Handles the first request in `input`, writing the response into `out`
/// (which needs [`MAX_RESPONSE`] bytes of room).
pub fn respond(input: &[u8], out: &mut [u8]) -> Step {
    match parse(input) {
        Parsed::Incomplete if input.len() >= MAX_HEAD => {
            finish(out, input.len(), 0, Reply::error(431), true)
        }
        Parsed::Incomplete => Step::NeedMore,
        Parsed::Bad { status } => finish(out, input.len(), 0, Reply::error(status), true),
        Parsed::Request(req) => {
            let reply = route(&req);
            let close = !req.keep_alive;
            finish(out, req.head_len, req.body_len, reply, close)
        }
    }
}

/// A response to write.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: &'static str,
    /// HEAD: headers only.
    head_only: bool,
    allow: bool,
}

impl Reply {
    fn ok(content_type: &'static str, body: &'static str) -> Reply {
        Reply {
            status: 200,
            content_type,
            body,
            head_only: false,
            allow: false,
        }
    }

    fn error(status: u16) -> Reply {
        Reply {
            status,
            content_type: "text/plain",
            body: match status {
                404 => "not found\n",
                405 => "method not allowed\n",
                431 => "request header fields too large\n",
                501 => "not implemented\n",
                505 => "HTTP version not supported\n",
                _ => "bad request\n",
            },
            head_only: false,
            allow: status == 405,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "Internal Server Error",
    }
}

fn route(req: &Request<'_>) -> Reply {
    let path = match req.target.iter().position(|&b| b == b'?') {
        Some(q) => &req.target[..q],
        None => req.target,
    };
    let mut reply = match path {
        b"/" => Reply::ok("text/plain; charset=utf-8", ROOT_BODY),
        b"/json" => Reply::ok("application/json", JSON_BODY),
        b"/health" => Reply::ok("text/plain", "ok"),
        _ => Reply::error(404),
    };
    match req.method {
        b"GET" => {}
        b"HEAD" => reply.head_only = true,
        _ => reply = Reply::error(405),
    }
    reply
}

/// Writes `reply` into `out` and reports the step.
fn finish(out: &mut [u8], head: usize, body: u64, reply: Reply, close: bool) -> Step {
    let mut w = Writer { out, len: Some(0) };
    let mut status_digits = [0u8; 3];
    let mut n = reply.status;
    for d in status_digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    w.put(b"HTTP/1.1 ");
    w.put(&status_digits);
    w.put(b" ");
    w.put(reason(reply.status).as_bytes());
    w.put(b"\r\nServer: kiln\r\nContent-Type: ");
    w.put(reply.content_type.as_bytes());
    w.put(b"\r\nContent-Length: ");
    w.put_number(reply.body.len());
    if reply.allow {
        w.put(b"\r\nAllow: GET, HEAD");
    }
    if close {
        w.put(b"\r\nConnection: close");
    }
    w.put(b"\r\n\r\n");
    if !reply.head_only {
        w.put(reply.body.as_bytes());
    }
    match w.len {
        Some(written) => Step::Done(Done {
            head,
            body,
            written,
            close,
            status: reply.status,
        }),
        // The caller's buffer is too small: send nothing, close.
        None => Step::Done(Done {
            head,
            body,
            written: 0,
            close: true,
            status: 500,
        }),
    }
}

/// Appends to a byte buffer; `len` becomes `None` once something did not fit.
struct Writer<'a> {
    out: &'a mut [u8],
    len: Option<usize>,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let Some(len) = self.len else { return };
        match self.out.get_mut(len..len + bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.len = Some(len + bytes.len());
            }
            None => self.len = None,
        }
    }

    fn put_number(&mut self, mut n: usize) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.put(&digits[i..]);
    }
}

/// A parsed request head.
struct Request<'a> {
    method: &'a [u8],
    target: &'a [u8],
    keep_alive: bool,
    head_len: usize,
    body_len: u64,
}

enum Parsed<'a> {
    Incomplete,
    Bad { status: u16 },
    Request(Request<'a>),
}

/// Splits off one line ending in LF (a CR before it is dropped): the line
/// and the rest, or `None` if no LF is there yet.
fn line(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let lf = input.iter().position(|&b| b == b'\n')?;
    let line = &input[..lf];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Some((line, &input[lf + 1..]))
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn parse(input: &[u8]) -> Parsed<'_> {
    // Empty lines before the request line are allowed (RFC 9112 2.2).
    let mut rest = input;
    let mut skipped = 0;
    while let Some(after) = rest
        .strip_prefix(b"\r\n")
        .or_else(|| rest.strip_prefix(b"\n"))
    {
        if skipped >= 8 {
            return Parsed::Bad { status: 400 };
        }
        rest = after;
        skipped += 1;
    }
    let Some((request_line, mut rest)) = line(rest) else {
        return Parsed::Incomplete;
    };
    let mut parts = request_line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parsed::Bad { status: 400 };
    };
    if method.is_empty() || !method.iter().all(|&b| is_token(b)) {
        return Parsed::Bad { status: 400 };
    }
    if !target.starts_with(b"/") || target.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Parsed::Bad { status: 400 };
    }
    let http11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        v if v.starts_with(b"HTTP/") && v.len() == 8 => return Parsed::Bad { status: 505 },
        _ => return Parsed::Bad { status: 400 },
    };
    let mut keep_alive = http11;
    let mut content_length: Option<u64> = None;
    let mut host = false;
    let mut headers = 0;
    loop {
        let Some((header, after)) = line(rest) else {
            return Parsed::Incomplete;
        };
        rest = after;
        if header.is_empty() {
            break;
        }
        headers += 1;
        if headers > MAX_HEADERS {
            return Parsed::Bad { status: 431 };
        }
        let Some(colon) = header.iter().position(|&b| b == b':') else {
            return Parsed::Bad { status: 400 };
        };
        let name = &header[..colon];
        let value = trim(&header[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
            return Parsed::Bad { status: 400 };
        }
        if value.iter().any(|&b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return Parsed::Bad { status: 400 };
        }
        if name.eq_ignore_ascii_case(b"host") {
            if host {
                return Parsed::Bad { status: 400 };
            }
            host = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for option in value.split(|&b| b == b',').map(trim) {
                if option.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if option.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let Some(n) = parse_length(value) else {
                return Parsed::Bad { status: 400 };
            };
            if content_length.is_some_and(|old| old != n) {
                return Parsed::Bad { status: 400 };
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Chunked bodies are not supported: we could not find the
            // next request's start.
            return Parsed::Bad { status: 501 };
        }
    }
    let head_len = input.len() - rest.len();
    if head_len > MAX_HEAD {
        return Parsed::Bad { status: 431 };
    }
    if http11 && !host {
        return Parsed::Bad { status: 400 };
    }
    Parsed::Request(Request {
        method,
        target,
        keep_alive,
        head_len,
        body_len: content_length.unwrap_or(0),
    })
}

/// A Content-Length value: 1 to 18 digits.
fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        value
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> (Step, String) {
        let mut out = [0u8; MAX_RESPONSE];
        let step = respond(input, &mut out);
        let text = match step {
            Step::Done(d) => String::from_utf8(out[..d.written].to_vec()).unwrap(),
            Step::NeedMore => String::new(),
        };
        (step, text)
    }

    fn done(step: Step) -> Done {
        match step {
            Step::Done(d) => d,
            Step::NeedMore => panic!("expected a response"),
        }
    }

    #[test]
    fn routes_answer_with_their_bodies() {
        let (step, text) = run(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let d = done(step);
        assert_eq!((d.status, d.close, d.body), (200, false, 0));
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nServer: kiln\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 17\r\n\r\nHello from kiln!\n"
        );
        let (step, text) = run(b"GET /json HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(done(step).status, 200);
        assert!(text.contains("application/json"));
        assert!(text.ends_with(JSON_BODY));
        let (step, text) = run(b"GET /health?probe=1 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(done(step).status, 200);
        assert!(text.ends_with("\r\n\r\nok"));
        let (step, text) = run(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(done(step).status, 404);
        assert!(!done(step).close);
        assert!(text.contains("Content-Length: 10\r\n"));
    }

    #[test]
    fn head_sends_headers_only_and_other_methods_get_405() {
        let (step, text) = run(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(done(step).status, 200);
        assert!(text.ends_with("Content-Length: 17\r\n\r\n"));
        let (step, text) = run(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        let d = done(step);
        assert_eq!((d.status, d.body), (405, 5));
        assert!(text.contains("Allow: GET, HEAD\r\n"));
    }

    #[test]
    fn keep_alive_follows_version_and_connection_header() {
        let d = done(run(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").0);
        assert!(d.close);
        let (step, text) = run(b"GET / HTTP/1.0\r\n\r\n");
        assert!(done(step).close);
        assert!(text.contains("Connection: close\r\n"));
        let d = done(run(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").0);
        assert!(!d.close);
        let d = done(run(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade, CLOSE\r\n\r\n").0);
        assert!(d.close);
    }

    #[test]
    fn partial_heads_need_more_and_pipelined_requests_split() {
        let full = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n";
        let first_len = 27;
        for cut in 0..first_len {
            assert_eq!(run(&full[..cut]).0, Step::NeedMore, "cut at {cut}");
        }
        let d = done(run(full).0);
        assert_eq!(d.head, first_len);
        let (step, text) = run(&full[d.head..]);
        assert_eq!(done(step).head, full.len() - first_len);
        assert!(text.ends_with("ok"));
    }

    #[test]
    fn bare_lf_and_leading_blank_lines_are_tolerated() {
        let d = done(run(b"\r\n\nGET / HTTP/1.1\nHost: x\n\n").0);
        assert_eq!(d.status, 200);
        assert_eq!(d.head, 27);
    }

    #[test]
    fn garbage_gets_400_and_closes() {
        for bad in [
            &b"\x00\x01\x02\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
            b"GET nothing HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / FTP/1.0\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n",
            b"\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n",
        ] {
            let (step, text) = run(bad);
            let d = done(step);
            assert_eq!(d.status, 400, "{bad:?}");
            assert!(d.close, "{bad:?}");
            assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        }
        assert_eq!(done(run(b"GET / HTTP/2.0\r\n\r\n").0).status, 505);
        let te = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(done(run(te).0).status, 501);
    }

    #[test]
    fn oversized_heads_get_431() {
        let mut big = b"GET / HTTP/1.1\r\nHost: x\r\nX: ".to_vec();
        big.resize(MAX_HEAD - 1, b'a');
        assert_eq!(run(&big).0, Step::NeedMore);
        big.push(b'a');
        let d = done(run(&big).0);
        assert_eq!((d.status, d.close), (431, true));
        let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for _ in 0..MAX_HEADERS {
            many.extend_from_slice(b"X: y\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(done(run(&many).0).status, 431);
    }

    #[test]
    fn a_small_output_buffer_is_not_overrun() {
        let mut out = [0u8; 10];
        let d = done(respond(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut out));
        assert_eq!((d.written, d.close, d.status), (0, true, 500));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut out = [0u8; MAX_RESPONSE];
        let seeds: [&[u8]; 3] = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n", b"HTTP/"];
        for round in 0..20_000 {
            let mut input = Vec::new();
            let len = (state % 300) as usize;
            while input.len() < len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if state.is_multiple_of(7) {
                    input.extend_from_slice(seeds[(state % 3) as usize]);
                } else {
                    input.push(state as u8);
                }
            }
            if let Step::Done(d) = respond(&input, &mut out) {
                assert!(d.head <= input.len(), "round {round}");
                assert!(d.written <= out.len());
            }
        }
    }
}
