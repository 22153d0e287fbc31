//! kilnd's private run-time directory: the default API socket and the TCP
//! API's tokens live there.
//!
//! It is `$XDG_RUNTIME_DIR/kilnd`, or `$TMPDIR/kilnd-UID` (`/tmp/kilnd-UID`)
//! where no `XDG_RUNTIME_DIR` is set. The second lies in a directory every
//! user can write to, so another user could create it first, with a socket
//! of their own in it that `kiln` would then talk to, or a symbolic link
//! that makes kilnd write elsewhere. So the directory is used only when it
//! is a real directory (not a link), owned by this user, with no access
//! for anyone else; kilnd creates it that way and refuses one that is not,
//! and `kiln` checks it before it connects or reads a token. (In a sticky
//! `/tmp`, once the directory is ours nobody else can rename or remove it.)

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the run-time directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// It could not be created or looked at.
    #[error("kilnd's run-time directory {dir}: {source}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Something other than a directory is there.
    #[error("kilnd's run-time directory {dir} is {what}, not a directory; remove it or set XDG_RUNTIME_DIR (or --api)")]
    NotADirectory {
        /// The path.
        dir: PathBuf,
        /// What it is instead.
        what: &'static str,
    },
    /// Another user owns it.
    #[error("kilnd's run-time directory {dir} belongs to uid {owner}, not to you (uid {uid}): another user may have created it to intercept kilnd's API; remove it or set XDG_RUNTIME_DIR (or --api)")]
    NotOurs {
        /// The directory.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's user.
        uid: u32,
    },
    /// Others may enter or change it.
    #[error("kilnd's run-time directory {dir} has mode {mode:03o}: others may change what is in it; it must be 700 (chmod 700 it after checking its contents, or remove it)")]
    Open {
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// This process's real user id.
pub fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// The directory (not created or checked).
pub fn path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("kilnd"),
        _ => std::env::temp_dir().join(format!("kilnd-{}", uid())),
    }
}

/// Creates the directory (mode 0700) unless it exists, then [`check`]s it.
/// For kilnd.
pub fn ensure() -> Result<PathBuf, RunDirError> {
    let dir = path();
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(RunDirError::Io { dir, source }),
    }
    check(&dir)?;
    Ok(dir)
}

/// Checks that `dir` is a directory (not a symbolic link) owned by this
/// user and closed to everyone else.
pub fn check(dir: &Path) -> Result<(), RunDirError> {
    let meta = std::fs::symlink_metadata(dir).map_err(|source| RunDirError::Io {
        dir: dir.to_path_buf(),
        source,
    })?;
    let ft = meta.file_type();
    if !ft.is_dir() {
        return Err(RunDirError::NotADirectory {
            dir: dir.to_path_buf(),
            what: if ft.is_symlink() {
                "a symbolic link"
            } else {
                "a file"
            },
        });
    }
    if meta.uid() != uid() {
        return Err(RunDirError::NotOurs {
            dir: dir.to_path_buf(),
            owner: meta.uid(),
            uid: uid(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(RunDirError::Open {
            dir: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kilnd-api-rundir-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn only_a_private_directory_of_ours_passes() {
        let base = scratch("check");
        let good = base.join("good");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&good)
            .unwrap();
        check(&good).unwrap();

        let open = base.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check(&open).unwrap_err();
        assert!(matches!(e, RunDirError::Open { mode: 0o777, .. }), "{e}");

        let link = base.join("link");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        let e = check(&link).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");

        let file = base.join("file");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(
            check(&file),
            Err(RunDirError::NotADirectory { what: "a file", .. })
        ));

        // Another user's directory (root can make one to test with).
        if uid() == 0 {
            let theirs = base.join("theirs");
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&theirs)
                .unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
            let e = check(&theirs).unwrap_err();
            assert!(
                matches!(e, RunDirError::NotOurs { owner: 65534, .. }),
                "{e}"
            );
        }
        std::fs::remove_dir_all(&base).unwrap();
    }
}
