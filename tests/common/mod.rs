//! Test harness shared by the integration tests: a real S3 server (s3s-fs) on 127.0.0.1 that
//! can be stopped and restarted on the same port, a request log to prove what was (not)
//! downloaded, and `TestMount`, a real FUSE mount of the datumfs binary that is always
//! unmounted and whose process is stopped by PID, even when the test panics.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "testkey";
pub const SECRET_KEY: &str = "testsecret";

/// One request the S3 server saw.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub query: String,
    pub range: Option<String>,
    /// The source of a server-side copy (x-amz-copy-source).
    pub copy_source: Option<String>,
    /// The request's Content-Length.
    pub content_length: u64,
}

impl Logged {
    /// A GET of an object's bytes (not a listing).
    pub fn is_object_get(&self) -> bool {
        self.method == "GET"
            && !self.query.contains("list-type")
            && !self.query.contains("delimiter")
            && self.path.matches('/').count() >= 2
    }
}

/// An in-process s3s-fs server. Buckets are directories under `root`.
/// What goes wrong with a request, as a store or the network between can make it go wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)]
pub enum FaultKind {
    /// An HTTP error status with an S3 error body (500 InternalError, 503 ServiceUnavailable).
    Status(u16),
    /// 503 SlowDown: throttling.
    SlowDown,
    /// The response starts, then the connection is reset halfway through the body.
    ResetMidBody,
    /// The body ends halfway, short of its Content-Length.
    TruncatedBody,
    /// No answer at all (until the client gives up).
    Hang,
    /// 403 RequestTimeTooSkewed: the client's clock is off.
    ClockSkew,
}

/// A fault injected into the next `times` requests with `method` whose path contains `path`.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    pub method: &'static str,
    pub path: String,
    pub times: usize,
}

/// A body given back in pieces (the last may be an error), for faults mid-body.
struct Pieces(std::vec::IntoIter<Result<bytes::Bytes, s3s::StdError>>);

impl futures::Stream for Pieces {
    type Item = Result<bytes::Bytes, s3s::StdError>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

impl s3s::stream::ByteStream for Pieces {}

/// Applies `kind` to a response the server made (or makes one of its own).
async fn faulty(
    kind: FaultKind,
    res: Result<hyper::Response<s3s::Body>, s3s::HttpError>,
) -> Result<hyper::Response<s3s::Body>, s3s::HttpError> {
    use futures::StreamExt;
    let error = |status: u16, code: &str| {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected</Message></Error>"
        );
        let mut r = hyper::Response::new(s3s::Body::from(body));
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        Ok(r)
    };
    match kind {
        FaultKind::Status(500) => error(500, "InternalError"),
        FaultKind::Status(code) => error(code, "ServiceUnavailable"),
        FaultKind::SlowDown => error(503, "SlowDown"),
        FaultKind::ClockSkew => error(403, "RequestTimeTooSkewed"),
        FaultKind::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            res
        }
        FaultKind::ResetMidBody | FaultKind::TruncatedBody => {
            let (parts, mut body) = res?.into_parts();
            let mut all = Vec::new();
            while let Some(chunk) = body.next().await {
                all.extend_from_slice(&chunk.map_err(s3s::HttpError::new)?);
            }
            let half = bytes::Bytes::from(all[..all.len() / 2].to_vec());
            let mut pieces = vec![Ok(half)];
            if kind == FaultKind::ResetMidBody {
                pieces.push(Err(Box::new(std::io::Error::other("injected reset")) as s3s::StdError));
            }
            let stream: s3s::stream::DynByteStream = Box::pin(Pieces(pieces.into_iter()));
            Ok(hyper::Response::from_parts(parts, s3s::Body::from(stream)))
        }
    }
}

