//! Store clients take their HTTP client settings from the environment as each cloud's own tools
//! do. Its own test binary: it sets process-wide environment variables.

use datumfs::store::StoreRegistry;
use object_store::ObjectStoreExt;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// A plain-HTTP endpoint on loopback that answers 404 to everything and keeps request lines.
fn endpoint() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            log.lock().unwrap().push(line.trim().to_string());
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).map_or(true, |n| n == 0) || header == "\r\n" {
                    break;
                }
            }
            let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, seen)
}

async fn head(uri: &str) -> object_store::Result<object_store::ObjectMeta> {
    let parsed = datumfs::uri::parse(uri, std::path::Path::new("/")).unwrap();
    let store = StoreRegistry::new().open(&parsed).unwrap();
    store.inner.head(&object_store::path::Path::from("some/key")).await
}

#[tokio::test]
async fn google_and_azure_allow_http_reach_a_plain_http_endpoint() {
    let (azure_url, azure_seen) = endpoint();
    let (gcs_url, gcs_seen) = endpoint();
    std::env::set_var("AZURE_STORAGE_ACCOUNT_NAME", "devaccount");
    std::env::set_var("AZURE_STORAGE_ACCOUNT_KEY", "ZGV2a2V5");
    std::env::set_var("AZURE_ENDPOINT", &azure_url);
    std::env::set_var(
        "GOOGLE_SERVICE_ACCOUNT_KEY",
        serde_json::json!({
            "private_key": "", "private_key_id": "", "client_email": "test@example.com",
            "gcs_base_url": gcs_url, "disable_oauth": true
        })
        .to_string(),
    );

    // Without ALLOW_HTTP a plain-http endpoint is refused before anything is sent.
    let refused = head("az://container/").await.unwrap_err();
    assert!(azure_seen.lock().unwrap().is_empty(), "nothing sent without AZURE_ALLOW_HTTP: {refused}");

    std::env::set_var("AZURE_ALLOW_HTTP", "true");
    std::env::set_var("GOOGLE_ALLOW_HTTP", "true");
    let azure = head("az://container/").await.unwrap_err();
    assert!(matches!(azure, object_store::Error::NotFound { .. }), "the endpoint's 404 comes back: {azure}");
    let seen = azure_seen.lock().unwrap().clone();
    assert!(seen.iter().any(|l| l.starts_with("HEAD ") && l.contains("some/key")), "{seen:?}");

    let gcs = head("gs://bucket/").await.unwrap_err();
    assert!(matches!(gcs, object_store::Error::NotFound { .. }), "the endpoint's 404 comes back: {gcs}");
    let seen = gcs_seen.lock().unwrap().clone();
    assert!(seen.iter().any(|l| l.starts_with("HEAD /bucket/some")), "{seen:?}");
}
