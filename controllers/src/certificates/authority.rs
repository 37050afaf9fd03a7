//! A certificate authority that issues certificates for CertificateSigningRequests, as
//! upstream's `pkg/controller/certificates/authority`: the subject, public key and subject
//! alternative names come from the request (whose signature must verify), the key usages from
//! the request's `spec.usages`, the validity from the signer's policy; the certificate is no CA
//! and never outlives its issuer.
//!
//! The certificate is written as DER here rather than through rcgen, whose subject model keeps
//! one value per attribute type: a request naming several organizations (a user's groups) must
//! get all of them.

use std::path::Path;
use std::time::Duration;

use rcgen::{KeyPair, PublicKeyData, SigningKey};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

/// How far back a certificate's validity starts (clocks of the parties may differ).
const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// Certificates living shorter than this do not lose the backdate at their end.
const SHORT: Duration = Duration::from_secs(8 * 3600);

/// What a request says, as the signers check it and the authority copies it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The subject's DER encoding, copied into the certificate.
    subject: Vec<u8>,
    /// The SubjectPublicKeyInfo's DER encoding.
    public_key: Vec<u8>,
    /// The subjectAltName extension's value (DER) made of the request's DNS names, IP
    /// addresses, e-mail addresses and URIs (other name forms are not copied, as upstream's).
    alt_names: Option<Vec<u8>>,
    /// The subject's common name.
    pub common_name: String,
    /// The subject's organizations, in order.
    pub organizations: Vec<String>,
    /// DNS names among the alternative names.
    pub dns_names: Vec<String>,
    /// IP addresses among the alternative names.
    pub ip_addresses: usize,
    /// E-mail addresses among the alternative names.
    pub emails: usize,
    /// URIs among the alternative names.
    pub uris: usize,
}

impl Request {
    /// Parses a PEM-encoded PKCS#10 request and checks its signature.
    pub fn parse(pem: &[u8]) -> Result<Request, String> {
        let (_, block) =
            x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("PEM block: {e}"))?;
        if block.label != "CERTIFICATE REQUEST" {
            return Err(format!(
                "PEM block type must be CERTIFICATE REQUEST, not {}",
                block.label
            ));
        }
        let (_, csr) = X509CertificationRequest::from_der(&block.contents)
            .map_err(|e| format!("certificate request: {e}"))?;
        csr.verify_signature()
            .map_err(|e| format!("the request's signature does not verify: {e}"))?;
        let info = &csr.certification_request_info;
        let text = |a: &x509_parser::x509::AttributeTypeAndValue| {
            a.as_str().map(str::to_string).unwrap_or_default()
        };
        let mut req = Request {
            subject: info.subject.as_raw().to_vec(),
            public_key: info.subject_pki.raw.to_vec(),
            alt_names: None,
            common_name: info
                .subject
                .iter_common_name()
                .next()
                .map(text)
                .unwrap_or_default(),
            organizations: info.subject.iter_organization().map(text).collect(),
            dns_names: Vec::new(),
            ip_addresses: 0,
            emails: 0,
            uris: 0,
        };
        for attr in info.iter_attributes() {
            let x509_parser::cri_attributes::ParsedCriAttribute::ExtensionRequest(er) =
                attr.parsed_attribute()
            else {
                continue;
            };
            for ext in &er.extensions {
                let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
                    continue;
                };
                let mut names = Vec::new();
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(d) => {
                            req.dns_names.push(d.to_string());
                            names.extend(der(0x82, d.as_bytes()));
                        }
                        GeneralName::IPAddress(ip) => {
                            req.ip_addresses += 1;
                            names.extend(der(0x87, ip));
                        }
                        GeneralName::RFC822Name(e) => {
                            req.emails += 1;
                            names.extend(der(0x81, e.as_bytes()));
                        }
                        GeneralName::URI(u) => {
                            req.uris += 1;
                            names.extend(der(0x86, u.as_bytes()));
                        }
                        GeneralName::Invalid(..) => {
                            return Err("the request has a malformed subjectAltName".into());
                        }
                        _ => {}
                    }
                }
                if !names.is_empty() {
                    req.alt_names = Some(seq(&names));
                }
            }
        }
        Ok(req)
    }
}

