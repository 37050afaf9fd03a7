//! `admissionregistration.k8s.io/v1` Mutating- and ValidatingWebhookConfigurations: their
//! defaults and validation as upstream applies them, and the parsed form the dispatcher runs
//! ([`Hook`]).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::authz::rbac::string_list;
use crate::selectors::LabelSelector;
use crate::status::Cause;
use crate::strategy::set_default;

/// The variables a webhook's matchConditions may use.
pub const CONDITION_VARIABLES: &[&str] = &["object", "oldObject", "request"];

/// Mutating or validating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// From a MutatingWebhookConfiguration.
    Mutating,
    /// From a ValidatingWebhookConfiguration.
    Validating,
}

impl Kind {
    /// The `type` label of the admission metrics.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Mutating => "admit",
            Kind::Validating => "validating",
        }
    }
}

/// One rule of a webhook (`rules[]`).
#[derive(Debug, Clone, Default)]
pub struct Rule {
    /// `operations` (`*` or CREATE/UPDATE/DELETE/CONNECT).
    pub operations: Vec<String>,
    /// `apiGroups`.
    pub groups: Vec<String>,
    /// `apiVersions`.
    pub versions: Vec<String>,
    /// `resources` (`pods`, `pods/status`, `*`, `*/*`, `pods/*`, `*/scale`).
    pub resources: Vec<String>,
    /// `scope`: `*`, `Cluster` or `Namespaced`.
    pub scope: String,
}

/// Where a webhook is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `clientConfig.url`: host (as written, IPv6 without brackets), port and path with query.
    Url {
        /// Host name or address.
        host: String,
        /// Port (443 when the URL has none).
        port: u16,
        /// Path (with any query the URL carries; upstream forbids one, so none).
        path: String,
    },
    /// `clientConfig.service`.
    Service {
        /// Namespace of the Service.
        namespace: String,
        /// Name of the Service.
        name: String,
        /// Path (`/` when none).
        path: String,
        /// The Service's port (default 443).
        port: u16,
    },
}

impl Target {
    /// The TLS server name the webhook's certificate must carry.
    pub fn server_name(&self) -> String {
        match self {
            Target::Url { host, .. } => host.clone(),
            Target::Service {
                namespace, name, ..
            } => format!("{name}.{namespace}.svc"),
        }
    }

