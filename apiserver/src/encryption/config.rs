//! The `EncryptionConfiguration` file (apiserver.config.k8s.io/v1): parsing (YAML or JSON,
//! strict, as upstream) and validation with upstream's field paths and messages, so an operator's
//! file means the same here as on kube-apiserver.

use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

/// The file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EncryptionConfiguration {
    /// `apiserver.config.k8s.io/v1`.
    #[serde(default)]
    pub api_version: String,
    /// `EncryptionConfiguration`.
    #[serde(default)]
    pub kind: String,
    /// Resource lists and their providers, in order.
    #[serde(default)]
    pub resources: Vec<ResourceConfiguration>,
}

/// One entry of `resources`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfiguration {
    /// `secrets`, `deployments.apps`, `*.apps`, `*.`, `*.*`.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Providers in order: the first encrypts, all decrypt.
    #[serde(default)]
    pub providers: Vec<ProviderConfiguration>,
}

/// One provider (exactly one field set).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfiguration {
    /// AES-GCM with local keys.
    pub aesgcm: Option<KeysConfiguration>,
    /// AES-CBC with local keys.
    pub aescbc: Option<KeysConfiguration>,
    /// XSalsa20-Poly1305 with local keys.
    pub secretbox: Option<KeysConfiguration>,
    /// No encryption.
    pub identity: Option<IdentityConfiguration>,
    /// Envelope encryption through a KMS plugin.
    pub kms: Option<KmsConfiguration>,
}

/// `identity: {}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfiguration {}

/// Keys of a local-key provider.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfiguration {
    /// The first key encrypts; every key decrypts.
    #[serde(default)]
    pub keys: Vec<Key>,
}

/// One named key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    /// Appears in the stored prefix.
    #[serde(default)]
    pub name: String,
    /// Base64 of the key bytes.
    #[serde(default)]
    pub secret: String,
}

/// A KMS provider.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KmsConfiguration {
    /// `v2` (v1 is deprecated upstream and not offered).
    #[serde(default)]
    pub api_version: String,
    /// Appears in the stored prefix; unique in the file.
    #[serde(default)]
    pub name: String,
    /// `unix:///path/to/socket`.
    #[serde(default)]
    pub endpoint: String,
    /// KMS v1 only.
    #[serde(default)]
    pub cachesize: Option<i32>,
    /// Go duration of each plugin call (default 3s).
    #[serde(default)]
    pub timeout: Option<String>,
}

/// A provider after validation.
#[derive(Debug, Clone, PartialEq)]
pub enum Provider {
    /// Plaintext.
    Identity,
    /// AES-GCM keys (name, bytes).
    AesGcm(Vec<(String, Vec<u8>)>),
    /// AES-CBC keys.
    AesCbc(Vec<(String, Vec<u8>)>),
    /// Secretbox keys.
    Secretbox(Vec<(String, Vec<u8>)>),
    /// KMS v2.
    Kms {
        /// Provider name.
        name: String,
        /// `unix://` endpoint.
        endpoint: String,
        /// Per-call timeout.
        timeout: Duration,
    },
}

/// A group-resource pattern: `group` and `resource` may be `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    /// API group (empty for core) or `*`.
    pub group: String,
    /// Plural resource or `*`.
    pub resource: String,
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.resource.as_str(), self.group.as_str()) {
            ("*", g) => write!(f, "*.{g}"),
            (r, "") => write!(f, "{r}"),
            (r, g) => write!(f, "{r}.{g}"),
        }
    }
}

/// Splits `secrets`, `deployments.apps`, `*.apps` at the first dot.
pub fn pattern(s: &str) -> Pattern {
    match s.split_once('.') {
        Some((r, g)) => Pattern {
            group: g.to_string(),
            resource: r.to_string(),
        },
        None => Pattern {
            group: String::new(),
            resource: s.to_string(),
        },
    }
}

/// The validated configuration: rules in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// (patterns, providers) per `resources` entry.
    pub rules: Vec<(Vec<Pattern>, Vec<Provider>)>,
}