/// A CA certificate and its key.
pub struct Authority {
    key: KeyPair,
    /// The CA's subject (DER): the issuer of what it signs.
    issuer: Vec<u8>,
    /// The CA's subject key identifier, named by what it signs.
    key_id: Option<Vec<u8>>,
    /// The signature AlgorithmIdentifier (DER) of the CA's key.
    algorithm: Vec<u8>,
    /// The CA certificate's notAfter (Unix seconds).
    not_after: i64,
}

impl Authority {
    /// Loads a PEM CA certificate and its PEM private key (PKCS#8, or a PKCS#1 RSA or SEC1 EC
    /// key as kubeadm and openssl write them).
    pub fn load(cert: &Path, key: &Path) -> Result<Authority, String> {
        let cert_pem = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
        let key_pem =
            std::fs::read_to_string(key).map_err(|e| format!("{}: {e}", key.display()))?;
        Authority::from_pem(&cert_pem, &key_pem)
            .map_err(|e| format!("{} / {}: {e}", cert.display(), key.display()))
    }

    /// [`Authority::load`] from the PEM texts.
    pub fn from_pem(cert_pem: &[u8], key_pem: &str) -> Result<Authority, String> {
        let key = key_pair(key_pem)?;
        let (_, block) = x509_parser::pem::parse_x509_pem(cert_pem)
            .map_err(|e| format!("the CA certificate's PEM: {e}"))?;
        let (_, ca) = x509_parser::parse_x509_certificate(&block.contents)
            .map_err(|e| format!("the CA certificate: {e}"))?;
        let spki = ca.tbs_certificate.subject_pki.raw;
        if spki != key.subject_public_key_info().as_slice() {
            return Err("the key does not belong to the CA certificate".into());
        }
        let key_id = ca
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            });
        let alg = key.algorithm();
        let algorithm = if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
            seq(&oid(&[1, 2, 840, 10045, 4, 3, 2]))
        } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
            seq(&oid(&[1, 2, 840, 10045, 4, 3, 3]))
        } else if alg == &rcgen::PKCS_ED25519 {
            seq(&oid(&[1, 3, 101, 112]))
        } else if alg == &rcgen::PKCS_RSA_SHA256 {
            seq(&[oid(&[1, 2, 840, 113549, 1, 1, 11]), vec![0x05, 0x00]].concat())
        } else {
            return Err("the CA key's algorithm is not supported".into());
        };
        Ok(Authority {
            key,
            issuer: ca.tbs_certificate.subject.as_raw().to_vec(),
            key_id,
            algorithm,
            not_after: ca.validity().not_after.timestamp(),
        })
    }

    /// Issues a certificate (PEM) for `req` with `usages` (`spec.usages` strings), valid for
    /// `ttl` from `now`, backdated as upstream and cut at the CA's own expiry.
    pub fn sign(
        &self,
        req: &Request,
        usages: &[String],
        ttl: Duration,
        now: jiff::Timestamp,
    ) -> Result<String, String> {
        let (key_usage, ext_usages) = usages_of(usages)?;
        let now_s = now.as_second();
        if now_s >= self.not_after {
            return Err(format!(
                "refusing to sign a certificate that expired in the past: the signer's NotAfter is {}",
                unix(self.not_after)
            ));
        }
        let not_before = now_s - BACKDATE.as_secs() as i64;
        let ttl_s = ttl.as_secs() as i64;
        let not_after = if ttl < SHORT {
            now_s + ttl_s
        } else {
            not_before + ttl_s
        }
        .min(self.not_after);

        let mut serial = [0u8; 16];
        rand::Rng::fill(&mut rand::rng(), &mut serial);
        serial[0] &= 0x7f;
        serial[0] |= 0x40;

        let mut extensions = Vec::new();
        if key_usage != 0 {
            extensions.push(extension(&[2, 5, 29, 15], true, &key_usage_bits(key_usage)));
        }
        if !ext_usages.is_empty() {
            let oids: Vec<u8> = ext_usages.iter().flat_map(|o| oid(o)).collect();
            extensions.push(extension(&[2, 5, 29, 37], false, &seq(&oids)));
        }
        // Basic constraints: not a CA.
        extensions.push(extension(&[2, 5, 29, 19], true, &seq(&[])));
        if let Some(id) = &self.key_id {
            extensions.push(extension(&[2, 5, 29, 35], false, &seq(&der(0x80, id))));
        }
        if let Some(names) = &req.alt_names {
            // Critical when the subject is empty (RFC 5280 4.2.1.6).
            let empty_subject = req.subject.len() <= 2;
            extensions.push(extension(&[2, 5, 29, 17], empty_subject, names));
        }

        let tbs = seq(&[
            der(0xa0, &der(0x02, &[2])),
            der(0x02, &serial),
            self.algorithm.clone(),
            self.issuer.clone(),
            seq(&[time(not_before), time(not_after)].concat()),
            req.subject.clone(),
            req.public_key.clone(),
            der(0xa3, &seq(&extensions.concat())),
        ]
        .concat());
        let signature = self.key.sign(&tbs).map_err(|e| format!("signing: {e}"))?;
        let mut bits = vec![0u8];
        bits.extend_from_slice(&signature);
        let cert = seq(&[tbs, self.algorithm.clone(), der(0x03, &bits)].concat());
        Ok(pem("CERTIFICATE", &cert))
    }
}

