//! OpenStack Swift behind object_store's [`ObjectStore`] trait, so that `swift://CONTAINER/PATH`
//! serves inputs, volumes and the data store like any other store.
//!
//! Authentication is the OpenStack clients' (from the environment): Keystone v3 with a password
//! (`OS_AUTH_URL`, `OS_USERNAME`, `OS_PASSWORD`, `OS_PROJECT_NAME`, `OS_USER_DOMAIN_NAME`,
//! `OS_PROJECT_DOMAIN_NAME`, `OS_REGION_NAME`, `OS_INTERFACE`) or an application credential
//! (`OS_APPLICATION_CREDENTIAL_ID`/`_SECRET`); Swift's own v1 auth (tempauth: an `OS_AUTH_URL`
//! ending in `/auth/v1.0`, or `ST_AUTH`/`ST_USER`/`ST_KEY`); or a token as it is
//! (`OS_STORAGE_URL` with `OS_AUTH_TOKEN`). A rejected token is renewed once per request.
//!
//! What Swift does differently from S3, and how it is bridged:
//! - create-only writes use `If-None-Match: *` on PUT, which Swift checks before it writes, not
//!   atomically with the write: two creates at the same instant can both be accepted, the newer
//!   winning. So an accepted create waits for such a rival to land (three times its own PUT's
//!   time, at least 50 ms) and reads the ETag back; only a create whose bytes are still there
//!   counts as made, the other is told the object exists. That narrows the race to a rival
//!   slower than that wait, it does not close it (a create of the same bytes is fine either way);
//! - Swift ignores `If-Match` on PUT, so a conditional update (compare-and-swap, used by the
//!   catalog's aliases and dataset heads and by volume sync) takes a lock object first: a
//!   create-only PUT (as above) of `CONTAINER_segments/.locks/KEY` with a unique token and a 15 s
//!   lease (`X-Delete-After`),
//!   then HEAD, compare, PUT, and delete the lock. It holds against every datumfs writer; a
//!   writer that ignores the lock (another tool) is not held by it;
//! - multipart uploads are Static Large Objects: parts in `CONTAINER_segments/KEY/UPLOAD/`, a
//!   manifest at the key; deleting the key deletes its segments too;
//! - a listing's ETag of a large object is its manifest's, not the bytes' MD5 (as with S3's
//!   multipart ETags);
//! - a create-only copy is not offered (Swift applies a copy's `If-None-Match` to its source).

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    Attributes, CopyMode, CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UpdateVersion,
    UploadPart,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const STORE: &str = "Swift";
/// How long a lock object lives if its holder dies before deleting it.
const LOCK_LEASE_SECS: u64 = 15;
/// How long a conditional update waits for another writer's lock.
const LOCK_WAIT: Duration = Duration::from_secs(20);
/// Entries per listing request (Swift's own maximum).
const LIST_PAGE: usize = 10_000;

/// How the store gets its token and storage URL. Debug output never shows secrets.
#[derive(Clone)]
pub enum SwiftAuth {
    /// A token and storage URL as they are (`OS_STORAGE_URL`, `OS_AUTH_TOKEN`).
    Token {
        /// The account's URL (`https://HOST/v1/AUTH_PROJECT`).
        storage_url: String,
        /// The token.
        token: String,
    },
    /// Swift's v1 auth (tempauth, swauth).
    V1 {
        /// The auth endpoint (`https://HOST/auth/v1.0`).
        auth_url: String,
        /// `ACCOUNT:USER`.
        user: String,
        /// The user's key.
        key: String,
    },
    /// Keystone v3 (password or application credential).
    Keystone {
        /// The identity endpoint, ending in `/v3`.
        auth_url: String,
        /// The body of `POST /v3/auth/tokens`.
        request: serde_json::Value,
        /// The region whose object-store endpoint to use (any, when unset).
        region: Option<String>,
        /// The endpoint interface: public, internal or admin.
        interface: String,
    },
}

impl std::fmt::Debug for SwiftAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SwiftAuth::Token { storage_url, .. } => write!(f, "Token({storage_url})"),
            SwiftAuth::V1 { auth_url, user, .. } => write!(f, "V1({auth_url}, {user})"),
            SwiftAuth::Keystone { auth_url, region, .. } => write!(f, "Keystone({auth_url}, {region:?})"),
        }
    }
}

