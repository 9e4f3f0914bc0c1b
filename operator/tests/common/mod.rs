//! What the mocked-API tests share: filling reflector stores as a watch's first list would,
//! and reading a request the client sent.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use http::Request;
use kube::Resource;
use kube::client::Body;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use serde_json::Value;

/// Fills a store with `objs` the way a watcher's initial list does.
pub fn fill<K: Resource<DynamicType = ()> + Clone>(writer: &mut Writer<K>, objs: Vec<K>) {
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objs {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
}

/// A request's method, its URI split into path and query, and its JSON body (`Null` when
/// empty).
pub async fn read_request(req: Request<Body>) -> (String, String, String, Value) {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (method, path, query, body)
}
