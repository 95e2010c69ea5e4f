//! object_store glue: the only place that builds object stores.
//!
//! Turns a parsed input URI into a shared [`StoreHandle`] (credentials from the environment
//! or the cloud's usual files, never from the command line), with timeouts and retries tuned
//! so a dead endpoint fails within seconds instead of minutes.

pub mod credentials;
pub mod data;
pub mod error;
pub mod faulty;
pub mod swift;

use crate::uri::{Scheme, SourceUri};
pub use error::StoreError;
use object_store::{BackoffConfig, ClientConfigKey, ClientOptions, ObjectStore, RetryConfig};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One opened store (a bucket, a container, an HTTP host, or the local filesystem).
#[derive(Debug)]
pub struct StoreHandle {
    /// The store's URL (`s3://bucket`, `file://`, ...), part of every cache key.
    pub url: String,
    /// The bucket or container, for messages.
    pub bucket: Option<String>,
    /// The client.
    pub inner: Arc<dyn ObjectStore>,
}

impl StoreHandle {
    /// Wraps an existing client (used by tests with in-memory or fault-injecting stores).
    pub fn new(url: &str, inner: Arc<dyn ObjectStore>) -> Self {
        Self { url: url.to_string(), bucket: None, inner }
    }

    /// Whether `uri` is what [`StoreHandle::uri_of`] gives for `key` (without building it).
    pub fn is_uri_of(&self, uri: &str, key: &str) -> bool {
        let rest = if self.url == "file://" {
            uri.strip_prefix("file:///")
        } else {
            uri.strip_prefix(self.url.as_str()).and_then(|r| r.strip_prefix('/'))
        };
        rest == Some(key)
    }

    /// Parts one multipart upload may have in this store: S3 allows 10,000, Swift's large
    /// objects 1,000 segments (its default `max_manifest_segments`).
    pub fn max_parts(&self) -> u64 {
        if self.url.starts_with("swift://") {
            1_000
        } else {
            10_000
        }
    }

    /// The URI of `key` in this store, for messages.
    pub fn uri_of(&self, key: &str) -> String {
        if self.url == "file://" {
            format!("file:///{key}")
        } else {
            format!("{}/{}", self.url, key)
        }
    }
}

/// Retries for transient failures: a few quick attempts, so a read fails with EIO within
/// seconds when the store is gone, and the mount stays responsive.
fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 4,
        retry_timeout: Duration::from_secs(20),
    }
}

/// Our client defaults, with every HTTP client setting the environment gives for this cloud
/// (`GOOGLE_ALLOW_HTTP`, `AZURE_TIMEOUT`, `AWS_PROXY_URL`, ...) applied over them. The builders'
/// `from_env()` reads those too, but `with_client_options` replaces all of it, so they are read
/// again here.
fn client_options(env_prefix: &str) -> ClientOptions {
    let vars = std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    client_options_from(env_prefix, vars)
}

/// Timeouts that fail a dead endpoint within seconds (a connection that yields no byte for 10 s
/// is given up, whatever the request's size), and connections kept for many readers.
fn default_client_options() -> ClientOptions {
    ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_read_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(120))
        .with_pool_max_idle_per_host(64)
}

fn client_options_from(env_prefix: &str, vars: impl Iterator<Item = (String, String)>) -> ClientOptions {
    let mut options = default_client_options();
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix(env_prefix) else { continue };
        if let Ok(key) = rest.to_ascii_lowercase().parse::<ClientConfigKey>() {
            options = options.with_config(key, value);
        }
    }
    options
}

fn env_true(name: &str) -> bool {
    std::env::var(name).map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes")).unwrap_or(false)
}

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// Opens stores and shares one client per store URL.
#[derive(Default)]
pub struct StoreRegistry {
    open: Mutex<HashMap<String, Arc<StoreHandle>>>,
}

impl StoreRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `store_url` resolve to an existing client (tests use in-memory or faulty stores).
    pub fn register(&self, store_url: &str, handle: Arc<StoreHandle>) {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).insert(store_url.to_string(), handle);
    }

    /// The store behind `uri`, opened once.
    pub fn open(&self, uri: &SourceUri) -> Result<Arc<StoreHandle>, StoreError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = open.get(&uri.store_url) {
            return Ok(h.clone());
        }
        let handle = Arc::new(build(uri)?);
        open.insert(uri.store_url.clone(), handle.clone());
        Ok(handle)
    }
}

