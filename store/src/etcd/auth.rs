//! `etcdserverpb.Auth` (users, roles, `auth enable`, Authenticate), and [`authorize`], the
//! check every other service makes while auth is on.
//!
//! Requests carry the token Authenticate handed out (simple, or a JWT) in the `token` gRPC
//! metadata, as etcd's clients send it. With auth on, a request without one is refused with `user name is
//! empty`, an unknown or expired one with `invalid auth token`, and one the user's roles do not
//! cover with `permission denied`; the `root` role may do everything, and cluster and
//! maintenance changes need it.

use keelson_etcdpb::etcdserverpb::auth_server::Auth;
use keelson_etcdpb::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse,
    AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse,
    AuthRoleGetRequest, AuthRoleGetResponse, AuthRoleGrantPermissionRequest,
    AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest,
    AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest,
    AuthUserChangePasswordResponse, AuthUserDeleteRequest, AuthUserDeleteResponse,
    AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest, AuthUserGrantRoleResponse,
    AuthUserListRequest, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse, ResponseHeader,
};
use rand::Rng;
use tonic::{Request, Response, Status};

use crate::auth::Need;
use crate::error::StoreError;
use crate::raft::pb::auth_change::Change;
use crate::raft::pb::internal_request::Request as Rq;
use crate::raft::pb::internal_response::Response as Rs;
use crate::raft::pb::{AuthChange, InternalRequest, SimpleToken};
use crate::server::node::Node;

/// Marks a request the member makes of its own KV service for itself (a Lock or Campaign
/// waiter's key taken back after its client went away): not checked. Requests made for a
/// client carry the client's token instead, and are checked as the client's own.
#[derive(Debug, Clone, Copy)]
pub struct Internal;

/// Who a client write was checked for and at which auth revision, carried into the log with
/// it as etcd's request header carries them: applying refuses the write if the auth state has
/// changed since, or was turned on after a write checked with auth off.
#[derive(Debug, Default)]
pub struct Checked {
    /// The user: while auth was on, or the one a valid JWT names while it was off.
    user: String,
    /// The auth revision; 0 for the member's own requests (not checked again).
    revision: u64,
}

impl Checked {
    /// The log entry for `request`, checked so.
    pub fn entry(self, request: Rq) -> InternalRequest {
        InternalRequest {
            request: Some(request),
            user: self.user,
            auth_revision: self.revision,
        }
    }
}

/// Checks that the caller of `req` may do all of `needs` (nothing to check while auth is off),
/// and says who it was checked for, for writes to carry into the log.
pub fn authorize<T>(node: &Node, req: &Request<T>, needs: &[Need<'_>]) -> Result<Checked, Status> {
    if req.extensions().get::<Internal>().is_some() {
        return Ok(Checked::default());
    }
    let m = node.shared().mvcc.read();
    Ok(permitted(&m, token_of(req), needs)?)
}

/// The simple token a request carries in its `token` metadata, as etcd's clients send it.
pub fn token_of<T>(req: &Request<T>) -> Option<&str> {
    req.metadata().get("token").and_then(|t| t.to_str().ok())
}

/// Whether the holder of `token` may do all of `needs` in state `m`, and who it was checked
/// for: no user while auth is off.
pub fn permitted(
    m: &crate::mvcc::Mvcc,
    token: Option<&str>,
    needs: &[Need<'_>],
) -> Result<Checked, StoreError> {
    let current = m.auth().revision();
    if !m.auth().enabled() {
        // A valid JWT still names its user and revision, as etcd 3.4's do on a member that
        // has not applied `auth enable` yet: the write is then held to them when it applies
        // (refused as old, or not root, rather than as without a user). Anything else: no
        // user. Only writes (and changes to the auth state) carry what this returns, so reads
        // verify nothing.
        let writes = needs
            .iter()
            .any(|n| matches!(n, Need::Write(..) | Need::Admin));
        let jwt = token.filter(|_| writes).zip(m.tokens().jwt());
        let (user, revision) = jwt
            .and_then(|(t, p)| p.user(t, None).ok())
            .unwrap_or((String::new(), current));
        return Ok(Checked { user, revision });
    }
    // As etcd's, only checks of keys refuse a JWT from before the latest auth change; admin
    // checks look at the user alone.
    let keys = needs.iter().any(|n| !matches!(n, Need::Admin));
    let (user, issued) = user_of(m, token, keys)?;
    if needs.iter().any(|n| matches!(n, Need::Admin)) {
        m.auth().admin_permitted(&user)?;
    }
    if needs.iter().all(|n| m.auth().permits(&user, *n)) {
        // A JWT issued by a member further on carries its own, later revision (etcd's).
        let revision = issued.map_or(current, |r| r.max(current));
        Ok(Checked { user, revision })
    } else {
        Err(StoreError::PermissionDenied)
    }
}

/// The user `token` names (auth on), and a JWT's own auth revision; a JWT from before the
/// latest auth change only counts unless `current`.
fn user_of(
    m: &crate::mvcc::Mvcc,
    token: Option<&str>,
    current: bool,
) -> Result<(String, Option<u64>), StoreError> {
    let token = token.ok_or(StoreError::UserEmpty)?;
    m.tokens()
        .user_at(token, current.then(|| m.auth().revision()))
}

/// The caller while auth is on (`None` while it is off).
fn caller_if_enabled<T>(node: &Node, req: &Request<T>) -> Result<Option<String>, Status> {
    let m = node.shared().mvcc.read();
    if !m.auth().enabled() {
        return Ok(None);
    }
    Ok(user_of(&m, token_of(req), false).map(|(user, _)| Some(user))?)
}

/// A random simple token: 16 letters, then `.` and a counter, as etcd's look.
fn new_token() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let mut rng = rand::rng();
    let letters: String = (0..16)
        .map(|_| {
            let i = rng.random_range(0..52u8);
            (if i < 26 { b'a' + i } else { b'A' + i - 26 }) as char
        })
        .collect();
    format!("{letters}.{}", COUNT.fetch_add(1, Ordering::Relaxed) + 1)
}

async fn hash(password: String, cost: u32) -> Result<String, Status> {
    tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(format!("hashing the password: {e}")))
}