impl SwiftAuth {
    /// The credentials the environment holds, as the OpenStack and Swift clients read them;
    /// `Err` says what is missing.
    pub fn from_env() -> std::result::Result<Self, String> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The credentials that `var` (an environment) holds; see [`SwiftAuth::from_env`].
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> std::result::Result<Self, String> {
        let env = |name: &str| var(name).filter(|v| !v.is_empty());
        if let (Some(storage_url), Some(token)) = (env("OS_STORAGE_URL"), env("OS_AUTH_TOKEN")) {
            return Ok(SwiftAuth::Token { storage_url: storage_url.trim_end_matches('/').into(), token });
        }
        if let Some(auth_url) = env("ST_AUTH") {
            let (Some(user), Some(key)) = (env("ST_USER"), env("ST_KEY")) else {
                return Err("ST_AUTH is set: set ST_USER (ACCOUNT:USER) and ST_KEY too".into());
            };
            return Ok(SwiftAuth::V1 { auth_url, user, key });
        }
        let Some(auth_url) = env("OS_AUTH_URL") else {
            return Err("set OS_AUTH_URL with OS_USERNAME/OS_PASSWORD/OS_PROJECT_NAME (Keystone v3), \
                        OS_APPLICATION_CREDENTIAL_ID/_SECRET, or OS_STORAGE_URL with OS_AUTH_TOKEN"
                .into());
        };
        let auth_url = auth_url.trim_end_matches('/').to_string();
        if auth_url.ends_with("/v1.0") || auth_url.ends_with("/auth/v1") {
            let (Some(user), Some(key)) = (env("OS_USERNAME"), env("OS_PASSWORD")) else {
                return Err(
                    "OS_AUTH_URL is a v1 (tempauth) endpoint: set OS_USERNAME (ACCOUNT:USER) and OS_PASSWORD".into()
                );
            };
            return Ok(SwiftAuth::V1 { auth_url, user, key });
        }
        let auth_url = if auth_url.ends_with("/v3") { auth_url } else { format!("{auth_url}/v3") };
        let request = if let (Some(id), Some(secret)) =
            (env("OS_APPLICATION_CREDENTIAL_ID"), env("OS_APPLICATION_CREDENTIAL_SECRET"))
        {
            serde_json::json!({"auth": {"identity": {
                "methods": ["application_credential"],
                "application_credential": {"id": id, "secret": secret}
            }}})
        } else {
            let (Some(user), Some(password)) = (env("OS_USERNAME").or(env("OS_USER_ID")), env("OS_PASSWORD")) else {
                return Err("OS_AUTH_URL is set: set OS_USERNAME and OS_PASSWORD, or \
                            OS_APPLICATION_CREDENTIAL_ID and OS_APPLICATION_CREDENTIAL_SECRET"
                    .into());
            };
            let user = match env("OS_USER_ID") {
                Some(id) => serde_json::json!({"id": id, "password": password}),
                None => serde_json::json!({
                    "name": user,
                    "password": password,
                    "domain": {"name": env("OS_USER_DOMAIN_NAME").unwrap_or_else(|| "Default".into())}
                }),
            };
            let project = match (
                env("OS_PROJECT_ID").or(env("OS_TENANT_ID")),
                env("OS_PROJECT_NAME").or(env("OS_TENANT_NAME")),
            ) {
                (Some(id), _) => serde_json::json!({"id": id}),
                (None, Some(name)) => serde_json::json!({
                    "name": name,
                    "domain": {"name": env("OS_PROJECT_DOMAIN_NAME").unwrap_or_else(|| "Default".into())}
                }),
                (None, None) => {
                    return Err("set OS_PROJECT_NAME (or OS_PROJECT_ID): Swift needs a project-scoped token".into())
                }
            };
            serde_json::json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": user}},
                "scope": {"project": project}
            }})
        };
        Ok(SwiftAuth::Keystone {
            auth_url,
            request,
            region: env("OS_REGION_NAME"),
            interface: env("OS_INTERFACE").unwrap_or_else(|| "public".into()).trim_end_matches("URL").to_string(),
        })
    }
}

