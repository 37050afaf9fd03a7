//! Test support: a fake API server for controller unit tests.

use std::sync::Arc;

use kube::Client;

/// Every request seen: method, path, JSON body.
pub type Calls = Arc<std::sync::Mutex<Vec<(String, String, serde_json::Value)>>>;

/// A fake API server: records every request and answers with the request body (a name
/// filled in for generateName, generation 1 on creates, the next resourceVersion on a PUT that
/// sent one), as a real one would for creates and updates.
pub fn fake_client() -> (Client, Calls) {
    fake_client_without(Vec::new())
}

/// [`fake_client`], where a GET of one of the `missing` paths answers 404 NotFound.
pub fn fake_client_without(missing: Vec<String>) -> (Client, Calls) {
    let missing = Arc::new(missing);
    let calls: Calls = Arc::default();
    let recorded = calls.clone();
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let recorded = recorded.clone();
        let counter = counter.clone();
        let missing = missing.clone();
        async move {
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let body = req.into_body().collect_bytes().await.unwrap_or_default();
            let mut v: serde_json::Value =
                serde_json::from_slice(&body).unwrap_or(serde_json::json!({}));
            recorded
                .lock()
                .unwrap()
                .push((method.clone(), path.clone(), v.clone()));
            if method == "GET" && missing.iter().any(|m| m == &path) {
                let status = serde_json::json!({"kind": "Status", "apiVersion": "v1",
                    "status": "Failure", "reason": "NotFound", "code": 404,
                    "message": format!("{path} not found")});
                return Ok(http::Response::builder()
                    .status(404)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&status).unwrap(),
                    ))
                    .unwrap());
            }
            if method == "POST" && v.pointer("/metadata/name").is_none() {
                let base = v
                    .pointer("/metadata/generateName")
                    .and_then(|g| g.as_str())
                    .unwrap_or("x-")
                    .to_string();
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                v["metadata"]["name"] = serde_json::json!(format!("{base}{n}"));
            }
            if method == "POST" && v.pointer("/metadata/generation").is_none() {
                v["metadata"]["generation"] = serde_json::json!(1);
            }
            // A write makes a new version: the next resourceVersion after the one sent.
            if let Some(rv) = v
                .pointer("/metadata/resourceVersion")
                .and_then(|r| r.as_str())
                .and_then(|r| r.parse::<u64>().ok())
                && method == "PUT"
            {
                v["metadata"]["resourceVersion"] = serde_json::json!((rv + 1).to_string());
            }
            let status = if method == "POST" { 201 } else { 200 };
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(serde_json::to_vec(&v).unwrap()))
                    .unwrap(),
            )
        }
    });
    (Client::new(svc, "default"), calls)
}

/// The requests with this method whose path starts with `path_prefix`.
pub fn taken(calls: &Calls, method: &str, path_prefix: &str) -> Vec<(String, serde_json::Value)> {
    calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, p, _)| m == method && p.starts_with(path_prefix))
        .map(|(_, p, v)| (p.clone(), v.clone()))
        .collect()
}