    /// The URL as upstream prints it in errors.
    pub fn display(&self, timeout: Duration) -> String {
        let (host, port, path) = match self {
            Target::Url { host, port, path } => (host.clone(), *port, path.clone()),
            Target::Service { port, path, .. } => (self.server_name(), *port, path.clone()),
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        format!("https://{host}:{port}{path}?timeout={}s", timeout.as_secs())
    }
}

/// A webhook ready to be matched and called.
#[derive(Clone)]
pub struct Hook {
    /// Mutating or validating.
    pub kind: Kind,
    /// Name of the configuration it comes from.
    pub config: String,
    /// The webhook's name.
    pub name: String,
    /// Its rules.
    pub rules: Vec<Rule>,
    /// `failurePolicy: Fail` (else Ignore).
    pub fail_closed: bool,
    /// `namespaceSelector`; `None` selects everything.
    pub namespace_selector: Option<LabelSelector>,
    /// `objectSelector`; `None` selects everything.
    pub object_selector: Option<LabelSelector>,
    /// `timeoutSeconds`.
    pub timeout: Duration,
    /// `reinvocationPolicy: IfNeeded` (mutating only).
    pub reinvoke: bool,
    /// Where to call it.
    pub target: Target,
    /// TLS settings from `caBundle` (the system roots when it is empty), or why they could
    /// not be made (every call then fails, under the failure policy).
    pub tls: Result<Arc<rustls::ClientConfig>, String>,
    /// `matchConditions`, compiled (or why one does not compile).
    pub conditions: Vec<Result<crate::policy::expr::Expression, String>>,
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hook")
            .field("kind", &self.kind)
            .field("config", &self.config)
            .field("name", &self.name)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// Applies upstream's v1 defaults to every webhook of a configuration.
pub fn default(obj: &mut Value, mutating: bool) {
    let Some(hooks) = obj.get_mut("webhooks").and_then(Value::as_array_mut) else {
        return;
    };
    for h in hooks {
        set_default(h, &["failurePolicy"], json!("Fail"));
        set_default(h, &["matchPolicy"], json!("Equivalent"));
        set_default(h, &["namespaceSelector"], json!({}));
        set_default(h, &["objectSelector"], json!({}));
        set_default(h, &["timeoutSeconds"], json!(10));
        if mutating {
            set_default(h, &["reinvocationPolicy"], json!("Never"));
        }
        if let Some(svc) = h.pointer_mut("/clientConfig/service") {
            set_default(svc, &["port"], json!(443));
        }
        if let Some(rules) = h.get_mut("rules").and_then(Value::as_array_mut) {
            for r in rules {
                set_default(r, &["scope"], json!("*"));
            }
        }
    }
}

fn unsupported(field: &str, got: &str, allowed: &[&str]) -> Cause {
    Cause::new(
        "FieldValueNotSupported",
        field,
        format!(
            "Unsupported value: {got:?}: supported values: {}",
            allowed
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
}

fn check_enum(
    h: &Value,
    key: &str,
    path: &str,
    allowed: &[&str],
    required: bool,
    causes: &mut Vec<Cause>,
) {
    match h.get(key) {
        Some(Value::String(s)) if allowed.contains(&s.as_str()) => {}
        Some(Value::String(s)) => causes.push(unsupported(&format!("{path}.{key}"), s, allowed)),
        None | Some(Value::Null) if !required => {}
        None | Some(Value::Null) => causes.push(Cause::new(
            "FieldValueRequired",
            &format!("{path}.{key}"),
            format!(
                "Required value: must specify one of {}",
                allowed
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        Some(other) => causes.push(Cause::new(
            "FieldValueInvalid",
            &format!("{path}.{key}"),
            format!("Invalid value: {other}: must be a string"),
        )),
    }
}

/// A list of a rule that may be `*` alone: required, no empty entries, and `*` excludes others.
fn check_list(r: &Value, key: &str, path: &str, causes: &mut Vec<Cause>) {
    let items = string_list(r.get(key));
    let field = format!("{path}.{key}");
    if items.is_empty() {
        causes.push(Cause::new("FieldValueRequired", &field, "Required value"));
        return;
    }
    // The core group is the empty string; other lists may not hold one.
    if key != "apiGroups" && items.iter().any(String::is_empty) {
        causes.push(Cause::new(
            "FieldValueRequired",
            &field,
            "Required value: must not contain empty strings",
        ));
    }
    if items.len() > 1 && items.iter().any(|i| i == "*") {
        causes.push(Cause::new(
            "FieldValueInvalid",
            &field,
            format!("Invalid value: {items:?}: if '*' is present, must not specify other values"),
        ));
    }
}

fn check_resources(r: &Value, path: &str, causes: &mut Vec<Cause>) {
    let items = string_list(r.get("resources"));
    let field = format!("{path}.resources");
    if items.is_empty() {
        causes.push(Cause::new("FieldValueRequired", &field, "Required value"));
        return;
    }
    let mut has_all = false;
    let mut subs_of_all = Vec::new();
    for (i, res) in items.iter().enumerate() {
        let (main, sub) = match res.split_once('/') {
            Some((m, s)) => (m, Some(s)),
            None => (res.as_str(), None),
        };
        if main.is_empty() || sub.is_some_and(|s| s.is_empty() || s.contains('/')) {
            causes.push(Cause::new(
                "FieldValueInvalid",
                &format!("{field}[{i}]"),
                format!("Invalid value: {res:?}: must be a resource, resource/subresource, '*', '*/*' or '*/subresource'"),
            ));
            continue;
        }
        if main == "*" {
            match sub {
                None => has_all = true,
                Some(s) => subs_of_all.push(s.to_string()),
            }
        }
    }
    if has_all && items.iter().any(|r| r != "*" && !r.contains('/')) {
        causes.push(Cause::new(
            "FieldValueInvalid",
            &field,
            format!("Invalid value: {items:?}: if '*' is present, must not specify other resources without subresources"),
        ));
    }
    if subs_of_all.iter().any(|s| s == "*") && items.len() > 1 {
        causes.push(Cause::new(
            "FieldValueInvalid",
            &field,
            format!(
                "Invalid value: {items:?}: if '*/*' is present, must not specify other resources"
            ),
        ));
    }
}

/// One rule (of a webhook, or a policy's resource rules) at `rp`: operations, groups,
/// versions, resources and scope.
pub fn validate_rule(r: &Value, rp: &str, causes: &mut Vec<Cause>) {
    check_list(r, "operations", rp, causes);
    for op in string_list(r.get("operations")) {
        if !matches!(
            op.as_str(),
            "*" | "CREATE" | "UPDATE" | "DELETE" | "CONNECT"
        ) {
            causes.push(unsupported(
                &format!("{rp}.operations"),
                &op,
                &["*", "CONNECT", "CREATE", "DELETE", "UPDATE"],
            ));
        }
    }
    check_list(r, "apiGroups", rp, causes);
    check_list(r, "apiVersions", rp, causes);
    check_resources(r, rp, causes);
    check_enum(
        r,
        "scope",
        rp,
        &["*", "Cluster", "Namespaced"],
        false,
        causes,
    );
}

/// Whether `s` is a DNS-1123 subdomain with at least three labels, as webhook names must be.
fn qualified_webhook_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').count() >= 3
        && s.split('.').all(crate::selectors::valid_dns_label)
}

fn validate_url(raw: &str, field: &str, causes: &mut Vec<Cause>) {
    match parse_url(raw) {
        Ok(_) => {}
        Err(why) => causes.push(Cause::new(
            "FieldValueInvalid",
            field,
            format!("Invalid value: {raw:?}: {why}"),
        )),
    }
}

/// Parses a webhook URL: `https://host[:port][/path]`, without user information, query or
/// fragment, as upstream requires.
pub fn parse_url(raw: &str) -> Result<(String, u16, String), String> {
    let rest = match raw.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "'https' is the only allowed URL scheme, got {scheme:?}"
            ));
        }
        None => return Err("'https' is the only allowed URL scheme".into()),
    };
    if rest.contains('#') {
        return Err("fragments are not permitted in the URL".into());
    }
    if rest.contains('?') {
        return Err("query parameters are not permitted in the URL".into());
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    if authority.contains('@') {
        return Err("user information is not permitted in the URL".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| "an IPv6 host must end with ']'".to_string())?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err("host must be specified".into());
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid port {p:?}"))?,
        None => 443,
    };
    Ok((host, port, path))
}

/// Validates a configuration after defaulting; `mutating` selects the kind.
pub fn validate(obj: &Value, mutating: bool, causes: &mut Vec<Cause>) {
    let hooks = match obj.get("webhooks") {
        None | Some(Value::Null) => return,
        Some(Value::Array(a)) => a,
        Some(_) => {
            causes.push(Cause::new(
                "FieldValueInvalid",
                "webhooks",
                "Invalid value: must be a list",
            ));
            return;
        }
    };
    let mut names: Vec<&str> = Vec::new();
    for (i, h) in hooks.iter().enumerate() {
        let path = format!("webhooks[{i}]");
        let name = h.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            causes.push(Cause::new(
                "FieldValueRequired",
                &format!("{path}.name"),
                "Required value",
            ));
        } else if !qualified_webhook_name(name) {
            causes.push(Cause::new(
                "FieldValueInvalid",
                &format!("{path}.name"),
                format!("Invalid value: {name:?}: should be a domain with at least three segments separated by dots"),
            ));
        } else if names.contains(&name) {
            causes.push(Cause::new(
                "FieldValueDuplicate",
                &format!("{path}.name"),
                format!("Duplicate value: {name:?}"),
            ));
        }
        names.push(name);
        for (j, r) in h
            .get("rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            validate_rule(r, &format!("{path}.rules[{j}]"), causes);
        }
        check_enum(
            h,
            "failurePolicy",
            &path,
            &["Fail", "Ignore"],
            false,
            causes,
        );
        check_enum(
            h,
            "matchPolicy",
            &path,
            &["Equivalent", "Exact"],
            false,
            causes,
        );
        check_enum(
            h,
            "sideEffects",
            &path,
            &["None", "NoneOnDryRun"],
            true,
            causes,
        );
        if mutating {
            check_enum(
                h,
                "reinvocationPolicy",
                &path,
                &["IfNeeded", "Never"],
                false,
                causes,
            );
        }
        if let Some(t) = h.get("timeoutSeconds").filter(|t| !t.is_null())
            && !t.as_i64().is_some_and(|t| (1..=30).contains(&t))
        {
            causes.push(Cause::new(
                "FieldValueInvalid",
                &format!("{path}.timeoutSeconds"),
                format!("Invalid value: {t}: the timeout value must be between 1 and 30 seconds"),
            ));
        }
        let versions = string_list(h.get("admissionReviewVersions"));
        if versions.is_empty() {
            causes.push(Cause::new(
                "FieldValueRequired",
                &format!("{path}.admissionReviewVersions"),
                "Required value: must specify one of v1, v1beta1",
            ));
        } else if !versions.iter().any(|v| v == "v1" || v == "v1beta1") {
            causes.push(Cause::new(
                "FieldValueInvalid",
                &format!("{path}.admissionReviewVersions"),
                format!("Invalid value: {versions:?}: must include at least one of v1, v1beta1"),
            ));
        } else if !versions.iter().any(|v| v == "v1") {
            // Upstream may fall back to v1beta1; this server speaks admission.k8s.io/v1 only.
            causes.push(Cause::new(
                "FieldValueInvalid",
                &format!("{path}.admissionReviewVersions"),
                format!("Invalid value: {versions:?}: this server sends admission.k8s.io/v1 reviews only; include v1"),
            ));
        }
        for sel in ["namespaceSelector", "objectSelector"] {
            if let Err(e) = crate::selectors::from_label_selector_object(h.get(sel)) {
                causes.push(Cause::new(
                    "FieldValueInvalid",
                    &format!("{path}.{sel}"),
                    format!("Invalid value: {}", e.message),
                ));
            }
        }
        crate::policy::validate_conditions(
            h.get("matchConditions")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice),
            &format!("{path}.matchConditions"),
            CONDITION_VARIABLES,
            causes,
        );
        let cc = h.get("clientConfig");
        let url = cc.and_then(|c| c.get("url")).and_then(Value::as_str);
        let svc = cc.and_then(|c| c.get("service")).filter(|s| !s.is_null());
        match (url, svc) {
            (Some(u), None) => validate_url(u, &format!("{path}.clientConfig.url"), causes),
            (None, Some(s)) => {
                let sp = format!("{path}.clientConfig.service");
                for key in ["name", "namespace"] {
                    if s.get(key).and_then(Value::as_str).unwrap_or("").is_empty() {
                        causes.push(Cause::new(
                            "FieldValueRequired",
                            &format!("{sp}.{key}"),
                            format!("Required value: service {key} is required"),
                        ));
                    }
                }
                if let Some(p) = s.get("path").and_then(Value::as_str)
                    && !p.is_empty()
                    && (!p.starts_with('/') || p.contains('?') || p.contains('#'))
                {
                    causes.push(Cause::new(
                        "FieldValueInvalid",
                        &format!("{sp}.path"),
                        format!("Invalid value: {p:?}: must be an absolute path without query or fragment"),
                    ));
                }
                if let Some(p) = s.get("port")
                    && !p.as_i64().is_some_and(|p| (1..=65535).contains(&p))
                {
                    causes.push(Cause::new(
                        "FieldValueInvalid",
                        &format!("{sp}.port"),
                        format!("Invalid value: {p}: port is not valid: must be between 1 and 65535, inclusive"),
                    ));
                }
            }
            _ => causes.push(Cause::new(
                "FieldValueRequired",
                &format!("{path}.clientConfig"),
                "Required value: exactly one of url or service is required",
            )),
        }
        if let Some(ca) = cc.and_then(|c| c.get("caBundle")).filter(|c| !c.is_null()) {
            let ok = ca.as_str().is_some_and(|s| {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s).is_ok()
            });
            if !ok {
                causes.push(Cause::new(
                    "FieldValueInvalid",
                    &format!("{path}.clientConfig.caBundle"),
                    "Invalid value: must be base64-encoded PEM",
                ));
            }
        }
    }
}

