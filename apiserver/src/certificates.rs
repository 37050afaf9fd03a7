//! CertificateSigningRequests (`certificates.k8s.io/v1`) as upstream's registry serves them,
//! and the admission plugins that guard them:
//!
//! - On create the server records who asked (`spec.username`, `uid`, `groups`, `extra`),
//!   whatever the client sent; the request must be a PEM `CERTIFICATE REQUEST`, the signer a
//!   qualified name, the usages known ones, `expirationSeconds` at least 600.
//! - The spec never changes. The main endpoint changes metadata only; `/approval` changes the
//!   Approved and Denied conditions only; `/status` everything else in the status (the
//!   certificate, once, and only of an approved request).
//! - CertificateApproval: approving or denying needs `approve` on `signers` (group
//!   `certificates.k8s.io`) named for the signer or `<domain>/*`; CertificateSigning: setting
//!   the certificate needs `sign` likewise; CertificateSubjectRestriction: a request to the
//!   `kubernetes.io/kube-apiserver-client` signer may not ask for `system:masters`.

use serde_json::{Value, json};

use crate::authz::{Attributes, Authorizer, Decision, UserInfo};
use crate::status::Cause;

/// The kind.
pub const KIND: &str = "CertificateSigningRequest";
/// The signer of client certificates for the apiserver.
pub const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";

/// The usages upstream knows.
const USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

/// Sets the requester from the authenticated user (a create).
pub fn set_requester(obj: &mut Value, user: &UserInfo) {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    spec["username"] = json!(user.name);
    for (k, present) in [
        ("uid", !user.uid.is_empty()),
        ("groups", !user.groups.is_empty()),
        ("extra", !user.extra.is_empty()),
    ] {
        if let Some(m) = spec.as_object_mut() {
            m.remove(k);
        }
        if present {
            spec[k] = match k {
                "uid" => json!(user.uid),
                "groups" => json!(user.groups),
                _ => json!(user.extra),
            };
        }
    }
}

/// The PEM-decoded request's subject organizations (None for one whose string type cannot be
/// read), or why it is not a request.
fn request_organizations(obj: &Value) -> Result<Vec<Option<String>>, String> {
    use x509_parser::prelude::FromDer as _;
    let b64 = obj
        .pointer("/spec/request")
        .and_then(Value::as_str)
        .unwrap_or("");
    let pem = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)
        .map_err(|_| "must be base64-encoded PEM".to_string())?;
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|_| "PEM block type must be CERTIFICATE REQUEST".to_string())?;
    if block.label != "CERTIFICATE REQUEST" {
        return Err("PEM block type must be CERTIFICATE REQUEST".into());
    }
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&block.contents)
            .map_err(|e| format!("{e}"))?;
    Ok(csr
        .certification_request_info
        .subject
        .iter_organization()
        .map(|o| o.as_str().ok().map(str::to_string))
        .collect())
}

/// A signer name: `<domain>/<path>`, the domain a DNS subdomain.
fn valid_signer(s: &str) -> bool {
    match s.split_once('/') {
        Some((domain, path)) => {
            crate::strategy::valid_dns_subdomain(domain)
                && !path.is_empty()
                && s.len() <= 571
                && !path.contains("..")
        }
        None => false,
    }
}