pub struct S3Server {
    pub root: tempfile::TempDir,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<Logged>>>,
    /// Faults to inject, first match first.
    pub faults: Arc<Mutex<Vec<Fault>>>,
    /// Milliseconds every PUT/POST waits before it is served (0: none), to catch work mid-way.
    pub write_delay_ms: Arc<std::sync::atomic::AtomicU64>,
    rt: tokio::runtime::Runtime,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl S3Server {
    /// Starts a server on a free loopback port. Panics (fails the test) if it cannot.
    pub fn start() -> Self {
        let root = tempfile::tempdir().expect("temp dir for the S3 server");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port for the S3 server");
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut s = Self {
            root,
            addr,
            log: Arc::new(Mutex::new(Vec::new())),
            faults: Arc::default(),
            write_delay_ms: Arc::default(),
            rt,
            task: None,
        };
        s.resume();
        s
    }

    /// (Re)starts serving on the same port.
    pub fn resume(&mut self) {
        assert!(self.task.is_none(), "server already running");
        let fs = s3s_fs::FileSystem::new(self.root.path()).expect("s3s-fs on the temp dir");
        let mut b = s3s::service::S3ServiceBuilder::new(fs);
        b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = b.build();
        let log = self.log.clone();
        let faults = self.faults.clone();
        let delay = self.write_delay_ms.clone();
        // s3s-fs checks If-Match / If-None-Match and then writes, so two racing conditional PUTs
        // can both pass; S3 decides them atomically. One at a time here restores that. A GET
        // racing a write can also pair the old bytes with the new ETag (it opens the file, then
        // reads the ETag), so GETs of catalog records wait for conditional PUTs too.
        let conditional_puts = Arc::new(tokio::sync::RwLock::new(()));
        let addr = self.addr;
        let listener = {
            let _g = self.rt.enter();
            let mut tries = 0;
            loop {
                match std::net::TcpListener::bind(addr) {
                    Ok(l) => {
                        l.set_nonblocking(true).unwrap();
                        break tokio::net::TcpListener::from_std(l).unwrap();
                    }
                    Err(e) if tries < 50 => {
                        tries += 1;
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => panic!("the S3 server could not bind {addr}: {e}"),
                }
            }
        };
        self.task = Some(self.rt.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((sock, _)) = listener.accept().await else { continue };
                let _ = sock.set_nodelay(true);
                let service = service.clone();
                let log = log.clone();
                let faults = faults.clone();
                let delay = delay.clone();
                let conditional_puts = conditional_puts.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        log.lock().unwrap().push(Logged {
                            method: req.method().to_string(),
                            path: req.uri().path().to_string(),
                            query: req.uri().query().unwrap_or_default().to_string(),
                            range: req.headers().get("range").and_then(|v| v.to_str().ok()).map(str::to_string),
                            copy_source: req
                                .headers()
                                .get("x-amz-copy-source")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string),
                            content_length: req
                                .headers()
                                .get("content-length")
                                .and_then(|v| v.to_str().ok()?.parse().ok())
                                .unwrap_or(0),
                        });
                        let wait = delay.load(std::sync::atomic::Ordering::Relaxed);
                        let slow = wait > 0 && (req.method() == "PUT" || req.method() == "POST");
                        let conditional = req.method() == "PUT"
                            && (req.headers().contains_key("if-match") || req.headers().contains_key("if-none-match"));
                        let record_read = req.method() == "GET" && req.uri().path().contains("/.datumfs/");
                        let fault = {
                            let mut faults = faults.lock().unwrap();
                            let hit = faults.iter_mut().find(|f| {
                                f.times > 0 && req.method() == f.method && req.uri().path().contains(&f.path)
                            });
                            hit.map(|f| {
                                f.times -= 1;
                                f.kind
                            })
                        };
                        let service = service.clone();
                        let conditional_puts = conditional_puts.clone();
                        async move {
                            if slow {
                                tokio::time::sleep(Duration::from_millis(wait)).await;
                            }
                            let _one = if conditional { Some(conditional_puts.write().await) } else { None };
                            let _read = if record_read { Some(conditional_puts.read().await) } else { None };
                            match fault {
                                // Errors are answered without the request reaching the store.
                                Some(
                                    k @ (FaultKind::Status(_)
                                    | FaultKind::SlowDown
                                    | FaultKind::Hang
                                    | FaultKind::ClockSkew),
                                ) => faulty(k, Ok(hyper::Response::new(s3s::Body::empty()))).await,
                                Some(k) => faulty(k, hyper::service::Service::call(&service, req).await).await,
                                None => hyper::service::Service::call(&service, req).await,
                            }
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        }));
        // Wait until it answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "the S3 server did not start on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops serving: the port refuses connections and open connections are dropped.
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = self.rt.block_on(t);
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes an object (creating the bucket directory).
    pub fn put(&self, bucket: &str, key: &str, data: &[u8]) {
        let p = self.root.path().join(bucket).join(key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    /// Writes an object through the S3 API, as another writer would (the server keeps its
    /// ETag; [`S3Server::put`] writes behind its back).
    pub fn put_as_client(&self, bucket: &str, key: &str, data: &[u8]) {
        use object_store::ObjectStoreExt;
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_bucket_name(bucket)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_region("us-east-1")
            .with_allow_http(true)
            .build()
            .expect("S3 client");
        let payload = object_store::PutPayload::from(data.to_vec());
        self.rt.block_on(store.put(&object_store::path::Path::from(key), payload)).expect("PUT as a client");
    }

    /// The bytes of an object, read from the server's directory.
    pub fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.root.path().join(bucket).join(key)).ok()
    }

    pub fn bucket(&self, bucket: &str) {
        std::fs::create_dir_all(self.root.path().join(bucket)).unwrap();
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }

    /// Injects `kind` into the next `times` requests with `method` whose path contains `path`.
    #[allow(dead_code)]
    pub fn inject(&self, kind: FaultKind, method: &'static str, path: &str, times: usize) {
        self.faults.lock().unwrap().push(Fault { kind, method, path: path.to_string(), times });
    }

    /// Faults injected but not yet used up.
    #[allow(dead_code)]
    pub fn faults_left(&self) -> usize {
        self.faults.lock().unwrap().iter().map(|f| f.times).sum()
    }

    /// Stops injecting faults.
    #[allow(dead_code)]
    pub fn clear_faults(&self) {
        self.faults.lock().unwrap().clear();
    }

    pub fn clear_log(&self) {
        self.log.lock().unwrap().clear();
    }

    /// The environment a datumfs process needs to reach this server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether FUSE tests can run; with DATUMFS_REQUIRE_FUSE=1 a missing /dev/fuse fails the test.
pub fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    if std::env::var("DATUMFS_REQUIRE_FUSE").as_deref() == Ok("1") {
        panic!("/dev/fuse is missing and DATUMFS_REQUIRE_FUSE=1");
    }
    eprintln!("SKIPPED: /dev/fuse is missing (set DATUMFS_REQUIRE_FUSE=1 to make this a failure)");
    false
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_datumfs")
}

/// A clean environment for datumfs commands: no AWS settings from the host.
pub fn command(home: &Path, env: &[(String, String)]) -> Command {
    let mut c = Command::new(bin());
    for (k, _) in std::env::vars() {
        if ["AWS_", "DATUMFS_", "GOOGLE_", "AZURE_", "OS_", "ST_"].iter().any(|p| k.starts_with(p)) {
            c.env_remove(k);
        }
    }
    c.env("DATUMFS_HOME", home).env("HOME", home);
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

pub fn is_mounted(path: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.to_string_lossy().replace(' ', "\\040");
    text.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// A datumfs mount in the foreground, owned by the test. Dropping it unmounts and stops the
/// process by PID.
pub struct TestMount {
    pub dir: tempfile::TempDir,
    pub mnt: PathBuf,
    pub home: PathBuf,
    pub cache: PathBuf,
    pub child: Option<Child>,
    pub env: Vec<(String, String)>,
}

impl TestMount {
    /// Mounts with `args` (after `mount MNT --foreground --cache-dir CACHE`), in a fresh temp dir.
    pub fn new(args: &[&str], env: &[(String, String)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = dir.path().join("cache");
        Self::with_cache(dir, cache, args, env)
    }

    /// Mounts again on an existing cache dir (the `dir` keeps mount, home and cache together).
    pub fn with_cache(dir: tempfile::TempDir, cache: PathBuf, args: &[&str], env: &[(String, String)]) -> Self {
        let mnt = dir.path().join("mnt");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        let mut m = Self { dir, mnt, home, cache, child: None, env: env.to_vec() };
        m.start(args);
        m
    }

    fn start(&mut self, args: &[&str]) {
        let log = std::fs::File::create(self.dir.path().join("fg.log")).unwrap();
        let mut c = command(&self.home, &self.env);
        c.arg("mount").arg(&self.mnt).arg("--foreground").arg("--cache-dir").arg(&self.cache).args(args);
        c.stdout(Stdio::null()).stderr(log);
        let child = c.spawn().expect("spawning datumfs mount");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(&self.mnt) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("datumfs mount exited with {status}: {}", self.log());
            }
            assert!(Instant::now() < deadline, "not mounted after 30 s: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("fg.log")).unwrap_or_default()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Runs a datumfs subcommand with this mount's environment.
    pub fn run(&self, args: &[&str]) -> Output {
        command(&self.home, &self.env).args(args).output().expect("running datumfs")
    }

    /// Unmounts through `datumfs unmount` and waits for the process to end.
    pub fn unmount(&mut self) {
        let out = self.run(&["unmount", self.mnt.to_str().unwrap()]);
        assert!(out.status.success(), "datumfs unmount failed: {}", String::from_utf8_lossy(&out.stderr));
        self.wait_exit();
    }

    fn wait_exit(&mut self) {
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    _ if Instant::now() > deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }

    /// Kills the daemon with SIGKILL (a crash) and cleans up the dead mount.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }

    /// Unmounts and hands back the temp dir so the cache can be mounted again.
    pub fn into_parts(mut self) -> (tempfile::TempDir, PathBuf) {
        self.unmount();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (dir, self.cache.clone())
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = command(&self.home, &self.env).args(["unmount", "--force", self.mnt.to_str().unwrap()]).output();
        }
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// The JSON a successful datumfs command printed (fails the test, with its stderr, otherwise).
pub fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Lazily unmounts a path on drop if something got mounted there (for checks that a mount
/// must fail: a failing check then leaves nothing behind).
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    r.fill_bytes(&mut v);
    v
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Reads `len` bytes at `offset` with pread.
pub fn pread(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = f.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(buf)
}

pub fn xattr(path: &Path, name: &str) -> Option<String> {
    let out = Command::new("getfattr").args(["--only-values", "-n", name]).arg(path).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).to_string())
}
