//! Binding the API: the UNIX socket private from its creation, or the TCP
//! port with its token.

use kilnd_api::rundir::{self, RunDirError};
use kilnd_api::token::{self, TokenError};
use kilnd_api::{ApiAddr, Token};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::path::{Path, PathBuf};

/// Why the API cannot listen.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The run-time directory is missing, unsafe or cannot be made.
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    /// The token could not be made or written.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Something that is not a socket is where the socket would go.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// A live kilnd holds the socket.
    #[error("another kilnd is serving its API on {0}")]
    InUse(PathBuf),
    /// bind(2) or a file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was tried.
        what: &'static str,
        /// On what.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A bound, not yet served, API listener.
#[derive(Debug)]
pub enum Listener {
    /// On a UNIX socket.
    Unix(std::os::unix::net::UnixListener),
    /// On TCP.
    Tcp(std::net::TcpListener),
}

/// What [`bind`] made.
#[derive(Debug)]
pub struct Bound {
    /// The listener.
    pub listener: Listener,
    /// The token requests must carry (TCP only).
    pub token: Option<Token>,
    /// Files to remove at exit.
    pub files: ApiFiles,
}

/// The files kilnd created for its API (the socket, the token file).
#[derive(Debug, Clone, Default)]
pub struct ApiFiles {
    /// The token file, for the start-up message.
    pub token_file: Option<PathBuf>,
    paths: Vec<PathBuf>,
}

impl ApiFiles {
    /// Removes them (at exit).
    pub fn remove(&self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Binds the API address (before any service port, so that a second kilnd
/// fails before it takes anything). On TCP, writes a fresh token to the
/// run-time directory.
///
/// Call it while kilnd has only one thread: the UNIX socket is created
/// under a umask set for the moment of bind(2), and the umask belongs to
/// the whole process (see [`bind_unix`]).
pub fn bind(addr: &ApiAddr) -> Result<Bound, BindError> {
    match addr {
        ApiAddr::Unix(path) => {
            if addr.in_rundir() {
                rundir::ensure()?;
            }
            let l = bind_unix(path)?;
            Ok(Bound {
                listener: Listener::Unix(l),
                token: None,
                files: ApiFiles {
                    token_file: None,
                    paths: vec![path.clone()],
                },
            })
        }
        ApiAddr::Tcp(a) => {
            let l = std::net::TcpListener::bind(a).map_err(|source| BindError::Io {
                what: "cannot listen on",
                path: a.to_string(),
                source,
            })?;
            let port = l.local_addr().map(|a| a.port()).unwrap_or(a.port());
            let dir = rundir::ensure()?;
            let file = token::file(&dir, port);
            let t = Token::generate()?;
            t.write(&file)?;
            Ok(Bound {
                listener: Listener::Tcp(l),
                token: Some(t),
                files: ApiFiles {
                    token_file: Some(file.clone()),
                    paths: vec![file],
                },
            })
        }
    }
}

/// Binds a UNIX socket at `path`, replacing a stale socket file but never
/// a live daemon's.
///
/// The socket is created with mode 0600 by bind(2) itself: the umask is
/// 0177 for the duration of the call. A chmod after bind would leave a
/// moment in which another user could connect. The umask is per process,
/// so this runs before kilnd starts its runtime's threads (main.rs): no
/// other thread can create a file under the narrow umask meanwhile. (A
/// parent directory created here is 0700 as well.)
pub fn bind_unix(path: &Path) -> Result<std::os::unix::net::UnixListener, BindError> {
    let io_err = |what: &'static str, source| BindError::Io {
        what,
        path: path.display().to_string(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(BindError::NotASocket(path.to_path_buf()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(|e| io_err("cannot remove the stale socket", e))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_err("cannot create the directory of", e))?;
    }
    // SAFETY: umask only replaces the process's file mode creation mask
    // and returns the old one; it cannot fail.
    let old = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above; this restores the mask kilnd started with.
    unsafe { libc::umask(old) };
    bound.map_err(|e| io_err("cannot listen on", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_socket_is_born_0600_and_a_live_one_is_not_taken() {
        let dir = std::env::temp_dir().join(format!("kilnd-bind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/api.sock");
        let l = bind_unix(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sub = std::fs::metadata(dir.join("sub"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(sub, 0o700);
        assert!(matches!(bind_unix(&path), Err(BindError::InUse(_))));
        drop(l);
        // Stale: replaced.
        bind_unix(&path).unwrap();
        let file = dir.join("file");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(bind_unix(&file), Err(BindError::NotASocket(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