/// Validation of a request (create and update).
pub fn validate(obj: &Value, causes: &mut Vec<Cause>) {
    if obj
        .pointer("/spec/request")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        causes.push(Cause::new(
            "FieldValueRequired",
            "spec.request",
            "Required value",
        ));
    } else if let Err(e) = request_organizations(obj) {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "spec.request",
            format!("Invalid value: \"<data>\": {e}"),
        ));
    }
    match obj.pointer("/spec/signerName").and_then(Value::as_str) {
        None | Some("") => causes.push(Cause::new(
            "FieldValueRequired",
            "spec.signerName",
            "Required value",
        )),
        Some(s) if !valid_signer(s) => causes.push(Cause::new(
            "FieldValueInvalid",
            "spec.signerName",
            format!("Invalid value: {s:?}: must be a fully qualified domain and path of the form 'example.com/signer-name'"),
        )),
        _ => {}
    }
    let usages = obj.pointer("/spec/usages").and_then(Value::as_array);
    for (i, u) in usages.into_iter().flatten().enumerate() {
        let s = u.as_str().unwrap_or("");
        if !USAGES.contains(&s) {
            causes.push(Cause::new(
                "FieldValueNotSupported",
                &format!("spec.usages[{i}]"),
                format!("Unsupported value: {s:?}"),
            ));
        }
    }
    if usages.is_none_or(Vec::is_empty) {
        causes.push(Cause::new(
            "FieldValueRequired",
            "spec.usages",
            "Required value",
        ));
    }
    if let Some(e) = obj
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        && e < 600
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "spec.expirationSeconds",
            format!(
                "Invalid value: {e}: may not specify a duration less than 600 seconds (10 minutes)"
            ),
        ));
    }
    let conditions = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let has = |t: &str| {
        conditions
            .iter()
            .filter(|c| c.get("type").and_then(Value::as_str) == Some(t))
            .count()
    };
    for t in ["Approved", "Denied", "Failed"] {
        if has(t) > 1 {
            causes.push(Cause::new(
                "FieldValueDuplicate",
                "status.conditions",
                format!("Duplicate value: {t:?}"),
            ));
        }
    }
    if has("Approved") > 0 && has("Denied") > 0 {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "status.conditions",
            "Invalid value: Approved and Denied conditions are mutually exclusive",
        ));
    }
    for (i, c) in conditions.iter().enumerate() {
        let t = c.get("type").and_then(Value::as_str).unwrap_or("");
        if t.is_empty() {
            causes.push(Cause::new(
                "FieldValueRequired",
                &format!("status.conditions[{i}].type"),
                "Required value",
            ));
        }
        match c.get("status").and_then(Value::as_str) {
            None | Some("") => causes.push(Cause::new(
                "FieldValueRequired",
                &format!("status.conditions[{i}].status"),
                "Required value",
            )),
            Some(st) if matches!(t, "Approved" | "Denied" | "Failed") && st != "True" => causes
                .push(Cause::new(
                    "FieldValueNotSupported",
                    &format!("status.conditions[{i}].status"),
                    format!("Unsupported value: {st:?}: supported values: \"True\""),
                )),
            _ => {}
        }
    }
    if obj
        .get("status")
        .is_some_and(|s| !s.is_object() && !s.is_null())
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "status",
            "Invalid value: must be an object",
        ));
    }
}

fn approval_condition(c: &Value) -> bool {
    matches!(
        c.get("type").and_then(Value::as_str),
        Some("Approved" | "Denied")
    )
}

/// What an update may change: nothing of the spec; through `/approval` only the Approved and
/// Denied conditions; through `/status` the rest of the status. (`subresource` is `""`,
/// `"approval"` or `"status"`; the generic rules have already taken the status from the
/// right place.)
pub fn prepare_update(old: &Value, new: &mut Value, subresource: &str) {
    new["spec"] = old.get("spec").cloned().unwrap_or(Value::Null);
    // A status that is not an object is refused by validation; leave it to that.
    if new
        .get("status")
        .is_some_and(|s| !s.is_object() && !s.is_null())
    {
        return;
    }
    let old_conditions: Vec<Value> = old
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let new_conditions: Vec<Value> = new
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let merged: Vec<Value> = match subresource {
        "approval" => {
            if let Some(c) = old.pointer("/status/certificate") {
                new["status"]["certificate"] = c.clone();
            } else if let Some(s) = new.get_mut("status").and_then(Value::as_object_mut) {
                s.remove("certificate");
            }
            // Approval decisions from the request, the other conditions as they were.
            new_conditions
                .into_iter()
                .filter(approval_condition)
                .chain(
                    old_conditions
                        .into_iter()
                        .filter(|c| !approval_condition(c)),
                )
                .collect()
        }
        "status" => old_conditions
            .into_iter()
            .filter(approval_condition)
            .chain(
                new_conditions
                    .into_iter()
                    .filter(|c| !approval_condition(c)),
            )
            .collect(),
        _ => return,
    };
    if merged.is_empty() {
        if let Some(s) = new.get_mut("status").and_then(Value::as_object_mut) {
            s.remove("conditions");
        }
    } else {
        // Timestamps the writer left out: now, or the unchanged condition's transition (as
        // upstream's populateConditionTimestamps).
        let now = crate::object::now_rfc3339();
        let before_of = |t: Option<&Value>| {
            old.pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|l| l.iter().find(|o| o.get("type") == t))
                .cloned()
        };
        let merged: Vec<Value> = merged
            .into_iter()
            .map(|mut c| {
                let before = before_of(c.get("type"));
                let same = before
                    .as_ref()
                    .is_some_and(|b| b.get("status") == c.get("status"));
                if let Some(m) = c.as_object_mut() {
                    for f in ["lastUpdateTime", "lastTransitionTime"] {
                        if m.get(f).is_none_or(Value::is_null) {
                            let keep = (f == "lastTransitionTime" && same)
                                .then(|| before.as_ref().and_then(|b| b.get(f)).cloned())
                                .flatten();
                            m.insert(f.into(), keep.unwrap_or_else(|| json!(now)));
                        }
                    }
                }
                c
            })
            .collect();
        new["status"]["conditions"] = Value::Array(merged);
    }
}

