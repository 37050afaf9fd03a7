//! etcd's authentication and role-based access control: users with bcrypt-hashed passwords,
//! roles granting read/write on keys and key ranges, `auth enable` (which needs a `root` user
//! holding the `root` role), and the tokens Authenticate hands out: simple tokens, or JWTs
//! ([`jwt`]).
//!
//! The users, roles and the enabled flag are replicated state: changes are applied through Raft
//! ([`AuthStore::apply`], deterministic; passwords arrive hashed) and kept in the backend with
//! the rest of the state, so snapshots carry them. Simple tokens are assigned through Raft too
//! (every member accepts a token any member handed out) but live in memory only, for
//! `--auth-token-ttl` (by default [`TOKEN_TTL`]) after their last use, as etcd's do.

pub mod jwt;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use keelson_etcdpb::authpb::permission::Type as PermType;
use keelson_etcdpb::authpb::{Permission, Role, User, UserAddOptions};
use keelson_etcdpb::etcdserverpb::{DeleteRangeRequest, PutRequest, TxnRequest, request_op};
use parking_lot::Mutex;

use crate::error::{Result, StoreError};
use crate::raft::pb::auth_change::Change;
use crate::raft::pb::{AuthChange, AuthState};

/// The user and role that may do everything.
pub const ROOT: &str = "root";
/// How long a simple token lives after its last use by default (etcd's `--auth-token-ttl`).
pub const TOKEN_TTL: Duration = Duration::from_secs(300);

/// What a request needs.
#[derive(Debug, Clone, Copy)]
pub enum Need<'a> {
    /// Read on `key` (alone, or up to `range_end` as etcd ranges read).
    Read(&'a [u8], &'a [u8]),
    /// Write on `key` (or the range).
    Write(&'a [u8], &'a [u8]),
    /// The root role.
    Admin,
}

/// The replicated auth state.
#[derive(Debug, Clone)]
pub struct AuthStore {
    enabled: bool,
    /// Moves with every change but `auth enable`, from 1, as etcd's.
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
}

impl Default for AuthStore {
    fn default() -> AuthStore {
        AuthStore {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
        }
    }
}

impl AuthStore {
    /// Decodes the state kept in the backend.
    pub fn decode(bytes: &[u8]) -> Result<AuthStore> {
        use prost::Message;
        let s = AuthState::decode(bytes)
            .map_err(|e| StoreError::Internal(format!("auth state: {e}")))?;
        Ok(AuthStore {
            enabled: s.enabled,
            // From 1, as etcd's (a state that never changed was kept as 0 by older builds).
            revision: s.revision.max(1),
            users: s
                .users
                .into_iter()
                .map(|u| (String::from_utf8_lossy(&u.name).into_owned(), u))
                .collect(),
            roles: s
                .roles
                .into_iter()
                .map(|r| (String::from_utf8_lossy(&r.name).into_owned(), r))
                .collect(),
        })
    }

    /// The state as kept in the backend.
    pub fn encode(&self) -> Vec<u8> {
        use prost::Message;
        AuthState {
            enabled: self.enabled,
            revision: self.revision,
            users: self.users.values().cloned().collect(),
            roles: self.roles.values().cloned().collect(),
        }
        .encode_to_vec()
    }

