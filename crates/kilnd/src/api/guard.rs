//! Who may use the API: the checks every request passes before it is
//! routed.
//!
//! On either listener, a request a browser made is refused: it carries
//! `Origin` or `Sec-Fetch-*` headers, which browsers add and scripts
//! cannot remove, and no legitimate client of kilnd sends them. On TCP,
//! which any local user and any web page can reach, the request must also
//! name kilnd by a loopback name or address, or by the address it reached,
//! in `Host` (a DNS-rebinding page names its own domain there), and carry
//! the API's [`Token`]. The UNIX socket needs neither: its file mode admits
//! only kilnd's user. Bodies are refused everywhere: no endpoint takes one,
//! and kilnd should not spend memory receiving one.

use hyper::body::Body;
use hyper::header::{HeaderMap, AUTHORIZATION, HOST, ORIGIN};
use hyper::{Request, StatusCode};
use kilnd_api::Token;
use std::net::{IpAddr, SocketAddr};

/// The headers only browsers send.
const BROWSER_HEADERS: [&str; 4] = [
    "origin",
    "sec-fetch-site",
    "sec-fetch-mode",
    "sec-fetch-dest",
];

/// What a connection must show.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The token, on TCP.
    pub token: Option<Token>,
    /// The local address the connection reached, on TCP.
    pub local: Option<SocketAddr>,
}

/// Why a request is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// A browser made it.
    #[error("kilnd's API does not answer browsers (the request carries {0})")]
    Browser(&'static str),
    /// `Host` names something other than kilnd.
    #[error("Host {0:?} is not kilnd's address (use 127.0.0.1, [::1], localhost or the address kilnd listens on)")]
    Host(String),
    /// No `Host` at all on TCP.
    #[error("a request on kilnd's TCP API needs a Host header")]
    NoHost,
    /// The token is missing or wrong.
    #[error("kilnd's TCP API needs \"Authorization: Bearer TOKEN\" with the token kilnd wrote to its run-time directory (kiln sends it by itself)")]
    Token,
    /// A request body.
    #[error("kilnd's API takes no request body")]
    Body,
}

impl Refusal {
    /// The HTTP status that answers it.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Browser(_) | Refusal::Host(_) | Refusal::NoHost => StatusCode::FORBIDDEN,
            Refusal::Token => StatusCode::UNAUTHORIZED,
            Refusal::Body => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}

impl Policy {
    /// Checks one request; the first reason to refuse it, if any.
    pub fn check<B: Body>(&self, req: &Request<B>) -> Result<(), Refusal> {
        let headers = req.headers();
        if let Some(h) = BROWSER_HEADERS.iter().find(|h| headers.contains_key(**h)) {
            return Err(Refusal::Browser(if *h == ORIGIN.as_str() {
                "Origin"
            } else {
                "Sec-Fetch-* headers"
            }));
        }
        if let Some(token) = &self.token {
            self.check_host(headers)?;
            let admitted = headers
                .get_all(AUTHORIZATION)
                .iter()
                .any(|v| token.admits(v.as_bytes()));
            if !admitted {
                return Err(Refusal::Token);
            }
        }
        if !req.body().is_end_stream() {
            return Err(Refusal::Body);
        }
        Ok(())
    }

    fn check_host(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let mut hosts = headers.get_all(HOST).iter();
        let (Some(value), None) = (hosts.next(), hosts.next()) else {
            return Err(Refusal::NoHost);
        };
        let text = value.to_str().unwrap_or("");
        let refuse = || Refusal::Host(String::from_utf8_lossy(value.as_bytes()).into_owned());
        let authority: hyper::http::uri::Authority = text.parse().map_err(|_| refuse())?;
        let host = authority.host();
        if host.eq_ignore_ascii_case("localhost") {
            return Ok(());
        }
        let ip: IpAddr = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| refuse())?;
        if ip.is_loopback() || self.local.is_some_and(|l| l.ip() == ip) {
            Ok(())
        } else {
            Err(refuse())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Empty, Full};
    use hyper::body::Bytes;

    fn req(headers: &[(&str, &str)]) -> Request<Empty<Bytes>> {
        let mut b = Request::builder().method("POST").uri("/v1/shutdown");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Empty::new()).unwrap()
    }

    fn tcp() -> (Policy, String) {
        let token = Token::generate().unwrap();
        let auth = token.header_value();
        (
            Policy {
                token: Some(token),
                local: Some("192.0.2.7:7070".parse().unwrap()),
            },
            auth,
        )
    }

    #[test]
    fn tcp_needs_a_loopback_host_and_the_token() {
        let (p, auth) = tcp();
        let ok = |host: &str| p.check(&req(&[("host", host), ("authorization", &auth)]));
        for host in [
            "127.0.0.1:7070",
            "localhost",
            "LOCALHOST:1",
            "[::1]:7070",
            "192.0.2.7",
        ] {
            assert_eq!(ok(host), Ok(()), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:7070",
            "10.0.0.1:7070",
            "127.0.0.1.nip.io",
            "",
            "[::1",
        ] {
            assert!(matches!(ok(host), Err(Refusal::Host(_))), "{host}");
        }
        assert_eq!(
            p.check(&req(&[("authorization", &auth)])),
            Err(Refusal::NoHost)
        );
        assert_eq!(
            p.check(&req(&[
                ("host", "a"),
                ("host", "localhost"),
                ("authorization", &auth)
            ])),
            Err(Refusal::NoHost),
            "two Host headers"
        );
        assert_eq!(p.check(&req(&[("host", "localhost")])), Err(Refusal::Token));
        let wrong = Token::generate().unwrap().header_value();
        assert_eq!(
            p.check(&req(&[("host", "localhost"), ("authorization", &wrong)])),
            Err(Refusal::Token)
        );
    }

    #[test]
    fn browsers_are_refused_on_every_listener() {
        let (tcp, auth) = tcp();
        for p in [Policy::default(), tcp] {
            for h in [
                "origin",
                "sec-fetch-site",
                "sec-fetch-mode",
                "sec-fetch-dest",
            ] {
                let r = req(&[(h, "x"), ("host", "localhost"), ("authorization", &auth)]);
                assert!(matches!(p.check(&r), Err(Refusal::Browser(_))), "{h}");
                assert_eq!(p.check(&r).unwrap_err().status(), StatusCode::FORBIDDEN);
            }
        }
        // The UNIX socket: no token, no Host needed.
        assert_eq!(Policy::default().check(&req(&[])), Ok(()));
    }

    #[test]
    fn bodies_are_refused() {
        let r = Request::builder()
            .uri("/v1/reload")
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap();
        assert_eq!(Policy::default().check(&r), Err(Refusal::Body));
        assert_eq!(Refusal::Body.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(Refusal::Token.status(), StatusCode::UNAUTHORIZED);
    }
}