/// The Auth service.
#[derive(Debug, Clone)]
pub struct AuthService {
    node: Node,
    /// bcrypt's cost for the passwords it stores (`--bcrypt-cost`).
    bcrypt_cost: u32,
}

impl AuthService {
    /// The service for `node`, hashing passwords at `bcrypt_cost`.
    pub fn new(node: Node, bcrypt_cost: u32) -> AuthService {
        AuthService { node, bcrypt_cost }
    }

    /// Applies `change` through Raft for the client of `req`; returns the response header.
    ///
    /// The client must hold the root role (or auth be off) in a state at least as new as the
    /// request: a member that has not applied a change acknowledged before (auth turned off,
    /// the root role granted, the Authenticate that handed out the client's token) must not
    /// refuse what the cluster permits. The user goes into the log with the change, which is
    /// checked again as it applies (`Mvcc::apply`, etcd's `IsAdminPermitted` in its apply):
    /// one checked before a change that applies first (the user's root role revoked, auth
    /// turned on) is refused then, on every member alike.
    async fn change<T>(
        &self,
        req: &Request<T>,
        change: Change,
    ) -> Result<Option<ResponseHeader>, Status> {
        let checked = self.changer(req).await?;
        self.propose(checked, change).await
    }

    /// The client of `req`, who may change the auth state ([`AuthService::change`]).
    async fn changer<T>(&self, req: &Request<T>) -> Result<Checked, Status> {
        self.node.read_barrier().await?;
        authorize(&self.node, req, &[Need::Admin])
    }

    /// Proposes `change`, carrying `checked` into the log.
    async fn propose(
        &self,
        checked: Checked,
        change: Change,
    ) -> Result<Option<ResponseHeader>, Status> {
        let change = Rq::Auth(AuthChange {
            change: Some(change),
        });
        match self.node.propose(checked.entry(change)).await? {
            Rs::Auth(_) => Ok(self.node.current_header()),
            _ => Err(StoreError::Internal("unexpected response to an auth change".into()).into()),
        }
    }

