use super::authority::tests::request;
use super::*;
use crate::testing::{fake_client, taken};
use futures::FutureExt as _;
use kube::runtime::watcher::Event;
use serde_json::json;

fn parsed(cn: &str, orgs: &[&str], dns: &[&str]) -> Request {
    Request::parse(&request(cn, orgs, dns)).unwrap()
}

fn usages(u: &[&str]) -> Vec<String> {
    u.iter().map(|s| s.to_string()).collect()
}

#[test]
fn each_signer_checks_what_upstream_checks() {
    let node = parsed("system:node:n1", &["system:nodes"], &[]);
    let client = usages(&["digital signature", "key encipherment", "client auth"]);
    assert_eq!(signer_check(KUBELET_CLIENT, &node, &client), Ok(()));
    // Without key encipherment (non-RSA keys) too; in any order.
    assert_eq!(
        signer_check(
            KUBELET_CLIENT,
            &node,
            &usages(&["client auth", "digital signature"])
        ),
        Ok(())
    );
    assert_eq!(
        signer_check(KUBELET_CLIENT, &node, &usages(&["client auth"])),
        Err("usages did not match [client auth digital signature key encipherment]".into())
    );
    let other_org = parsed("system:node:n1", &["system:nodes", "x"], &[]);
    assert_eq!(
        signer_check(KUBELET_CLIENT, &other_org, &client),
        Err("subject organization is not system:nodes".into())
    );
    let named = parsed("system:node:n1", &["system:nodes"], &["n1.example"]);
    assert_eq!(
        signer_check(KUBELET_CLIENT, &named, &client),
        Err("DNS subjectAltNames are not allowed".into())
    );
    let not_node = parsed("n1", &["system:nodes"], &[]);
    assert_eq!(
        signer_check(KUBELET_CLIENT, &not_node, &client),
        Err("subject common name does not begin with system:node:".into())
    );

    let serving = usages(&["digital signature", "server auth"]);
    assert_eq!(signer_check(KUBELET_SERVING, &named, &serving), Ok(()));
    assert_eq!(
        signer_check(KUBELET_SERVING, &node, &serving),
        Err("DNS or IP subjectAltName is required".into())
    );
    assert_eq!(
        signer_check(KUBELET_SERVING, &named, &client),
        Err("usages did not match [digital signature key encipherment server auth]".into())
    );

    let jane = parsed("jane", &["dev", "ops"], &[]);
    assert_eq!(
        signer_check(KUBE_APISERVER_CLIENT, &jane, &usages(&["client auth"])),
        Ok(())
    );
    assert_eq!(
        signer_check(
            KUBE_APISERVER_CLIENT,
            &jane,
            &usages(&["client auth", "server auth"])
        ),
        Err("invalid usage for client certificate: server auth".into())
    );
    assert_eq!(
        signer_check(
            KUBE_APISERVER_CLIENT,
            &jane,
            &usages(&["digital signature"])
        ),
        Err("missing required usage for client certificate: client auth".into())
    );
    // The legacy signer checks nothing.
    assert_eq!(signer_check(LEGACY_UNKNOWN, &jane, &serving), Ok(()));
}

#[test]
fn lifetimes_are_the_signers_unless_a_shorter_one_is_asked() {
    let year = Duration::from_secs(8760 * 3600);
    assert_eq!(lifetime(year, None), year);
    assert_eq!(lifetime(year, Some(3600)), Duration::from_secs(3600));
    assert_eq!(lifetime(year, Some(60)), Duration::from_secs(600));
    assert_eq!(
        lifetime(Duration::from_secs(7200), Some(86400)),
        Duration::from_secs(7200)
    );
}

fn csr(value: serde_json::Value) -> CertificateSigningRequest {
    serde_json::from_value(value).unwrap()
}

fn ago(now: jiff::Timestamp, secs: i64) -> String {
    (now - jiff::SignedDuration::from_secs(secs)).to_string()
}