fn tls_config(ca_bundle: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let pem = if ca_bundle.is_empty() {
        None
    } else {
        Some(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, ca_bundle)
                .map_err(|e| format!("caBundle is not base64: {e}"))?,
        )
    };
    Ok(Arc::new(
        client_tls(pem.as_deref(), "caBundle")?.with_no_client_auth(),
    ))
}

/// A TLS client configuration (client authentication still to choose) that trusts the PEM
/// certificates of `ca_pem`, or the system's roots when there is none; `what` names the
/// authorities in errors. Shared by admission webhooks and the kubeconfig-described ones.
pub fn client_tls(
    ca_pem: Option<&[u8]>,
    what: &str,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        None => {
            static NATIVE: std::sync::OnceLock<Vec<rustls::pki_types::CertificateDer<'static>>> =
                std::sync::OnceLock::new();
            let native = NATIVE.get_or_init(|| rustls_native_certs::load_native_certs().certs);
            for c in native {
                let _ = roots.add(c.clone());
            }
        }
        Some(pem) => {
            let certs = rustls::pki_types::pem::PemObject::pem_slice_iter(pem)
                .collect::<Result<Vec<rustls::pki_types::CertificateDer<'static>>, _>>()
                .map_err(|e| format!("{what}: {e}"))?;
            if certs.is_empty() {
                return Err(format!("{what} holds no PEM certificate"));
            }
            for c in certs {
                roots.add(c).map_err(|e| format!("{what}: {e}"))?;
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots))
}