    /// Whether auth is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Counts changes (etcd's `authRevision`).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// A user.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// A role.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// User names, sorted.
    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// Role names, sorted.
    pub fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// Applies one change (deterministic: every member gets the same state and error).
    pub fn apply(&mut self, change: &AuthChange) -> Result<()> {
        let Some(c) = &change.change else {
            return Err(StoreError::InvalidArgument("empty auth change".into()));
        };
        match c {
            Change::Enable(_) => {
                if self.enabled {
                    return Ok(());
                }
                let root = self.users.get(ROOT).ok_or(StoreError::RootUserNotExist)?;
                if !root.roles.iter().any(|r| r == ROOT) {
                    return Err(StoreError::RootRoleNotExist);
                }
                // etcd's leaves the revision as it is (a token from before a disable stays
                // old: the disable moved it).
                self.enabled = true;
                return Ok(());
            }
            Change::Disable(_) => {
                if !self.enabled {
                    return Ok(());
                }
                self.enabled = false;
            }
            Change::UserAdd(u) => {
                if u.name.is_empty() {
                    return Err(StoreError::UserEmpty);
                }
                if self.users.contains_key(&u.name) {
                    return Err(StoreError::UserAlreadyExist);
                }
                let no_password = u.options.as_ref().is_some_and(|o| o.no_password);
                self.users.insert(
                    u.name.clone(),
                    User {
                        name: u.name.clone().into_bytes(),
                        password: u.hashed_password.clone().into_bytes(),
                        roles: Vec::new(),
                        options: Some(UserAddOptions { no_password }),
                    },
                );
            }
            Change::UserDelete(u) => {
                if self.enabled && u.name == ROOT {
                    return Err(StoreError::InvalidAuthMgmt);
                }
                self.users.remove(&u.name).ok_or(StoreError::UserNotFound)?;
            }
            Change::UserChangePassword(u) => {
                let user = self
                    .users
                    .get_mut(&u.name)
                    .ok_or(StoreError::UserNotFound)?;
                user.password = u.hashed_password.clone().into_bytes();
            }
            Change::UserGrantRole(g) => {
                if g.role != ROOT && !self.roles.contains_key(&g.role) {
                    return Err(StoreError::RoleNotFound);
                }
                let user = self
                    .users
                    .get_mut(&g.user)
                    .ok_or(StoreError::UserNotFound)?;
                if user.roles.contains(&g.role) {
                    return Ok(());
                }
                user.roles.push(g.role.clone());
                user.roles.sort();
            }
            Change::UserRevokeRole(r) => {
                if self.enabled && r.name == ROOT && r.role == ROOT {
                    return Err(StoreError::InvalidAuthMgmt);
                }
                let user = self
                    .users
                    .get_mut(&r.name)
                    .ok_or(StoreError::UserNotFound)?;
                let before = user.roles.len();
                user.roles.retain(|x| x != &r.role);
                if user.roles.len() == before {
                    return Err(StoreError::RoleNotGranted);
                }
            }
            Change::RoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(StoreError::RoleEmpty);
                }
                if self.roles.contains_key(&r.name) {
                    return Err(StoreError::RoleAlreadyExist);
                }
                self.roles.insert(
                    r.name.clone(),
                    Role {
                        name: r.name.clone().into_bytes(),
                        key_permission: Vec::new(),
                    },
                );
            }
            Change::RoleDelete(r) => {
                if self.enabled && r.role == ROOT {
                    return Err(StoreError::InvalidAuthMgmt);
                }
                self.roles.remove(&r.role).ok_or(StoreError::RoleNotFound)?;
                for u in self.users.values_mut() {
                    u.roles.retain(|x| x != &r.role);
                }
            }
            Change::RoleGrantPermission(g) => {
                let perm = g.perm.as_ref().ok_or(StoreError::PermissionNotGiven)?;
                let role = self
                    .roles
                    .get_mut(&g.name)
                    .ok_or(StoreError::RoleNotFound)?;
                // A grant on a key or range the role has already replaces its type.
                match role
                    .key_permission
                    .iter_mut()
                    .find(|p| p.key == perm.key && p.range_end == perm.range_end)
                {
                    Some(p) => p.perm_type = perm.perm_type,
                    None => role.key_permission.push(perm.clone()),
                }
                role.key_permission
                    .sort_by(|a, b| (&a.key, &a.range_end).cmp(&(&b.key, &b.range_end)));
            }
            Change::RoleRevokePermission(r) => {
                let role = self
                    .roles
                    .get_mut(&r.role)
                    .ok_or(StoreError::RoleNotFound)?;
                let before = role.key_permission.len();
                role.key_permission
                    .retain(|p| !(p.key == r.key && p.range_end == r.range_end));
                if role.key_permission.len() == before {
                    return Err(StoreError::PermissionNotGranted);
                }
            }
            Change::Authenticate(t) => {
                // Checked against the password at `auth_revision`: anything changed since
                // (a new password, the user gone, auth off) refuses the token.
                if !self.enabled || t.auth_revision != self.revision {
                    return Err(StoreError::AuthOldRevision);
                }
                if !self.users.contains_key(&t.user) {
                    return Err(StoreError::AuthFailed);
                }
                return Ok(());
            }
        }
        self.revision += 1;
        Ok(())
    }

    /// Whether `user` may administer the store while auth is on (etcd's `IsAdminPermitted`):
    /// refused without a user, for a user that does not exist, or without the root role.
    pub fn admin_permitted(&self, user: &str) -> Result<()> {
        if user.is_empty() {
            return Err(StoreError::UserEmpty);
        }
        let u = self.users.get(user).ok_or(StoreError::UserNotFound)?;
        if u.roles.iter().any(|r| r == ROOT) {
            Ok(())
        } else {
            Err(StoreError::PermissionDenied)
        }
    }

    /// Whether `user` holds the root role.
    pub fn is_root(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == ROOT))
    }

    /// Whether `user` may do what `need` says (auth on; root may do everything).
    pub fn permits(&self, user: &str, need: Need<'_>) -> bool {
        if self.is_root(user) {
            return true;
        }
        let (key, end, write) = match need {
            Need::Admin => return false,
            Need::Read(k, e) => (k, e, false),
            Need::Write(k, e) => (k, e, true),
        };
        let Some(u) = self.users.get(user) else {
            return false;
        };
        let wanted = |t: i32| {
            t == PermType::Readwrite as i32
                || t == if write {
                    PermType::Write as i32
                } else {
                    PermType::Read as i32
                }
        };
        let granted: Vec<(&[u8], End<'_>)> = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.key_permission.iter())
            .filter(|p| wanted(p.perm_type))
            .map(interval)
            .collect();
        covered(&granted, key, end)
    }
}