/// `spec.usages` as a key-usage bit set and extended-key-usage OIDs (upstream's names; the
/// extended usages in Go's order of them, as upstream's certificates have them).
fn usages_of(usages: &[String]) -> Result<(u16, Vec<Vec<u64>>), String> {
    const PKIX_KP: [u64; 8] = [1, 3, 6, 1, 5, 5, 7, 3];
    let kp = |n: u64| [&PKIX_KP[..], &[n]].concat();
    let mut bits = 0u16;
    let mut ext: Vec<(u8, Vec<u64>)> = Vec::new();
    let mut unknown = Vec::new();
    for u in usages {
        let bit = match u.as_str() {
            "signing" | "digital signature" => Some(0),
            "content commitment" => Some(1),
            "key encipherment" => Some(2),
            "data encipherment" => Some(3),
            "key agreement" => Some(4),
            "cert sign" => Some(5),
            "crl sign" => Some(6),
            "encipher only" => Some(7),
            "decipher only" => Some(8),
            _ => None,
        };
        if let Some(b) = bit {
            bits |= 1 << b;
            continue;
        }
        let (rank, o) = match u.as_str() {
            "any" => (0, vec![2, 5, 29, 37, 0]),
            "server auth" => (1, kp(1)),
            "client auth" => (2, kp(2)),
            "code signing" => (3, kp(3)),
            "email protection" | "s/mime" => (4, kp(4)),
            "ipsec end system" => (5, kp(5)),
            "ipsec tunnel" => (6, kp(6)),
            "ipsec user" => (7, kp(7)),
            "timestamping" => (8, kp(8)),
            "ocsp signing" => (9, kp(9)),
            "microsoft sgc" => (10, vec![1, 3, 6, 1, 4, 1, 311, 10, 3, 3]),
            "netscape sgc" => (11, vec![2, 16, 840, 1, 113730, 4, 1]),
            other => {
                unknown.push(format!("{other:?}"));
                continue;
            }
        };
        if !ext.iter().any(|(r, _)| *r == rank) {
            ext.push((rank, o));
        }
    }
    if !unknown.is_empty() {
        return Err(format!(
            "unrecognized usage values: [{}]",
            unknown.join(" ")
        ));
    }
    ext.sort_by_key(|(r, _)| *r);
    Ok((bits, ext.into_iter().map(|(_, o)| o).collect()))
}

/// A private key for rcgen, which takes PKCS#8: a PKCS#1 RSA key or a SEC1 EC key is wrapped
/// as one.
fn key_pair(pem_text: &str) -> Result<KeyPair, String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes())
        .map_err(|e| format!("the CA key's PEM: {e}"))?;
    let pkcs8 = match block.label.as_str() {
        "PRIVATE KEY" => block.contents,
        "RSA PRIVATE KEY" => seq(&[
            der(0x02, &[0]),
            seq(&[oid(&[1, 2, 840, 113549, 1, 1, 1]), vec![0x05, 0x00]].concat()),
            der(0x04, &block.contents),
        ]
        .concat()),
        "EC PRIVATE KEY" => {
            // ECPrivateKey: version, key, [0] curve, [1] public key. PKCS#8 names the curve
            // in its algorithm and wants it gone from the key.
            let outer = elements(&block.contents)?;
            let [(0x30, body, _)] = outer.as_slice() else {
                return Err("the CA key is not an EC private key".into());
            };
            let fields = elements(body)?;
            let curve = fields
                .iter()
                .find(|(tag, _, _)| *tag == 0xa0)
                .map(|(_, content, _)| content.to_vec())
                .ok_or("the CA's EC key does not name its curve")?;
            let rest: Vec<u8> = fields
                .iter()
                .filter(|(tag, _, _)| *tag != 0xa0)
                .flat_map(|(_, _, whole)| whole.to_vec())
                .collect();
            seq(&[
                der(0x02, &[0]),
                seq(&[oid(&[1, 2, 840, 10045, 2, 1]), curve].concat()),
                der(0x04, &seq(&rest)),
            ]
            .concat())
        }
        other => return Err(format!("the CA key is a {other}, not a private key")),
    };
    KeyPair::from_pem(&pem("PRIVATE KEY", &pkcs8))
        .map_err(|e| format!("the CA key: {e} (RSA, ECDSA P-256/P-384 and Ed25519 keys work)"))
}

