//! The FUSE adapter: the only module that imports fuser. It converts between fuser's types and
//! the filesystem's, answers slow requests from tokio tasks (so a session thread never waits on
//! the network), and sends errors as the errno `fs::error` chose.

use crate::fs::{Attr, Fs, FsError, Kind};
use crate::outputs::{Caller, SetTime, Writer};
use fuser::BackingId;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

/// A filesystem mounted by the kernel whose requests are not served yet.
pub struct Mounted(fuser::Session<FuseAdapter>);

impl Mounted {
    /// Serves requests until the filesystem is unmounted (blocks the calling thread).
    pub fn run(self) -> std::io::Result<()> {
        self.0.run()
    }
}

/// How a filesystem is mounted.
pub struct MountSettings<'a> {
    /// Owner shown for every file.
    pub uid: u32,
    /// Group shown for every file.
    pub gid: u32,
    /// The kernel's read-ahead, in bytes.
    pub max_readahead: u32,
    /// Options as `mount -o` takes them (`allow_other`, `ro`, `noexec`, ...), comma-separated
    /// or one per entry.
    pub options: &'a [String],
}

/// Mounts `fs` at `mountpoint` (blocks while the kernel sets the mount up).
pub fn mount(fs: Arc<Fs>, mountpoint: &Path, settings: &MountSettings<'_>) -> std::io::Result<Mounted> {
    let adapter = FuseAdapter::new(fs, settings.uid, settings.gid, settings.max_readahead);
    fuser::Session::new(adapter, mountpoint, &session_config(settings.options)).map(Mounted)
}

/// fuser's settings for `options`: always our fs name, default permissions, no devices, no
/// setuid; four session threads, each with its own device descriptor.
fn session_config(options: &[String]) -> fuser::Config {
    use fuser::{MountOption, SessionACL};
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName("datumfs".into()),
        MountOption::Subtype("datumfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    for opt in options.iter().flat_map(|o| o.split(',')).map(str::trim).filter(|o| !o.is_empty()) {
        match opt {
            "allow_other" => config.acl = SessionACL::All,
            "allow_root" => config.acl = SessionACL::RootAndOwner,
            "ro" => config.mount_options.push(MountOption::RO),
            "rw" | "default_permissions" | "nodev" | "nosuid" => {}
            "exec" => config.mount_options.push(MountOption::Exec),
            "noexec" => config.mount_options.push(MountOption::NoExec),
            "noatime" => config.mount_options.push(MountOption::NoAtime),
            other => config.mount_options.push(MountOption::CUSTOM(other.to_string())),
        }
    }
    config.n_threads = Some(4);
    config.clone_fd = true;
    config
}

/// Inputs are snapshots: the kernel may keep their attributes for long.
const STABLE_TTL: Duration = Duration::from_secs(3600);
/// Outputs: see [`crate::fs::CacheFor::Short`].
const SHORT_TTL: Duration = Duration::from_secs(1);

/// Adapts [`Fs`] to fuser's `Filesystem` trait.
pub struct FuseAdapter {
    fs: Arc<Fs>,
    uid: u32,
    gid: u32,
    max_readahead: u32,
    passthrough: Arc<Passthrough>,
}

/// FUSE passthrough bookkeeping. The kernel wants one backing file per inode for all its
/// passthrough handles, and refuses to mix passthrough and ordinary handles on one inode.
#[derive(Default)]
struct Passthrough {
    enabled: std::sync::atomic::AtomicBool,
    state: Mutex<PassthroughState>,
}

#[derive(Default)]
struct PassthroughState {
    by_inode: HashMap<u64, Weak<BackingId>>,
    by_handle: HashMap<u64, Arc<BackingId>>,
    /// Open ordinary (non-passthrough) handles per inode.
    ordinary: HashMap<u64, usize>,
    /// Inode of each ordinary handle.
    ordinary_handles: HashMap<u64, u64>,
}

