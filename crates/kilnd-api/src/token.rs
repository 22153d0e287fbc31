//! The TCP API's bearer token.
//!
//! A TCP port on loopback is open to every local user and, through the
//! browser, to every web page. So kilnd started with `--api ADDR:PORT`
//! draws 32 random bytes from the kernel (getrandom(2)) and writes them,
//! hex-encoded, to `RUNDIR/api-PORT.token` (mode 0600, in the private
//! [`rundir`](crate::rundir)); every request on TCP must carry
//! `Authorization: Bearer TOKEN`. `kiln` reads the file of the port it
//! connects to. The UNIX socket needs no token: its mode (0600) already
//! admits only kilnd's user.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Bytes of randomness in a token.
const TOKEN_BYTES: usize = 32;

/// A token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token([u8; TOKEN_BYTES]);

/// A token that cannot be made, stored or read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// getrandom(2) failed.
    #[error("cannot draw a random API token: {0}")]
    Random(#[source] io::Error),
    /// The file could not be written.
    #[error("cannot write the API token to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file could not be read.
    #[error("cannot read kilnd's API token from {path}: {source} (is kilnd running with this --api, as this user and with the same XDG_RUNTIME_DIR?)")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file does not hold a token.
    #[error("{0} does not hold an API token")]
    Malformed(PathBuf),
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never in logs or panic messages.
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A fresh token from the kernel's random source.
    pub fn generate() -> Result<Token, TokenError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        let mut filled = 0;
        while filled < TOKEN_BYTES {
            let rest = &mut bytes[filled..];
            // SAFETY: the pointer and length describe `rest`, a live,
            // writable buffer that getrandom fills at most to its length.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(TokenError::Random(e));
            }
            filled += n as usize;
        }
        Ok(Token(bytes))
    }

    /// The hex text of the token.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses the hex text (surrounding whitespace allowed).
    pub fn from_hex(text: &str) -> Option<Token> {
        let text = text.trim().as_bytes();
        if text.len() != 2 * TOKEN_BYTES {
            return None;
        }
        let mut bytes = [0u8; TOKEN_BYTES];
        for (b, pair) in bytes.iter_mut().zip(text.chunks(2)) {
            let s = std::str::from_utf8(pair).ok()?;
            *b = u8::from_str_radix(s, 16).ok()?;
        }
        Some(Token(bytes))
    }

    /// The value of an `Authorization` header carrying this token.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.to_hex())
    }

    /// Whether an `Authorization` header value carries this token. The
    /// comparison takes the same time whatever the value, so that timing
    /// does not tell an attacker how much of a guess was right.
    pub fn admits(&self, header: &[u8]) -> bool {
        let Some(rest) = header
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
            .map(|_| &header[7..])
        else {
            return false;
        };
        let theirs = std::str::from_utf8(rest).ok().and_then(Token::from_hex);
        let Some(theirs) = theirs else { return false };
        self.0
            .iter()
            .zip(theirs.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// Writes the token to `path` with mode 0600: into a new file beside it,
    /// then renamed over it, so that a reader sees the old token or the new
    /// one, and the file never exists with wider permissions.
    pub fn write(&self, path: &Path) -> Result<(), TokenError> {
        let err = |source| TokenError::Write {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        let written = writeln!(f, "{}", self.to_hex()).and_then(|_| f.sync_all());
        drop(f);
        if let Err(e) = written.and_then(|_| std::fs::rename(&tmp, path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        Ok(())
    }

    /// Reads the token kilnd wrote to `path`.
    pub fn read(path: &Path) -> Result<Token, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Token::from_hex(&text).ok_or_else(|| TokenError::Malformed(path.to_path_buf()))
    }
}

/// The token file of the TCP API on `port`, in the run-time directory `dir`.
/// Named by the port alone, so that `kiln --api 127.0.0.1:P` finds the
/// token of a kilnd listening on `0.0.0.0:P` or `[::1]:P`.
pub fn file(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!("api-{port}.token"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn tokens_are_random_and_round_trip() {
        let a = Token::generate().unwrap();
        let b = Token::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.to_hex().len(), 64);
        assert_eq!(
            Token::from_hex(&format!(" {}\n", a.to_hex())),
            Some(a.clone())
        );
        assert_eq!(Token::from_hex("abc"), None);
        assert_eq!(Token::from_hex(&"zz".repeat(32)), None);
        assert_eq!(format!("{a:?}"), "Token(..)");
    }

    #[test]
    fn only_the_right_bearer_header_is_admitted() {
        let t = Token::generate().unwrap();
        let other = Token::generate().unwrap();
        assert!(t.admits(t.header_value().as_bytes()));
        assert!(t.admits(format!("bearer {}", t.to_hex()).as_bytes()));
        assert!(!t.admits(other.header_value().as_bytes()));
        assert!(!t.admits(t.to_hex().as_bytes()), "the scheme is required");
        assert!(!t.admits(b"Bearer "));
        assert!(!t.admits(b""));
        assert!(!t.admits(format!("Basic {}", t.to_hex()).as_bytes()));
        let mut cut = t.header_value();
        cut.pop();
        assert!(!t.admits(cut.as_bytes()));
        assert!(!t.admits(&[0xff; 71]));
    }

    #[test]
    fn the_file_is_private_and_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("kilnd-api-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = file(&dir, 7070);
        assert!(path.ends_with("api-7070.token"));
        let a = Token::generate().unwrap();
        a.write(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Token::read(&path).unwrap(), a);
        let b = Token::generate().unwrap();
        b.write(&path).unwrap();
        assert_eq!(Token::read(&path).unwrap(), b);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        std::fs::write(&path, "nonsense").unwrap();
        assert!(matches!(Token::read(&path), Err(TokenError::Malformed(_))));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(Token::read(&path), Err(TokenError::Read { .. })));
    }
}
