//! Where kilnd's API listens.

use crate::rundir;
use std::path::PathBuf;

/// The name of the API socket in the [`rundir`] (the default address).
pub const SOCKET_NAME: &str = "kilnd.sock";

/// Where the API listens: `unix:PATH` or `ADDR:PORT` (`tcp:ADDR:PORT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAddr {
    /// A UNIX socket (mode 0600: the file's permissions are the access check).
    Unix(PathBuf),
    /// A TCP address (keep it on loopback: the API starts and stops
    /// things). Clients present the token kilnd writes to [`rundir`].
    Tcp(std::net::SocketAddr),
}

/// An address that is neither `unix:PATH` nor `ADDR:PORT`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddrError {
    /// `unix:` with nothing after it.
    #[error("unix: needs a path")]
    EmptyPath,
    /// Not an address.
    #[error("\"{0}\" is neither unix:PATH nor ADDR:PORT")]
    Unparsable(String),
}

impl std::fmt::Display for ApiAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ApiAddr::Tcp(a) => write!(f, "{a}"),
        }
    }
}

impl std::str::FromStr for ApiAddr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, AddrError> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(AddrError::EmptyPath);
            }
            return Ok(ApiAddr::Unix(p.into()));
        }
        s.strip_prefix("tcp:")
            .unwrap_or(s)
            .parse()
            .map(ApiAddr::Tcp)
            .map_err(|_| AddrError::Unparsable(s.to_string()))
    }
}

impl ApiAddr {
    /// The default address: `$KILN_API` when set (and valid), else the
    /// socket [`SOCKET_NAME`] in the [`rundir`]. kilnd and `kiln` use this
    /// same rule.
    pub fn default_addr() -> ApiAddr {
        if let Some(a) = std::env::var("KILN_API")
            .ok()
            .and_then(|v| v.parse::<ApiAddr>().ok())
        {
            return a;
        }
        ApiAddr::Unix(rundir::path().join(SOCKET_NAME))
    }

    /// Whether this is a UNIX socket directly in the [`rundir`], whose
    /// ownership and mode kilnd establishes and clients check.
    pub fn in_rundir(&self) -> bool {
        match self {
            ApiAddr::Unix(p) => p.parent() == Some(rundir::path().as_path()),
            ApiAddr::Tcp(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print() {
        assert_eq!(
            "unix:/run/k.sock".parse::<ApiAddr>(),
            Ok(ApiAddr::Unix("/run/k.sock".into()))
        );
        let tcp: ApiAddr = "tcp:127.0.0.1:7070".parse().unwrap();
        assert_eq!(tcp, "127.0.0.1:7070".parse().unwrap());
        assert_eq!(tcp.to_string(), "127.0.0.1:7070");
        assert_eq!("unix:".parse::<ApiAddr>(), Err(AddrError::EmptyPath));
        assert!(matches!(
            "nowhere".parse::<ApiAddr>(),
            Err(AddrError::Unparsable(_))
        ));
    }
}