fn build(uri: &SourceUri) -> Result<StoreHandle, StoreError> {
    let bad = |e: object_store::Error| StoreError::BadUri { uri: uri.original.clone(), reason: error::error_chain(&e) };
    let inner: Arc<dyn ObjectStore> = match uri.scheme {
        Scheme::S3 => Arc::new(build_s3(uri)?.build().map_err(bad)?),
        Scheme::Gcs => {
            if !(env_set("GOOGLE_SERVICE_ACCOUNT")
                || env_set("GOOGLE_SERVICE_ACCOUNT_PATH")
                || env_set("GOOGLE_SERVICE_ACCOUNT_KEY")
                || env_set("GOOGLE_APPLICATION_CREDENTIALS")
                || env_true("GOOGLE_SKIP_SIGNATURE")
                || env_true("DATUMFS_USE_IMDS"))
            {
                return Err(StoreError::MissingCredentials {
                    uri: uri.original.clone(),
                    hint: "set GOOGLE_APPLICATION_CREDENTIALS (or GOOGLE_SERVICE_ACCOUNT_KEY); on GCE set DATUMFS_USE_IMDS=1".into(),
                });
            }
            Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(uri.bucket.clone().unwrap_or_default())
                    .with_client_options(client_options("GOOGLE_"))
                    .with_retry(retry_config())
                    .build()
                    .map_err(bad)?,
            )
        }
        Scheme::Azure => {
            if !(env_set("AZURE_STORAGE_ACCOUNT_KEY")
                || env_set("AZURE_STORAGE_ACCESS_KEY")
                || env_set("AZURE_STORAGE_SAS_KEY")
                || env_set("AZURE_STORAGE_TOKEN")
                || env_set("AZURE_CLIENT_SECRET")
                || env_set("AZURE_FEDERATED_TOKEN_FILE")
                || env_true("AZURE_STORAGE_USE_EMULATOR")
                || env_true("AZURE_SKIP_SIGNATURE")
                || env_true("DATUMFS_USE_IMDS"))
            {
                return Err(StoreError::MissingCredentials {
                    uri: uri.original.clone(),
                    hint: "set AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY (or a SAS/client secret); on Azure VMs set DATUMFS_USE_IMDS=1".into(),
                });
            }
            Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(&uri.store_url)
                    .with_client_options(client_options("AZURE_"))
                    .with_retry(retry_config())
                    .build()
                    .map_err(bad)?,
            )
        }
        Scheme::Http => Arc::new(
            object_store::http::HttpBuilder::new()
                .with_url(&uri.store_url)
                .with_client_options(default_client_options().with_allow_http(true))
                .with_retry(retry_config())
                .build()
                .map_err(bad)?,
        ),
        Scheme::Swift => {
            let auth = swift::SwiftAuth::from_env()
                .map_err(|hint| StoreError::MissingCredentials { uri: uri.original.clone(), hint })?;
            Arc::new(swift::SwiftStore::new(uri.bucket.as_deref().unwrap_or_default(), auth).map_err(bad)?)
        }
        Scheme::File => Arc::new(object_store::local::LocalFileSystem::new()),
        Scheme::Datum | Scheme::Dataset | Scheme::Model => {
            return Err(StoreError::BadUri {
                uri: uri.original.clone(),
                reason: "datum:// and dataset:// name catalog entries, not a store".into(),
            })
        }
    };
    // Every request counted and timed, for `--metrics-addr`.
    let inner: Arc<dyn ObjectStore> = Arc::new(crate::metrics::MeteredStore::new(inner));
    Ok(StoreHandle { url: uri.store_url.clone(), bucket: uri.bucket.clone(), inner })
}

fn build_s3(uri: &SourceUri) -> Result<object_store::aws::AmazonS3Builder, StoreError> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(uri.bucket.clone().unwrap_or_default())
        .with_client_options(client_options("AWS_"))
        .with_retry(retry_config());
    let env_creds = env_set("AWS_ACCESS_KEY_ID") && env_set("AWS_SECRET_ACCESS_KEY");
    let other_sources = env_set("AWS_WEB_IDENTITY_TOKEN_FILE")
        || env_set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        || env_set("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        || env_true("AWS_SKIP_SIGNATURE")
        || env_true("DATUMFS_USE_IMDS");
    let profile = credentials::aws_profile();
    if !env_creds {
        match (&profile.access_key_id, &profile.secret_access_key) {
            (Some(id), Some(secret)) => {
                b = b.with_access_key_id(id).with_secret_access_key(secret);
                if let Some(t) = &profile.session_token {
                    b = b.with_token(t);
                }
            }
            _ if other_sources => {}
            _ => {
                return Err(StoreError::MissingCredentials {
                    uri: uri.original.clone(),
                    hint: "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with ~/.aws/credentials; \
                           AWS_SKIP_SIGNATURE=true for public buckets; DATUMFS_USE_IMDS=1 for EC2 instance roles"
                        .into(),
                });
            }
        }
    }
    if !env_set("AWS_REGION") && !env_set("AWS_DEFAULT_REGION") {
        if let Some(r) = &profile.region {
            b = b.with_region(r);
        }
    }
    if !env_set("AWS_ENDPOINT_URL") && !env_set("AWS_ENDPOINT") {
        if let Some(e) = &profile.endpoint_url {
            b = b.with_endpoint(e);
        }
    }
    if let Ok(v) = std::env::var("AWS_S3_ADDRESSING_STYLE") {
        b = b.with_config(AmazonS3ConfigKey::VirtualHostedStyleRequest, (v == "virtual").to_string());
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_settings_from_the_environment_win_over_defaults() {
        let vars = [
            ("AZURE_ALLOW_HTTP", "true"),
            ("AZURE_TIMEOUT", "7s"),
            ("GOOGLE_ALLOW_HTTP", "false"),
            ("AZURE_STORAGE_ACCOUNT_KEY", "not a client key"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let azure = client_options_from("AZURE_", vars.clone().into_iter());
        assert_eq!(azure.get_config_value(&ClientConfigKey::AllowHttp).as_deref(), Some("true"));
        assert_eq!(azure.get_config_value(&ClientConfigKey::Timeout).as_deref(), Some("7s"));
        let google = client_options_from("GOOGLE_", vars.into_iter());
        assert_eq!(google.get_config_value(&ClientConfigKey::AllowHttp).as_deref(), Some("false"));
        assert_eq!(google.get_config_value(&ClientConfigKey::ConnectTimeout).as_deref(), Some("5s"));
    }
}
