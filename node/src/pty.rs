//! Pseudo-terminals for `tty: true` containers and `exec -t`. Both ends are opened
//! close-on-exec, so no other process the kubelet starts inherits them (a child gets the slave
//! side only as the stdin, stdout and stderr it is given).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::net::unix::pipe;

/// A new terminal.
pub struct Pty {
    /// The master side (what the kubelet reads and writes).
    pub master: OwnedFd,
    /// The slave side (the container's terminal).
    pub slave: std::fs::File,
    /// The slave's path (`/dev/pts/N`).
    pub path: PathBuf,
}

/// Opens a new terminal.
pub fn open() -> std::io::Result<Pty> {
    let m = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    nix::pty::grantpt(&m)?;
    nix::pty::unlockpt(&m)?;
    let path = PathBuf::from(nix::pty::ptsname_r(&m)?);
    // The standard library opens files close-on-exec.
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY)
        .open(&path)?;
    // A close-on-exec duplicate; the original closes with `m`.
    let master = m.as_fd().try_clone_to_owned()?;
    Ok(Pty {
        master,
        slave,
        path,
    })
}

/// A terminal's master side as a reader and a writer that wait on the runtime's reactor, not
/// on a thread (the descriptor made non-blocking, and duplicated for the writer). The
/// terminal hangs up once both are dropped: its processes' reads end (its session leader is
/// also sent SIGHUP, which a container's PID 1 ignores unless it handles it).
pub fn master_halves(fd: OwnedFd) -> std::io::Result<(pipe::Receiver, pipe::Sender)> {
    let raw = fd.as_raw_fd();
    let flags = OFlag::from_bits_truncate(fcntl(raw, FcntlArg::F_GETFL)?);
    fcntl(raw, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    let writer = fd.try_clone()?;
    Ok((
        pipe::Receiver::from_owned_fd_unchecked(fd)?,
        pipe::Sender::from_owned_fd_unchecked(writer)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn both_ends_are_close_on_exec_and_connected() {
        let p = open().unwrap();
        for fd in [p.master.as_raw_fd(), p.slave.as_raw_fd()] {
            let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert_ne!(flags & nix::libc::FD_CLOEXEC, 0, "fd {fd}");
        }
        assert!(p.path.starts_with("/dev/pts"));
        let mut master = std::fs::File::from(p.master);
        let mut slave = p.slave;
        slave.write_all(b"hi\n").unwrap();
        let mut buf = [0u8; 16];
        let n = master.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"hi"), "{:?}", &buf[..n]);
    }

    /// Through the non-blocking master: what is written comes back (echoed by the terminal),
    /// and once both halves are dropped, a read on the terminal fails (hung up).
    #[tokio::test]
    async fn the_master_reads_writes_and_hangs_up_when_closed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let p = open().unwrap();
        let (mut reader, mut writer) = master_halves(p.master).unwrap();
        writer.write_all(b"echo\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), reader.read(&mut buf))
            .await
            .expect("the echo")
            .unwrap();
        assert!(buf[..n].starts_with(b"echo"), "{:?}", &buf[..n]);
        let mut slave = p.slave;
        let mut line = [0u8; 16];
        assert_eq!(
            slave.read(&mut line).unwrap(),
            5,
            "the line reached the terminal"
        );
        drop((reader, writer));
        let after = slave.read(&mut line);
        assert!(
            matches!(after, Ok(0)) || after.is_err(),
            "a hung-up terminal reads nothing: {after:?}"
        );
    }
}