/// A DER element: its tag, its content, and the whole element.
type Element<'a> = (u8, &'a [u8], &'a [u8]);

/// The DER elements one after another in `input`.
fn elements(mut input: &[u8]) -> Result<Vec<Element<'_>>, String> {
    let bad = || "malformed DER in the CA key".to_string();
    let mut out = Vec::new();
    while !input.is_empty() {
        let tag = input[0];
        let first = *input.get(1).ok_or_else(bad)?;
        let (len, head) = if first < 0x80 {
            (first as usize, 2)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || input.len() < 2 + n {
                return Err(bad());
            }
            let len = input[2..2 + n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (len, 2 + n)
        };
        let end = head
            .checked_add(len)
            .filter(|e| *e <= input.len())
            .ok_or_else(bad)?;
        out.push((tag, &input[head..end], &input[..end]));
        input = &input[end..];
    }
    Ok(out)
}

/// The KeyUsage extension value: a named BIT STRING without trailing zero bits.
fn key_usage_bits(bits: u16) -> Vec<u8> {
    let len = 16 - bits.leading_zeros() as usize;
    let bytes = len.div_ceil(8);
    let mut out = vec![((8 - len % 8) % 8) as u8];
    for i in 0..bytes {
        let mut b = 0u8;
        for j in 0..8 {
            if bits & (1 << (i * 8 + j)) != 0 {
                b |= 0x80 >> j;
            }
        }
        out.push(b);
    }
    der(0x03, &out)
}