/// What a write needs while auth is on (as etcd checks): write on what it changes, and read
/// on it too when it asks for the previous values.
pub fn put_needs<'a>(p: &'a PutRequest, out: &mut Vec<Need<'a>>) {
    out.push(Need::Write(&p.key, &[]));
    if p.prev_kv {
        out.push(Need::Read(&p.key, &[]));
    }
}

/// See [`put_needs`].
pub fn delete_needs<'a>(d: &'a DeleteRangeRequest, out: &mut Vec<Need<'a>>) {
    out.push(Need::Write(&d.key, &d.range_end));
    if d.prev_kv {
        out.push(Need::Read(&d.key, &d.range_end));
    }
}

/// What a txn needs: read on every compared key and range, and what each operation of both
/// branches needs, nested txns included.
pub fn txn_needs<'a>(t: &'a TxnRequest, out: &mut Vec<Need<'a>>) {
    for c in &t.compare {
        out.push(Need::Read(&c.key, &c.range_end));
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                out.push(Need::Read(&r.key, &r.range_end))
            }
            Some(request_op::Request::RequestPut(p)) => put_needs(p, out),
            Some(request_op::Request::RequestDeleteRange(d)) => delete_needs(d, out),
            Some(request_op::Request::RequestTxn(t)) => txn_needs(t, out),
            None => {}
        }
    }
}

/// Where an interval ends: after one key, before a key, or never (`\0` as etcd's range end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End<'a> {
    /// `[key, key + "\0")`: the key alone.
    Single,
    Before(&'a [u8]),
    Open,
}

fn interval(p: &Permission) -> (&[u8], End<'_>) {
    (p.key.as_slice(), end_of(&p.range_end))
}

fn end_of(range_end: &[u8]) -> End<'_> {
    match range_end {
        [] => End::Single,
        [0] => End::Open,
        e => End::Before(e),
    }
}

