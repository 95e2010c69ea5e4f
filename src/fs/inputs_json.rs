//! `config/inputs.json`: every input file in the shape Valohai jobs read, made on demand.
//! Making it lists every lazily listed directory once (concurrently), so it is complete.

use super::tree::{Node, NodeKind};
use super::Fs;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// Directories listed at once while walking an input.
const LIST_CONCURRENCY: usize = 16;

impl Fs {
    /// All files of all inputs, with the checksums known so far.
    pub(crate) async fn inputs_json(&self) -> Vec<u8> {
        let mut doc = Map::new();
        let Some(inputs_dir) = self.tree.get(super::tree::INPUTS) else { return b"{}".to_vec() };
        let tops: Vec<(String, u64)> = match self.children(&inputs_dir).await {
            Ok(c) => c.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            Err(_) => vec![],
        };
        for (name, top) in tops {
            let mut files = Vec::new();
            let mut level: Vec<Arc<Node>> = self.tree.get(top).into_iter().collect();
            while !level.is_empty() {
                let mut listed: Vec<u64> = Vec::new();
                for chunk in level.chunks(LIST_CONCURRENCY) {
                    let results = futures::future::join_all(chunk.iter().map(|dir| self.child_inos(dir.clone()))).await;
                    listed.extend(results.into_iter().flatten());
                }
                let mut next = Vec::new();
                for ino in listed {
                    let Some(node) = self.tree.get(ino) else { continue };
                    match &node.kind {
                        NodeKind::Dir { .. } => next.push(node),
                        NodeKind::File(f) => files.push(self.file_json(&node, f)),
                        NodeKind::InputsJson => {}
                    }
                }
                level = next;
            }
            doc.insert(name, json!({ "files": files }));
        }
        let mut out = serde_json::to_vec_pretty(&Value::Object(doc)).unwrap_or_else(|_| b"{}".to_vec());
        out.push(b'\n');
        out
    }

    /// The children of `dir` (listing it if needed); a failed listing is logged and left out.
    fn child_inos(&self, dir: Arc<Node>) -> futures::future::BoxFuture<'_, Vec<u64>> {
        Box::pin(async move {
            match self.children(&dir).await {
                Ok(c) => c.values().copied().collect(),
                Err(e) => {
                    tracing::warn!("inputs.json: {} left out: {e}", dir.path);
                    vec![]
                }
            }
        })
    }

    fn file_json(&self, node: &Node, f: &super::tree::FileNode) -> Value {
        let name = node.path.rsplit('/').next().unwrap_or_default();
        let mut v = json!({
            "name": name,
            "path": self.mount_path(node),
            "uri": f.entry.uri,
            "size": f.entry.size,
        });
        let sums = f.checksums.get().cloned().or_else(|| {
            let pin = f.pin.get()?;
            self.cache.recorded_checksums(&f.entry.store.url, f.entry.key.as_ref(), &pin.version())
        });
        if let Some(s) = sums {
            v["checksums"] = json!({ "md5": s.md5, "sha1": s.sha1, "sha256": s.sha256 });
        } else if let Some(s) = &f.entry.expected {
            v["checksums"] = json!({ "md5": s.md5, "sha1": s.sha1, "sha256": s.sha256 });
        }
        if let Some(d) = &f.entry.datum {
            v["datum_id"] = json!(d);
        }
        v
    }
}
