//! The authenticating proxy (`--requestheader-*`), as upstream's request-header
//! authenticator: a client whose certificate is signed by `--requestheader-client-ca-file`
//! (and whose CommonName is in `--requestheader-allowed-names`, when that is set) speaks for
//! the user named in its headers: the first non-empty username header, the uid headers, every
//! value of the group headers, and `<prefix><key>` headers as extra attributes (the key
//! lower-cased, then unescaped). The headers are removed from a request they authenticated.

use http::HeaderMap;

use crate::filters::UserInfo;

/// The header names of the flags.
#[derive(Debug, Clone, Default)]
pub struct RequestHeader {
    /// `--requestheader-username-headers`.
    pub username: Vec<String>,
    /// `--requestheader-uid-headers`.
    pub uid: Vec<String>,
    /// `--requestheader-group-headers`.
    pub group: Vec<String>,
    /// `--requestheader-extra-headers-prefix`.
    pub extra_prefixes: Vec<String>,
}

fn values<'a>(headers: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

impl RequestHeader {
    /// The user the headers name, or None when no username header is set.
    pub fn user(&self, headers: &HeaderMap) -> Option<UserInfo> {
        let name = self
            .username
            .iter()
            .find_map(|h| values(headers, h).next())?
            .to_string();
        let uid = self
            .uid
            .iter()
            .find_map(|h| values(headers, h).next())
            .unwrap_or("")
            .to_string();
        let groups = self
            .group
            .iter()
            .flat_map(|h| values(headers, h))
            .map(str::to_string)
            .collect();
        let mut extra: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (h, v) in headers {
            let Some(key) = self.extra_key(h.as_str()) else {
                continue;
            };
            if let Ok(v) = v.to_str() {
                extra.entry(key).or_default().push(v.to_string());
            }
        }
        Some(UserInfo {
            name,
            groups,
            uid,
            extra,
        })
    }

    /// The extra key a header carries, if it has one of the prefixes.
    fn extra_key(&self, header: &str) -> Option<String> {
        // Header names arrive lower-cased; the key is unescaped after that, as upstream.
        self.extra_prefixes.iter().find_map(|p| {
            let rest = header.strip_prefix(p.to_ascii_lowercase().as_str())?;
            (!rest.is_empty()).then(|| {
                percent_encoding::percent_decode_str(rest)
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
    }

    /// Removes the headers this authenticator reads.
    pub fn clear(&self, headers: &mut HeaderMap) {
        for h in self.username.iter().chain(&self.uid).chain(&self.group) {
            headers.remove(h.as_str());
        }
        let extras: Vec<http::HeaderName> = headers
            .keys()
            .filter(|h| self.extra_key(h.as_str()).is_some())
            .cloned()
            .collect();
        for h in extras {
            headers.remove(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_name_the_user() {
        let rh = RequestHeader {
            username: vec!["X-Remote-User".into(), "X-Other-User".into()],
            uid: vec!["X-Remote-Uid".into()],
            group: vec!["X-Remote-Group".into()],
            extra_prefixes: vec!["X-Remote-Extra-".into()],
        };
        let mut h = HeaderMap::new();
        assert_eq!(rh.user(&h), None);
        h.insert("x-other-user", "bob".parse().unwrap());
        assert_eq!(rh.user(&h).unwrap().name, "bob");
        h.insert("x-remote-user", "alice".parse().unwrap());
        h.insert("x-remote-uid", "u1".parse().unwrap());
        h.append("x-remote-group", "devs".parse().unwrap());
        h.append("x-remote-group", "ops".parse().unwrap());
        h.append("x-remote-extra-scopes", "a".parse().unwrap());
        h.append("x-remote-extra-scopes", "b".parse().unwrap());
        h.insert("x-remote-extra-acme.com%2Fproject", "p".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        let u = rh.user(&h).unwrap();
        assert_eq!((u.name.as_str(), u.uid.as_str()), ("alice", "u1"));
        assert_eq!(u.groups, ["devs", "ops"]);
        assert_eq!(u.extra["scopes"], ["a", "b"]);
        assert_eq!(u.extra["acme.com/project"], ["p"]);
        rh.clear(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
    }
}