impl FuseAdapter {
    /// An adapter serving `fs`, showing every file as owned by `uid:gid`.
    pub fn new(fs: Arc<Fs>, uid: u32, gid: u32, max_readahead: u32) -> Self {
        Self { fs, uid, gid, max_readahead, passthrough: Arc::default() }
    }

    /// Runs `work` on the runtime and lets it answer.
    fn spawn<F>(&self, work: impl FnOnce(Arc<Fs>) -> F + Send + 'static)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let fs = self.fs.clone();
        self.fs.runtime().spawn(async move { work(fs).await });
    }
}

fn file_attr(a: &Attr, uid: u32, gid: u32) -> FileAttr {
    let usual = crate::fs::StagedAttr {
        atime: a.mtime,
        ctime: a.mtime,
        nlink: if a.kind == Kind::Dir { 2 } else { 1 },
        uid,
        gid,
        rdev: 0,
    };
    let own = a.staged.unwrap_or(usual);
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: own.atime,
        mtime: a.mtime,
        ctime: own.ctime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: own.nlink,
        uid: own.uid,
        gid: own.gid,
        rdev: own.rdev,
        flags: 0,
        blksize: 1 << 20,
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

fn ttl(a: &Attr) -> Duration {
    match a.cache_for {
        crate::fs::CacheFor::Long => STABLE_TTL,
        crate::fs::CacheFor::Short => SHORT_TTL,
        crate::fs::CacheFor::Never => Duration::ZERO,
    }
}

fn reply_entry(reply: ReplyEntry, res: Result<Attr, FsError>, uid: u32, gid: u32) {
    match res {
        Ok(a) => reply.entry(&ttl(&a), &file_attr(&a, uid, gid), Generation(0)),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Answers a lookup; a name found absent is remembered by the kernel for `absent_for` (an entry
/// with inode 0 is the protocol's negative entry), so `cp` into outputs does not ask again
/// whether the name exists before creating it.
fn reply_lookup(reply: ReplyEntry, res: Result<Attr, FsError>, absent_for: crate::fs::CacheFor, uid: u32, gid: u32) {
    match res {
        Err(e) if e.is_not_found() && absent_for != crate::fs::CacheFor::Never => {
            let absent = Attr::absent(absent_for);
            reply.entry(&ttl(&absent), &file_attr(&absent, uid, gid), Generation(0))
        }
        other => reply_entry(reply, other, uid, gid),
    }
}

fn reply_attr(reply: ReplyAttr, res: Result<Attr, FsError>, uid: u32, gid: u32) {
    match res {
        Ok(a) => reply.attr(&ttl(&a), &file_attr(&a, uid, gid)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_opendir(reply: ReplyOpen, res: Result<u64, FsError>) {
    match res {
        Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR),
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_empty(reply: ReplyEmpty, res: Result<(), FsError>) {
    match res {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

/// The user asking, for entries made on their behalf.
fn caller(req: &Request) -> Caller {
    Caller { uid: req.uid(), gid: req.gid() }
}

/// The user writing or truncating, for the set-id bits that clears.
fn writer(req: &Request) -> Writer {
    Writer { uid: req.uid(), gid: req.gid(), pid: req.pid() }
}

fn name_str(name: &OsStr) -> Option<String> {
    name.to_str().map(str::to_string)
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large requests and many in flight: the kernel's defaults (128 KiB read-ahead, 12
        // background requests) are the first limit on throughput otherwise.
        let _ = config
            .add_capabilities(InitFlags::FUSE_MAX_PAGES | InitFlags::FUSE_ASYNC_READ | InitFlags::FUSE_PARALLEL_DIROPS);
        // Files not yet cached whole are opened with direct I/O; jobs still mmap them (numpy,
        // torch), which the kernel allows with this flag (Linux 6.6+).
        let _ = config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        // We clear set-id bits and file capabilities ourselves (see `setattr`), so the kernel
        // stops asking for `security.capability` before every write to an output it writes
        // directly: one request per open instead of one per write() call.
        let _ = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        let _ = config.set_max_readahead(self.max_readahead);
        let _ = config.set_max_background(64);
        // Writes to outputs in 1 MiB requests rather than the default 128 KiB.
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_congestion_threshold(48);
        // Passthrough needs CAP_SYS_ADMIN and Linux 6.9+; without it reads simply come to us.
        if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() && config.set_max_stack_depth(2).is_ok() {
            self.passthrough.enabled.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name_str(name) else { return reply.error(errno(&FsError::NotFound)) };
        let absent_for = self.fs.absent_for(parent.0);
        if let Some(res) = self.fs.try_lookup(parent.0, &name) {
            return reply_lookup(reply, res, absent_for, self.uid, self.gid);
        }
        let (uid, gid) = (self.uid, self.gid);
        self.spawn(
            move |fs| async move { reply_lookup(reply, fs.lookup(parent.0, &name).await, absent_for, uid, gid) },
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(res) = fh.and_then(|fh| self.fs.try_getattr_open(ino.0, fh.0)) {
            return reply_attr(reply, res, self.uid, self.gid);
        }
        if let Some(res) = self.fs.try_getattr(ino.0) {
            return reply_attr(reply, res, self.uid, self.gid);
        }
        let (uid, gid) = (self.uid, self.gid);
        self.spawn(move |fs| async move { reply_attr(reply, fs.getattr(ino.0).await, uid, gid) });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let conv = |t: Option<TimeOrNow>| {
            t.map(|t| match t {
                TimeOrNow::Now => SetTime::Now,
                TimeOrNow::SpecificTime(t) => SetTime::At(t),
            })
        };
        let nothing = mode.is_none()
            && uid.is_none()
            && gid.is_none()
            && size.is_none()
            && atime.is_none()
            && mtime.is_none()
            && ctime.is_none();
        // With FUSE_HANDLE_KILLPRIV_V2, an unprivileged caller's truncate carries the kernel's
        // "kill set-id" flag, and before its first write to a file with set-id bits or
        // capabilities the kernel sends a setattr that changes nothing: both ask us to clear
        // them (fuser passes neither flag on). Root's writes keep set-id bits, as on a local
        // disk; the capabilities its writes clear, the staging file's own filesystem clears.
        let drop_privileges = (req.uid() != 0 && (size.is_some() || nothing)).then(|| writer(req));
        let change =
            crate::fs::SetAttr { mode, uid, gid, size, atime: conv(atime), mtime: conv(mtime), drop_privileges };
        let res = self.fs.setattr(ino.0, change, fh.map(|f| f.0));
        reply_attr(reply, res, self.uid, self.gid);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let Some(name) = name_str(name) else { return reply.error(errno(&FsError::BadName)) };
        let res = self.fs.mknod(parent.0, &name, mode & !(umask & 0o7777), rdev, caller(req));
        reply_entry(reply, res, self.uid, self.gid);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let Some(name) = name_str(name) else { return reply.error(errno(&FsError::BadName)) };
        reply_entry(reply, self.fs.mkdir(parent.0, &name, mode & !umask, caller(req)), self.uid, self.gid);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(name) = name_str(name) else { return reply.error(errno(&FsError::NotFound)) };
        reply_empty(reply, self.fs.unlink(parent.0, &name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(name) = name_str(name) else { return reply.error(errno(&FsError::NotFound)) };
        reply_empty(reply, self.fs.rmdir(parent.0, &name));
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let Some(name) = name_str(link_name) else { return reply.error(errno(&FsError::BadName)) };
        reply_entry(reply, self.fs.symlink(parent.0, &name, target, caller(req)), self.uid, self.gid);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (Some(name), Some(newname)) = (name_str(name), name_str(newname)) else {
            return reply.error(errno(&FsError::BadName));
        };
        reply_empty(reply, self.fs.rename(parent.0, &name, newparent.0, &newname, flags.bits()));
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let Some(name) = name_str(newname) else { return reply.error(errno(&FsError::BadName)) };
        reply_entry(reply, self.fs.link(ino.0, newparent.0, &name), self.uid, self.gid);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let Some(name) = name_str(name) else { return reply.error(errno(&FsError::BadName)) };
        let allowed = self.passthrough.enabled.load(std::sync::atomic::Ordering::Relaxed);
        match self.fs.create(parent.0, &name, mode & !umask, flags, caller(req), allowed) {
            Ok((a, o)) => {
                let attr = file_attr(&a, self.uid, self.gid);
                let fh = FileHandle(o.fh);
                let (flags, backing) = self.passthrough.choose(&self.fs, a.ino, o, |f| reply.open_backing(f));
                match backing {
                    Some(id) => reply.created_passthrough(&ttl(&a), &attr, Generation(0), fh, flags, &id),
                    None => reply.created(&ttl(&a), &attr, Generation(0), fh, flags),
                }
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let pt = self.passthrough.clone();
        let allowed = pt.enabled.load(std::sync::atomic::Ordering::Relaxed) && !pt.has_ordinary(ino.0);
        // A file whose object is already open (fetched ahead): answered from this thread.
        if let Some(res) = self.fs.try_open(ino.0, flags.0, allowed) {
            return match res {
                Ok(o) => pt.reply_open(&self.fs, reply, ino.0, o),
                Err(e) => reply.error(errno(&e)),
            };
        }
        self.spawn(move |fs| async move {
            match fs.open(ino.0, flags.0, allowed).await {
                Ok(o) => pt.reply_open(&fs, reply, ino.0, o),
                Err(e) => reply.error(errno(&e)),
            }
        });
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
        // Fully cached: answer from this thread, no hop to the runtime.
        if let Some(res) = self.fs.read_cached(fh.0, offset, size) {
            return match res {
                Ok(buf) => reply.data(&buf),
                Err(e) => reply.error(errno(&e)),
            };
        }
        self.spawn(move |fs| async move {
            match fs.read(fh.0, offset, size).await {
                Ok(buf) => reply.data(&buf),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.fs.write(fh.0, offset, data, writer(req)) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
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
        self.passthrough.release(fh.0);
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.fsync(fh.0, datasync));
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.fs.list_ahead(ino.0);
        if let Some(res) = self.fs.try_opendir(ino.0) {
            return reply_opendir(reply, res);
        }
        self.spawn(move |fs| async move { reply_opendir(reply, fs.opendir(ino.0).await) });
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let res =
            self.fs.readdir_each(fh.0, offset, |next, e| reply.add(INodeNo(e.ino), next, file_type(e.kind), &e.name));
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Listings with attributes: `ls -l` and `find` over a big tree then cost one request per
    /// directory page instead of one lookup per file.
    fn readdirplus(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let res = self.fs.readdir_each(fh.0, offset, |next, e| {
            // "." and ".." carry no attributes the kernel uses: a placeholder, never cached.
            let attr = match e.name.as_str() {
                "." | ".." => None,
                _ => self.fs.listing_attr(e.ino).ok(),
            };
            let attr = attr.unwrap_or(crate::fs::Attr {
                ino: e.ino,
                size: 0,
                kind: e.kind,
                perm: 0o555,
                mtime: std::time::UNIX_EPOCH,
                staged: None,
                cache_for: crate::fs::CacheFor::Never,
            });
            reply.add(INodeNo(e.ino), next, &e.name, &ttl(&attr), &file_attr(&attr, self.uid, self.gid), Generation(0))
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Some(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                255,
                s.fragment_size() as u32,
            ),
            None => reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let Some(name) = name_str(name) else { return reply.error(errno(&FsError::NotSupported)) };
        reply_empty(reply, self.fs.setxattr(ino.0, &name, value, flags));
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(name) = name_str(name) else { return reply.error(errno(&FsError::NoAttr)) };
        if let Some(res) = self.fs.try_getxattr(ino.0, &name) {
            return match res {
                Ok(v) => reply_xattr(reply, size, &v),
                Err(e) => reply.error(errno(&e)),
            };
        }
        self.spawn(move |fs| async move {
            match fs.getxattr(ino.0, &name).await {
                Ok(v) => reply_xattr(reply, size, &v),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino.0) {
            Ok(v) => reply_xattr(reply, size, &v),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(name) = name_str(name) else { return reply.error(errno(&FsError::NoAttr)) };
        reply_empty(reply, self.fs.removexattr(ino.0, &name));
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}

impl Passthrough {
    fn lock(&self) -> std::sync::MutexGuard<'_, PassthroughState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn has_ordinary(&self, ino: u64) -> bool {
        self.lock().ordinary.contains_key(&ino)
    }

    /// Answers an open: through the kernel's passthrough when the filesystem offered a backing
    /// file (or another handle of the inode has one) and no ordinary handle is open on the
    /// inode, otherwise normally.
    fn reply_open(&self, fs: &Fs, reply: ReplyOpen, ino: u64, o: crate::fs::Opened) {
        let fh = FileHandle(o.fh);
        let (flags, backing) = self.choose(fs, ino, o, |f| reply.open_backing(f));
        match backing {
            Some(id) => reply.opened_passthrough(fh, flags, &id),
            None => reply.opened(fh, flags),
        }
    }

    /// How handle `o` of `ino` is answered: its open flags, and the backing the kernel uses
    /// directly, if any (`open_backing` registers a new one). The filesystem hears which, before
    /// the kernel has the handle.
    fn choose(
        &self,
        fs: &Fs,
        ino: u64,
        o: crate::fs::Opened,
        open_backing: impl FnOnce(&std::fs::File) -> std::io::Result<BackingId>,
    ) -> (FopenFlags, Option<Arc<BackingId>>) {
        let mut flags = FopenFlags::empty();
        if o.no_flush {
            flags |= FopenFlags::FOPEN_NOFLUSH;
        }
        let mut st = self.lock();
        let existing = st.by_inode.get(&ino).and_then(Weak::upgrade);
        let backing = match (&o.backing, existing) {
            (_, Some(id)) => Some(id),
            (Some(file), None) if !st.ordinary.contains_key(&ino) => match open_backing(file) {
                Ok(id) => {
                    let id = Arc::new(id);
                    st.by_inode.insert(ino, Arc::downgrade(&id));
                    Some(id)
                }
                Err(e) => {
                    if e.raw_os_error() == Some(libc::EPERM) {
                        // Not allowed to this daemon (it needs CAP_SYS_ADMIN): not asked again.
                        self.enabled.store(false, std::sync::atomic::Ordering::Relaxed);
                    }
                    tracing::debug!("passthrough refused by the kernel: {e}");
                    None
                }
            },
            _ => None,
        };
        match &backing {
            // No page-cache flags with passthrough: the kernel fails such an open with EIO
            // (FOPEN_NOFLUSH it takes).
            Some(id) => {
                st.by_handle.insert(o.fh, id.clone());
            }
            None => {
                *st.ordinary.entry(ino).or_default() += 1;
                st.ordinary_handles.insert(o.fh, ino);
                if o.direct_io {
                    flags |= FopenFlags::FOPEN_DIRECT_IO;
                }
                if o.keep_cache {
                    flags |= FopenFlags::FOPEN_KEEP_CACHE;
                }
            }
        }
        drop(st);
        if backing.is_some() {
            fs.passed_through(o.fh);
        }
        (flags, backing)
    }

    fn release(&self, fh: u64) {
        let mut st = self.lock();
        st.by_handle.remove(&fh);
        if let Some(ino) = st.ordinary_handles.remove(&fh) {
            if let Some(n) = st.ordinary.get_mut(&ino) {
                *n -= 1;
                if *n == 0 {
                    st.ordinary.remove(&ino);
                }
            }
        }
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(errno(&FsError::TooSmall));
    } else {
        reply.data(value);
    }
}