/// A token and where it works.
#[derive(Clone)]
struct Session {
    storage_url: String,
    token: String,
    /// When to get a new one (a minute before it expires).
    renew_at: Option<Instant>,
}

/// One Swift container as an object store.
#[derive(Debug, Clone)]
pub struct SwiftStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    auth: SwiftAuth,
    container: String,
    session: tokio::sync::Mutex<Option<Session>>,
    segments_ready: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Swift({}, {:?})", self.container, self.auth)
    }
}

impl std::fmt::Display for SwiftStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Swift({})", self.inner.container)
    }
}

fn generic(msg: impl Into<String>) -> object_store::Error {
    object_store::Error::Generic { store: STORE, source: msg.into().into() }
}

/// The error for an answer that is not a success.
async fn status_error(resp: Response, path: &str) -> object_store::Error {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    let source: Box<dyn std::error::Error + Send + Sync> = format!("HTTP {status}: {}", body.trim()).into();
    let path = path.to_string();
    match status {
        StatusCode::NOT_FOUND => object_store::Error::NotFound { path, source },
        StatusCode::PRECONDITION_FAILED => object_store::Error::Precondition { path, source },
        StatusCode::NOT_MODIFIED => object_store::Error::NotModified { path, source },
        StatusCode::UNAUTHORIZED => object_store::Error::Unauthenticated { path, source },
        StatusCode::FORBIDDEN => object_store::Error::PermissionDenied { path, source },
        _ => object_store::Error::Generic { store: STORE, source: format!("{path}: {source}").into() },
    }
}

fn http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

fn header<'a>(resp: &'a Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The object's metadata from a GET or HEAD answer.
fn meta_of(resp: &Response, location: &Path) -> ObjectMeta {
    // A range answer's total size is after the slash of Content-Range.
    let size = header(resp, "content-range")
        .and_then(|r| r.rsplit('/').next())
        .and_then(|t| t.parse().ok())
        .or_else(|| header(resp, "content-length").and_then(|l| l.parse().ok()))
        .unwrap_or(0);
    let last_modified = header(resp, "last-modified")
        .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or_default();
    ObjectMeta {
        location: location.clone(),
        last_modified,
        size,
        e_tag: header(resp, "etag").map(str::to_string),
        version: None,
    }
}

/// A listing entry's time (`2026-12-06T23:54:57.613010`, UTC).
fn listed_time(text: &str) -> DateTime<Utc> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").map(|t| t.and_utc()).unwrap_or_default()
}

fn md5_hex(body: &[u8]) -> String {
    hex::encode(<md5::Md5 as md5::Digest>::digest(body))
}

fn bare_etag(e: &str) -> &str {
    e.trim_start_matches("W/").trim_matches('"')
}

impl SwiftStore {
    /// The store for `container`, authenticating with `auth` on first use.
    pub fn new(container: &str, auth: SwiftAuth) -> Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| generic(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                auth,
                container: container.to_string(),
                session: tokio::sync::Mutex::new(None),
                segments_ready: Default::default(),
            }),
        })
    }
}

impl Inner {
    fn segments(&self) -> String {
        format!("{}_segments", self.container)
    }

    /// `STORAGE_URL/CONTAINER/KEY`, each part percent-encoded.
    fn url(&self, session: &Session, container: &str, key: Option<&str>) -> Result<url::Url> {
        let mut url = url::Url::parse(&session.storage_url)
            .map_err(|e| generic(format!("storage URL {}: {e}", session.storage_url)))?;
        {
            let mut segments =
                url.path_segments_mut().map_err(|_| generic(format!("storage URL {}", session.storage_url)))?;
            segments.pop_if_empty().push(container);
            if let Some(key) = key {
                segments.extend(key.split('/'));
            }
        }
        Ok(url)
    }

