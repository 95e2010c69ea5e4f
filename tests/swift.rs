//! OpenStack Swift as a store, against a real Swift (proxy, account, container and object
//! servers from Debian's packages, with tempauth) that the test starts on loopback: the store's
//! semantics (create-only, compare-and-swap, large objects, listings, copies), Keystone v3 auth,
//! and a round trip through a mount (inputs read byte-exact, outputs synced as datums, a dataset
//! version mounted).

mod common;

use common::*;
use datumfs::store::swift::{SwiftAuth, SwiftStore};
use futures::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const USER: &str = "test:tester";
const KEY: &str = "testing";

/// A Swift cluster of one of each server on loopback; dropping it stops every process by PID.
struct Swift {
    dir: tempfile::TempDir,
    port: u16,
    children: Vec<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One plain HTTP/1.1 request to 127.0.0.1:`port`: (status, headers in lower case, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes()).unwrap();
    conn.write_all(body).unwrap();
    let mut raw = Vec::new();
    let _ = conn.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw.get(split + 4..).unwrap_or_default().to_vec();
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body)
}

fn get_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

impl Swift {
    /// Starts the cluster, or returns None (skipping) where Swift is not installed, unless
    /// DATUMFS_REQUIRE_SWIFT=1 (CI) makes that a failure.
    fn start() -> Option<Self> {
        if !Path::new("/usr/bin/swift-proxy-server").exists() || !Path::new("/usr/bin/memcached").exists() {
            assert!(
                std::env::var("DATUMFS_REQUIRE_SWIFT").as_deref() != Ok("1"),
                "Swift is not installed (apt-get install swift-proxy swift-account swift-container swift-object memcached)"
            );
            eprintln!("SKIPPED: Swift is not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("node/d1")).unwrap();
        std::fs::create_dir_all(d.join("rings")).unwrap();
        let (proxy, memcache) = (free_port(), free_port());
        let mut swift = Swift { dir, port: proxy, children: Vec::new() };
        let d = swift.dir.path().to_path_buf();
        for name in ["account", "container", "object"] {
            let port = free_port();
            let builder = d.join(format!("rings/{name}.builder"));
            let ring = |args: &[&str]| {
                let out = Command::new("swift-ring-builder").arg(&builder).args(args).output().unwrap();
                // rebalance exits 1 with a warning on a one-device ring, and still writes it.
                assert!(out.status.code().is_some_and(|c| c <= 1), "{}", String::from_utf8_lossy(&out.stdout));
            };
            ring(&["create", "1", "1", "1"]);
            ring(&["add", &format!("r1z1-127.0.0.1:{port}/d1"), "1"]);
            ring(&["rebalance"]);
            let conf = format!(
                "[DEFAULT]\ndevices = {}\nmount_check = false\nbind_ip = 127.0.0.1\nbind_port = {port}\nworkers = 0\n\
                 swift_dir = {}\nlog_level = WARNING\n[pipeline:main]\npipeline = {name}-server\n\
                 [app:{name}-server]\nuse = egg:swift#{name}\n",
                d.join("node").display(),
                d.join("rings").display()
            );
            std::fs::write(d.join(format!("{name}.conf")), conf).unwrap();
        }
        // (section name in the pipeline, the middleware's entry point)
        let filters = [
            ("catch_errors", "catch_errors"),
            ("gatekeeper", "gatekeeper"),
            ("healthcheck", "healthcheck"),
            ("proxy-logging", "proxy_logging"),
            ("listing_formats", "listing_formats"),
            ("copy", "copy"),
            ("slo", "slo"),
            ("dlo", "dlo"),
        ];
        let mut proxy_conf = format!(
            "[DEFAULT]\nbind_ip = 127.0.0.1\nbind_port = {proxy}\nworkers = 0\nswift_dir = {}\nlog_level = WARNING\n\
             [pipeline:main]\npipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats \
             tempauth copy slo dlo proxy-logging proxy-server\n\
             [app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\n\
             [filter:tempauth]\nuse = egg:swift#tempauth\nuser_test_tester = {KEY} .admin\n\
             [filter:cache]\nuse = egg:swift#memcache\nmemcache_servers = 127.0.0.1:{memcache}\n",
            d.join("rings").display()
        );
        for (section, entry) in filters {
            proxy_conf.push_str(&format!("[filter:{section}]\nuse = egg:swift#{entry}\n"));
        }
        std::fs::write(d.join("proxy.conf"), proxy_conf).unwrap();
        let log = |name: &str| std::fs::File::create(d.join(format!("{name}.log"))).unwrap();
        let memcached = Command::new("memcached")
            .args(["-l", "127.0.0.1", "-p", &memcache.to_string(), "-U", "0", "-u", "root"])
            .stdout(Stdio::null())
            .stderr(log("memcached"))
            .spawn()
            .unwrap();
        swift.children.push(memcached);
        for name in ["account", "container", "object", "proxy"] {
            let program = if name == "proxy" { "swift-proxy-server".into() } else { format!("swift-{name}-server") };
            let child = Command::new(program)
                .arg(d.join(format!("{name}.conf")))
                .stdout(Stdio::null())
                .stderr(log(name))
                .spawn()
                .unwrap();
            swift.children.push(child);
        }
        // Ready when a token can be had and an account listed.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", proxy)).is_ok() {
                let (status, headers, _) =
                    http(proxy, "GET", "/auth/v1.0", &[("X-Auth-User", USER), ("X-Auth-Key", KEY)], b"");
                if status == 200 {
                    let token = get_header(&headers, "x-auth-token").unwrap().to_string();
                    let (status, _, _) = http(proxy, "GET", "/v1/AUTH_test", &[("X-Auth-Token", &token)], b"");
                    if status == 200 || status == 204 {
                        break;
                    }
                }
            }
            assert!(Instant::now() < deadline, "Swift did not come up in 60 s: {}", swift.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(swift)
    }

    fn logs(&self) -> String {
        ["proxy", "account", "container", "object", "memcached"]
            .iter()
            .map(|n| {
                format!(
                    "--- {n}\n{}",
                    std::fs::read_to_string(self.dir.path().join(format!("{n}.log"))).unwrap_or_default()
                )
            })
            .collect()
    }

    /// A tempauth token (asked again while the servers, busy just after they came up, fail).
    fn token(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, headers, _) =
                http(self.port, "GET", "/auth/v1.0", &[("X-Auth-User", USER), ("X-Auth-Key", KEY)], b"");
            if let Some(token) = get_header(&headers, "x-auth-token") {
                return token.to_string();
            }
            assert!(Instant::now() < deadline, "no tempauth token within 30 s (last: HTTP {status}): {}", self.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn create_container(&self, name: &str) {
        // The servers may still be settling in (503) just after they came up.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, _, _) =
                http(self.port, "PUT", &format!("/v1/AUTH_test/{name}"), &[("X-Auth-Token", &self.token())], b"");
            if status == 201 || status == 202 {
                return;
            }
            assert!(status >= 500 && Instant::now() < deadline, "creating container {name}: {status}: {}", self.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Names in a container below `prefix`.
    fn names(&self, container: &str, prefix: &str) -> Vec<String> {
        let path = format!("/v1/AUTH_test/{container}?prefix={prefix}");
        let (status, _, body) = http(self.port, "GET", &path, &[("X-Auth-Token", &self.token())], b"");
        if status == 404 || status == 204 {
            return Vec::new();
        }
        String::from_utf8_lossy(&body).lines().map(str::to_string).collect()
    }

    fn auth(&self) -> SwiftAuth {
        SwiftAuth::V1 { auth_url: self.auth_url(), user: USER.into(), key: KEY.into() }
    }

    fn auth_url(&self) -> String {
        format!("http://127.0.0.1:{}/auth/v1.0", self.port)
    }

    /// The environment a datumfs process needs to reach this cluster.
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("OS_AUTH_URL".into(), self.auth_url()),
            ("OS_USERNAME".into(), USER.into()),
            ("OS_PASSWORD".into(), KEY.into()),
        ]
    }
}

impl Drop for Swift {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGTERM);
        }
        for child in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn read_all(store: &SwiftStore, key: &str) -> Vec<u8> {
    store.get(&ObjPath::from(key)).await.unwrap().bytes().await.unwrap().to_vec()
}

#[test]
fn swift_store_keeps_object_store_semantics() {
    let Some(swift) = Swift::start() else { return };
    swift.create_container("sem");
    let store = Arc::new(SwiftStore::new("sem", swift.auth()).unwrap());
    let rt = rt();
    rt.block_on(async {
        // Put, get, ranges, head.
        let data = bytes(1, 300_000);
        let key = ObjPath::from("dir/sub dir/ünï code.bin");
        let put = store.put(&key, PutPayload::from(data.clone())).await.unwrap();
        assert!(put.e_tag.is_some());
        assert_eq!(store.get(&key).await.unwrap().bytes().await.unwrap(), data);
        assert_eq!(store.get_range(&key, 1000..1010).await.unwrap(), &data[1000..1010]);
        let head = store.head(&key).await.unwrap();
        assert_eq!(head.size, 300_000);
        assert!(head.e_tag.is_some());
        let missing = store.head(&ObjPath::from("nothing")).await.unwrap_err();
        assert!(matches!(missing, object_store::Error::NotFound { .. }), "{missing}");

        // Create-only.
        let create = PutOptions { mode: PutMode::Create, ..Default::default() };
        store.put_opts(&ObjPath::from("once"), PutPayload::from_static(b"1"), create.clone()).await.unwrap();
        let again = store.put_opts(&ObjPath::from("once"), PutPayload::from_static(b"2"), create).await.unwrap_err();
        assert!(matches!(again, object_store::Error::AlreadyExists { .. }), "{again}");
        assert_eq!(read_all(&store, "once").await, b"1");

        // Compare-and-swap: a stale version is refused; many writers lose no update.
        let counter = ObjPath::from("counter");
        let first = store.put(&counter, PutPayload::from_static(b"0")).await.unwrap();
        let stale = UpdateVersion { e_tag: Some("0000".into()), version: None };
        let refused = store
            .put_opts(
                &counter,
                PutPayload::from_static(b"x"),
                PutOptions { mode: PutMode::Update(stale), ..Default::default() },
            )
            .await
            .unwrap_err();
        assert!(matches!(refused, object_store::Error::Precondition { .. }), "{refused}");
        let current = UpdateVersion { e_tag: first.e_tag.clone(), version: None };
        store
            .put_opts(
                &counter,
                PutPayload::from_static(b"0"),
                PutOptions { mode: PutMode::Update(current), ..Default::default() },
            )
            .await
            .unwrap();
        let mut writers = Vec::new();
        for _ in 0..6 {
            let store = store.clone();
            let counter = counter.clone();
            writers.push(tokio::spawn(async move {
                let mut done = 0;
                while done < 4 {
                    let got = store.get(&counter).await.unwrap();
                    let version = UpdateVersion { e_tag: got.meta.e_tag.clone(), version: None };
                    let n: u64 = String::from_utf8(got.bytes().await.unwrap().to_vec()).unwrap().parse().unwrap();
                    let next = PutPayload::from((n + 1).to_string().into_bytes());
                    let opts = PutOptions { mode: PutMode::Update(version), ..Default::default() };
                    match store.put_opts(&counter, next, opts).await {
                        Ok(_) => done += 1,
                        Err(object_store::Error::Precondition { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        assert_eq!(read_all(&store, "counter").await, b"24", "six writers of four increments each");

        // Listings, with and without a delimiter.
        for k in ["l/a.txt", "l/b/c.txt", "l/b/d.txt", "lx.txt"] {
            store.put(&ObjPath::from(k), PutPayload::from_static(b"x")).await.unwrap();
        }
        let mut all: Vec<String> =
            store.list(Some(&ObjPath::from("l"))).map(|m| m.unwrap().location.to_string()).collect::<Vec<_>>().await;
        all.sort();
        assert_eq!(all, ["l/a.txt", "l/b/c.txt", "l/b/d.txt"]);
        let level = store.list_with_delimiter(Some(&ObjPath::from("l"))).await.unwrap();
        assert_eq!(level.common_prefixes, [ObjPath::from("l/b")]);
        assert_eq!(level.objects.iter().map(|o| o.location.to_string()).collect::<Vec<_>>(), ["l/a.txt"]);

        // Copies.
        store.copy(&ObjPath::from("l/a.txt"), &ObjPath::from("copied.txt")).await.unwrap();
        assert_eq!(read_all(&store, "copied.txt").await, b"x");
        let refused = store.copy_if_not_exists(&ObjPath::from("l/a.txt"), &ObjPath::from("once")).await.unwrap_err();
        assert!(matches!(refused, object_store::Error::NotImplemented { .. }), "{refused}");

        // A large object in three segments, read back whole and in a range that spans two.
        let big = bytes(2, (5 << 20) / 2);
        let mut upload = store.put_multipart(&ObjPath::from("big.bin")).await.unwrap();
        for chunk in big.chunks(1 << 20) {
            upload.put_part(PutPayload::from(chunk.to_vec())).await.unwrap();
        }
        upload.complete().await.unwrap();
        assert_eq!(read_all(&store, "big.bin").await, big);
        assert_eq!(store.head(&ObjPath::from("big.bin")).await.unwrap().size, big.len() as u64);
        let span = (1 << 20) - 10..(1 << 20) + 10;
        assert_eq!(
            store.get_range(&ObjPath::from("big.bin"), span.clone()).await.unwrap(),
            &big[span.start as usize..span.end as usize]
        );
        assert_eq!(swift.names("sem_segments", "big.bin/").len(), 3);
        // Deleting it takes its segments too; deleting what is gone is fine.
        store.delete(&ObjPath::from("big.bin")).await.unwrap();
        assert!(store.head(&ObjPath::from("big.bin")).await.is_err());
        assert!(swift.names("sem_segments", "big.bin/").is_empty());
        store.delete(&ObjPath::from("big.bin")).await.unwrap();
        // No lock is left behind.
        assert!(swift.names("sem_segments", ".locks/").is_empty(), "{:?}", swift.names("sem_segments", ".locks/"));

        // Wrong credentials are named as such.
        let bad = SwiftStore::new(
            "sem",
            SwiftAuth::V1 { auth_url: swift.auth_url(), user: USER.into(), key: "wrong".into() },
        )
        .unwrap();
        let e = bad.head(&ObjPath::from("once")).await.unwrap_err();
        assert!(matches!(e, object_store::Error::Unauthenticated { .. }), "{e}");
        assert!(e.to_string().contains("refused the credentials"), "{e}");
    });
}

/// A Keystone v3 identity service of the test's own: checks the request as Keystone would and
/// answers with a catalog whose object-store endpoint is the real Swift, and a token tempauth
/// issued (so Swift accepts it).
fn fake_keystone(swift_port: u16, token: String) -> (u16, std::thread::JoinHandle<Vec<serde_json::Value>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        // One token request is all the store makes.
        let (mut conn, _) = listener.accept().unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = conn.read(&mut buf).unwrap();
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw).to_string();
            if let Some(split) = text.find("\r\n\r\n") {
                let len: usize = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if raw.len() >= split + 4 + len {
                    assert!(text.starts_with("POST /v3/auth/tokens "), "{text}");
                    seen.push(serde_json::from_slice(&raw[split + 4..split + 4 + len]).unwrap());
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        let body = serde_json::json!({"token": {
            "expires_at": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
            "catalog": [
                {"type": "identity", "endpoints": [{"interface": "public", "region": "RegionOne", "url": "http://127.0.0.1:1/"}]},
                {"type": "object-store", "endpoints": [
                    {"interface": "internal", "region": "RegionOne", "url": "http://127.0.0.1:1/v1/AUTH_test"},
                    {"interface": "public", "region": "RegionTwo", "url": "http://127.0.0.1:2/v1/AUTH_test"},
                    {"interface": "public", "region": "RegionOne", "url": format!("http://127.0.0.1:{swift_port}/v1/AUTH_test")}
                ]}
            ]
        }})
        .to_string();
        let answer = format!(
            "HTTP/1.1 201 Created\r\nX-Subject-Token: {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(answer.as_bytes()).unwrap();
        seen
    });
    (port, handle)
}

#[test]
fn keystone_v3_password_auth_finds_the_regions_object_store() {
    let Some(swift) = Swift::start() else { return };
    swift.create_container("ks");
    let (port, keystone) = fake_keystone(swift.port, swift.token());
    let vars = [
        ("OS_AUTH_URL", format!("http://127.0.0.1:{port}/v3")),
        ("OS_USERNAME", "alice".into()),
        ("OS_PASSWORD", "s3cret".into()),
        ("OS_PROJECT_NAME", "ml".into()),
        ("OS_USER_DOMAIN_NAME", "Default".into()),
        ("OS_PROJECT_DOMAIN_NAME", "Default".into()),
        ("OS_REGION_NAME", "RegionOne".into()),
    ];
    let auth = SwiftAuth::from_vars(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())).unwrap();
    assert!(!format!("{auth:?}").contains("s3cret"), "secrets stay out of debug output");
    let store = SwiftStore::new("ks", auth).unwrap();
    rt().block_on(async {
        store.put(&ObjPath::from("k.txt"), PutPayload::from_static(b"via keystone")).await.unwrap();
        assert_eq!(read_all(&store, "k.txt").await, b"via keystone");
    });
    let requests = keystone.join().unwrap();
    let identity = &requests[0]["auth"]["identity"];
    assert_eq!(identity["methods"][0], "password");
    assert_eq!(identity["password"]["user"]["name"], "alice");
    assert_eq!(identity["password"]["user"]["domain"]["name"], "Default");
    assert_eq!(requests[0]["auth"]["scope"]["project"]["name"], "ml");
}

#[test]
fn swift_round_trip_through_a_mount() {
    if !fuse_available() {
        return;
    }
    let Some(swift) = Swift::start() else { return };
    swift.create_container("data");
    swift.create_container("records");
    let store = SwiftStore::new("data", swift.auth()).unwrap();
    let (a, b) = (bytes(3, 2_500_000), bytes(4, 70_000));
    rt().block_on(async {
        store.put(&ObjPath::from("train/a.bin"), PutPayload::from(a.clone())).await.unwrap();
        store.put(&ObjPath::from("train/labels/b.txt"), PutPayload::from(b.clone())).await.unwrap();
    });
    let records = "swift://records/datumfs";
    let m = TestMount::new(
        &["--input", "train=swift://data/train/", "--store", records, "--execution", "sw-1"],
        &swift.env(),
    );
    assert_eq!(std::fs::read(m.path("inputs/train/a.bin")).unwrap(), a);
    assert_eq!(std::fs::read(m.path("inputs/train/labels/b.txt")).unwrap(), b);
    // Outputs: small ones (packed) and one big enough for a large object.
    let big = bytes(5, 20 << 20);
    let small = bytes(6, 3000);
    std::fs::write(m.path("outputs/model.bin"), &big).unwrap();
    std::fs::write(m.path("outputs/metrics.json"), &small).unwrap();
    std::fs::write(
        m.path("outputs/valohai.metadata.jsonl"),
        "{\"file\": \"model.bin\", \"metadata\": {\"valohai.dataset-versions\": [\"dataset://sw/v1\"]}}\n\
         {\"file\": \"metrics.json\", \"metadata\": {\"valohai.dataset-versions\": [\"dataset://sw/v1\"]}}\n",
    )
    .unwrap();
    let report = json(&m.run(&["sync", m.mnt.to_str().unwrap(), "--json"]));
    assert_eq!(report["versions"][0], "dataset://sw/v1", "{report}");
    let datums = json(&m.run(&["datum", "ls", "--execution", "sw-1", "--json", "--store", records]));
    for (path, data) in [("model.bin", &big), ("metrics.json", &small)] {
        let d =
            datums.as_array().unwrap().iter().find(|d| d["path"] == path).unwrap_or_else(|| panic!("{path}: {datums}"));
        assert_eq!(d["checksums"]["sha256"], sha256(data), "{path}");
        let got = m.dir.path().join(format!("got-{path}"));
        let out = m.run(&["datum", "get", d["id"].as_str().unwrap(), got.to_str().unwrap(), "--store", records]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(&std::fs::read(&got).unwrap(), data, "{path} fetched back");
    }
    assert!(!swift.names("records_segments", "").is_empty(), "the big output went up as a large object");
    // doctor --check-writes: create-only and compare-and-swap hold on Swift too.
    let report = json(&m.run(&["doctor", "--check-writes", "--json", "--store", records]));
    for name in ["create-only put", "compare-and-swap"] {
        let c = report["checks"].as_array().unwrap().iter().find(|c| c["check"] == name).unwrap();
        assert_eq!(c["outcome"], "ok", "{c}");
    }
    drop(m);
    // The dataset version, mounted by another job.
    let m2 =
        TestMount::new(&["--input", "ds=dataset://sw/v1", "--store", records, "--execution", "sw-2"], &swift.env());
    assert_eq!(std::fs::read(m2.path("inputs/ds/model.bin")).unwrap(), big);
    assert_eq!(std::fs::read(m2.path("inputs/ds/metrics.json")).unwrap(), small);
    drop(m2);
    // A writable volume on Swift: an edit and a new file pushed back with volume sync
    // (conditional on the listed version: compare-and-swap through Swift's lock objects).
    rt().block_on(async {
        store.put(&ObjPath::from("vol/notes.txt"), PutPayload::from_static(b"first line\n")).await.unwrap();
    });
    let m3 = TestMount::new(
        &["--volume", "v=swift://data/vol/:rwd", "--store", records, "--execution", "sw-3"],
        &swift.env(),
    );
    let notes = m3.path("volumes/v/notes.txt");
    assert_eq!(std::fs::read(&notes).unwrap(), b"first line\n");
    let mut f = std::fs::OpenOptions::new().append(true).open(&notes).unwrap();
    f.write_all(b"second line\n").unwrap();
    drop(f);
    std::fs::write(m3.path("volumes/v/new.txt"), b"new").unwrap();
    let synced = m3.run(&["volume", "sync", m3.mnt.to_str().unwrap(), "v", "--json"]);
    assert!(
        synced.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&synced.stderr),
        String::from_utf8_lossy(&synced.stdout)
    );
    rt().block_on(async {
        assert_eq!(read_all(&store, "vol/notes.txt").await, b"first line\nsecond line\n");
        assert_eq!(read_all(&store, "vol/new.txt").await, b"new");
    });
}