/// Whether the union of `granted` covers `key` (alone when `range_end` is empty) up to
/// `range_end`.
fn covered(granted: &[(&[u8], End<'_>)], key: &[u8], range_end: &[u8]) -> bool {
    let want = end_of(range_end);
    // Walk forward from `key`: find a grant that contains the current point and extends
    // furthest, until the wanted end is reached.
    let mut at: Vec<u8> = key.to_vec();
    loop {
        let mut best: Option<End<'_>> = None;
        for (start, end) in granted {
            if *start > at.as_slice() {
                continue;
            }
            let contains = match end {
                End::Single => *start == at.as_slice(),
                End::Before(e) => at.as_slice() < *e,
                End::Open => true,
            };
            if contains && reaches_further(*end, best) {
                best = Some(*end);
            }
        }
        let Some(reach) = best else {
            return false;
        };
        match (reach, want) {
            (End::Open, _) => return true,
            (_, End::Open) => {}
            (End::Single, End::Single) => return true,
            (End::Single, End::Before(w)) => {
                // Covers `at` only: the next key after `at` is `at + "\0"`.
                let mut next = at.clone();
                next.push(0);
                if next.as_slice() >= w {
                    return true;
                }
                at = next;
                continue;
            }
            (End::Before(e), End::Single) => return at.as_slice() < e,
            (End::Before(e), End::Before(w)) => {
                if e >= w {
                    return true;
                }
            }
        }
        match reach {
            End::Before(e) => at = e.to_vec(),
            End::Single => {
                at.push(0);
            }
            End::Open => return true,
        }
    }
}

/// Whether a grant ending at `end` reaches further than `best`.
fn reaches_further(end: End<'_>, best: Option<End<'_>>) -> bool {
    match (end, best) {
        (_, None) => true,
        (End::Open, Some(End::Open)) => false,
        (End::Open, _) => true,
        (_, Some(End::Open)) => false,
        (End::Before(a), Some(End::Before(b))) => a > b,
        (End::Before(_), Some(End::Single)) => true,
        (End::Single, _) => false,
    }
}

/// The tokens Authenticate hands out: simple tokens, each naming a user until its time to
/// live (`--auth-token-ttl`, by default [`TOKEN_TTL`]) has passed since its last use, or JWT
/// tokens ([`jwt`], `--auth-token jwt,...`).
#[derive(Debug)]
pub struct Tokens {
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    ttl: Mutex<Duration>,
    jwt: Mutex<Option<std::sync::Arc<jwt::JwtTokens>>>,
}

impl Default for Tokens {
    fn default() -> Tokens {
        Tokens {
            tokens: Mutex::default(),
            ttl: Mutex::new(TOKEN_TTL),
            jwt: Mutex::default(),
        }
    }
}

impl Tokens {
    /// Makes tokens JWTs from `provider` rather than simple tokens.
    pub fn set_jwt(&self, provider: jwt::JwtTokens) {
        *self.jwt.lock() = Some(std::sync::Arc::new(provider));
    }

    /// The JWT provider, when tokens are JWTs.
    pub fn jwt(&self) -> Option<std::sync::Arc<jwt::JwtTokens>> {
        self.jwt.lock().clone()
    }

    /// The user `token` names: a JWT is checked by its signature, its expiry and, given the
    /// current auth `revision`, its own ([`jwt::JwtTokens::user`]); a simple token is renewed.
    /// An unknown or expired one is `invalid auth token`. With the user, a JWT's own auth
    /// revision (a simple token has none).
    pub fn user_at(&self, token: &str, revision: Option<u64>) -> Result<(String, Option<u64>)> {
        match self.jwt() {
            Some(p) => p.user(token, revision).map(|(u, r)| (u, Some(r))),
            None => self
                .user(token)
                .map(|u| (u, None))
                .ok_or(StoreError::InvalidAuthToken),
        }
    }

    /// Sets how long a token lives after its last use.
    pub fn set_ttl(&self, ttl: Duration) {
        *self.ttl.lock() = ttl;
    }

    /// Records a token handed out (applied through Raft on every member).
    pub fn assign(&self, token: &str, user: &str) {
        let mut t = self.tokens.lock();
        let now = Instant::now();
        t.retain(|_, (_, until)| *until > now);
        let ttl = *self.ttl.lock();
        t.insert(token.to_string(), (user.to_string(), now + ttl));
    }

    /// The user a token names, renewing it; `None` if unknown or expired.
    pub fn user(&self, token: &str) -> Option<String> {
        let mut t = self.tokens.lock();
        let now = Instant::now();
        match t.get_mut(token) {
            Some((user, until)) if *until > now => {
                *until = now + *self.ttl.lock();
                Some(user.clone())
            }
            Some(_) => {
                t.remove(token);
                None
            }
            None => None,
        }
    }

    /// Forgets every token of `user` (deleted, or a new password), or all (auth disabled).
    pub fn forget(&self, user: Option<&str>) {
        let mut t = self.tokens.lock();
        match user {
            Some(u) => t.retain(|_, (name, _)| name != u),
            None => t.clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::pb::auth_change::Change;
    use keelson_etcdpb::etcdserverpb::{
        AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
        AuthUserGrantRoleRequest,
    };

    fn change(c: Change) -> AuthChange {
        AuthChange { change: Some(c) }
    }

    fn store_with(perms: &[(PermType, &[u8], &[u8])]) -> AuthStore {
        let mut s = AuthStore::default();
        s.apply(&change(Change::UserAdd(AuthUserAddRequest {
            name: "alice".into(),
            hashed_password: "h".into(),
            ..Default::default()
        })))
        .unwrap();
        s.apply(&change(Change::RoleAdd(AuthRoleAddRequest {
            name: "r".into(),
        })))
        .unwrap();
        for (t, k, e) in perms {
            s.apply(&change(Change::RoleGrantPermission(
                AuthRoleGrantPermissionRequest {
                    name: "r".into(),
                    perm: Some(Permission {
                        perm_type: *t as i32,
                        key: k.to_vec(),
                        range_end: e.to_vec(),
                    }),
                },
            )))
            .unwrap();
        }
        s.apply(&change(Change::UserGrantRole(AuthUserGrantRoleRequest {
            user: "alice".into(),
            role: "r".into(),
        })))
        .unwrap();
        s
    }

    #[test]
    fn ranges_are_covered_by_the_union_of_grants() {
        let s = store_with(&[
            (PermType::Read, b"a", b"c"),
            (PermType::Readwrite, b"c", b"e"),
            (PermType::Write, b"k", b""),
            (PermType::Read, b"z", b"\0"),
        ]);
        let read = |k: &[u8], e: &[u8]| s.permits("alice", Need::Read(k, e));
        let write = |k: &[u8], e: &[u8]| s.permits("alice", Need::Write(k, e));
        assert!(read(b"a", b""));
        assert!(read(b"b", b"e"), "two grants joined");
        assert!(!read(b"b", b"f"), "past the second");
        assert!(!read(b"k", b""), "write only");
        assert!(write(b"k", b""));
        assert!(!write(b"k", b"l"), "the key alone, not the range after it");
        assert!(write(b"k", b"k\0"), "the key alone as a range");
        assert!(write(b"c", b"e"));
        assert!(!write(b"a", b""));
        assert!(read(b"zz", b"\0"), "open ended");
        assert!(!read(b"y", b"\0"));
        assert!(!s.permits("alice", Need::Admin));
        assert!(!s.permits("bob", Need::Read(b"a", b"")));
    }

    #[test]
    fn enable_needs_root_with_the_root_role_and_changes_count() {
        let mut s = store_with(&[]);
        let enable = change(Change::Enable(AuthEnableRequest {}));
        assert!(matches!(
            s.apply(&enable),
            Err(StoreError::RootUserNotExist)
        ));
        s.apply(&change(Change::UserAdd(AuthUserAddRequest {
            name: ROOT.into(),
            hashed_password: "h".into(),
            ..Default::default()
        })))
        .unwrap();
        assert!(matches!(
            s.apply(&enable),
            Err(StoreError::RootRoleNotExist)
        ));
        s.apply(&change(Change::UserGrantRole(AuthUserGrantRoleRequest {
            user: ROOT.into(),
            role: ROOT.into(),
        })))
        .unwrap();
        let before = s.revision();
        s.apply(&enable).unwrap();
        assert!(s.enabled());
        assert_eq!(s.revision(), before);
        assert!(s.permits(ROOT, Need::Admin));
        let again = AuthStore::decode(&s.encode()).unwrap();
        assert!(again.enabled() && again.is_root(ROOT));
        assert_eq!(again.user_names(), ["alice", "root"]);
    }
}