#[test]
fn the_cleaner_keeps_requests_until_upstreams_deadlines() {
    let now = jiff::Timestamp::now();
    let with = |created: i64, conditions: serde_json::Value, cert: Option<&str>| {
        let mut v = json!({
            "metadata": {"name": "r", "creationTimestamp": ago(now, created)},
            "spec": {"request": "", "signerName": KUBE_APISERVER_CLIENT},
            "status": {"conditions": conditions},
        });
        if let Some(c) = cert {
            use base64::Engine as _;
            v["status"]["certificate"] = json!(base64::engine::general_purpose::STANDARD.encode(c));
        }
        csr(v)
    };
    let cond = |t: &str, secs: i64| json!([{"type": t, "status": "True", "lastUpdateTime": ago(now, secs)}]);
    assert_eq!(stale(&with(23 * 3600, json!([]), None), now), None);
    assert_eq!(
        stale(&with(25 * 3600, json!([]), None), now),
        Some("pending for more than a day")
    );
    assert_eq!(stale(&with(7200, cond("Denied", 1800), None), now), None);
    assert_eq!(
        stale(&with(7200, cond("Denied", 3700), None), now),
        Some("denied more than an hour ago")
    );
    assert_eq!(
        stale(
            &with(
                7200,
                json!([{"type": "Approved", "status": "True", "lastUpdateTime": ago(now, 3700)},
                    {"type": "Failed", "status": "True", "lastUpdateTime": ago(now, 3700)}]),
                None
            ),
            now
        ),
        Some("failed more than an hour ago")
    );
    // A condition of any kind makes a request not pending.
    assert_eq!(stale(&with(25 * 3600, cond("Custom", 60), None), now), None);
    // Approved but never issued: kept (only a pending request has the one-day limit).
    assert_eq!(
        stale(&with(30 * 3600, cond("Approved", 29 * 3600), None), now),
        None
    );

    // Issued: an hour after approval, or as soon as the certificate has expired.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert_ending = |secs_from_now: i64| {
        let mut p = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after =
            time::OffsetDateTime::from_unix_timestamp(now.as_second() + secs_from_now).unwrap();
        p.self_signed(&key).unwrap().pem()
    };
    let valid = cert_ending(3600);
    let expired = cert_ending(-60);
    assert_eq!(
        stale(&with(600, cond("Approved", 300), Some(&valid)), now),
        None
    );
    assert_eq!(
        stale(&with(4000, cond("Approved", 3700), Some(&valid)), now),
        Some("issued more than an hour ago")
    );
    assert_eq!(
        stale(&with(600, cond("Approved", 300), Some(&expired)), now),
        Some("its certificate has expired")
    );
}

#[test]
fn signing_flags_go_together_and_the_shared_ca_excludes_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = dir.path().join("ca.crt");
    let ca_key = dir.path().join("ca.key");
    std::fs::write(&ca, p.self_signed(&key).unwrap().pem()).unwrap();
    std::fs::write(&ca_key, key.serialize_pem()).unwrap();
    let base = SigningArgs {
        cluster_signing_duration: Duration::from_secs(3600),
        ..Default::default()
    };
    assert!(base.authorities().unwrap().is_empty());
    let shared = SigningArgs {
        cluster_signing_cert_file: Some(ca.clone()),
        cluster_signing_key_file: Some(ca_key.clone()),
        ..base.clone()
    };
    assert_eq!(
        shared
            .authorities()
            .unwrap()
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        [
            KUBE_APISERVER_CLIENT,
            KUBELET_CLIENT,
            KUBELET_SERVING,
            LEGACY_UNKNOWN
        ]
    );
    let half = SigningArgs {
        cluster_signing_kubelet_serving_cert_file: Some(ca.clone()),
        ..base.clone()
    };
    assert_eq!(
        half.authorities().err().unwrap(),
        "--cluster-signing-kubelet-serving-cert-file and --cluster-signing-kubelet-serving-key-file must be given together"
    );
    let one = SigningArgs {
        cluster_signing_kubelet_serving_cert_file: Some(ca.clone()),
        cluster_signing_kubelet_serving_key_file: Some(ca_key.clone()),
        ..base.clone()
    };
    assert_eq!(
        one.authorities()
            .unwrap()
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        [KUBELET_SERVING]
    );
    let both = SigningArgs {
        cluster_signing_kubelet_serving_cert_file: Some(ca.clone()),
        cluster_signing_kubelet_serving_key_file: Some(ca_key.clone()),
        ..shared.clone()
    };
    assert_eq!(
        both.authorities().err().unwrap(),
        "cannot specify default and per controller certs at the same time"
    );
    let missing = SigningArgs {
        cluster_signing_cert_file: Some(dir.path().join("nope.crt")),
        cluster_signing_key_file: Some(ca_key),
        ..base
    };
    assert!(missing.authorities().err().unwrap().contains("nope.crt"));
}