    async fn authenticate(&self) -> Result<Session> {
        let denied = |url: &str, status: StatusCode| object_store::Error::Unauthenticated {
            path: url.to_string(),
            source: format!("the identity service at {url} refused the credentials (HTTP {status})").into(),
        };
        let unreachable = |url: &str, e: reqwest::Error| generic(format!("identity service {url}: {e}"));
        match &self.auth {
            SwiftAuth::Token { storage_url, token } => {
                Ok(Session { storage_url: storage_url.clone(), token: token.clone(), renew_at: None })
            }
            SwiftAuth::V1 { auth_url, user, key } => {
                let resp = self
                    .client
                    .get(auth_url)
                    .header("X-Auth-User", user)
                    .header("X-Auth-Key", key)
                    .send()
                    .await
                    .map_err(|e| unreachable(auth_url, e))?;
                if !resp.status().is_success() {
                    return Err(denied(auth_url, resp.status()));
                }
                let (Some(storage_url), Some(token)) = (header(&resp, "x-storage-url"), header(&resp, "x-auth-token"))
                else {
                    return Err(generic(format!("{auth_url} answered without X-Storage-Url and X-Auth-Token")));
                };
                let expires = header(&resp, "x-auth-token-expires").and_then(|s| s.parse::<u64>().ok());
                Ok(Session {
                    storage_url: storage_url.trim_end_matches('/').to_string(),
                    token: token.to_string(),
                    renew_at: expires.map(|s| Instant::now() + Duration::from_secs(s.saturating_sub(60))),
                })
            }
            SwiftAuth::Keystone { auth_url, request, region, interface } => {
                let url = format!("{auth_url}/auth/tokens");
                let resp = self
                    .client
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .body(request.to_string())
                    .send()
                    .await
                    .map_err(|e| unreachable(auth_url, e))?;
                if !resp.status().is_success() {
                    return Err(denied(auth_url, resp.status()));
                }
                let token = header(&resp, "x-subject-token")
                    .ok_or_else(|| generic(format!("{url} answered without X-Subject-Token")))?
                    .to_string();
                let body = resp.bytes().await.map_err(|e| unreachable(auth_url, e))?;
                let body: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|e| generic(format!("{url}: unreadable answer: {e}")))?;
                let storage_url = body["token"]["catalog"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|service| service["type"] == "object-store")
                    .flat_map(|service| service["endpoints"].as_array().into_iter().flatten())
                    .find(|e| {
                        e["interface"] == interface.as_str()
                            && region.as_ref().is_none_or(|r| e["region"] == r.as_str() || e["region_id"] == r.as_str())
                    })
                    .and_then(|e| e["url"].as_str())
                    .ok_or_else(|| {
                        generic(format!(
                            "the token's catalog has no {interface} object-store endpoint{} (see OS_REGION_NAME, OS_INTERFACE)",
                            region.as_ref().map(|r| format!(" in region {r}")).unwrap_or_default()
                        ))
                    })?;
                let renew_at =
                    body["token"]["expires_at"].as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| {
                        let left = (t.with_timezone(&Utc) - Utc::now()).num_seconds().max(0) as u64;
                        Instant::now() + Duration::from_secs(left.saturating_sub(60))
                    });
                Ok(Session { storage_url: storage_url.trim_end_matches('/').to_string(), token, renew_at })
            }
        }
    }

    /// A valid session: the current one, or a new one when it is due (or `renew`).
    async fn session(&self, renew: bool) -> Result<Session> {
        let mut current = self.session.lock().await;
        match &*current {
            Some(s) if !renew && s.renew_at.is_none_or(|at| Instant::now() < at) => Ok(s.clone()),
            _ => {
                let s = self.authenticate().await?;
                *current = Some(s.clone());
                Ok(s)
            }
        }
    }

    /// Sends the request `build` makes for a session: again with a new token when the token
    /// was refused, and again after a pause when the connection failed or the server erred.
    async fn send(&self, path: &str, build: impl Fn(&Session) -> Result<RequestBuilder>) -> Result<Response> {
        let mut renew = false;
        let mut attempt = 0;
        loop {
            let session = self.session(renew).await?;
            let res = build(&session)?.header("X-Auth-Token", &session.token).send().await;
            match res {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !renew => renew = true,
                Ok(resp) if resp.status().is_server_error() && attempt < 3 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                Ok(resp) => return Ok(resp),
                Err(e) if (e.is_connect() || e.is_request()) && !e.is_timeout() && attempt < 3 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                Err(e) => return Err(generic(format!("{path}: {e}"))),
            }
        }
    }

    async fn ensure_segments_container(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.segments_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let c = self.segments();
        let resp = self.send(&c, |s| Ok(self.client.put(self.url(s, &c, None)?).header("Content-Length", "0"))).await?;
        if !resp.status().is_success() {
            return Err(status_error(resp, &format!("container {c} (for large-object segments and locks)")).await);
        }
        self.segments_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// PUTs `body` at `container/key` with the `extra` headers, its MD5 checked by Swift.
    async fn put_object(&self, container: &str, key: &str, body: Bytes, extra: &[(&str, String)]) -> Result<Response> {
        let md5 = md5_hex(&body);
        self.send(key, |s| {
            let mut req = self
                .client
                .put(self.url(s, container, Some(key))?)
                .header("ETag", &md5)
                .header("Content-Type", "application/octet-stream")
                .body(body.clone());
            for (k, v) in extra {
                req = req.header(*k, v);
            }
            Ok(req)
        })
        .await
    }

    /// A create-only PUT of `body` at `container/key`. Swift checks `If-None-Match: *` before
    /// it writes, so two creates at the same instant can both be accepted, the newer one
    /// winning: after a create is accepted, it waits for such a rival to land (three times
    /// its own PUT's time, at least 50 ms) and reads the object's ETag back, and only a
    /// create whose bytes are still there counts as made. Ok(None): something else is there.
    async fn create(
        &self,
        container: &str,
        key: &str,
        body: Bytes,
        extra: &[(&str, String)],
    ) -> Result<Option<Response>> {
        let md5 = md5_hex(&body);
        let mut headers = vec![("If-None-Match", "*".to_string())];
        headers.extend(extra.iter().cloned());
        let started = Instant::now();
        let resp = self.put_object(container, key, body, &headers).await?;
        if resp.status() == StatusCode::PRECONDITION_FAILED {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Ok(Some(resp));
        }
        tokio::time::sleep((started.elapsed() * 3).max(Duration::from_millis(50))).await;
        let now = self.send(key, |s| Ok(self.client.head(self.url(s, container, Some(key))?))).await?;
        let ours = now.status().is_success() && header(&now, "etag").is_some_and(|e| bare_etag(e) == md5);
        Ok(ours.then_some(resp))
    }

    async fn put(&self, location: &Path, body: Bytes, create_only: bool) -> Result<PutResult> {
        let key = location.as_ref();
        let exists = || object_store::Error::AlreadyExists {
            path: key.to_string(),
            source: "the object exists (create-only put)".into(),
        };
        let resp = if create_only {
            self.create(&self.container, key, body, &[]).await?.ok_or_else(exists)?
        } else {
            self.put_object(&self.container, key, body, &[]).await?
        };
        match resp.status() {
            s if s.is_success() => Ok(PutResult {
                e_tag: header(&resp, "etag").map(str::to_string),
                version: None,
                extensions: Default::default(),
            }),
            StatusCode::NOT_FOUND => Err(generic(format!(
                "container '{}' does not exist (create it, e.g. `swift post {}`)",
                self.container, self.container
            ))),
            _ => Err(status_error(resp, key).await),
        }
    }

    async fn head_etag(&self, location: &Path) -> Result<Option<String>> {
        let key = location.as_ref();
        let resp = self.send(key, |s| Ok(self.client.head(self.url(s, &self.container, Some(key))?))).await?;
        match resp.status() {
            s if s.is_success() => Ok(header(&resp, "etag").map(str::to_string)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(status_error(resp, key).await),
        }
    }

    /// Takes the lock object of `location`, waiting for another holder up to [`LOCK_WAIT`].
    async fn lock(&self, location: &Path) -> Result<String> {
        self.ensure_segments_container().await?;
        let lock_key = format!(".locks/{location}");
        let token = Bytes::from(ulid::Ulid::generate().to_string());
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            let lease = [("X-Delete-After", LOCK_LEASE_SECS.to_string())];
            match self.create(&self.segments(), &lock_key, token.clone(), &lease).await? {
                Some(resp) if resp.status().is_success() => return Ok(lock_key),
                Some(resp) => return Err(status_error(resp, &lock_key).await),
                None if Instant::now() < deadline => {
                    let pause = 20 + rand::random::<u64>() % 80;
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                None => {
                    return Err(object_store::Error::Precondition {
                        path: location.to_string(),
                        source: format!("another writer held its lock for {} s", LOCK_WAIT.as_secs()).into(),
                    })
                }
            }
        }
    }

    async fn unlock(&self, lock_key: &str) {
        let seg = self.segments();
        let res = self.send(lock_key, |s| Ok(self.client.delete(self.url(s, &seg, Some(lock_key))?))).await;
        if let Err(e) = res {
            tracing::warn!("releasing lock {seg}/{lock_key}: {e} (it lapses within {LOCK_LEASE_SECS} s)");
        }
    }

    /// A put that happens only if the object is still at `expected` (see the module comment).
    async fn put_if(&self, location: &Path, body: Bytes, expected: UpdateVersion) -> Result<PutResult> {
        let lock = self.lock(location).await?;
        let res = async {
            let now = self.head_etag(location).await?;
            let same = matches!((&now, &expected.e_tag), (Some(a), Some(b)) if bare_etag(a) == bare_etag(b));
            if !same {
                return Err(object_store::Error::Precondition {
                    path: location.to_string(),
                    source: format!("the object is at {now:?}, not {:?}", expected.e_tag).into(),
                });
            }
            self.put(location, body, false).await
        }
        .await;
        self.unlock(&lock).await;
        res
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        let key = location.as_ref();
        // A large object's manifest takes its segments with it; a plain object is deleted as is.
        let resp = self
            .send(key, |s| {
                let mut url = self.url(s, &self.container, Some(key))?;
                url.query_pairs_mut().append_pair("multipart-manifest", "delete");
                Ok(self.client.delete(url))
            })
            .await?;
        match resp.status() {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            _ => Err(status_error(resp, key).await),
        }
    }

    /// One page of the container's listing below `prefix` after `marker`.
    async fn list_page(&self, prefix: &str, marker: &str, delimiter: bool) -> Result<Vec<serde_json::Value>> {
        let resp = self
            .send(prefix, |s| {
                let mut url = self.url(s, &self.container, None)?;
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("format", "json").append_pair("limit", &LIST_PAGE.to_string());
                    if !prefix.is_empty() {
                        q.append_pair("prefix", prefix);
                    }
                    if !marker.is_empty() {
                        q.append_pair("marker", marker);
                    }
                    if delimiter {
                        q.append_pair("delimiter", "/");
                    }
                }
                Ok(self.client.get(url))
            })
            .await?;
        match resp.status() {
            StatusCode::NO_CONTENT => Ok(Vec::new()),
            s if s.is_success() => {
                let listing = |e: &dyn std::fmt::Display| generic(format!("listing {}/{prefix}: {e}", self.container));
                let body = resp.bytes().await.map_err(|e| listing(&e))?;
                serde_json::from_slice(&body).map_err(|e| listing(&e))
            }
            StatusCode::NOT_FOUND => Err(object_store::Error::NotFound {
                path: self.container.clone(),
                source: format!("container '{}' does not exist", self.container).into(),
            }),
            _ => Err(status_error(resp, prefix).await),
        }
    }
}