/// One DER element.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let len = n.to_be_bytes();
        let skip = len.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (len.len() - skip) as u8);
        out.extend_from_slice(&len[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn seq(content: &[u8]) -> Vec<u8> {
    der(0x30, content)
}

/// An OBJECT IDENTIFIER.
fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut push = |mut v: u64| {
        let mut chunk = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            chunk.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        chunk.reverse();
        body.extend(chunk);
    };
    push(arcs[0] * 40 + arcs[1]);
    for a in &arcs[2..] {
        push(*a);
    }
    der(0x06, &body)
}

/// An Extension: id, criticality, value.
fn extension(id: &[u64], critical: bool, value: &[u8]) -> Vec<u8> {
    let mut body = oid(id);
    if critical {
        body.extend_from_slice(&[0x01, 0x01, 0xff]);
    }
    body.extend(der(0x04, value));
    seq(&body)
}

fn unix(s: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(s).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// A validity time: UTCTime before 2050, GeneralizedTime from then on (RFC 5280 4.1.2.5).
fn time(s: i64) -> Vec<u8> {
    let t = unix(s);
    if t.to_zoned(jiff::tz::TimeZone::UTC).year() < 2050 {
        der(0x17, t.strftime("%y%m%d%H%M%SZ").to_string().as_bytes())
    } else {
        der(0x18, t.strftime("%Y%m%d%H%M%SZ").to_string().as_bytes())
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use x509_parser::prelude::X509Certificate;

    fn ca() -> (Authority, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "test-ca");
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let cert = p.self_signed(&key).unwrap();
        let a = Authority::from_pem(cert.pem().as_bytes(), &key.serialize_pem()).unwrap();
        (a, cert.pem())
    }

    /// A request with CN `cn`, organizations `orgs` (several: rcgen keeps one, so the subject
    /// is written by hand) and DNS names.
    pub(crate) fn request(cn: &str, orgs: &[&str], dns: &[&str]) -> Vec<u8> {
        let names: Vec<u8> = dns.iter().flat_map(|d| der(0x82, d.as_bytes())).collect();
        request_naming(cn, orgs, &names)
    }

    /// [`request`] with `names` (DER GeneralNames, concatenated) as its subjectAltName.
    fn request_naming(cn: &str, orgs: &[&str], names: &[u8]) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let attr =
            |id: &[u64], v: &str| der(0x31, &seq(&[oid(id), der(0x0c, v.as_bytes())].concat()));
        let mut name = Vec::new();
        for o in orgs {
            name.extend(attr(&[2, 5, 4, 10], o));
        }
        name.extend(attr(&[2, 5, 4, 3], cn));
        let mut attrs = Vec::new();
        if !names.is_empty() {
            let ext = extension(&[2, 5, 29, 17], false, &seq(names));
            attrs = seq(&[oid(&[1, 2, 840, 113549, 1, 9, 14]), der(0x31, &seq(&ext))].concat());
        }
        let info = seq(&[
            der(0x02, &[0]),
            seq(&name),
            key.subject_public_key_info(),
            der(0xa0, &attrs),
        ]
        .concat());
        let sig = key.sign(&info).unwrap();
        let mut bits = vec![0u8];
        bits.extend(sig);
        let csr = seq(&[
            info,
            seq(&oid(&[1, 2, 840, 10045, 4, 3, 2])),
            der(0x03, &bits),
        ]
        .concat());
        pem("CERTIFICATE REQUEST", &csr).into_bytes()
    }

    fn cert_der(pem_text: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem_text.as_bytes())
            .unwrap()
            .1
            .contents
    }

    fn parse(der_bytes: &[u8]) -> X509Certificate<'_> {
        x509_parser::parse_x509_certificate(der_bytes).unwrap().1
    }

    #[test]
    fn issues_what_the_request_asks_signed_by_the_ca() {
        let (ca, ca_pem) = ca();
        let req = Request::parse(&request("jane", &["dev", "ops"], &["jane.example"])).unwrap();
        assert_eq!(req.common_name, "jane");
        assert_eq!(req.organizations, ["dev", "ops"]);
        assert_eq!(req.dns_names, ["jane.example"]);
        let now = jiff::Timestamp::now();
        let usages = ["digital signature".to_string(), "client auth".to_string()];
        let pem_text = ca
            .sign(&req, &usages, Duration::from_secs(24 * 3600), now)
            .unwrap();
        let d = cert_der(&pem_text);
        let cert = parse(&d);
        let orgs: Vec<&str> = cert
            .subject()
            .iter_organization()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(orgs, ["dev", "ops"]);
        assert_eq!(
            cert.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "jane"
        );
        assert_eq!(cert.issuer().to_string(), "CN=test-ca");
        // Backdated 5 minutes; a day long counted from the backdated start.
        let nb = cert.validity().not_before.timestamp();
        let na = cert.validity().not_after.timestamp();
        assert_eq!(nb, now.as_second() - 300);
        assert_eq!(na - nb, 24 * 3600);
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.critical && ku.value.digital_signature() && !ku.value.key_encipherment());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(!bc.ca);
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(san.general_names.len(), 1);
        // The signature verifies against the CA.
        let ca_d = cert_der(&ca_pem);
        cert.verify_signature(Some(parse(&ca_d).public_key()))
            .unwrap();
        // The authority key identifier names the CA's key.
        let aki = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            });
        assert!(ca.key_id.is_some());
        assert_eq!(aki, ca.key_id);
    }

    #[test]
    fn short_certificates_keep_their_length_and_none_outlives_the_ca() {
        let (ca, _) = ca();
        let req = Request::parse(&request("a", &[], &[])).unwrap();
        let now = jiff::Timestamp::now();
        let usages = ["client auth".to_string()];
        let d = cert_der(
            &ca.sign(&req, &usages, Duration::from_secs(600), now)
                .unwrap(),
        );
        let short = parse(&d);
        assert_eq!(
            short.validity().not_after.timestamp(),
            now.as_second() + 600
        );
        // No key usage bits asked: no KeyUsage extension.
        assert!(short.key_usage().unwrap().is_none());
        let long = Duration::from_secs(1_000_000 * 86400);
        let d = cert_der(&ca.sign(&req, &usages, long, now).unwrap());
        let capped = parse(&d);
        assert_eq!(capped.validity().not_after.timestamp(), ca.not_after);
        let late = unix(ca.not_after + 1);
        assert!(
            ca.sign(&req, &usages, long, late)
                .unwrap_err()
                .contains("expired in the past")
        );
        let odd = [
            "flying".to_string(),
            "client auth".to_string(),
            "x".to_string(),
        ];
        assert_eq!(
            ca.sign(&req, &odd, long, now).unwrap_err(),
            r#"unrecognized usage values: ["flying" "x"]"#
        );
    }

    #[test]
    fn bad_requests_and_keys_are_refused() {
        // Change the subject's common name: the signature no longer verifies.
        let mut der_bytes = x509_parser::pem::parse_x509_pem(&request("a", &[], &[]))
            .unwrap()
            .1
            .contents;
        let at = der_bytes
            .windows(3)
            .position(|w| w == [0x0c, 1, b'a'])
            .unwrap();
        der_bytes[at + 2] = b'b';
        let forged = pem("CERTIFICATE REQUEST", &der_bytes).into_bytes();
        assert!(
            Request::parse(&forged)
                .unwrap_err()
                .contains("signature does not verify")
        );
        assert!(Request::parse(b"nonsense").is_err());
        let (_, ca_pem) = ca();
        let other = KeyPair::generate().unwrap();
        assert_eq!(
            Authority::from_pem(ca_pem.as_bytes(), &other.serialize_pem())
                .err()
                .unwrap(),
            "the key does not belong to the CA certificate"
        );
    }

    #[test]
    fn openssl_and_kubeadm_key_formats_are_taken() {
        // CAs made by `openssl ecparam -genkey` (SEC1) and `openssl genrsa -traditional`
        // (PKCS#1), as kubeadm's `ca.key` is; test-only keys.
        for (cert, key, cn) in [
            (
                include_str!("testdata/ec-ca.crt"),
                include_str!("testdata/ec-ca.key"),
                "CN=ec-ca",
            ),
            (
                include_str!("testdata/rsa-ca.crt"),
                include_str!("testdata/rsa-ca.key"),
                "CN=rsa-ca",
            ),
        ] {
            let ca = Authority::from_pem(cert.as_bytes(), key).unwrap();
            let req = Request::parse(&request("a", &[], &[])).unwrap();
            let issued = ca
                .sign(
                    &req,
                    &["client auth".to_string(), "server auth".to_string()],
                    Duration::from_secs(3600),
                    jiff::Timestamp::now(),
                )
                .unwrap();
            let d = cert_der(&issued);
            let c = parse(&d);
            assert_eq!(c.issuer().to_string(), cn);
            let ca_d = cert_der(cert);
            c.verify_signature(Some(parse(&ca_d).public_key())).unwrap();
            // Extended usages in Go's order: server auth (…7.3.1) before client auth (…7.3.2).
            let eku = c
                .extensions()
                .iter()
                .find(|e| e.oid.to_id_string() == "2.5.29.37")
                .unwrap()
                .value;
            let at = |last: u8| eku.windows(3).position(|w| w == [7, 3, last]).unwrap();
            assert!(at(1) < at(2));
        }
    }

    #[test]
    fn only_name_forms_upstream_copies_reach_the_certificate() {
        let (ca, _) = ca();
        // A DNS name, a registeredID (dropped) and another DNS name.
        let names = [
            der(0x82, b"a.example"),
            der(0x88, &oid(&[1, 2, 3, 4])[2..]),
            der(0x82, b"b.example"),
        ]
        .concat();
        let req = Request::parse(&request_naming("a", &[], &names)).unwrap();
        let d = cert_der(
            &ca.sign(
                &req,
                &["client auth".to_string()],
                Duration::from_secs(3600),
                jiff::Timestamp::now(),
            )
            .unwrap(),
        );
        let cert = parse(&d);
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        let names: Vec<&str> = san
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => *d,
                _ => "other",
            })
            .collect();
        assert_eq!(names, ["a.example", "b.example"]);
    }

    #[test]
    fn der_lengths_and_bits_encode_as_x690() {
        assert_eq!(der(0x04, &[0; 3]), [0x04, 3, 0, 0, 0]);
        assert_eq!(&der(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(&der(0x04, &[0; 300])[..4], [0x04, 0x82, 1, 44]);
        assert_eq!(
            oid(&[1, 2, 840, 113549]),
            [6, 6, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]
        );
        // digitalSignature + keyEncipherment: bits 0 and 2 → 0b1010_0000, 5 unused bits.
        assert_eq!(key_usage_bits(0b101), [0x03, 2, 5, 0xa0]);
        // decipherOnly (bit 8) needs a second byte.
        assert_eq!(key_usage_bits(1 << 8), [0x03, 3, 7, 0, 0x80]);
    }
}