impl Config {
    /// The providers for `group`/`resource`: exact matches first (lists of several entries
    /// naming the same resource are joined, as upstream), then `*.group`, then `*.*`; `None`
    /// means plaintext.
    pub fn providers_for(&self, group: &str, resource: &str) -> Option<Vec<Provider>> {
        let find = |g: &str, r: &str| -> Option<Vec<Provider>> {
            let mut out: Vec<Provider> = Vec::new();
            for (pats, provs) in &self.rules {
                if pats.iter().any(|p| p.group == g && p.resource == r) {
                    out.extend(provs.iter().cloned());
                }
            }
            (!out.is_empty()).then_some(out)
        };
        find(group, resource)
            .or_else(|| find(group, "*"))
            .or_else(|| find("*", "*"))
    }

    /// Every KMS provider (name, endpoint, timeout), in file order, each name once.
    pub fn kms_providers(&self) -> Vec<(String, String, Duration)> {
        let mut out: Vec<(String, String, Duration)> = Vec::new();
        for (_, provs) in &self.rules {
            for p in provs {
                if let Provider::Kms {
                    name,
                    endpoint,
                    timeout,
                } = p
                    && !out.iter().any(|(n, _, _)| n == name)
                {
                    out.push((name.clone(), endpoint.clone(), *timeout));
                }
            }
        }
        out
    }
}

fn invalid(path: &str, value: &str, msg: &str) -> String {
    format!("{path}: Invalid value: {value}: {msg}")
}

fn required(path: &str, msg: &str) -> String {
    format!("{path}: Required value: {msg}")
}

/// Parses and validates `bytes` (the contents of `path`); every error names its field.
pub fn load(path: &str, bytes: &[u8]) -> Result<Config, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(format!(
            "encryption provider configuration file {path:?} is empty"
        ));
    }
    let file: EncryptionConfiguration = serde_yaml::from_slice(bytes).map_err(|e| {
        format!("error decoding encryption provider configuration file {path:?}: {e}")
    })?;
    if file.kind != "EncryptionConfiguration"
        || !matches!(
            file.api_version.as_str(),
            "apiserver.config.k8s.io/v1" | "apiserver.config.k8s.io/v1beta1"
        )
    {
        return Err(format!(
            "got unexpected config type: {}, Kind={}",
            file.api_version, file.kind
        ));
    }
    validate(&file).map_err(|errs| {
        let joined = if errs.len() == 1 {
            errs[0].clone()
        } else {
            format!("[{}]", errs.join(", "))
        };
        format!("error while parsing file: {joined}")
    })
}

const NO_REST: [&str; 3] = [
    "apiserveripinfo",
    "serviceipallocations",
    "servicenodeportallocations",
];

