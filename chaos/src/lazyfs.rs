//! A pass-through FUSE filesystem that can forget what was not fsynced: a power cut for one
//! directory, without one for the machine (the idea of Jepsen's LazyFS).
//!
//! Every operation goes to a backing directory at once, but each write and truncation first
//! keeps what it replaces (and the file's size before its first unsynced change). `fsync` and
//! `fdatasync` sync the backing file and forget that record; [`Lazy::lose_unsynced`] puts the
//! records back, newest first, so every file is as it was at its last sync. It must only be
//! called while nothing has the files open (the member that used them was killed).
//!
//! What it models: file data and sizes are lost back to the last sync, as on a disk that loses
//! its write cache. What it does not: directory changes (creating, renaming and deleting files)
//! are kept even when the directory was never synced, as a filesystem that journals them in
//! order would mostly keep them; `sync_file_range` syncs nothing (as FUSE passes it on: never),
//! which is the point: a store that relies on it alone loses data here.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use nix::fcntl::OFlag;

/// Attributes and entries are never cached by the kernel: files change behind its back when
/// unsynced writes are lost.
const TTL: Duration = Duration::ZERO;

/// What a file looked like at its last sync, as far as writes since have changed it.
#[derive(Debug, Default)]
struct Undo {
    /// The size at the last sync.
    size: u64,
    /// Bytes overwritten since, with their offsets, oldest first.
    replaced: Vec<(u64, Vec<u8>)>,
}

#[derive(Debug)]
struct State {
    /// The backing directory.
    backing: PathBuf,
    /// Inode numbers to paths under the backing directory (the root is "").
    paths: HashMap<u64, PathBuf>,
    inodes: HashMap<PathBuf, u64>,
    next_inode: u64,
    /// Open files by handle, with their inode.
    open: HashMap<u64, (u64, File)>,
    /// Open directories by handle, with what they listed when opened (offsets into a
    /// listing stay valid while the directory changes).
    dirs: HashMap<u64, Vec<(u64, FileType, std::ffi::OsString)>>,
    next_handle: u64,
    /// Files changed since their last sync, by inode.
    unsynced: HashMap<u64, Undo>,
}

/// A lazy filesystem mounted over a directory; dropping it unmounts it.
pub struct Lazy {
    state: Arc<Mutex<State>>,
    /// Unmounts on drop.
    _session: fuser::BackgroundSession,
}

impl Lazy {
    /// Mounts a lazy filesystem at `mountpoint` (created if missing) whose data lives in
    /// `backing` (created if missing). Needs root and `/dev/fuse`.
    pub fn mount(backing: &Path, mountpoint: &Path) -> anyhow::Result<Lazy> {
        std::fs::create_dir_all(backing)
            .with_context(|| format!("creating {}", backing.display()))?;
        std::fs::create_dir_all(mountpoint)
            .with_context(|| format!("creating {}", mountpoint.display()))?;
        let mut paths = HashMap::new();
        let mut inodes = HashMap::new();
        paths.insert(INodeNo::ROOT.0, PathBuf::new());
        inodes.insert(PathBuf::new(), INodeNo::ROOT.0);
        let state = Arc::new(Mutex::new(State {
            backing: backing.to_path_buf(),
            paths,
            inodes,
            next_inode: INodeNo::ROOT.0 + 1,
            open: HashMap::new(),
            dirs: HashMap::new(),
            next_handle: 1,
            unsynced: HashMap::new(),
        }));
        let mut config = fuser::Config::default();
        config.mount_options = vec![fuser::MountOption::FSName("keelson-lazyfs".into())];
        let session = fuser::spawn_mount(
            LazyFs {
                state: state.clone(),
            },
            mountpoint,
            &config,
        )
        .with_context(|| format!("mounting a FUSE filesystem at {}", mountpoint.display()))?;
        Ok(Lazy {
            state,
            _session: session,
        })
    }

