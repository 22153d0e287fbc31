//! The API's requests, as one type both sides use: `kiln` renders a
//! [`Route`] into a method and a path, kilnd parses the method and path it
//! received back into the same [`Route`].
//!
//! ```text
//! GET  /v1/status                   daemon summary
//! GET  /v1/services                 services with their instances and last exits
//! GET  /v1/instances                every instance
//! POST /v1/services/NAME/start      start one instance (up to max_instances)
//! POST /v1/services/NAME/stop       stop its instances (the next connection starts one)
//! GET  /v1/services/NAME/logs?lines=N
//! POST /v1/reload                   re-read the configuration file
//! POST /v1/shutdown                 stop every instance and exit
//! GET  /metrics                     Prometheus text format
//! ```
//!
//! NAME is one path segment, percent-encoded: a name holding `/`, `?` or
//! `%` reaches kilnd as that name (and is refused as unknown), never as a
//! different path.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Lines `logs` returns when the request does not say.
pub const DEFAULT_LOG_LINES: usize = 200;

/// Bytes kept as they are in a path segment: letters, digits, `-` and `_`
/// (what service names are made of); everything else is percent-encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_');

/// One API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics`.
    Metrics,
    /// `GET /v1/status`.
    Status,
    /// `GET /v1/services`.
    Services,
    /// `GET /v1/instances`.
    Instances,
    /// `GET /v1/services/NAME/logs?lines=N`.
    Logs {
        /// The service.
        service: String,
        /// How many of the last lines.
        lines: usize,
    },
    /// `POST /v1/services/NAME/start`.
    Start {
        /// The service.
        service: String,
    },
    /// `POST /v1/services/NAME/stop`.
    Stop {
        /// The service.
        service: String,
    },
    /// `POST /v1/reload`.
    Reload,
    /// `POST /v1/shutdown`.
    Shutdown,
}

/// A request that names no route.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    /// No such method and path.
    #[error("no such endpoint: {method} {path}")]
    NotFound {
        /// The method.
        method: String,
        /// The path as received.
        path: String,
    },
    /// A path segment that is not UTF-8 once percent-decoded.
    #[error("{path}: a path segment is not UTF-8 once percent-decoded")]
    BadSegment {
        /// The path as received.
        path: String,
    },
    /// A query kilnd does not understand.
    #[error("{0}")]
    BadQuery(String),
}

impl RouteError {
    /// The HTTP status that answers it.
    pub fn status(&self) -> u16 {
        match self {
            RouteError::NotFound { .. } => 404,
            RouteError::BadSegment { .. } | RouteError::BadQuery(_) => 400,
        }
    }
}

/// `name` as one percent-encoded path segment.
pub fn encode_segment(name: &str) -> String {
    utf8_percent_encode(name, SEGMENT).to_string()
}

