//! Request info: what a request path and method mean (verb, group, version, namespace, resource,
//! subresource, name), parsed once by the request-info filter the way kube-apiserver's
//! `RequestInfoFactory` does, and read by every later filter and the handler.

use http::Method;

/// The parsed meaning of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// Whether the path is under `/api` or `/apis`.
    pub is_resource_request: bool,
    /// The path as sent.
    pub path: String,
    /// Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection, or the
    /// lower-cased HTTP method for non-resource requests.
    pub verb: String,
    /// `api` or `apis`.
    pub api_prefix: String,
    /// API group (`""` for core).
    pub api_group: String,
    /// API version.
    pub api_version: String,
    /// Namespace, if any.
    pub namespace: String,
    /// Plural resource.
    pub resource: String,
    /// Subresource, if any.
    pub subresource: String,
    /// Object name, if any.
    pub name: String,
    /// The path segments after the prefix.
    pub parts: Vec<String>,
}

impl RequestInfo {
    /// Whether the request is long-running (watch, log follow, exec...), exempt from the request
    /// timeout and the in-flight limits as upstream.
    pub fn is_long_running(&self) -> bool {
        self.verb == "watch"
            || matches!(
                self.subresource.as_str(),
                "log" | "exec" | "attach" | "portforward" | "proxy"
            )
    }

    /// Whether the request changes state.
    pub fn is_mutating(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }
}

/// Whether a query flag is true, parsed like Go's `strconv.ParseBool` (Python sends `True`).
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Parses `method`, `path` and `query` into a [`RequestInfo`].
pub fn parse(method: &Method, path: &str, query: Option<&str>) -> RequestInfo {
    let mut info = RequestInfo {
        path: path.to_string(),
        verb: method.as_str().to_ascii_lowercase(),
        ..Default::default()
    };
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    if segs.is_empty() || (segs[0] != "api" && segs[0] != "apis") {
        return info;
    }
    info.api_prefix = segs[0].clone();
    let mut rest: &[String] = &segs[1..];
    if info.api_prefix == "apis" {
        if rest.is_empty() {
            return info;
        }
        info.api_group = rest[0].clone();
        rest = &rest[1..];
    }
    if rest.is_empty() {
        return info;
    }
    info.api_version = rest[0].clone();
    rest = &rest[1..];
    if rest.is_empty() {
        return info;
    }
    info.is_resource_request = true;
    let mut parts: Vec<String> = rest.to_vec();
    // /watch/... is the deprecated watch path form.
    let mut watch_path = false;
    if parts.first().map(String::as_str) == Some("watch") {
        watch_path = true;
        parts.remove(0);
    }
    if parts.first().map(String::as_str) == Some("namespaces") && parts.len() > 1 {
        info.namespace = parts[1].clone();
        // /namespaces/{ns} itself is the namespace object, and status and finalize are its
        // subresources, not resources inside it.
        if parts.len() > 2 && parts[2] != "status" && parts[2] != "finalize" {
            parts.drain(0..2);
        }
    }
    info.parts = parts.clone();
    if !parts.is_empty() {
        info.resource = parts[0].clone();
    }
    if parts.len() >= 2 {
        info.name = parts[1].clone();
    }
    if parts.len() >= 3 {
        info.subresource = parts[2].clone();
    }
    if info.resource == "namespaces" && parts.len() >= 2 {
        info.namespace = String::new();
    }
    let pairs: Vec<(String, String)> = query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let watch_param = pairs
        .iter()
        .any(|(k, v)| k == "watch" && parse_bool(v).unwrap_or(false));
    info.verb = match *method {
        Method::GET | Method::HEAD => {
            if watch_path || watch_param {
                "watch".into()
            } else if info.name.is_empty() {
                "list".into()
            } else {
                "get".into()
            }
        }
        Method::POST => "create".into(),
        Method::PUT => "update".into(),
        Method::PATCH => "patch".into(),
        Method::DELETE => {
            if info.name.is_empty() {
                "deletecollection".into()
            } else {
                "delete".into()
            }
        }
        _ => info.verb,
    };
    // A field selector on metadata.name turns list/watch into a request about that object, for
    // authorization purposes, as upstream.
    if (info.verb == "list" || info.verb == "watch")
        && info.name.is_empty()
        && let Some((_, fs)) = pairs.iter().find(|(k, _)| k == "fieldSelector")
    {
        for term in fs.split(',') {
            if let Some(n) = term.strip_prefix("metadata.name=") {
                info.name = n.to_string();
            }
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstream_examples() {
        let i = parse(&Method::GET, "/api/v1/namespaces/default/pods/x", None);
        assert_eq!(
            (
                i.verb.as_str(),
                i.namespace.as_str(),
                i.resource.as_str(),
                i.name.as_str()
            ),
            ("get", "default", "pods", "x")
        );
        let i = parse(
            &Method::GET,
            "/apis/apps/v1/namespaces/d/deployments/x/scale",
            None,
        );
        assert_eq!(
            (i.api_group.as_str(), i.subresource.as_str()),
            ("apps", "scale")
        );
        let i = parse(&Method::GET, "/api/v1/pods", Some("watch=True"));
        assert_eq!((i.verb.as_str(), i.namespace.as_str()), ("watch", ""));
        let i = parse(&Method::GET, "/api/v1/namespaces/kube-system", None);
        assert_eq!(
            (
                i.verb.as_str(),
                i.resource.as_str(),
                i.name.as_str(),
                i.namespace.as_str()
            ),
            ("get", "namespaces", "kube-system", "")
        );
        let i = parse(&Method::PUT, "/api/v1/namespaces/d/finalize", None);
        assert_eq!(
            (
                i.resource.as_str(),
                i.name.as_str(),
                i.subresource.as_str(),
                i.namespace.as_str()
            ),
            ("namespaces", "d", "finalize", "")
        );
        let i = parse(&Method::DELETE, "/api/v1/namespaces/d/pods", None);
        assert_eq!(i.verb, "deletecollection");
        let i = parse(&Method::GET, "/api/v1/watch/namespaces/d/pods", None);
        assert_eq!(
            (i.verb.as_str(), i.namespace.as_str(), i.resource.as_str()),
            ("watch", "d", "pods")
        );
        let i = parse(&Method::GET, "/healthz", None);
        assert!(!i.is_resource_request);
        let i = parse(&Method::GET, "/apis/apps/v1", None);
        assert!(!i.is_resource_request);
        assert_eq!(parse_bool("True"), Some(true));
        assert_eq!(parse_bool("yes"), None);
    }
}