    /// Puts every file back as it was at its last sync; returns the files changed (relative
    /// paths) with the bytes of unsynced writes each lost.
    pub fn lose_unsynced(&self) -> anyhow::Result<Vec<(PathBuf, u64)>> {
        let mut st = lock(&self.state);
        let unsynced = std::mem::take(&mut st.unsynced);
        st.open.clear();
        st.dirs.clear();
        let mut lost = Vec::new();
        for (inode, undo) in unsynced {
            // A file deleted since has nothing to put back.
            let Some(rel) = st.paths.get(&inode) else {
                continue;
            };
            let path = st.backing.join(rel);
            let Ok(f) = OpenOptions::new().write(true).open(&path) else {
                continue;
            };
            let now = f.metadata()?.len();
            for (offset, old) in undo.replaced.iter().rev() {
                f.write_at(old, *offset)
                    .with_context(|| format!("restoring {}", path.display()))?;
            }
            f.set_len(undo.size)
                .with_context(|| format!("restoring {}", path.display()))?;
            f.sync_all()?;
            let bytes = now.saturating_sub(undo.size)
                + undo
                    .replaced
                    .iter()
                    .map(|(_, b)| b.len() as u64)
                    .sum::<u64>();
            lost.push((rel.clone(), bytes));
        }
        lost.sort();
        Ok(lost)
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

struct LazyFs {
    state: Arc<Mutex<State>>,
}

fn errno(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(0))
}

fn attr(inode: u64, m: &std::fs::Metadata) -> FileAttr {
    let time = |secs: i64, nsecs: i64| {
        UNIX_EPOCH + Duration::new(secs.max(0) as u64, nsecs.clamp(0, 999_999_999) as u32)
    };
    let kind = if m.is_dir() {
        FileType::Directory
    } else if m.file_type().is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    };
    FileAttr {
        ino: INodeNo(inode),
        size: m.len(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: time(m.ctime(), m.ctime_nsec()),
        kind,
        perm: (m.permissions().mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: m.blksize() as u32,
        flags: 0,
    }
}

impl State {
    /// The attributes of `inode`: through its open handle `fh` or its path, or, deleted but
    /// still open (a snapshot being sent while a newer one replaced it), any handle on it.
    fn metadata(&self, inode: u64, fh: Option<FileHandle>) -> Result<std::fs::Metadata, Errno> {
        let open = fh.and_then(|h| self.open.get(&h.0)).or_else(|| {
            self.open
                .values()
                .find(|(i, _)| *i == inode)
                .filter(|_| !self.paths.contains_key(&inode))
        });
        match open {
            Some((_, f)) => f.metadata().map_err(|e| errno(&e)),
            None => std::fs::symlink_metadata(self.path(inode)?).map_err(|e| errno(&e)),
        }
    }

    fn path(&self, inode: u64) -> Result<PathBuf, Errno> {
        self.paths
            .get(&inode)
            .map(|p| self.backing.join(p))
            .ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        self.paths
            .get(&parent)
            .map(|p| p.join(name))
            .ok_or(Errno::ENOENT)
    }

    /// The inode of `rel` (a path under the backing directory), given one if it has none.
    fn inode(&mut self, rel: &Path) -> u64 {
        if let Some(&i) = self.inodes.get(rel) {
            return i;
        }
        let i = self.next_inode;
        self.next_inode += 1;
        self.paths.insert(i, rel.to_path_buf());
        self.inodes.insert(rel.to_path_buf(), i);
        i
    }

    fn entry(&mut self, rel: &Path) -> Result<FileAttr, Errno> {
        let m = std::fs::symlink_metadata(self.backing.join(rel)).map_err(|e| errno(&e))?;
        let i = self.inode(rel);
        Ok(attr(i, &m))
    }

    /// Keeps what a change of `inode`'s bytes `[offset, offset + len)` replaces.
    fn keep(&mut self, inode: u64, file: &File, offset: u64, len: u64) -> std::io::Result<()> {
        let size = file.metadata()?.len();
        let undo = self.unsynced.entry(inode).or_insert_with(|| Undo {
            size,
            replaced: Vec::new(),
        });
        // Bytes past the size at the last sync go when the size is put back.
        let end = (offset + len).min(size).min(undo.size);
        if offset < end {
            let mut old = vec![0; (end - offset) as usize];
            file.read_exact_at(&mut old, offset)?;
            undo.replaced.push((offset, old));
        }
        Ok(())
    }

    /// Forgets paths under `rel` (deleted), or moves them to `to` (renamed).
    fn repath(&mut self, rel: &Path, to: Option<&Path>) {
        let moved: Vec<(PathBuf, u64)> = self
            .inodes
            .iter()
            .filter(|(p, _)| p.starts_with(rel))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (p, i) in moved {
            self.inodes.remove(&p);
            match to {
                Some(to) => {
                    // (Joining an empty path would add a trailing slash.)
                    let new = match p.strip_prefix(rel) {
                        Ok(rest) if !rest.as_os_str().is_empty() => to.join(rest),
                        _ => to.to_path_buf(),
                    };
                    self.paths.insert(i, new.clone());
                    self.inodes.insert(new, i);
                }
                None => {
                    self.paths.remove(&i);
                    self.unsynced.remove(&i);
                }
            }
        }
    }

    fn handle(&mut self, inode: u64, file: File) -> u64 {
        let h = self.next_handle;
        self.next_handle += 1;
        self.open.insert(h, (inode, file));
        h
    }
}

/// Whether `flags` (an open's) has `flag`.
fn has(flags: i32, flag: OFlag) -> bool {
    flags & flag.bits() != 0
}

fn open_options(flags: i32) -> OpenOptions {
    let mut o = OpenOptions::new();
    // Writable handles read too: a write keeps what it replaces.
    if has(flags, OFlag::O_ACCMODE) {
        o.read(true).write(true);
    } else {
        o.read(true);
    }
    // The kernel handles O_APPEND's offsets; creation flags are the caller's business.
    let handled =
        OFlag::O_ACCMODE | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_TRUNC | OFlag::O_APPEND;
    o.custom_flags(flags & !handled.bits());
    o
}

impl LazyFs {
    /// Removes `name` from `parent` with `remove` (a file or an empty directory) and forgets
    /// its paths and records.
    fn remove(
        &self,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEmpty,
        remove: impl FnOnce(&Path) -> std::io::Result<()>,
    ) {
        let mut st = lock(&self.state);
        let result = st.child(parent.0, name).and_then(|rel| {
            remove(&st.backing.join(&rel)).map_err(|e| errno(&e))?;
            st.repath(&rel, None);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut st = lock(&self.state);
        match st.child(parent.0, name).and_then(|rel| st.entry(&rel)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let st = lock(&self.state);
        match st.metadata(ino.0, fh) {
            Ok(m) => reply.attr(&TTL, &attr(ino.0, &m)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = lock(&self.state);
        let result = (|| {
            let path = st.path(ino.0)?;
            if let Some(mode) = mode {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| errno(&e))?;
            }
            if let Some(size) = size {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| errno(&e))?;
                let now = f.metadata().map_err(|e| errno(&e))?.len();
                if size < now {
                    st.keep(ino.0, &f, size, now - size)
                        .map_err(|e| errno(&e))?;
                } else {
                    st.keep(ino.0, &f, now, 0).map_err(|e| errno(&e))?;
                }
                f.set_len(size).map_err(|e| errno(&e))?;
            }
            std::fs::symlink_metadata(&path).map_err(|e| errno(&e))
        })();
        match result {
            Ok(m) => reply.attr(&TTL, &attr(ino.0, &m)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut st = lock(&self.state);
        let result = st.child(parent.0, name).and_then(|rel| {
            let path = st.backing.join(&rel);
            std::fs::create_dir(&path).map_err(|e| errno(&e))?;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode));
            st.entry(&rel)
        });
        match result {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |p| std::fs::remove_file(p));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |p| std::fs::remove_dir(p));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        // RENAME_NOREPLACE and RENAME_EXCHANGE are not passed on.
        if flags.bits() != 0 {
            return reply.error(Errno::EINVAL);
        }
        let mut st = lock(&self.state);
        let result = (|| {
            let from = st.child(parent.0, name)?;
            let to = st.child(newparent.0, newname)?;
            std::fs::rename(st.backing.join(&from), st.backing.join(&to)).map_err(|e| errno(&e))?;
            if from == to {
                return Ok(());
            }
            // What was at the target is gone.
            st.repath(&to, None);
            st.repath(&from, Some(&to));
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut st = lock(&self.state);
        let result = st.path(ino.0).and_then(|p| {
            let f = open_options(flags.0).open(p).map_err(|e| errno(&e))?;
            Ok(st.handle(ino.0, f))
        });
        match result {
            Ok(h) => reply.opened(FileHandle(h), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = lock(&self.state);
        let result = st.child(parent.0, name).and_then(|rel| {
            let mut o = open_options(flags);
            o.create(true).mode(mode);
            if has(flags, OFlag::O_EXCL) {
                o.create_new(true);
            }
            if has(flags, OFlag::O_TRUNC) {
                o.truncate(true);
            }
            let f = o.open(st.backing.join(&rel)).map_err(|e| errno(&e))?;
            let a = st.entry(&rel)?;
            let h = st.handle(a.ino.0, f);
            Ok((a, h))
        });
        match result {
            Ok((a, h)) => {
                reply.created(&TTL, &a, Generation(0), FileHandle(h), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let st = lock(&self.state);
        let Some((_, f)) = st.open.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let mut buf = vec![0; size as usize];
        let mut n = 0;
        while n < buf.len() {
            match f.read_at(&mut buf[n..], offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(errno(&e)),
            }
        }
        reply.data(&buf[..n]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut st = lock(&self.state);
        let Some((inode, f)) = st.open.get(&fh.0).map(|(i, f)| (*i, f.try_clone())) else {
            return reply.error(Errno::EBADF);
        };
        let result = f.and_then(|f| {
            st.keep(inode, &f, offset, data.len() as u64)?;
            f.write_all_at(data, offset)
        });
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.state).open.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = lock(&self.state);
        let Some((_, f)) = st.open.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let synced = if datasync {
            f.sync_data()
        } else {
            f.sync_all()
        };
        match synced {
            Ok(()) => {
                st.unsynced.remove(&ino.0);
                reply.ok()
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let st = lock(&self.state);
        match st.path(ino.0).and_then(|p| {
            File::open(p)
                .and_then(|d| d.sync_all())
                .map_err(|e| errno(&e))
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut st = lock(&self.state);
        let result = (|| {
            let rel = st.paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)?;
            let mut entries = vec![
                (ino.0, FileType::Directory, ".".into()),
                (ino.0, FileType::Directory, "..".into()),
            ];
            let mut names: Vec<_> = std::fs::read_dir(st.backing.join(&rel))
                .map_err(|e| errno(&e))?
                .flatten()
                .collect();
            names.sort_by_key(|e| e.file_name());
            for e in names {
                let kind = match e.file_type() {
                    Ok(t) if t.is_dir() => FileType::Directory,
                    Ok(t) if t.is_symlink() => FileType::Symlink,
                    _ => FileType::RegularFile,
                };
                let i = st.inode(&rel.join(e.file_name()));
                entries.push((i, kind, e.file_name()));
            }
            let h = st.next_handle;
            st.next_handle += 1;
            st.dirs.insert(h, entries);
            Ok(h)
        })();
        match result {
            Ok(h) => reply.opened(FileHandle(h), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let st = lock(&self.state);
        let Some(entries) = st.dirs.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (n, (i, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*i), n as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.state).dirs.remove(&fh.0);
        reply.ok();
    }

    // No extended attributes (ENOSYS: the kernel stops asking, as with fuser's defaults, but
    // without a warning).
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let st = lock(&self.state);
        match nix::sys::statvfs::statvfs(&st.backing) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root and /dev/fuse, as the `lose-unsynced` fault does.
    #[test]
    fn writes_since_the_last_sync_are_lost_and_synced_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
        let lazy = Lazy::mount(&backing, &mnt).expect("mount (needs root and /dev/fuse)");
        let path = mnt.join("sub/file");
        std::fs::create_dir(mnt.join("sub")).unwrap();
        {
            let f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            f.write_all_at(b"hello world", 0).unwrap();
            f.sync_data().unwrap();
            // Unsynced: an overwrite inside, an append past the end.
            f.write_all_at(b"HELLO", 0).unwrap();
            f.write_all_at(b"!!!", 11).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), b"HELLO world!!!");
        }
        let other = mnt.join("sub/unsynced");
        std::fs::write(&other, b"never synced").unwrap();
        let lost = lazy.lose_unsynced().unwrap();
        assert_eq!(
            lost,
            vec![
                (PathBuf::from("sub/file"), 5 + 3),
                (PathBuf::from("sub/unsynced"), 12)
            ]
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        // Directory changes are kept: the file is there, empty.
        assert_eq!(std::fs::read(&other).unwrap(), b"");
        // A truncation since the last sync is undone too.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(2).unwrap();
        drop(f);
        lazy.lose_unsynced().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        // A deleted file still open can be read and measured (a snapshot sent while a newer one
        // replaced it).
        {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = File::open(&path).unwrap();
            std::fs::remove_file(mnt.join("sub/unsynced")).unwrap();
            let kept = mnt.join("sub/kept");
            std::fs::copy(&path, &kept).unwrap();
            let mut g = File::open(&kept).unwrap();
            std::fs::remove_file(&kept).unwrap();
            assert_eq!(g.seek(SeekFrom::End(0)).unwrap(), 11);
            assert_eq!(g.metadata().unwrap().len(), 11);
            g.seek(SeekFrom::Start(0)).unwrap();
            let mut text = String::new();
            g.read_to_string(&mut text).unwrap();
            assert_eq!(text, "hello world");
            let mut s = String::new();
            f.read_to_string(&mut s).unwrap();
        }
        // Renames keep the record with the file.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"J", 0).unwrap();
        drop(f);
        std::fs::rename(&path, mnt.join("sub/moved")).unwrap();
        lazy.lose_unsynced().unwrap();
        assert_eq!(
            std::fs::read(mnt.join("sub/moved")).unwrap(),
            b"hello world"
        );
        drop(lazy);
        assert_eq!(
            std::fs::read(backing.join("sub/moved")).unwrap(),
            b"hello world"
        );
    }
}