fn signing(informers: &mut Informers) -> Arc<CsrSigning> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "cluster-ca");
    let ca = Arc::new(
        Authority::from_pem(
            p.self_signed(&key).unwrap().pem().as_bytes(),
            &key.serialize_pem(),
        )
        .unwrap(),
    );
    let all = [KUBE_APISERVER_CLIENT, KUBELET_CLIENT, KUBELET_SERVING]
        .into_iter()
        .map(|s| (s, ca.clone()))
        .collect();
    CsrSigning::new(informers, all, Duration::from_secs(3600))
}

fn approved_request(name: &str, signer: &str, pem: &[u8], u: &[&str]) -> CertificateSigningRequest {
    use base64::Engine as _;
    csr(json!({
        "metadata": {"name": name, "resourceVersion": "5"},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(pem),
            "signerName": signer, "usages": u, "username": "admin",
        },
        "status": {"conditions": [{"type": "Approved", "status": "True", "reason": "R"}]},
    }))
}

#[tokio::test]
async fn the_signer_issues_approved_requests_and_fails_the_ones_it_refuses() {
    let (client, calls) = fake_client();
    let mut informers = Informers::new(client);
    let ctl = signing(&mut informers);
    let pem = request("jane", &["dev", "ops"], &[]);
    informers
        .certificate_signing_requests()
        .apply_event(Event::Apply(approved_request(
            "jane",
            KUBE_APISERVER_CLIENT,
            &pem,
            &["client auth"],
        )));
    informers
        .certificate_signing_requests()
        .apply_event(Event::Apply(approved_request(
            "serving",
            KUBELET_SERVING,
            &request("system:node:n1", &["system:nodes"], &[]),
            &["digital signature", "server auth"],
        )));
    // Pending and other signers' requests are left alone.
    let mut pending = approved_request("pending", KUBE_APISERVER_CLIENT, &pem, &["client auth"]);
    pending.status = None;
    informers
        .certificate_signing_requests()
        .apply_event(Event::Apply(pending));
    informers
        .certificate_signing_requests()
        .apply_event(Event::Apply(approved_request(
            "other",
            "example.com/signer",
            &pem,
            &["client auth"],
        )));
    while let Some(k) = ctl.queue.get().now_or_never().flatten() {
        ctl.queue.done(&k);
    }
    for name in ["jane", "serving", "pending", "other", "gone"] {
        assert_eq!(ctl.clone().sync(name.into()).await.unwrap(), None);
    }
    let puts = taken(
        &calls,
        "PUT",
        "/apis/certificates.k8s.io/v1/certificatesigningrequests/",
    );
    let paths: Vec<&str> = puts.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/apis/certificates.k8s.io/v1/certificatesigningrequests/jane/status",
            "/apis/certificates.k8s.io/v1/certificatesigningrequests/serving/status",
        ]
    );
    let issued: CertificateSigningRequest = serde_json::from_value(puts[0].1.clone()).unwrap();
    let cert = issued.status.unwrap().certificate.unwrap().0;
    let (_, block) = x509_parser::pem::parse_x509_pem(&cert).unwrap();
    let (_, c) = x509_parser::parse_x509_certificate(&block.contents).unwrap();
    assert_eq!(c.subject().to_string(), "O=dev, O=ops, CN=jane");
    assert_eq!(c.issuer().to_string(), "CN=cluster-ca");
    // The resourceVersion is sent: a concurrent change is a conflict, not overwritten.
    assert_eq!(
        puts[0].1.pointer("/metadata/resourceVersion"),
        Some(&json!("5"))
    );

    let failed = &puts[1].1;
    assert_eq!(failed.pointer("/status/certificate"), None);
    assert_eq!(
        failed.pointer("/status/conditions/1"),
        Some(&json!({
            "type": "Failed", "status": "True", "reason": "SignerValidationFailure",
            "message": "DNS or IP subjectAltName is required",
            "lastUpdateTime": failed.pointer("/status/conditions/1/lastUpdateTime").unwrap(),
            "lastTransitionTime": failed.pointer("/status/conditions/1/lastTransitionTime").unwrap(),
        }))
    );
}

