//! Binding the listeners: a TCP address, or a unix socket for the sidecar layout (the
//! proxy and tokengate in one pod, sharing an `emptyDir`). A socket file is tokengate's
//! for as long as it runs: a stale one left by a crash is replaced, a live one (another
//! process still accepts on it) refuses the start, and the file is removed again when
//! the listener goes away.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::config::ListenAddress;
use crate::startup::StartupError;

/// A bound listener, not yet serving.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
}

/// Where a listener ended up: a TCP address with the port the kernel chose, or the
/// path of its socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundAddress {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl BoundAddress {
    /// The TCP port; 0 for a unix socket.
    pub fn port(&self) -> u16 {
        match self {
            BoundAddress::Tcp(address) => address.port(),
            BoundAddress::Unix(_) => 0,
        }
    }

    /// The socket's path, for a unix socket.
    pub fn unix_path(&self) -> Option<&Path> {
        match self {
            BoundAddress::Tcp(_) => None,
            BoundAddress::Unix(path) => Some(path),
        }
    }
}

impl std::fmt::Display for BoundAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BoundAddress::Tcp(address) => write!(f, "{address}"),
            BoundAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Listener {
    /// Binds `address`; a unix socket gets permissions `mode`.
    pub fn bind(address: &ListenAddress, mode: u32) -> Result<Listener, StartupError> {
        let failed = |source| StartupError::Bind {
            address: address.to_string(),
            source,
        };
        match address {
            ListenAddress::Tcp(socket) => {
                TcpListener::bind(socket).map(Listener::Tcp).map_err(failed)
            }
            ListenAddress::Unix(path) => {
                clear_stale_socket(path, address)?;
                let listener = UnixListener::bind(path).map_err(failed)?;
                // From here on the file is ours: removed on drop, also if chmod fails.
                let file = SocketFile::claim(path).map_err(failed)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    .map_err(failed)?;
                Ok(Listener::Unix(listener, file))
            }
        }
    }

    /// The address it is bound to.
    pub fn bound_address(&self) -> std::io::Result<BoundAddress> {
        match self {
            Listener::Tcp(listener) => listener.local_addr().map(BoundAddress::Tcp),
            Listener::Unix(_, file) => Ok(BoundAddress::Unix(file.path.clone())),
        }
    }
}

/// Removes a socket file that nothing accepts on any more (left by a process that did
/// not shut down cleanly), so that binding can succeed. A socket some process still
/// accepts on is left alone and refuses the start: replacing it would silently take
/// its traffic. Anything else at the path is left alone too.
fn clear_stale_socket(path: &Path, address: &ListenAddress) -> Result<(), StartupError> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StartupError::Bind {
                address: address.to_string(),
                source,
            })
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(StartupError::NotASocket {
            address: address.to_string(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(StartupError::SocketInUse {
            address: address.to_string(),
        }),
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(%address, "removing a stale socket file");
            std::fs::remove_file(path).map_err(|source| StartupError::Bind {
                address: address.to_string(),
                source,
            })
        }
        // Permission denied and the like: whether it is live cannot be told.
        Err(source) => Err(StartupError::Bind {
            address: address.to_string(),
            source,
        }),
    }
}

/// A socket file this process created, removed when dropped: on a clean shutdown, or
/// with an application that never ran. Only if it is still the file that was bound
/// (same device and inode): one that another process has put there since is not ours.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    identity: (u64, u64),
}

impl SocketFile {
    fn claim(path: &Path) -> std::io::Result<SocketFile> {
        let metadata = std::fs::symlink_metadata(path)?;
        Ok(SocketFile {
            path: path.to_owned(),
            identity: (metadata.dev(), metadata.ino()),
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|metadata| (metadata.dev(), metadata.ino()) == self.identity);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tokengate-listener-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("test.sock")
    }

    #[test]
    fn a_socket_gets_its_mode_and_is_removed_on_drop() {
        let path = scratch("mode");
        let address = ListenAddress::Unix(path.clone());
        let listener = Listener::bind(&address, 0o620).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o620);
        assert_eq!(
            listener.bound_address().unwrap(),
            BoundAddress::Unix(path.clone())
        );
        drop(listener);
        assert!(!path.exists());
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let path = scratch("stale");
        let address = ListenAddress::Unix(path.clone());
        // A socket file whose listener is gone: what a crash leaves behind.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let listener = Listener::bind(&address, 0o660).expect("stale socket replaced");

        let error = Listener::bind(&address, 0o660).unwrap_err();
        assert!(matches!(error, StartupError::SocketInUse { .. }), "{error}");
        assert!(error.to_string().contains(&address.to_string()));
        assert!(path.exists(), "the live socket is left alone");
        drop(listener);
    }

    #[test]
    fn a_file_that_is_no_socket_is_left_alone() {
        let path = scratch("file");
        std::fs::write(&path, "data").unwrap();
        let error = Listener::bind(&ListenAddress::Unix(path.clone()), 0o660).unwrap_err();
        assert!(matches!(error, StartupError::NotASocket { .. }), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
    }
}