fn listed_meta(entry: &serde_json::Value) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        location: Path::from(entry["name"].as_str()?),
        last_modified: listed_time(entry["last_modified"].as_str().unwrap_or_default()),
        size: entry["bytes"].as_u64().unwrap_or(0),
        e_tag: entry["hash"].as_str().map(str::to_string),
        version: None,
    })
}

/// A listing prefix for an object_store prefix: everything below it as a directory.
fn dir_prefix(prefix: Option<&Path>) -> String {
    match prefix.map(|p| p.as_ref()) {
        None | Some("") => String::new(),
        Some(p) => format!("{p}/"),
    }
}

#[async_trait]
impl ObjectStore for SwiftStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        let body = Bytes::from(payload);
        match opts.mode {
            PutMode::Overwrite => self.inner.put(location, body, false).await,
            PutMode::Create => self.inner.put(location, body, true).await,
            PutMode::Update(version) => self.inner.put_if(location, body, version).await,
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.ensure_segments_container().await?;
        Ok(Box::new(LargeObjectUpload {
            inner: self.inner.clone(),
            location: location.clone(),
            upload: ulid::Ulid::generate().to_string(),
            parts: Arc::new(Mutex::new(Vec::new())),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let inner = &self.inner;
        let key = location.as_ref();
        let resp = inner
            .send(key, |s| {
                let url = inner.url(s, &inner.container, Some(key))?;
                let mut req = inner.client.request(if options.head { Method::HEAD } else { Method::GET }, url);
                if let Some(range) = &options.range {
                    let value = match range {
                        GetRange::Bounded(r) if r.start >= r.end => {
                            return Err(generic(format!("{key}: empty range {r:?}")));
                        }
                        GetRange::Bounded(r) => format!("bytes={}-{}", r.start, r.end - 1),
                        GetRange::Offset(o) => format!("bytes={o}-"),
                        GetRange::Suffix(n) => format!("bytes=-{n}"),
                    };
                    req = req.header("Range", value);
                }
                if let Some(e) = &options.if_match {
                    req = req.header("If-Match", e);
                }
                if let Some(e) = &options.if_none_match {
                    req = req.header("If-None-Match", e);
                }
                if let Some(t) = options.if_modified_since {
                    req = req.header("If-Modified-Since", http_date(t));
                }
                if let Some(t) = options.if_unmodified_since {
                    req = req.header("If-Unmodified-Since", http_date(t));
                }
                Ok(req)
            })
            .await?;
        if !resp.status().is_success() {
            if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE {
                return Err(generic(format!("{key}: range {:?} is outside the object", options.range)));
            }
            return Err(status_error(resp, key).await);
        }
        let meta = meta_of(&resp, location);
        let range = match header(&resp, "content-range").and_then(|r| r.strip_prefix("bytes ")) {
            Some(r) => {
                let span = r.split('/').next().unwrap_or_default();
                let (a, b) = span.split_once('-').unwrap_or(("0", "0"));
                a.parse::<u64>().unwrap_or(0)..b.parse::<u64>().map(|b| b + 1).unwrap_or(meta.size)
            }
            None => 0..meta.size,
        };
        let path = key.to_string();
        let payload = if options.head {
            futures::stream::empty().boxed()
        } else {
            resp.bytes_stream().map_err(move |e| generic(format!("{path}: reading the body: {e}"))).boxed()
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(payload),
            meta,
            range,
            attributes: Attributes::default(),
            extensions: Default::default(),
        })
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        let inner = self.inner.clone();
        locations
            .then(move |location| {
                let inner = inner.clone();
                async move {
                    let location = location?;
                    inner.delete(&location).await?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = self.inner.clone();
        let prefix = dir_prefix(prefix);
        futures::stream::try_unfold(Some(String::new()), move |marker| {
            let (inner, prefix) = (inner.clone(), prefix.clone());
            async move {
                let Some(marker) = marker else { return Ok::<_, object_store::Error>(None) };
                let page = inner.list_page(&prefix, &marker, false).await?;
                let next = if page.len() < LIST_PAGE {
                    None
                } else {
                    page.last().and_then(|e| e["name"].as_str()).map(str::to_string)
                };
                let metas: Vec<Result<ObjectMeta>> = page.iter().filter_map(listed_meta).map(Ok).collect();
                Ok(Some((futures::stream::iter(metas), next)))
            }
        })
        .try_flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let prefix = dir_prefix(prefix);
        let mut result =
            ListResult { common_prefixes: Vec::new(), objects: Vec::new(), extensions: Default::default() };
        let mut marker = String::new();
        loop {
            let page = self.inner.list_page(&prefix, &marker, true).await?;
            for entry in &page {
                if let Some(dir) = entry["subdir"].as_str() {
                    result.common_prefixes.push(Path::from(dir.trim_end_matches('/')));
                    marker = dir.to_string();
                } else if let Some(meta) = listed_meta(entry) {
                    marker = meta.location.to_string();
                    result.objects.push(meta);
                }
            }
            if page.len() < LIST_PAGE {
                return Ok(result);
            }
        }
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let inner = &self.inner;
        let source = format!("/{}/{}", inner.container, from);
        let key = to.as_ref();
        if matches!(options.mode, CopyMode::Create) {
            // Swift applies If-None-Match of a copy to its source, not its destination.
            return Err(object_store::Error::NotImplemented {
                operation: "create-only copy".into(),
                implementer: STORE.into(),
            });
        }
        let resp = inner
            .send(key, |s| {
                let req = inner
                    .client
                    .put(inner.url(s, &inner.container, Some(key))?)
                    .header(
                        "X-Copy-From",
                        url::form_urlencoded::byte_serialize(source.as_bytes()).collect::<String>().replace("%2F", "/"),
                    )
                    .header("Content-Length", "0");
                Ok(req)
            })
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(status_error(resp, from.as_ref()).await),
            _ => Err(status_error(resp, key).await),
        }
    }
}

/// One uploaded segment of a large object.
#[derive(Debug, Clone)]
struct Segment {
    path: String,
    etag: String,
    size: u64,
}

/// A multipart upload as a Static Large Object.
#[derive(Debug)]
struct LargeObjectUpload {
    inner: Arc<Inner>,
    location: Path,
    upload: String,
    parts: Arc<Mutex<Vec<Option<Segment>>>>,
}

impl LargeObjectUpload {
    fn segment_key(&self, index: usize) -> String {
        format!("{}/{}/{index:08}", self.location, self.upload)
    }
}

#[async_trait]
impl MultipartUpload for LargeObjectUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let index = {
            let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
            parts.push(None);
            parts.len() - 1
        };
        let (inner, parts, key) = (self.inner.clone(), self.parts.clone(), self.segment_key(index));
        Box::pin(async move {
            let body = Bytes::from(data);
            let size = body.len() as u64;
            let resp = inner.put_object(&inner.segments(), &key, body, &[]).await?;
            if !resp.status().is_success() {
                return Err(status_error(resp, &key).await);
            }
            let etag = header(&resp, "etag").map(|e| bare_etag(e).to_string()).unwrap_or_default();
            let segment = Segment { path: format!("/{}/{key}", inner.segments()), etag, size };
            parts.lock().unwrap_or_else(|e| e.into_inner())[index] = Some(segment);
            Ok(())
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let segments: Vec<Segment> =
            {
                let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
                parts.iter().cloned().collect::<Option<Vec<_>>>().ok_or_else(|| {
                    generic(format!("{}: completing an upload with parts not uploaded", self.location))
                })?
            };
        if segments.is_empty() {
            return self.inner.put(&self.location, Bytes::new(), false).await;
        }
        let manifest: Vec<serde_json::Value> = segments
            .iter()
            .map(|s| serde_json::json!({"path": s.path, "etag": s.etag, "size_bytes": s.size}))
            .collect();
        let body = Bytes::from(serde_json::to_vec(&manifest).map_err(|e| generic(e.to_string()))?);
        let inner = &self.inner;
        let key = self.location.as_ref();
        let resp = inner
            .send(key, |s| {
                let mut url = inner.url(s, &inner.container, Some(key))?;
                url.query_pairs_mut().append_pair("multipart-manifest", "put");
                Ok(inner.client.put(url).header("Content-Type", "application/octet-stream").body(body.clone()))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(resp, key).await);
        }
        Ok(PutResult {
            e_tag: header(&resp, "etag").map(str::to_string),
            version: None,
            extensions: Default::default(),
        })
    }

    async fn abort(&mut self) -> Result<()> {
        let count = self.parts.lock().unwrap_or_else(|e| e.into_inner()).len();
        let seg = self.inner.segments();
        for index in 0..count {
            let key = self.segment_key(index);
            let inner = &self.inner;
            let _ = inner.send(&key, |s| Ok(inner.client.delete(inner.url(s, &seg, Some(&key))?))).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_times_and_etags_read_as_swift_writes_them() {
        let t = listed_time("2026-12-06T23:54:57.613010");
        assert_eq!(t.to_rfc3339(), "2026-12-06T23:54:57.613010+00:00");
        assert_eq!(bare_etag("\"5d41402abc4b2a76b9719d911017c592\""), "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(dir_prefix(Some(&Path::from("a/b"))), "a/b/");
        assert_eq!(dir_prefix(None), "");
    }
}