/// One rule as written (`operations`, `apiGroups`, `apiVersions`, `resources`, `scope`).
pub fn rule_of(r: &Value) -> Rule {
    Rule {
        operations: string_list(r.get("operations")),
        groups: string_list(r.get("apiGroups")),
        versions: string_list(r.get("apiVersions")),
        resources: string_list(r.get("resources")),
        scope: r
            .get("scope")
            .and_then(Value::as_str)
            .unwrap_or("*")
            .to_string(),
    }
}

/// The webhooks of a stored configuration (already defaulted and validated), in order.
pub fn hooks_of(obj: &Value, kind: Kind) -> Vec<Hook> {
    let config = crate::object::name(obj).to_string();
    let mut out = Vec::new();
    for h in obj
        .get("webhooks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let s = |k: &str| h.get(k).and_then(Value::as_str).unwrap_or("");
        let cc = h.get("clientConfig").cloned().unwrap_or(Value::Null);
        let target = match (
            cc.get("url").and_then(Value::as_str),
            cc.get("service").filter(|s| !s.is_null()),
        ) {
            (Some(u), _) => match parse_url(u) {
                Ok((host, port, path)) => Target::Url { host, port, path },
                Err(_) => continue,
            },
            (None, Some(svc)) => {
                let path = svc.get("path").and_then(Value::as_str).unwrap_or("");
                Target::Service {
                    namespace: svc
                        .get("namespace")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    name: svc
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    path: if path.is_empty() { "/" } else { path }.to_string(),
                    port: svc
                        .get("port")
                        .and_then(Value::as_u64)
                        .and_then(|p| u16::try_from(p).ok())
                        .unwrap_or(443),
                }
            }
            (None, None) => continue,
        };
        let selector = |k: &str| {
            crate::selectors::from_label_selector_object(h.get(k))
                .ok()
                .flatten()
                .filter(|s| !s.is_empty())
        };
        let rules = h
            .get("rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(rule_of)
            .collect();
        out.push(Hook {
            kind,
            config: config.clone(),
            name: s("name").to_string(),
            rules,
            fail_closed: s("failurePolicy") != "Ignore",
            namespace_selector: selector("namespaceSelector"),
            object_selector: selector("objectSelector"),
            timeout: Duration::from_secs(
                h.get("timeoutSeconds")
                    .and_then(Value::as_u64)
                    .unwrap_or(10)
                    .clamp(1, 30),
            ),
            reinvoke: s("reinvocationPolicy") == "IfNeeded",
            target,
            tls: tls_config(cc.get("caBundle").and_then(Value::as_str).unwrap_or("")),
            conditions: h
                .get("matchConditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| {
                    crate::policy::expr::compile(
                        c.get("expression").and_then(Value::as_str).unwrap_or(""),
                        CONDITION_VARIABLES,
                    )
                })
                .collect(),
        });
    }
    out
}