/// Update rules beyond [`validate`]: an approval stays, the certificate is set once and only
/// on an approved request.
pub fn validate_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    // Approved, Denied and Failed, once there, stay.
    let kinds = |o: &Value| -> Vec<String> {
        o.pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("type").and_then(Value::as_str))
            .filter(|t| matches!(*t, "Approved" | "Denied" | "Failed"))
            .map(str::to_string)
            .collect()
    };
    for k in kinds(old) {
        if !kinds(new).contains(&k) {
            causes.push(Cause::new(
                "FieldValueForbidden",
                "status.conditions",
                format!("Forbidden: updates may not remove a condition of type {k:?}"),
            ));
        }
    }
    let (oc, nc) = (
        old.pointer("/status/certificate").and_then(Value::as_str),
        new.pointer("/status/certificate").and_then(Value::as_str),
    );
    if oc.is_some_and(|c| !c.is_empty()) && oc != nc {
        causes.push(Cause::new(
            "FieldValueForbidden",
            "status.certificate",
            "Forbidden: updates may not modify existing certificate content",
        ));
    }
    if let Some(c) = nc.filter(|c| !c.is_empty() && oc != Some(c)) {
        if !kinds(new).contains(&"Approved".to_string()) {
            causes.push(Cause::new(
                "FieldValueInvalid",
                "status.certificate",
                "Invalid value: \"<data>\": certificate can only be set on an approved request",
            ));
        }
        let pem = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, c)
            .unwrap_or_default();
        let ok = !pem.is_empty()
            && x509_parser::pem::Pem::iter_from_buffer(&pem)
                .all(|b| b.is_ok_and(|b| b.label == "CERTIFICATE" && b.parse_x509().is_ok()));
        if !ok {
            causes.push(Cause::new(
                "FieldValueInvalid",
                "status.certificate",
                "Invalid value: \"<data>\": must contain one or more PEM CERTIFICATE blocks",
            ));
        }
    }
}

/// CertificateSubjectRestriction: no `system:masters` through the apiserver-client signer.
pub fn subject_restriction(obj: &Value) -> Result<(), String> {
    if obj.pointer("/spec/signerName").and_then(Value::as_str) != Some(KUBE_APISERVER_CLIENT) {
        return Ok(());
    }
    // An organization this server cannot read is refused too: it might say system:masters.
    match request_organizations(obj) {
        Ok(orgs)
            if orgs
                .iter()
                .any(|o| o.as_deref().is_none_or(|o| o == crate::authz::MASTERS)) =>
        {
            Err(format!(
                "use of {KUBE_APISERVER_CLIENT} signer with system:masters group is not allowed"
            ))
        }
        _ => Ok(()),
    }
}

/// Whether `user` may `verb` (approve, sign) requests for `signer`: on that signer's name, or
/// on `<domain>/*` ([`Authorizer::authorize_in_write`]).
pub fn signer_allowed(authz: &Authorizer, user: &UserInfo, verb: &str, signer: &str) -> bool {
    let ask = |name: &str| {
        matches!(
            authz.authorize_in_write(&Attributes::resource(
                user,
                verb,
                "",
                "certificates.k8s.io",
                "signers",
                "",
                name,
            )),
            Decision::Allow(_)
        )
    };
    if ask(signer) {
        return true;
    }
    signer
        .split_once('/')
        .is_some_and(|(domain, _)| ask(&format!("{domain}/*")))
}