#[tokio::test]
async fn the_approver_asks_about_kubelet_client_requests_only() {
    let (client, calls) = fake_client();
    let mut informers = Informers::new(client);
    let ctl = CsrApproving::new(&mut informers);
    let node_pem = request("system:node:n1", &["system:nodes"], &[]);
    let mut own = approved_request(
        "own",
        KUBELET_CLIENT,
        &node_pem,
        &["digital signature", "client auth"],
    );
    own.status = None;
    own.spec.username = Some("system:node:n1".into());
    own.spec.groups = Some(vec!["system:nodes".into()]);
    let mut other = own.clone();
    other.metadata.name = Some("other".into());
    other.spec.username = Some("system:bootstrap:abc".into());
    let mut not_kubelet = own.clone();
    not_kubelet.metadata.name = Some("client".into());
    not_kubelet.spec.signer_name = KUBE_APISERVER_CLIENT.into();
    for c in [own, other, not_kubelet] {
        informers
            .certificate_signing_requests()
            .apply_event(Event::Apply(c));
    }
    // The fake server echoes the review without a status: never allowed, so the request is
    // asked about again later.
    assert_eq!(
        ctl.clone().sync("own".into()).await.unwrap(),
        Some(Duration::from_millis(200))
    );
    let reviews = taken(
        &calls,
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
    );
    let asked: Vec<_> = reviews
        .iter()
        .map(|(_, r)| {
            (
                r.pointer("/spec/user").cloned().unwrap(),
                r.pointer("/spec/resourceAttributes/subresource")
                    .cloned()
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(
        asked,
        [
            (json!("system:node:n1"), json!("selfnodeclient")),
            (json!("system:node:n1"), json!("nodeclient")),
        ]
    );
    assert_eq!(
        reviews[0].1.pointer("/spec/resourceAttributes"),
        Some(
            &json!({"group": "certificates.k8s.io", "resource": "certificatesigningrequests",
            "subresource": "selfnodeclient", "verb": "create", "version": "*"})
        )
    );
    // Asked about again later each time.
    assert_eq!(
        ctl.clone().sync("own".into()).await.unwrap(),
        Some(Duration::from_millis(400))
    );
    assert_eq!(unauthorized_retry(30), Duration::from_secs(1000));
    // Someone else's request for the node: only `nodeclient` applies.
    ctl.clone().sync("other".into()).await.unwrap();
    let reviews = taken(
        &calls,
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
    );
    assert_eq!(reviews.len(), 5);
    assert_eq!(
        reviews[4].1.pointer("/spec/resourceAttributes/subresource"),
        Some(&json!("nodeclient"))
    );
    // Not a kubelet client request: nothing asked, nothing approved.
    assert_eq!(ctl.clone().sync("client".into()).await.unwrap(), None);
    assert_eq!(
        taken(
            &calls,
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews"
        )
        .len(),
        5
    );
    assert!(taken(&calls, "PUT", "/apis/certificates.k8s.io").is_empty());
}
