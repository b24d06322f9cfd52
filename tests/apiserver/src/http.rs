//! The HTTP side: the paths, list (with limit/continue), watch streams (replay from a
//! resourceVersion, live events, bookmarks, 410 Gone as an ERROR event, timeoutSeconds), get,
//! create and merge-patch (for Events), and Status bodies for errors, as kube-apiserver sends.
use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _, Full, StreamBody};
use hyper::{body::Frame, Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use crate::{
    store::{meta_str, Change, Resource},
    Shared,
};

pub type Body = BoxBody<Bytes, Infallible>;

/// What a request names: the resource, the namespace (if the path has one) and the name.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
}

fn route(path: &str) -> Option<Target> {
    for resource in Resource::ALL {
        let Some(rest) = path.strip_prefix(resource.group_path()) else { continue };
        let parts: Vec<&str> = rest.trim_start_matches('/').split('/').filter(|p| !p.is_empty()).collect();
        let target = |namespace: Option<&str>, name: Option<&str>| Target { resource, namespace: namespace.map(str::to_owned), name: name.map(str::to_owned) };
        match parts.as_slice() {
            [p] if *p == resource.plural() => return Some(target(None, None)),
            [p, name] if *p == resource.plural() => return Some(target(None, Some(name))),
            ["namespaces", ns, p] if *p == resource.plural() => return Some(target(Some(ns), None)),
            ["namespaces", ns, p, name] if *p == resource.plural() => return Some(target(Some(ns), Some(name))),
            _ => {}
        }
    }
    None
}

fn query(uri: &hyper::Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `metadata.name=x,metadata.namespace=y` (the only field selectors xvs uses, as kubectl's).
fn field_matches(selector: Option<&String>, object: &Value) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else { return true };
    selector.split(',').all(|term| match term.split_once('=') {
        Some((field, want)) => {
            let field = field.trim_end_matches('=');
            match field.strip_prefix("metadata.") {
                Some(f) => meta_str(object, f) == want,
                None => false,
            }
        }
        None => false,
    })
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(code, &status_body(code.as_u16(), reason, message))
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *resp.status_mut() = code;
    resp.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    resp
}

pub async fn handle(shared: Arc<Shared>, req: Request<hyper::body::Incoming>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let line = format!("{} {}", parts.method, parts.uri);
    shared.log(line.clone());
    if let Some(token) = &shared.token {
        let bearer = parts.headers.get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if bearer != Some(token.as_str()) {
            return Ok(status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized"));
        }
    }
    if !shared.available() {
        return Ok(status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "the API server is shutting down (test outage)"));
    }
    let Some(target) = route(parts.uri.path()) else {
        return Ok(status(StatusCode::NOT_FOUND, "NotFound", &format!("the server could not find the requested resource ({line})")));
    };
    let q = query(&parts.uri);
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Ok(match parts.method {
        Method::GET if target.name.is_some() => get(&shared, &target),
        Method::GET if q.get("watch").is_some_and(|w| w == "true" || w == "1") => watch(&shared, &target, &q),
        Method::GET => list(&shared, &target, &q),
        Method::POST => create(&shared, &target, &body),
        Method::PATCH => merge_patch(&shared, &target, &body),
        _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", &format!("{} is not supported here", parts.method)),
    })
}

fn get(shared: &Shared, t: &Target) -> Response<Body> {
    let store = shared.store();
    let name = t.name.as_deref().unwrap_or("");
    match store.get(t.resource, t.namespace.as_deref().unwrap_or(""), name) {
        Some(obj) => json_response(StatusCode::OK, obj),
        None => status(StatusCode::NOT_FOUND, "NotFound", &format!("{} \"{name}\" not found", t.resource.plural())),
    }
}

/// A list: items without kind/apiVersion (as the API server sends them), the list's
/// resourceVersion, and `limit`/`continue` paging.
fn list(shared: &Shared, t: &Target, q: &HashMap<String, String>) -> Response<Body> {
    let store = shared.store();
    // The continue token: the namespace/name of the last object of the previous page.
    let after = q.get("continue").and_then(|c| c.split_once('/')).map(|(ns, name)| (ns.to_owned(), name.to_owned()));
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).filter(|&l| l > 0).unwrap_or(usize::MAX);
    let wanted = |o: &Value| t.namespace.as_deref().is_none_or(|n| n == meta_str(o, "namespace")) && field_matches(q.get("fieldSelector"), o);
    let (items, next) = store.page(t.resource, after, limit, wanted);
    // Only the page is copied.
    let page: Vec<Value> = items
        .into_iter()
        .map(|o| {
            let mut o = o.clone();
            if let Some(map) = o.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            o
        })
        .collect();
    let mut metadata = json!({"resourceVersion": store.resource_version().to_string()});
    if let Some((ns, name)) = next {
        metadata["continue"] = json!(format!("{ns}/{name}"));
    }
    json_response(StatusCode::OK, &json!({"kind": format!("{}List", t.resource.kind()), "apiVersion": t.resource.api_version(), "metadata": metadata, "items": page}))
}