fn validate(file: &EncryptionConfiguration) -> Result<Config, Vec<String>> {
    let mut errs = Vec::new();
    if file.resources.is_empty() {
        errs.push(required("resources", "at least one resources is required"));
    }
    let mut rules = Vec::new();
    let mut kms_names: Vec<String> = Vec::new();
    for (i, rc) in file.resources.iter().enumerate() {
        let rpath = format!("resources[{i}].resources");
        if rc.resources.is_empty() {
            errs.push(required(
                &rpath,
                &format!("at least one resources[{i}].resources is required"),
            ));
        }
        let mut pats = Vec::new();
        for (j, r) in rc.resources.iter().enumerate() {
            let p = format!("{rpath}[{j}]");
            let pat = pattern(r);
            let msg = if r.chars().any(|c| c.is_ascii_uppercase()) {
                Some("resource name should not contain capital letters")
            } else if r == "*" {
                Some(
                    "use '*.' to encrypt all the resources from core API group or *.* to encrypt all resources",
                )
            } else if NO_REST.contains(&pat.resource.as_str()) && pat.group.is_empty() {
                Some("resources which do not have REST API/s cannot be encrypted")
            } else if pat.group == "events.k8s.io" {
                Some(
                    "'*.events.k8s.io' objects are stored using the 'events' API group in etcd. Use 'events' instead in the config file",
                )
            } else if pat.group == "extensions" {
                Some("'extensions' group has been removed and cannot be used for encryption")
            } else if pat.group == "*" && pat.resource != "*" {
                Some("encrypting the same resource across groups is not supported")
            } else {
                None
            };
            if let Some(m) = msg {
                errs.push(invalid(&p, &format!("{r:?}"), m));
            }
            pats.push(pat);
        }
        let list = format!("{:?}", rc.resources);
        let dup = pats.iter().enumerate().any(|(a, x)| pats[..a].contains(x));
        if dup {
            errs.push(invalid(
                &rpath,
                &list,
                "the same resource cannot be specified multiple times",
            ));
        } else {
            let all = pats.iter().any(|p| p.group == "*" && p.resource == "*");
            let masked = (all && pats.len() > 1)
                || pats.iter().any(|a| {
                    a.resource == "*"
                        && pats.iter().any(|b| b.group == a.group && b.resource != "*")
                });
            if masked {
                errs.push(invalid(
                    &rpath,
                    &list,
                    "using overlapping resources such as 'secrets' and '*.' in the same resource list is not allowed as they will be masked",
                ));
            }
        }
        let ppath = format!("resources[{i}].providers");
        if rc.providers.is_empty() {
            errs.push(required(
                &ppath,
                &format!("at least one resources[{i}].providers is required"),
            ));
        }
        let mut provs = Vec::new();
        for (j, pc) in rc.providers.iter().enumerate() {
            let p = format!("{ppath}[{j}]");
            let set = [
                pc.aesgcm.is_some(),
                pc.aescbc.is_some(),
                pc.secretbox.is_some(),
                pc.identity.is_some(),
                pc.kms.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if set == 0 {
                errs.push(invalid(&p, "{}", "provider does not contain any of the expected providers: KMS, AESGCM, AESCBC, Secretbox, Identity"));
                continue;
            }
            if set > 1 {
                errs.push(invalid(&p, "{...}", "more than one provider specified in a single element, should split into different list elements"));
                continue;
            }
            if pc.identity.is_some() {
                provs.push(Provider::Identity);
            } else if let Some(k) = &pc.aesgcm {
                provs.push(Provider::AesGcm(keys(
                    &format!("{p}.aesgcm.keys"),
                    k,
                    &[16, 24, 32],
                    &mut errs,
                )));
            } else if let Some(k) = &pc.aescbc {
                provs.push(Provider::AesCbc(keys(
                    &format!("{p}.aescbc.keys"),
                    k,
                    &[16, 24, 32],
                    &mut errs,
                )));
            } else if let Some(k) = &pc.secretbox {
                provs.push(Provider::Secretbox(keys(
                    &format!("{p}.secretbox.keys"),
                    k,
                    &[32],
                    &mut errs,
                )));
            } else if let Some(k) = &pc.kms
                && let Some(pr) = kms(&format!("{p}.kms"), k, &mut kms_names, &mut errs)
            {
                provs.push(pr);
            }
        }
        rules.push((pats, provs));
    }
    // A rule after a wildcard of its group (or `*.*`) would never be used.
    let mut seen: Vec<Pattern> = Vec::new();
    for (pats, _) in &rules {
        for p in pats {
            let masking = seen.iter().find(|w| {
                (w.group == "*" && w.resource == "*")
                    || (w.resource == "*" && w.group == p.group && p.resource != "*")
            });
            if let Some(w) = masking {
                errs.push(format!(
                    "error while building transformers: resource \"{p}\" is masked by earlier rule \"{w}\""
                ));
            }
        }
        seen.extend(pats.iter().filter(|p| p.resource == "*").cloned());
    }
    if errs.is_empty() {
        Ok(Config { rules })
    } else {
        Err(errs)
    }
}

fn keys(
    path: &str,
    k: &KeysConfiguration,
    lengths: &[usize],
    errs: &mut Vec<String>,
) -> Vec<(String, Vec<u8>)> {
    if k.keys.is_empty() {
        errs.push(required(path, "at least one keys is required"));
    }
    let mut out = Vec::new();
    for (i, key) in k.keys.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if key.name.is_empty() {
            errs.push(required(
                &format!("{p}.name"),
                "name is a mandatory field for a key",
            ));
        }
        if key.secret.is_empty() {
            errs.push(required(
                &format!("{p}.secret"),
                "secret is a mandatory field for a key",
            ));
            continue;
        }
        match base64::engine::general_purpose::STANDARD.decode(&key.secret) {
            Err(_) => errs.push(invalid(
                &format!("{p}.secret"),
                "\"REDACTED\"",
                "secrets must be base64 encoded",
            )),
            Ok(raw) if !lengths.contains(&raw.len()) => errs.push(invalid(
                &format!("{p}.secret"),
                "\"REDACTED\"",
                &format!(
                    "secret is not of the expected length, got {}, expected one of [{}]",
                    raw.len(),
                    lengths
                        .iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            )),
            Ok(raw) => out.push((key.name.clone(), raw)),
        }
    }
    out
}

fn kms(
    path: &str,
    k: &KmsConfiguration,
    names: &mut Vec<String>,
    errs: &mut Vec<String>,
) -> Option<Provider> {
    let before = errs.len();
    let version = if k.api_version.is_empty() {
        "v1"
    } else {
        k.api_version.as_str()
    };
    match version {
        "v2" => {}
        "v1" => errs.push(invalid(
            &format!("{path}.apiVersion"),
            &format!("{version:?}"),
            "KMS v1 is deprecated upstream and not supported; use apiVersion: v2",
        )),
        _ => errs.push(invalid(
            &format!("{path}.apiVersion"),
            &format!("{version:?}"),
            "unsupported apiVersion apiVersion for KMS provider, only v1 and v2 are supported",
        )),
    }
    if k.name.is_empty() {
        errs.push(required(
            &format!("{path}.name"),
            "name is a mandatory field for a provider",
        ));
    } else if k.name.contains(':') {
        errs.push(invalid(
            &format!("{path}.name"),
            &format!("{:?}", k.name),
            &format!("invalid KMS provider name {}, must not contain ':'", k.name),
        ));
    } else if names.contains(&k.name) {
        errs.push(invalid(
            &format!("{path}.name"),
            &format!("{:?}", k.name),
            &format!(
                "duplicate KMS provider name {}, names must be unique",
                k.name
            ),
        ));
    } else {
        names.push(k.name.clone());
    }
    let timeout = match k.timeout.as_deref() {
        None => Duration::from_secs(3),
        Some(t) => match crate::config::parse_go_duration(t) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                errs.push(invalid(
                    &format!("{path}.timeout"),
                    &format!("{t:?}"),
                    "timeout should be a positive value",
                ));
                Duration::ZERO
            }
        },
    };
    if k.endpoint.is_empty() {
        errs.push(invalid(
            &format!("{path}.endpoint"),
            "\"\"",
            "endpoint is a mandatory field for a kms",
        ));
    } else if let Some((scheme, _)) = k.endpoint.split_once(':') {
        if scheme != "unix" {
            errs.push(invalid(
                &format!("{path}.endpoint"),
                &format!("{:?}", k.endpoint),
                &format!("unsupported scheme {scheme:?} for KMS provider, only unix is supported"),
            ));
        } else if let Err(e) = keelson_kms::socket_path(&k.endpoint) {
            errs.push(invalid(
                &format!("{path}.endpoint"),
                &format!("{:?}", k.endpoint),
                &format!("invalid endpoint for kms provider, error: {e}"),
            ));
        }
    } else {
        errs.push(invalid(
            &format!("{path}.endpoint"),
            &format!("{:?}", k.endpoint),
            "unsupported scheme \"\" for KMS provider, only unix is supported",
        ));
    }
    if k.cachesize.is_some() && version != "v1" {
        errs.push(invalid(
            &format!("{path}.cachesize"),
            &format!("{}", k.cachesize.unwrap_or(0)),
            "cachesize is not supported in v2",
        ));
    }
    (errs.len() == before).then(|| Provider::Kms {
        name: k.name.clone(),
        endpoint: k.endpoint.clone(),
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY16: &str = "MTIzNDU2Nzg5MDEyMzQ1Ng=="; // 16 bytes
    const KEY32: &str = "MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI="; // 32 bytes

    fn load_str(s: &str) -> Result<Config, String> {
        load("enc.yaml", s.as_bytes())
    }

    #[test]
    fn parses_every_provider_and_matches_resources() {
        let c = load_str(&format!(
            r#"
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets, configmaps]
    providers:
      - kms: {{apiVersion: v2, name: local, endpoint: "unix:///tmp/kms.sock", timeout: 5s}}
      - aescbc: {{keys: [{{name: k1, secret: "{KEY32}"}}]}}
      - aesgcm: {{keys: [{{name: g1, secret: "{KEY16}"}}]}}
      - secretbox: {{keys: [{{name: s1, secret: "{KEY32}"}}]}}
      - identity: {{}}
  - resources: ["*.apps"]
    providers: [{{aesgcm: {{keys: [{{name: g1, secret: "{KEY16}"}}]}}}}]
  - resources: ["*.*"]
    providers: [{{identity: {{}}}}]
"#
        ))
        .unwrap();
        let s = c.providers_for("", "secrets").unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(
            s[0],
            Provider::Kms {
                name: "local".into(),
                endpoint: "unix:///tmp/kms.sock".into(),
                timeout: Duration::from_secs(5)
            }
        );
        assert!(
            matches!(&c.providers_for("apps", "deployments").unwrap()[0], Provider::AesGcm(k) if k[0].1.len() == 16)
        );
        assert_eq!(
            c.providers_for("", "pods").unwrap(),
            vec![Provider::Identity]
        );
        assert_eq!(c.kms_providers().len(), 1);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                "resources: []",
                "resources: Required value: at least one resources is required",
            ),
            (
                "resources: [{resources: [secrets], providers: [{aescbc: {keys: [{name: k, secret: \"AAAA\"}]}}]}]",
                "resources[0].providers[0].aescbc.keys[0].secret: Invalid value: \"REDACTED\": secret is not of the expected length, got 3, expected one of [16 24 32]",
            ),
            (
                "resources: [{resources: [secrets], providers: [{secretbox: {keys: [{name: k, secret: \"%%\"}]}}]}]",
                "resources[0].providers[0].secretbox.keys[0].secret: Invalid value: \"REDACTED\": secrets must be base64 encoded",
            ),
            (
                "resources: [{resources: [Secrets], providers: [{identity: {}}]}]",
                "resources[0].resources[0]: Invalid value: \"Secrets\": resource name should not contain capital letters",
            ),
            (
                "resources: [{resources: [secrets, \"*.\"], providers: [{identity: {}}]}]",
                "in the same resource list is not allowed as they will be masked",
            ),
            (
                "resources: [{resources: [\"*.*\"], providers: [{identity: {}}]}, {resources: [secrets], providers: [{identity: {}}]}]",
                "resource \"secrets\" is masked by earlier rule \"*.*\"",
            ),
            (
                "resources: [{resources: [secrets], providers: [{kms: {apiVersion: v2, name: \"a:b\", endpoint: \"tcp://x\"}}]}]",
                "resources[0].providers[0].kms.name: Invalid value: \"a:b\": invalid KMS provider name a:b, must not contain ':'",
            ),
            (
                "resources: [{resources: [secrets], providers: [{kms: {apiVersion: v2, name: a, endpoint: \"tcp://x\"}}]}]",
                "resources[0].providers[0].kms.endpoint: Invalid value: \"tcp://x\": unsupported scheme \"tcp\" for KMS provider, only unix is supported",
            ),
            (
                "resources: [{resources: [secrets], providers: [{kms: {apiVersion: v2, name: a, endpoint: \"unix:///s\", timeout: 0s}}]}]",
                "resources[0].providers[0].kms.timeout: Invalid value: \"0s\": timeout should be a positive value",
            ),
            (
                "resources: [{resources: [secrets], providers: [{identity: {}, aescbc: {keys: []}}]}]",
                "resources[0].providers[0]: Invalid value: {...}: more than one provider",
            ),
            (
                "resources: [{resources: [secrets], providers: [{identiti: {}}]}]",
                "unknown field `identiti`",
            ),
        ];
        for (body, want) in cases {
            let doc = format!(
                "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n{body}\n"
            );
            let err = load_str(&doc).unwrap_err();
            assert!(err.contains(want), "{body}\n got: {err}\nwant: {want}");
        }
        assert!(load_str("").unwrap_err().contains("is empty"));
        assert!(
            load_str("apiVersion: v1\nkind: ConfigMap\n")
                .unwrap_err()
                .contains("unexpected config type")
        );
    }
}