    /// Refuses unless auth is off or the caller holds the root role.
    fn admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        authorize(&self.node, req, &[Need::Admin]).map(|_| ())
    }

    /// Refuses unless auth is off, the caller is root, or the caller is `user`.
    fn admin_or_self<T>(&self, req: &Request<T>, user: &str) -> Result<(), Status> {
        match caller_if_enabled(&self.node, req)? {
            Some(u) if u == user => Ok(()),
            _ => self.admin(req),
        }
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let header = self.change(&req, Change::Enable(*req.get_ref())).await?;
        Ok(Response::new(AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let header = self.change(&req, Change::Disable(*req.get_ref())).await?;
        Ok(Response::new(AuthDisableResponse { header }))
    }

    async fn auth_status(
        &self,
        _req: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        self.node.read_barrier().await?;
        let (enabled, auth_revision) = {
            let m = self.node.shared().mvcc.read();
            (m.auth().enabled(), m.auth().revision())
        };
        Ok(Response::new(AuthStatusResponse {
            header: self.node.current_header(),
            enabled,
            auth_revision,
        }))
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let r = req.into_inner();
        // The password is checked against the state at one auth revision; the token is
        // applied only if nothing changed since (else the check runs again).
        for _ in 0..3 {
            self.node.read_barrier().await?;
            let stored = {
                let m = self.node.shared().mvcc.read();
                if !m.auth().enabled() {
                    return Err(StoreError::AuthNotEnabled.into());
                }
                let revision = m.auth().revision();
                m.auth().user(&r.name).map(|u| {
                    let no_password = u.options.as_ref().is_some_and(|o| o.no_password);
                    let hashed = String::from_utf8_lossy(&u.password).into_owned();
                    (hashed, no_password, revision)
                })
            };
            let Some((hashed, no_password, revision)) = stored else {
                return Err(StoreError::AuthFailed.into());
            };
            let password = r.password.clone();
            let ok = !no_password
                && tokio::task::spawn_blocking(move || bcrypt::verify(password, &hashed))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
                    .unwrap_or(false);
            if !ok {
                return Err(StoreError::AuthFailed.into());
            }
            // A JWT needs no agreement: it names the auth revision the password was checked
            // at, and any member refuses it once the auth state has moved on.
            let jwt = self.node.shared().mvcc.read().tokens().jwt();
            if let Some(provider) = jwt {
                // Only if nothing changed while the password was checked (a new password, the
                // user gone); else check again, as etcd's Authenticate does.
                self.node.read_barrier().await?;
                if self.node.shared().mvcc.read().auth().revision() != revision {
                    continue;
                }
                let token = provider
                    .assign(&r.name, revision)
                    .map_err(Status::unknown)?;
                return Ok(Response::new(AuthenticateResponse {
                    header: self.node.current_header(),
                    token,
                }));
            }
            let token = new_token();
            // The member's own entry: it carries no user, and is not checked as it applies.
            let assigned = self
                .propose(
                    Checked::default(),
                    Change::Authenticate(SimpleToken {
                        user: r.name.clone(),
                        token: token.clone(),
                        auth_revision: revision,
                    }),
                )
                .await;
            match assigned {
                Ok(header) => {
                    // The token must work here at once: this member applies it first.
                    self.node.read_barrier().await?;
                    return Ok(Response::new(AuthenticateResponse { header, token }));
                }
                Err(e) if e.message() == StoreError::AuthOldRevision.to_string() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::AuthOldRevision.into())
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        // Checked before the password is hashed; an empty name is refused as it applies,
        // after the check of the caller (etcd's order).
        let checked = self.changer(&req).await?;
        let mut r = req.into_inner();
        let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
        if !no_password && r.hashed_password.is_empty() {
            r.hashed_password = hash(std::mem::take(&mut r.password), self.bcrypt_cost).await?;
        }
        r.password.clear();
        let header = self.propose(checked, Change::UserAdd(r)).await?;
        Ok(Response::new(AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        // Checked in a state at least as new as the request (a change acknowledged before it
        // was sent may not have applied here yet).
        self.node.read_barrier().await?;
        self.admin_or_self(&req, &req.get_ref().name)?;
        let roles = {
            let m = self.node.shared().mvcc.read();
            let u = m
                .auth()
                .user(&req.get_ref().name)
                .ok_or(StoreError::UserNotFound)?;
            u.roles.clone()
        };
        Ok(Response::new(AuthUserGetResponse {
            header: self.node.current_header(),
            roles,
        }))
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        self.node.read_barrier().await?;
        self.admin(&req)?;
        let users = self.node.shared().mvcc.read().auth().user_names();
        Ok(Response::new(AuthUserListResponse {
            header: self.node.current_header(),
            users,
        }))
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let header = self
            .change(&req, Change::UserDelete(req.get_ref().clone()))
            .await?;
        Ok(Response::new(AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let checked = self.changer(&req).await?;
        let mut r = req.into_inner();
        if r.hashed_password.is_empty() {
            r.hashed_password = hash(std::mem::take(&mut r.password), self.bcrypt_cost).await?;
        }
        r.password.clear();
        let header = self.propose(checked, Change::UserChangePassword(r)).await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let header = self
            .change(&req, Change::UserGrantRole(req.get_ref().clone()))
            .await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let header = self
            .change(&req, Change::UserRevokeRole(req.get_ref().clone()))
            .await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let header = self
            .change(&req, Change::RoleAdd(req.get_ref().clone()))
            .await?;
        Ok(Response::new(AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        self.node.read_barrier().await?;
        // A user may read the roles it holds.
        let own = match caller_if_enabled(&self.node, &req)? {
            Some(u) => {
                let m = self.node.shared().mvcc.read();
                m.auth()
                    .user(&u)
                    .is_some_and(|u| u.roles.contains(&req.get_ref().role))
            }
            None => true,
        };
        if !own {
            self.admin(&req)?;
        }
        let perm = {
            let m = self.node.shared().mvcc.read();
            let role = m.auth().role(&req.get_ref().role);
            match role {
                Some(r) => r.key_permission.clone(),
                None => return Err(StoreError::RoleNotFound.into()),
            }
        };
        Ok(Response::new(AuthRoleGetResponse {
            header: self.node.current_header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        self.node.read_barrier().await?;
        self.admin(&req)?;
        let roles = self.node.shared().mvcc.read().auth().role_names();
        Ok(Response::new(AuthRoleListResponse {
            header: self.node.current_header(),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let header = self
            .change(&req, Change::RoleDelete(req.get_ref().clone()))
            .await?;
        Ok(Response::new(AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let header = self
            .change(&req, Change::RoleGrantPermission(req.get_ref().clone()))
            .await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let header = self
            .change(&req, Change::RoleRevokePermission(req.get_ref().clone()))
            .await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_look_like_etcds() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        let (letters, n) = a.split_once('.').unwrap();
        assert_eq!(letters.len(), 16);
        assert!(letters.chars().all(|c| c.is_ascii_alphabetic()));
        assert!(n.parse::<u64>().is_ok());
    }
}