/// The CONDITION column of `kubectl get csr`, as upstream's printer: `Denied`, `Approved` or
/// `Pending`, then `,Failed`, then `,Issued`.
pub fn condition_summary(obj: &Value) -> String {
    let has = |t: &str| {
        obj.pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|l| {
                l.iter()
                    .any(|c| c.get("type").and_then(Value::as_str) == Some(t))
            })
    };
    let mut out = if has("Denied") {
        "Denied"
    } else if has("Approved") {
        "Approved"
    } else {
        "Pending"
    }
    .to_string();
    if has("Failed") {
        out.push_str(",Failed");
    }
    if obj
        .pointer("/status/certificate")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty())
    {
        out.push_str(",Issued");
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A base64 PEM request for CN `cn` in organizations `orgs`.
    pub(crate) fn request(cn: &str, orgs: &[&str]) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        for o in orgs {
            p.distinguished_name
                .push(rcgen::DnType::OrganizationName, *o);
        }
        let csr = p.serialize_request(&key).unwrap();
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            csr.pem().unwrap(),
        )
    }

    fn csr(signer: &str, orgs: &[&str]) -> Value {
        json!({"spec": {"request": request("alice", orgs), "signerName": signer,
                        "usages": ["client auth"], "username": "forged"}})
    }

    #[test]
    fn requests_are_checked_and_the_requester_recorded() {
        let mut c = csr(KUBE_APISERVER_CLIENT, &["devs"]);
        let mut causes = Vec::new();
        validate(&c, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        set_requester(
            &mut c,
            &UserInfo {
                name: "bob".into(),
                groups: vec!["system:authenticated".into()],
                ..Default::default()
            },
        );
        assert_eq!(c["spec"]["username"], "bob");
        assert_eq!(c["spec"]["groups"], json!(["system:authenticated"]));
        let mut bad = json!({"spec": {"request": "bm90IHBlbQ==", "signerName": "nodomain",
                                       "usages": ["flying"], "expirationSeconds": 60}});
        bad["status"] = json!({"conditions": [{"type": "Approved", "status": "True"},
                                              {"type": "Denied", "status": "True"}]});
        let mut causes = Vec::new();
        validate(&bad, &mut causes);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.request",
                "spec.signerName",
                "spec.usages[0]",
                "spec.expirationSeconds",
                "status.conditions"
            ]
        );
    }

    #[test]
    fn masters_cannot_be_asked_of_the_apiserver_client_signer() {
        assert!(subject_restriction(&csr(KUBE_APISERVER_CLIENT, &["system:masters"])).is_err());
        assert!(subject_restriction(&csr(KUBE_APISERVER_CLIENT, &["devs"])).is_ok());
        assert!(subject_restriction(&csr("example.com/mine", &["system:masters"])).is_ok());
    }

    #[test]
    fn subresources_change_only_their_part() {
        let approved = json!({"type": "Approved", "status": "True", "reason": "Ok"});
        let failed = json!({"type": "Failed", "status": "True"});
        let old = json!({"spec": {"signerName": "a/b"},
                         "status": {"conditions": [failed.clone()], "certificate": "Y2VydA=="}});
        // Approval: the request's approval, the old certificate and other conditions.
        let mut new = json!({"spec": {"signerName": "x/y"},
                             "status": {"conditions": [approved.clone()], "certificate": "b3RoZXI="}});
        prepare_update(&old, &mut new, "approval");
        assert_eq!(new["spec"]["signerName"], "a/b");
        assert_eq!(new["status"]["certificate"], "Y2VydA==");
        let types: Vec<&Value> = new["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| &c["type"])
            .collect();
        assert_eq!(types, [&json!("Approved"), &json!("Failed")]);
        // The approval got its timestamps.
        assert!(new["status"]["conditions"][0]["lastUpdateTime"].is_string());
        // Status: approval conditions stay as they were.
        let mut status = json!({"status": {"conditions": [approved.clone()]}});
        prepare_update(&old, &mut status, "status");
        assert_eq!(status["status"]["conditions"], json!(null));
        // Approval stays, the certificate is set once.
        let mut causes = Vec::new();
        let with_approval = json!({"status": {"conditions": [approved]}});
        validate_update(&with_approval, &json!({"status": {}}), &mut causes);
        assert!(causes[0].message.contains("may not remove"));
        let mut causes = Vec::new();
        validate_update(
            &old,
            &json!({"status": {"certificate": "b3RoZXI="}}),
            &mut causes,
        );
        assert!(
            causes
                .iter()
                .any(|c| c.message.contains("may not modify existing certificate"))
        );
    }

    #[test]
    fn conditions_summarise_as_kubectl_shows_them() {
        assert_eq!(condition_summary(&json!({})), "Pending");
        assert_eq!(
            condition_summary(
                &json!({"status": {"conditions": [{"type": "Failed", "status": "True"}]}})
            ),
            "Pending,Failed"
        );
        assert_eq!(
            condition_summary(
                &json!({"status": {"conditions": [{"type": "Approved", "status": "True"}], "certificate": "eA=="}})
            ),
            "Approved,Issued"
        );
    }
}