fn event_line(type_: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": type_, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// A watch: the changes after the given resourceVersion, then live ones, until the
/// timeoutSeconds pass, the test disconnects watches, or the client goes away. A compacted
/// resourceVersion gets 200 and one ERROR event with a 410 Status, as kube-apiserver does.
fn watch(shared: &Arc<Shared>, t: &Target, q: &HashMap<String, String>) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1024);
    let from: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let timeout = q.get("timeoutSeconds").and_then(|v| v.parse().ok()).map(Duration::from_secs).unwrap_or(Duration::from_secs(1800));
    let selector = q.get("fieldSelector").cloned();
    let (resource, namespace) = (t.resource, t.namespace.clone());
    let wanted = move |c: &Change| c.resource == resource && namespace.as_deref().is_none_or(|n| n == meta_str(&c.object, "namespace")) && field_matches(selector.as_ref(), &c.object);
    // Replay and subscribe under one lock: no change can fall between them.
    let (replay, mut live, mut disconnect) = {
        let store = shared.store();
        let replay = if from == 0 {
            // resourceVersion "" / "0": the current state as ADDED events first.
            Some(store.list(resource, t.namespace.as_deref()).into_iter().map(|o| Change { rv: 0, resource, type_: "ADDED", object: o.clone() }).collect())
        } else {
            store.since(from, resource)
        };
        (replay, shared.changes.subscribe(), shared.disconnects.subscribe())
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        let Some(replay) = replay else {
            let gone = status_body(410, "Expired", &format!("too old resource version: {from} ({})", shared.store().compacted()));
            let _ = tx.send(Ok(Frame::data(event_line("ERROR", &gone)))).await;
            return;
        };
        for c in replay.iter().filter(|c| wanted(c)) {
            if tx.send(Ok(Frame::data(event_line(c.type_, &c.object)))).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        let mut deadline = std::pin::pin!(deadline);
        loop {
            let line = tokio::select! {
                _ = &mut deadline => return,
                _ = disconnect.recv() => return,
                got = live.recv() => match got {
                    Ok(c) if c.type_ == "BOOKMARK" => {
                        if !bookmarks {
                            continue;
                        }
                        event_line("BOOKMARK", &json!({"kind": resource.kind(), "apiVersion": resource.api_version(), "metadata": {"resourceVersion": c.rv.to_string()}}))
                    }
                    Ok(c) if wanted(&c) => event_line(c.type_, &c.object),
                    Ok(_) => continue,
                    // Too slow a reader: end the stream; it re-watches from its resourceVersion.
                    Err(_) => return,
                },
            };
            if tx.send(Ok(Frame::data(line))).await.is_err() {
                return;
            }
        }
    });
    let body = StreamBody::new(tokio_stream(rx)).boxed();
    let mut resp = Response::new(body);
    resp.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    resp
}

/// An mpsc receiver as a Stream.
fn tokio_stream<T>(mut rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn create(shared: &Shared, t: &Target, body: &[u8]) -> Response<Body> {
    let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "the body is not JSON");
    };
    if let (Some(ns), Some(meta)) = (&t.namespace, object.get_mut("metadata").and_then(Value::as_object_mut)) {
        meta.entry("namespace").or_insert_with(|| json!(ns));
    }
    let name = meta_str(&object, "name").to_owned();
    if shared.store().get(t.resource, t.namespace.as_deref().unwrap_or(""), &name).is_some() {
        return status(StatusCode::CONFLICT, "AlreadyExists", &format!("{} \"{name}\" already exists", t.resource.plural()));
    }
    match shared.apply_as(t.resource, object) {
        Ok(obj) => json_response(StatusCode::CREATED, &obj),
        Err(e) => status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &e),
    }
}

fn merge_patch(shared: &Shared, t: &Target, body: &[u8]) -> Response<Body> {
    let name = t.name.clone().unwrap_or_default();
    let Some(mut object) = shared.store().get(t.resource, t.namespace.as_deref().unwrap_or(""), &name).cloned() else {
        return status(StatusCode::NOT_FOUND, "NotFound", &format!("{} \"{name}\" not found", t.resource.plural()));
    };
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "the body is not JSON");
    };
    merge(&mut object, patch);
    match shared.apply_as(t.resource, object) {
        Ok(obj) => json_response(StatusCode::OK, &obj),
        Err(e) => status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &e),
    }
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: Value) {
    match (target.as_object_mut(), patch) {
        (Some(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(&k);
                } else {
                    merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (_, p) => *target = p,
    }
}

/// Sends a BOOKMARK at the current resourceVersion to every watch that asked for them.
pub fn bookmark(changes: &broadcast::Sender<Change>, rv: u64) {
    let _ = changes.send(Change { rv, resource: Resource::Services, type_: "BOOKMARK", object: Value::Null });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries_parse_like_the_api_server_s() {
        let t = route("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices").unwrap_or_else(|| panic!("route"));
        assert_eq!((t.resource, t.namespace.as_deref(), t.name.as_deref()), (Resource::EndpointSlices, Some("default"), None));
        let t = route("/api/v1/nodes/node-a").unwrap_or_else(|| panic!("route"));
        assert_eq!((t.resource, t.name.as_deref()), (Resource::Nodes, Some("node-a")));
        assert!(route("/api/v1/pods").is_none());
        let q = query(&"/api/v1/nodes?fieldSelector=metadata.name%3Dnode-a&watch=true".parse().unwrap_or_default());
        assert_eq!(q.get("fieldSelector").map(String::as_str), Some("metadata.name=node-a"));
        assert!(field_matches(q.get("fieldSelector"), &json!({"metadata": {"name": "node-a"}})));
        assert!(!field_matches(q.get("fieldSelector"), &json!({"metadata": {"name": "node-b"}})));
    }
}