impl Route {
    /// The HTTP method.
    pub fn method(&self) -> &'static str {
        match self {
            Route::Metrics
            | Route::Status
            | Route::Services
            | Route::Instances
            | Route::Logs { .. } => "GET",
            Route::Start { .. } | Route::Stop { .. } | Route::Reload | Route::Shutdown => "POST",
        }
    }

    /// The path (and query), with service names percent-encoded.
    pub fn path(&self) -> String {
        match self {
            Route::Metrics => "/metrics".into(),
            Route::Status => "/v1/status".into(),
            Route::Services => "/v1/services".into(),
            Route::Instances => "/v1/instances".into(),
            Route::Logs { service, lines } => {
                format!(
                    "/v1/services/{}/logs?lines={lines}",
                    encode_segment(service)
                )
            }
            Route::Start { service } => format!("/v1/services/{}/start", encode_segment(service)),
            Route::Stop { service } => format!("/v1/services/{}/stop", encode_segment(service)),
            Route::Reload => "/v1/reload".into(),
            Route::Shutdown => "/v1/shutdown".into(),
        }
    }

    /// The route a request names: `path` split at `/` (empty segments are
    /// ignored, so a trailing slash does no harm) and each segment
    /// percent-decoded.
    pub fn parse(method: &str, path: &str, query: Option<&str>) -> Result<Route, RouteError> {
        let mut parts = Vec::new();
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            match percent_decode_str(seg).decode_utf8() {
                Ok(s) => parts.push(s),
                Err(_) => {
                    return Err(RouteError::BadSegment { path: path.into() });
                }
            }
        }
        let parts: Vec<&str> = parts.iter().map(|s| s.as_ref()).collect();
        let route = match (method, parts.as_slice()) {
            ("GET", ["metrics"]) => Route::Metrics,
            ("GET", ["v1", "status"]) => Route::Status,
            ("GET", ["v1", "services"]) => Route::Services,
            ("GET", ["v1", "instances"]) => Route::Instances,
            ("GET", ["v1", "services", name, "logs"]) => Route::Logs {
                service: name.to_string(),
                lines: log_lines(query)?,
            },
            ("POST", ["v1", "services", name, "start"]) => Route::Start {
                service: name.to_string(),
            },
            ("POST", ["v1", "services", name, "stop"]) => Route::Stop {
                service: name.to_string(),
            },
            ("POST", ["v1", "reload"]) => Route::Reload,
            ("POST", ["v1", "shutdown"]) => Route::Shutdown,
            _ => {
                return Err(RouteError::NotFound {
                    method: method.into(),
                    path: path.into(),
                })
            }
        };
        Ok(route)
    }
}

/// `lines=N` from a `logs` query.
fn log_lines(query: Option<&str>) -> Result<usize, RouteError> {
    match query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("lines="))
    {
        None => Ok(DEFAULT_LOG_LINES),
        Some(n) => n
            .parse()
            .map_err(|_| RouteError::BadQuery(format!("lines={n}: not a number of lines"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(r: Route) {
        let path = r.path();
        let (p, q) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path.as_str(), None),
        };
        assert_eq!(Route::parse(r.method(), p, q), Ok(r.clone()), "{path}");
    }

    #[test]
    fn every_route_round_trips() {
        for r in [
            Route::Metrics,
            Route::Status,
            Route::Services,
            Route::Instances,
            Route::Reload,
            Route::Shutdown,
        ] {
            round_trip(r);
        }
        for name in [
            "web",
            "web/start?",
            "a%2Fb",
            "x y",
            "..",
            "ü/ö",
            "?lines=1",
            "#frag",
        ] {
            round_trip(Route::Logs {
                service: name.into(),
                lines: 7,
            });
            round_trip(Route::Start {
                service: name.into(),
            });
            round_trip(Route::Stop {
                service: name.into(),
            });
        }
    }

    #[test]
    fn a_name_with_a_slash_stays_one_segment() {
        let stop = Route::Stop {
            service: "web/start?".into(),
        };
        assert_eq!(stop.path(), "/v1/services/web%2Fstart%3F/stop");
        assert_eq!(encode_segment("ok-name_1"), "ok-name_1");
        // Unencoded, the same name is a different request: what the CLI
        // used to send for `kiln stop 'web/start?'`.
        assert_eq!(
            Route::parse("POST", "/v1/services/web/start", Some("/stop")),
            Ok(Route::Start {
                service: "web".into()
            })
        );
    }

    #[test]
    fn bad_requests_are_told_apart() {
        let e = Route::parse("DELETE", "/v1/services", None).unwrap_err();
        assert_eq!(e.status(), 404);
        assert_eq!(e.to_string(), "no such endpoint: DELETE /v1/services");
        let e = Route::parse("GET", "/v1/services/%ff/logs", None).unwrap_err();
        assert_eq!(e.status(), 400, "{e}");
        let e = Route::parse("GET", "/v1/services/w/logs", Some("lines=many")).unwrap_err();
        assert_eq!(e.status(), 400, "{e}");
        assert_eq!(
            Route::parse("GET", "//v1//status/", None),
            Ok(Route::Status)
        );
        assert_eq!(
            Route::parse("GET", "/v1/services/w/logs", Some("x=1")),
            Ok(Route::Logs {
                service: "w".into(),
                lines: DEFAULT_LOG_LINES
            })
        );
    }
}
