//! The MVCC key-value state machine: etcd's data model over a [`Backend`].
//!
//! Every write gets the next *main* revision (a txn's writes share one main revision and are
//! ordered by *sub* revision). Each key keeps the list of revisions at which it was written, so
//! a read at any revision newer than the compaction point finds the value that was current then.
//! The per-key lists live in memory (like etcd's `treeIndex`) and are rebuilt from the records at
//! start; the values stay in the backend.
//!
//! Nothing here knows about Raft: [`Mvcc::apply`] is a deterministic function of the current
//! state and one request, which the Raft state machine calls for each committed entry and which
//! tests call directly.

pub mod keys;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use keelson_etcdpb::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, CompactionRequest, CompactionResponse,
    Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse, compare, request_op,
    response_op,
};
use keelson_etcdpb::mvccpb::{Event, KeyValue, event::EventType};
use prost::Message;

use self::keys::{KIND_DELETE, KIND_PUT};
use crate::backend::{Backend, WriteBatch};
use crate::error::{Result, StoreError};
use crate::raft::pb::{
    ApplyError, InternalRequest, InternalResponse, MemberAttributes, internal_request,
    internal_response,
};

/// Longest lease TTL etcd accepts (`MaxLeaseTTL`, seconds).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// Most operations a txn branch (or its compares) may hold (etcd's `--max-txn-ops` default).
pub const MAX_TXN_OPS: usize = 128;

/// One position in the revision history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rev {
    main: i64,
    sub: i64,
    tombstone: bool,
}

/// The revisions at which one key was written, oldest first.
#[derive(Debug, Default, Clone)]
struct KeyHistory {
    revs: Vec<Rev>,
    /// create_revision / version / lease of the newest revision when it is a put.
    create: i64,
    version: i64,
    lease: i64,
}

impl KeyHistory {
    fn live(&self) -> bool {
        self.revs.last().is_some_and(|r| !r.tombstone)
    }

    /// The newest revision with `main <= at`, if it is a put.
    fn at(&self, at: i64) -> Option<Rev> {
        let idx = self.revs.partition_point(|r| r.main <= at);
        let r = *self.revs.get(idx.checked_sub(1)?)?;
        (!r.tombstone).then_some(r)
    }

    /// The newest revision strictly before `(main, sub)`, if it is a put.
    fn before(&self, main: i64, sub: i64) -> Option<Rev> {
        let idx = self.revs.partition_point(|r| (r.main, r.sub) < (main, sub));
        let r = *self.revs.get(idx.checked_sub(1)?)?;
        (!r.tombstone).then_some(r)
    }
}

/// A lease as replicated: its granted TTL and the keys attached to it.
#[derive(Debug, Clone, Default)]
pub struct LeaseInfo {
    /// Granted TTL in seconds.
    pub ttl: i64,
    /// Keys currently attached.
    pub keys: BTreeSet<Vec<u8>>,
}

/// Events produced by the requests applied since the last [`Mvcc::take_events`].
#[derive(Debug, Clone)]
pub struct EventBatch {
    /// Events in revision order, each with its `prev_kv` when the key existed before.
    pub events: Arc<Vec<Event>>,
    /// The first revision this batch covers; a watcher that expected an earlier one missed
    /// something and catches up from the backend.
    pub first_revision: i64,
    /// The store revision after these events.
    pub revision: i64,
}

/// The metadata record holding the auth state.
const AUTH_META: &str = "auth";

/// The MVCC state: in-memory index plus the records in the backend.
pub struct Mvcc {
    backend: Arc<dyn Backend>,
    index: BTreeMap<Vec<u8>, KeyHistory>,
    current_rev: i64,
    /// Whether `current_rev` changed since the last `commit` (written once per commit).
    rev_unsaved: bool,
    compact_rev: i64,
    leases: BTreeMap<i64, LeaseInfo>,
    members: BTreeMap<u64, MemberAttributes>,
    alarms: BTreeSet<(u64, i32)>,
    min_lease_ttl: i64,
    /// Writes of the entries applied since the last `commit`.
    batch: WriteBatch,
    /// Records written since the last `commit`, readable before they reach the backend.
    overlay: HashMap<[u8; 17], Vec<u8>>,
    events: Vec<Event>,
    /// Revision before the first event in `events`.
    events_base: i64,
    /// Dumps in progress ([`Mvcc::pin`]): while any runs, compacted records stay.
    pins: usize,
    /// Keys of the records compactions removed from the index, not yet deleted from the
    /// backend ([`Mvcc::take_compacted`]).
    compacted: Vec<[u8; 17]>,
    /// Users, roles and whether auth is on (replicated), and the simple tokens handed out.
    auth: crate::auth::AuthStore,
    tokens: crate::auth::Tokens,
}

impl std::fmt::Debug for Mvcc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mvcc")
            .field("keys", &self.index.len())
            .field("current_rev", &self.current_rev)
            .field("compact_rev", &self.compact_rev)
            .finish()
    }
}

/// A key range as etcd spells it: `end` empty is the single key, `[0]` is "every key >= key".
#[derive(Debug, Clone)]
pub struct KeyRange<'a> {
    key: &'a [u8],
    end: &'a [u8],
}

impl<'a> KeyRange<'a> {
    /// The range `key..end` in etcd's encoding.
    pub fn new(key: &'a [u8], end: &'a [u8]) -> KeyRange<'a> {
        KeyRange { key, end }
    }

    /// Whether `k` falls in this range.
    pub fn contains(&self, k: &[u8]) -> bool {
        if self.end.is_empty() {
            k == self.key
        } else if self.end == [0] {
            k >= self.key
        } else {
            k >= self.key && k < self.end
        }
    }
}

fn decode_record(raw: &[u8]) -> Result<(bool, KeyValue)> {
    let (kind, body) = raw
        .split_first()
        .ok_or_else(|| StoreError::Internal("empty record".into()))?;
    let kv =
        KeyValue::decode(body).map_err(|e| StoreError::Internal(format!("decode record: {e}")))?;
    Ok((*kind == KIND_DELETE, kv))
}

fn encode_record(kind: u8, kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + kv.encoded_len());
    out.push(kind);
    kv.encode(&mut out).expect("BUG: Vec has room");
    out
}

fn be_i64(v: &[u8]) -> Result<i64> {
    let arr: [u8; 8] = v
        .try_into()
        .map_err(|_| StoreError::Internal("bad meta value".into()))?;
    Ok(i64::from_be_bytes(arr))
}

impl Mvcc {
    /// Loads the state kept in `backend` (empty backend: revision 1, like a new etcd).
    pub fn open(backend: Arc<dyn Backend>, min_lease_ttl: i64) -> Result<Mvcc> {
        let mut m = Mvcc {
            backend,
            index: BTreeMap::new(),
            current_rev: 1,
            rev_unsaved: false,
            compact_rev: 0,
            leases: BTreeMap::new(),
            members: BTreeMap::new(),
            alarms: BTreeSet::new(),
            min_lease_ttl,
            batch: WriteBatch::default(),
            overlay: HashMap::new(),
            events: Vec::new(),
            events_base: 0,
            pins: 0,
            compacted: Vec::new(),
            auth: crate::auth::AuthStore::default(),
            tokens: crate::auth::Tokens::default(),
        };
        m.reload()?;
        Ok(m)
    }

    /// Rebuilds every in-memory structure from the backend (after start or snapshot install).
    pub fn reload(&mut self) -> Result<()> {
        self.index.clear();
        self.leases.clear();
        self.members.clear();
        self.alarms.clear();
        self.batch = WriteBatch::default();
        self.rev_unsaved = false;
        self.overlay.clear();
        self.events.clear();
        self.compacted.clear();
        self.current_rev = match self.backend.get(&keys::meta_key("current_rev"))? {
            Some(v) => be_i64(&v)?,
            None => 1,
        };
        self.compact_rev = match self.backend.get(&keys::meta_key("compact_rev"))? {
            Some(v) => be_i64(&v)?,
            None => 0,
        };
        self.events_base = self.current_rev;
        let mut err = None;
        let index = &mut self.index;
        self.backend.for_each(b"r", b"s", &mut |k, v| {
            let Some((main, sub)) = keys::parse_rev_key(k) else {
                err = Some(StoreError::Corrupt);
                return false;
            };
            match decode_record(v) {
                Ok((tombstone, kv)) => {
                    let h = index.entry(kv.key).or_default();
                    h.revs.push(Rev {
                        main,
                        sub,
                        tombstone,
                    });
                    if !tombstone {
                        h.create = kv.create_revision;
                        h.version = kv.version;
                        h.lease = kv.lease;
                    }
                    true
                }
                Err(e) => {
                    err = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        // A compaction's records may outlive it on disk (their deletes come later, and a crash
        // may come first): whatever it would have removed goes now.
        let leftovers = self.prune(self.compact_rev);
        if !leftovers.is_empty() {
            let mut batch = WriteBatch::default();
            for k in leftovers {
                batch.delete(k.to_vec());
            }
            self.backend.write(batch)?;
        }
        for (k, v) in self.backend.range(b"l", b"m")? {
            let id = be_i64(&k[1..])?;
            self.leases.insert(
                id,
                LeaseInfo {
                    ttl: be_i64(&v)?,
                    keys: BTreeSet::new(),
                },
            );
        }
        for (key, h) in &self.index {
            if h.live()
                && h.lease != 0
                && let Some(l) = self.leases.get_mut(&h.lease)
            {
                l.keys.insert(key.clone());
            }
        }
        for (k, v) in self.backend.range(b"a", b"b")? {
            let attrs = MemberAttributes::decode(v.as_slice())
                .map_err(|e| StoreError::Internal(format!("decode member: {e}")))?;
            let id = u64::from_be_bytes(k[1..9].try_into().map_err(|_| StoreError::Corrupt)?);
            self.members.insert(id, attrs);
        }
        for (k, _) in self.backend.range(b"A", b"B")? {
            if k.len() == 13 {
                let member = u64::from_be_bytes(k[1..9].try_into().expect("BUG: length checked"));
                let alarm = i32::from_be_bytes(k[9..13].try_into().expect("BUG: length checked"));
                self.alarms.insert((member, alarm));
            }
        }
        self.auth = match self.backend.get(&keys::meta_key(AUTH_META))? {
            Some(b) => crate::auth::AuthStore::decode(&b)?,
            None => crate::auth::AuthStore::default(),
        };
        self.tokens.forget(None);
        Ok(())
    }

    /// A client write checked again against the auth state it applies in, as etcd's apply
    /// checks it (deterministic: every member refuses the same writes). Refused if it was
    /// checked with auth off and auth is on now (`user name is empty`), or at an older auth
    /// revision (`revision of auth store is old`: its client authenticates again), or if the
    /// user may not do it now (a lease's keys can change without an auth change). A client's
    /// change to the auth state needs a user with the root role.
    fn still_permitted(&self, req: &InternalRequest) -> Result<()> {
        use crate::auth::{Need, delete_needs, put_needs, txn_needs};
        use internal_request::Request as Rq;
        // Neither: the member's own writes, and those checked by another of its services.
        let client = req.auth_revision != 0 || !req.user.is_empty();
        if !client || !self.auth.enabled() {
            return Ok(());
        }
        let mut needs = Vec::new();
        match &req.request {
            Some(Rq::Put(p)) => {
                put_needs(p, &mut needs);
                // A lease whose keys the user cannot all write is not theirs to revoke, so
                // not theirs to attach a key to either (etcd's checkLeasePuts; a txn's puts
                // are not checked so, as etcd's are not).
                if let Some(lease) = self.leases.get(&p.lease) {
                    needs.extend(lease.keys.iter().map(|k| Need::Write(k, &[])));
                }
            }
            Some(Rq::DeleteRange(d)) => delete_needs(d, &mut needs),
            Some(Rq::Txn(t)) => txn_needs(t, &mut needs),
            Some(Rq::LeaseRevoke(l)) => {
                if let Some(lease) = self.leases.get(&l.id) {
                    needs.extend(lease.keys.iter().map(|k| Need::Write(k, &[])));
                }
            }
            // A change a client asks for needs root in the state it applies in, as etcd's
            // apply checks it: the user decides, not the revision. (Authenticate's entry, the
            // member's own, carries neither user nor revision: not checked.)
            Some(Rq::Auth(_)) => return self.auth.admin_permitted(&req.user),
            _ => {}
        }
        // As etcd's, the user and revision are checked with each key: a write that touches
        // none (a txn of nothing, a revoke of a lease without keys) is not refused.
        if needs.is_empty() {
            return Ok(());
        }
        if req.user.is_empty() {
            return Err(StoreError::UserEmpty);
        }
        // A write from an older build carries a user and no revision: its permissions decide.
        if req.auth_revision != 0 && req.auth_revision < self.auth.revision() {
            return Err(StoreError::AuthOldRevision);
        }
        if needs.iter().all(|n| self.auth.permits(&req.user, *n)) {
            Ok(())
        } else {
            Err(StoreError::PermissionDenied)
        }
    }

    /// The auth state.
    pub fn auth(&self) -> &crate::auth::AuthStore {
        &self.auth
    }

    /// The simple tokens handed out.
    pub fn tokens(&self) -> &crate::auth::Tokens {
        &self.tokens
    }

    /// Applies an auth change and keeps the new state with the entry's writes.
    fn apply_auth(
        &mut self,
        change: &crate::raft::pb::AuthChange,
    ) -> Result<crate::raft::pb::AuthChanged> {
        use crate::raft::pb::auth_change::Change;
        self.auth.apply(change)?;
        match &change.change {
            Some(Change::Authenticate(t)) => self.tokens.assign(&t.token, &t.user),
            Some(Change::UserDelete(u)) => self.tokens.forget(Some(&u.name)),
            Some(Change::UserChangePassword(u)) => self.tokens.forget(Some(&u.name)),
            Some(Change::Disable(_)) => self.tokens.forget(None),
            _ => {}
        }
        if !matches!(change.change, Some(Change::Authenticate(_))) {
            self.batch
                .put(keys::meta_key(AUTH_META), self.auth.encode());
        }
        Ok(crate::raft::pb::AuthChanged {
            revision: self.auth.revision(),
        })
    }

    /// The backend the state lives in.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The newest revision.
    pub fn current_revision(&self) -> i64 {
        self.current_rev
    }

    /// The compaction point (0 if never compacted).
    pub fn compact_revision(&self) -> i64 {
        self.compact_rev
    }

    /// Live leases.
    pub fn leases(&self) -> &BTreeMap<i64, LeaseInfo> {
        &self.leases
    }

    /// Published member attributes.
    pub fn members(&self) -> &BTreeMap<u64, MemberAttributes> {
        &self.members
    }

    /// Active alarms as `(member id, AlarmType)`.
    pub fn alarms(&self) -> &BTreeSet<(u64, i32)> {
        &self.alarms
    }

    /// Whether the NOSPACE alarm is raised anywhere in the cluster.
    pub fn no_space(&self) -> bool {
        self.alarms
            .iter()
            .any(|(_, a)| *a == AlarmType::Nospace as i32)
    }

    fn header(&self) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            revision: self.current_rev,
            ..Default::default()
        })
    }

    fn record(&self, main: i64, sub: i64) -> Result<(bool, KeyValue)> {
        let k = keys::rev_key(main, sub);
        if let Some(v) = self.overlay.get(&k) {
            return decode_record(v);
        }
        match self.backend.get(&k)? {
            Some(v) => decode_record(&v),
            None => Err(StoreError::Internal(format!("missing record {main}/{sub}"))),
        }
    }

    fn put_record(&mut self, main: i64, sub: i64, kind: u8, kv: &KeyValue) {
        let k = keys::rev_key(main, sub);
        let v = encode_record(kind, kv);
        // Revisions only grow, so no record has this key yet.
        self.batch.put_new(k.to_vec(), v.clone());
        self.overlay.insert(k, v);
    }

    /// Keys in `range` (ascending) whose history has anything, without reading values.
    fn keys_in<'s>(
        &'s self,
        range: &KeyRange<'s>,
    ) -> Box<dyn Iterator<Item = (&'s Vec<u8>, &'s KeyHistory)> + 's> {
        if range.end.is_empty() {
            return Box::new(self.index.get_key_value(range.key).into_iter());
        }
        let start = std::ops::Bound::Included(range.key.to_vec());
        let end = if range.end == [0] {
            std::ops::Bound::Unbounded
        } else if range.end <= range.key {
            return Box::new(std::iter::empty());
        } else {
            std::ops::Bound::Excluded(range.end.to_vec())
        };
        Box::new(self.index.range((start, end)))
    }

    /// Live key-values in `range` at revision `at` (ascending by key), at most `limit` if > 0,
    /// and how many there are in all.
    fn range_at(
        &self,
        range: &KeyRange<'_>,
        at: i64,
        limit: usize,
        count_only: bool,
    ) -> Result<(Vec<KeyValue>, usize)> {
        let mut kvs = Vec::new();
        let mut total = 0;
        for (_, h) in self.keys_in(range) {
            let Some(r) = h.at(at) else { continue };
            total += 1;
            if count_only || (limit > 0 && kvs.len() >= limit) {
                continue;
            }
            kvs.push(self.record(r.main, r.sub)?.1);
        }
        Ok((kvs, total))
    }

    fn check_rev(&self, rev: i64) -> Result<i64> {
        if rev > self.current_rev {
            return Err(StoreError::FutureRev);
        }
        if rev <= 0 {
            return Ok(self.current_rev);
        }
        if rev < self.compact_rev {
            return Err(StoreError::Compacted);
        }
        Ok(rev)
    }

    /// Serves a Range exactly as etcd's apply layer does (filters, sort, limit, count).
    pub fn range(&self, r: &RangeRequest) -> Result<RangeResponse> {
        use keelson_etcdpb::etcdserverpb::range_request::{SortOrder, SortTarget};
        let at = self.check_rev(r.revision)?;
        let filtered = r.sort_order != SortOrder::None as i32
            || r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0;
        // One extra to learn whether there is more; everything when sorting or filtering.
        let fetch = if filtered || r.limit <= 0 {
            0
        } else {
            r.limit as usize + 1
        };
        let (mut kvs, total) = self.range_at(
            &KeyRange::new(&r.key, &r.range_end),
            at,
            fetch,
            r.count_only,
        )?;
        kvs.retain(|kv| {
            !(r.max_mod_revision != 0 && kv.mod_revision > r.max_mod_revision
                || r.min_mod_revision != 0 && kv.mod_revision < r.min_mod_revision
                || r.max_create_revision != 0 && kv.create_revision > r.max_create_revision
                || r.min_create_revision != 0 && kv.create_revision < r.min_create_revision)
        });
        let mut order = r.sort_order;
        if r.sort_target != SortTarget::Key as i32 && order == SortOrder::None as i32 {
            order = SortOrder::Ascend as i32;
        }
        if order != SortOrder::None as i32 {
            let target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
            kvs.sort_by(|a, b| match target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            });
            if order == SortOrder::Descend as i32 {
                kvs.reverse();
            }
        }
        let mut more = false;
        if r.limit > 0 && kvs.len() > r.limit as usize {
            kvs.truncate(r.limit as usize);
            more = true;
        }
        if r.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(RangeResponse {
            header: self.header(),
            kvs,
            more,
            count: total as i64,
        })
    }

    /// Every event with revision in `[from, to]`, in order, with `prev_kv` filled in.
    ///
    /// # Errors
    /// [`StoreError::Compacted`] if `from` is older than the compaction point.
    pub fn events_between(&self, from: i64, to: i64, range: &KeyRange<'_>) -> Result<Vec<Event>> {
        if from < self.compact_rev {
            return Err(StoreError::Compacted);
        }
        let mut out = Vec::new();
        if from > to {
            return Ok(out);
        }
        let start = keys::rev_key(from.max(1), 0);
        let end = keys::rev_key(to + 1, 0);
        let mut err = None;
        self.backend.for_each(&start, &end, &mut |k, v| {
            let rev = keys::parse_rev_key(k);
            match (rev, decode_record(v)) {
                (Some((main, sub)), Ok((tombstone, kv))) => {
                    if range.contains(&kv.key) && self.kept(&kv.key, main, sub) {
                        let prev = self.index.get(&kv.key).and_then(|h| h.before(main, sub));
                        let prev_kv = match prev.map(|p| self.record(p.main, p.sub)) {
                            Some(Ok((_, kv))) => Some(kv),
                            Some(Err(e)) => {
                                err = Some(e);
                                return false;
                            }
                            None => None,
                        };
                        let ty = if tombstone {
                            EventType::Delete
                        } else {
                            EventType::Put
                        };
                        out.push(Event {
                            r#type: ty as i32,
                            kv: Some(kv),
                            prev_kv,
                        });
                    }
                    true
                }
                (_, Err(e)) => {
                    err = Some(e);
                    false
                }
                (None, _) => {
                    err = Some(StoreError::Corrupt);
                    false
                }
            }
        })?;
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Applies one committed request. Deterministic: every member computes the same response
    /// and the same writes.
    pub fn apply(&mut self, req: &InternalRequest) -> InternalResponse {
        use internal_request::Request as Rq;
        use internal_response::Response as Rs;
        if let Err(e) = self.still_permitted(req) {
            return InternalResponse {
                response: Some(Rs::Error(ApplyError {
                    code: e.apply_code(),
                })),
            };
        }
        let result = match &req.request {
            Some(Rq::Put(p)) => {
                self.apply_txn_ops(std::slice::from_ref(&op_put(p)))
                    .map(|mut r| match r.pop().and_then(|o| o.response) {
                        Some(response_op::Response::ResponsePut(p)) => Rs::Put(p),
                        _ => unreachable!("BUG: a put yields a put response"),
                    })
            }
            Some(Rq::DeleteRange(d)) => self
                .apply_txn_ops(std::slice::from_ref(&op_delete(d)))
                .map(|mut r| match r.pop().and_then(|o| o.response) {
                    Some(response_op::Response::ResponseDeleteRange(d)) => Rs::DeleteRange(d),
                    _ => unreachable!("BUG: a delete yields a delete response"),
                }),
            Some(Rq::Txn(t)) => self.apply_txn(t).map(Rs::Txn),
            Some(Rq::Compaction(c)) => self.apply_compaction(c).map(Rs::Compaction),
            Some(Rq::LeaseGrant(g)) => self.apply_lease_grant(g).map(Rs::LeaseGrant),
            Some(Rq::LeaseRevoke(l)) => self.apply_lease_revoke(l).map(Rs::LeaseRevoke),
            Some(Rq::Publish(m)) => {
                let mut buf = Vec::new();
                m.encode(&mut buf).expect("BUG: Vec has room");
                self.batch.put(keys::member_key(m.id).to_vec(), buf);
                self.members.insert(m.id, m.clone());
                Ok(Rs::Publish(Default::default()))
            }
            Some(Rq::Alarm(a)) => Ok(Rs::Alarm(self.apply_alarm(a))),
            Some(Rq::Auth(c)) => self.apply_auth(c).map(Rs::Auth),
            None => Err(StoreError::InvalidArgument("empty request".into())),
        };
        let response = match result {
            Ok(r) => r,
            Err(e) => Rs::Error(ApplyError {
                code: e.apply_code(),
            }),
        };
        InternalResponse {
            response: Some(response),
        }
    }

    /// Removes a member's attributes and alarms (the member left the cluster).
    pub fn forget_member(&mut self, id: u64) {
        if self.members.remove(&id).is_some() {
            self.batch.delete(keys::member_key(id).to_vec());
        }
        let gone: Vec<_> = self
            .alarms
            .iter()
            .filter(|(m, _)| *m == id)
            .copied()
            .collect();
        for (m, a) in gone {
            self.alarms.remove(&(m, a));
            self.batch.delete(keys::alarm_key(m, a).to_vec());
        }
    }

    /// Adds a metadata write to the pending batch (used by the Raft state machine for its own
    /// last-applied / membership records, so they commit atomically with the data).
    pub fn put_meta(&mut self, name: &str, value: Vec<u8>) {
        self.batch.put(keys::meta_key(name), value);
    }

    /// Reads a metadata value.
    pub fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.backend.get(&keys::meta_key(name))?)
    }

    /// Writes everything applied since the last commit to the backend, atomically.
    pub fn commit(&mut self) -> Result<()> {
        if std::mem::take(&mut self.rev_unsaved) {
            self.batch.put(
                keys::meta_key("current_rev"),
                self.current_rev.to_be_bytes().to_vec(),
            );
        }
        let batch = std::mem::take(&mut self.batch);
        self.overlay.clear();
        if !batch.is_empty() {
            self.backend.write(batch)?;
        }
        Ok(())
    }

    /// Events produced since the last call.
    pub fn take_events(&mut self) -> Option<EventBatch> {
        let first_revision = self.events_base + 1;
        self.events_base = self.current_rev;
        if self.events.is_empty() {
            return None;
        }
        Some(EventBatch {
            events: Arc::new(std::mem::take(&mut self.events)),
            first_revision,
            revision: self.current_rev,
        })
    }

    fn apply_alarm(&mut self, a: &AlarmRequest) -> AlarmResponse {
        use keelson_etcdpb::etcdserverpb::alarm_request::AlarmAction;
        let mut affected = Vec::new();
        match AlarmAction::try_from(a.action).unwrap_or(AlarmAction::Get) {
            AlarmAction::Get => {}
            AlarmAction::Activate => {
                if a.alarm != AlarmType::None as i32 && self.alarms.insert((a.member_id, a.alarm)) {
                    self.batch
                        .put(keys::alarm_key(a.member_id, a.alarm).to_vec(), Vec::new());
                }
                affected.push(AlarmMember {
                    member_id: a.member_id,
                    alarm: a.alarm,
                });
            }
            AlarmAction::Deactivate => {
                let gone: Vec<_> = self
                    .alarms
                    .iter()
                    .filter(|(m, t)| {
                        *m == a.member_id && (a.alarm == AlarmType::None as i32 || *t == a.alarm)
                    })
                    .copied()
                    .collect();
                for (m, t) in gone {
                    self.alarms.remove(&(m, t));
                    self.batch.delete(keys::alarm_key(m, t).to_vec());
                    affected.push(AlarmMember {
                        member_id: m,
                        alarm: t,
                    });
                }
            }
        }
        AlarmResponse {
            header: self.header(),
            alarms: affected,
        }
    }

    fn set_current_rev(&mut self, rev: i64) {
        self.current_rev = rev;
        self.rev_unsaved = true;
    }

    fn apply_compaction(&mut self, c: &CompactionRequest) -> Result<CompactionResponse> {
        let rev = c.revision;
        if rev <= self.compact_rev {
            return Err(StoreError::Compacted);
        }
        if rev > self.current_rev {
            return Err(StoreError::FutureRev);
        }
        // The records are deleted later, in chunks and off the apply path (etcd also deletes
        // a compaction's keys in batches); reads never see them, the index has them no more.
        for k in self.prune(rev) {
            self.overlay.remove(&k);
            self.compacted.push(k);
        }
        self.compact_rev = rev;
        self.batch
            .put(keys::meta_key("compact_rev"), rev.to_be_bytes().to_vec());
        Ok(CompactionResponse {
            header: self.header(),
        })
    }

    /// Drops from the index every revision a compaction at `rev` removes (for each key the
    /// newest revision <= `rev` stays unless it is a tombstone below `rev`, and everything
    /// after it) and returns their record keys. A tombstone at `rev` itself stays, so a watch
    /// from `rev` still sees that delete (etcd's fix for its issue 18089; before it, etcd lost
    /// the event).
    fn prune(&mut self, rev: i64) -> Vec<[u8; 17]> {
        let mut empty = Vec::new();
        let mut dropped = Vec::new();
        for (key, h) in self.index.iter_mut() {
            let upto = h.revs.partition_point(|r| r.main <= rev);
            if upto == 0 {
                continue;
            }
            let newest = &h.revs[upto - 1];
            let keep_from = if newest.tombstone && newest.main < rev {
                upto
            } else {
                upto - 1
            };
            for r in h.revs.drain(..keep_from) {
                dropped.push(keys::rev_key(r.main, r.sub));
            }
            if h.revs.is_empty() {
                empty.push(key.clone());
            }
        }
        for k in empty {
            self.index.remove(&k);
        }
        dropped
    }

    /// Starts a dump: until the matching [`Mvcc::unpin`], no record at or below the current
    /// revision leaves the backend ([`Mvcc::take_compacted`] gives nothing), so the records can
    /// be copied without holding the state's lock.
    pub fn pin(&mut self) {
        self.pins += 1;
    }

    /// Ends a dump started by [`Mvcc::pin`].
    pub fn unpin(&mut self) {
        self.pins = self.pins.saturating_sub(1);
    }

    /// Whether a dump runs.
    pub fn pinned(&self) -> bool {
        self.pins > 0
    }

    /// Whether compacted records wait to be deleted.
    pub fn has_compacted(&self) -> bool {
        !self.compacted.is_empty()
    }

    /// Up to `max` keys of compacted records, for the caller to delete from the backend; none
    /// while a dump runs. Deleting them later than taken is safe: a reload removes whatever
    /// a crash left.
    pub fn take_compacted(&mut self, max: usize) -> Vec<[u8; 17]> {
        if self.pins > 0 {
            return Vec::new();
        }
        let n = max.min(self.compacted.len());
        self.compacted.split_off(self.compacted.len() - n)
    }

    fn apply_lease_grant(&mut self, g: &LeaseGrantRequest) -> Result<LeaseGrantResponse> {
        if self.no_space() {
            return Err(StoreError::NoSpace);
        }
        if g.ttl > MAX_LEASE_TTL {
            return Err(StoreError::LeaseTtlTooLarge);
        }
        if g.id == 0 {
            return Err(StoreError::InvalidArgument(
                "lease id must be chosen before proposing".into(),
            ));
        }
        if self.leases.contains_key(&g.id) {
            return Err(StoreError::LeaseExist);
        }
        let ttl = g.ttl.max(self.min_lease_ttl);
        self.leases.insert(
            g.id,
            LeaseInfo {
                ttl,
                keys: BTreeSet::new(),
            },
        );
        self.batch
            .put(keys::lease_key(g.id).to_vec(), ttl.to_be_bytes().to_vec());
        Ok(LeaseGrantResponse {
            header: self.header(),
            id: g.id,
            ttl,
            error: String::new(),
        })
    }

    fn apply_lease_revoke(&mut self, l: &LeaseRevokeRequest) -> Result<LeaseRevokeResponse> {
        let Some(lease) = self.leases.get(&l.id) else {
            return Err(StoreError::LeaseNotFound);
        };
        let ops: Vec<RequestOp> = lease
            .keys
            .iter()
            .map(|k| {
                op_delete(&DeleteRangeRequest {
                    key: k.clone(),
                    ..Default::default()
                })
            })
            .collect();
        if !ops.is_empty() {
            self.execute(&ops, self.current_rev + 1, &mut 0)?;
        }
        self.leases.remove(&l.id);
        self.batch.delete(keys::lease_key(l.id).to_vec());
        Ok(LeaseRevokeResponse {
            header: self.header(),
        })
    }

    fn apply_txn(&mut self, t: &TxnRequest) -> Result<TxnResponse> {
        check_txn(t)?;
        // Branches (including nested ones) are chosen against the state before the txn.
        let succeeded = self.compares_hold(&t.compare)?;
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut paths = Vec::new();
        self.choose_paths(ops, &mut paths)?;
        self.check_ops(ops, &paths, &mut 0)?;
        let responses = self.run_ops(ops, &paths)?;
        Ok(TxnResponse {
            header: self.header(),
            succeeded,
            responses,
        })
    }

    /// Answers a txn whose branches only read (ranges and nested read-only txns), as applying
    /// it would, without taking the state for writing; `InvalidArgument` if a branch writes.
    pub fn read_txn(&self, t: &TxnRequest) -> Result<TxnResponse> {
        check_txn(t)?;
        let succeeded = self.compares_hold(&t.compare)?;
        Ok(TxnResponse {
            header: self.header(),
            succeeded,
            responses: self.read_ops(if succeeded { &t.success } else { &t.failure })?,
        })
    }

    /// [`Mvcc::execute_with_paths`] for read-only ops: nested compares are evaluated as they
    /// come, since nothing before them writes.
    fn read_ops(&self, ops: &[RequestOp]) -> Result<Vec<ResponseOp>> {
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            let resp = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    response_op::Response::ResponseRange(self.range(r)?)
                }
                Some(request_op::Request::RequestTxn(t)) => {
                    let ok = self.compares_hold(&t.compare)?;
                    response_op::Response::ResponseTxn(TxnResponse {
                        header: Some(ResponseHeader::default()),
                        succeeded: ok,
                        responses: self.read_ops(if ok { &t.success } else { &t.failure })?,
                    })
                }
                Some(_) => {
                    return Err(StoreError::InvalidArgument(
                        "a read-only txn may not write".into(),
                    ));
                }
                None => return Err(StoreError::InvalidArgument("empty request op".into())),
            };
            out.push(ResponseOp {
                response: Some(resp),
            });
        }
        Ok(out)
    }

    fn apply_txn_ops(&mut self, ops: &[RequestOp]) -> Result<Vec<ResponseOp>> {
        self.check_ops(ops, &[], &mut 0)?;
        self.run_ops(ops, &[])
    }

    /// Evaluates nested txn compares depth-first, recording which branch each takes.
    fn choose_paths(&self, ops: &[RequestOp], paths: &mut Vec<bool>) -> Result<()> {
        for op in ops {
            if let Some(request_op::Request::RequestTxn(t)) = &op.request {
                let ok = self.compares_hold(&t.compare)?;
                paths.push(ok);
                self.choose_paths(if ok { &t.success } else { &t.failure }, paths)?;
            }
        }
        Ok(())
    }

    /// Everything that could fail in the ops about to run, checked before any of them writes
    /// (as etcd's `checkRequests`): an op failing halfway would leave the txn half applied.
    /// Ranges are checked against the revision before the txn, as etcd does.
    fn check_ops(&self, ops: &[RequestOp], paths: &[bool], path_idx: &mut usize) -> Result<()> {
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    self.check_rev(r.revision)?;
                }
                Some(request_op::Request::RequestPut(p)) => {
                    if p.lease != 0 && !self.leases.contains_key(&p.lease) {
                        return Err(StoreError::LeaseNotFound);
                    }
                    if (p.ignore_value || p.ignore_lease)
                        && !self.index.get(&p.key).is_some_and(|h| h.live())
                    {
                        return Err(StoreError::KeyNotFound);
                    }
                    if self.no_space() {
                        return Err(StoreError::NoSpace);
                    }
                }
                Some(request_op::Request::RequestTxn(t)) => {
                    let ok = paths.get(*path_idx).copied().unwrap_or(false);
                    *path_idx += 1;
                    self.check_ops(if ok { &t.success } else { &t.failure }, paths, path_idx)?;
                }
                Some(request_op::Request::RequestDeleteRange(_)) => {}
                None => return Err(StoreError::InvalidArgument("empty request op".into())),
            }
        }
        Ok(())
    }

    fn run_ops(&mut self, ops: &[RequestOp], paths: &[bool]) -> Result<Vec<ResponseOp>> {
        let mut sub = 0;
        let main = self.current_rev + 1;
        let mut path_idx = 0;
        let responses = self.execute_with_paths(ops, main, &mut sub, paths, &mut path_idx)?;
        if sub > 0 {
            self.set_current_rev(main);
        }
        Ok(responses)
    }

    fn execute(&mut self, ops: &[RequestOp], main: i64, sub: &mut i64) -> Result<Vec<ResponseOp>> {
        let out = self.execute_with_paths(ops, main, sub, &[], &mut 0)?;
        if *sub > 0 {
            self.set_current_rev(main);
        }
        Ok(out)
    }

    fn execute_with_paths(
        &mut self,
        ops: &[RequestOp],
        main: i64,
        sub: &mut i64,
        paths: &[bool],
        path_idx: &mut usize,
    ) -> Result<Vec<ResponseOp>> {
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            let resp = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    // Reads inside a txn see the txn's own earlier writes (and report the
                    // revision they read at).
                    let saved = self.current_rev;
                    if *sub > 0 {
                        self.current_rev = main;
                    }
                    let res = self.range(r);
                    self.current_rev = saved;
                    response_op::Response::ResponseRange(res?)
                }
                Some(request_op::Request::RequestPut(p)) => {
                    let mut r = self.put(p, main, sub)?;
                    r.header = revision_header(main);
                    response_op::Response::ResponsePut(r)
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    let mut r = self.delete_range(d, main, sub)?;
                    r.header = revision_header(if *sub > 0 { main } else { main - 1 });
                    response_op::Response::ResponseDeleteRange(r)
                }
                Some(request_op::Request::RequestTxn(t)) => {
                    let ok = paths.get(*path_idx).copied().unwrap_or(false);
                    *path_idx += 1;
                    let branch = if ok { &t.success } else { &t.failure };
                    let responses = self.execute_with_paths(branch, main, sub, paths, path_idx)?;
                    // etcd fills in only the outermost txn's header: a nested one has a
                    // header with revision 0.
                    response_op::Response::ResponseTxn(TxnResponse {
                        header: Some(ResponseHeader::default()),
                        succeeded: ok,
                        responses,
                    })
                }
                None => return Err(StoreError::InvalidArgument("empty request op".into())),
            };
            out.push(ResponseOp {
                response: Some(resp),
            });
        }
        Ok(out)
    }

    fn latest_kv(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        match self.index.get(key).and_then(|h| {
            if h.live() {
                h.revs.last().copied()
            } else {
                None
            }
        }) {
            Some(r) => Ok(Some(self.record(r.main, r.sub)?.1)),
            None => Ok(None),
        }
    }

    fn put(&mut self, p: &PutRequest, main: i64, sub: &mut i64) -> Result<PutResponse> {
        let prev = self.latest_kv(&p.key)?;
        let (create, version, old_lease) = match self.index.get(&p.key) {
            Some(h) if h.live() => (h.create, h.version + 1, h.lease),
            _ => (main, 1, 0),
        };
        let value = if p.ignore_value {
            prev.as_ref().map(|kv| kv.value.clone()).unwrap_or_default()
        } else {
            p.value.clone()
        };
        let lease = if p.ignore_lease { old_lease } else { p.lease };
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: create,
            mod_revision: main,
            version,
            value,
            lease,
        };
        self.put_record(main, *sub, KIND_PUT, &kv);
        let h = self.index.entry(p.key.clone()).or_default();
        h.revs.push(Rev {
            main,
            sub: *sub,
            tombstone: false,
        });
        h.create = create;
        h.version = version;
        h.lease = lease;
        *sub += 1;
        if old_lease != lease
            && let Some(l) = self.leases.get_mut(&old_lease)
        {
            l.keys.remove(&p.key);
        }
        if lease != 0
            && let Some(l) = self.leases.get_mut(&lease)
        {
            l.keys.insert(p.key.clone());
        }
        self.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: prev.clone(),
        });
        Ok(PutResponse {
            header: None,
            prev_kv: if p.prev_kv { prev } else { None },
        })
    }

    fn delete_range(
        &mut self,
        d: &DeleteRangeRequest,
        main: i64,
        sub: &mut i64,
    ) -> Result<DeleteRangeResponse> {
        let range = KeyRange::new(&d.key, &d.range_end);
        let victims: Vec<Vec<u8>> = self
            .keys_in(&range)
            .filter(|(_, h)| h.live())
            .map(|(k, _)| k.clone())
            .collect();
        let mut prev_kvs = Vec::new();
        for key in &victims {
            let prev = self
                .latest_kv(key)?
                .ok_or_else(|| StoreError::Internal("live key without record".into()))?;
            let tomb = KeyValue {
                key: key.clone(),
                mod_revision: main,
                ..Default::default()
            };
            self.put_record(main, *sub, KIND_DELETE, &tomb);
            let h = self.index.get_mut(key).expect("BUG: victim is indexed");
            h.revs.push(Rev {
                main,
                sub: *sub,
                tombstone: true,
            });
            let lease = std::mem::take(&mut h.lease);
            h.create = 0;
            h.version = 0;
            *sub += 1;
            if let Some(l) = self.leases.get_mut(&lease) {
                l.keys.remove(key);
            }
            self.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(tomb),
                prev_kv: Some(prev.clone()),
            });
            if d.prev_kv {
                prev_kvs.push(prev);
            }
        }
        Ok(DeleteRangeResponse {
            header: None,
            deleted: victims.len() as i64,
            prev_kvs,
        })
    }

    fn compares_hold(&self, cmps: &[Compare]) -> Result<bool> {
        for c in cmps {
            if !self.compare_holds(c)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn compare_holds(&self, c: &Compare) -> Result<bool> {
        use compare::{CompareResult, CompareTarget, TargetUnion};
        let (kvs, _) = self.range_at(
            &KeyRange::new(&c.key, &c.range_end),
            self.current_rev,
            0,
            false,
        )?;
        let target = CompareTarget::try_from(c.target)
            .map_err(|_| StoreError::InvalidArgument("unknown compare target".into()))?;
        let kvs = if kvs.is_empty() {
            if target == CompareTarget::Value {
                return Ok(false);
            }
            vec![KeyValue::default()]
        } else {
            kvs
        };
        let result = CompareResult::try_from(c.result)
            .map_err(|_| StoreError::InvalidArgument("unknown compare result".into()))?;
        for kv in &kvs {
            let ord = match (&c.target_union, target) {
                (Some(TargetUnion::Value(v)), CompareTarget::Value) => {
                    kv.value.as_slice().cmp(v.as_slice())
                }
                (Some(TargetUnion::Version(v)), CompareTarget::Version) => kv.version.cmp(v),
                (Some(TargetUnion::CreateRevision(v)), CompareTarget::Create) => {
                    kv.create_revision.cmp(v)
                }
                (Some(TargetUnion::ModRevision(v)), CompareTarget::Mod) => kv.mod_revision.cmp(v),
                (Some(TargetUnion::Lease(v)), CompareTarget::Lease) => kv.lease.cmp(v),
                // etcd compares against the zero value when the union does not match the target.
                (_, CompareTarget::Value) => kv.value.as_slice().cmp(&[][..]),
                (_, CompareTarget::Version) => kv.version.cmp(&0),
                (_, CompareTarget::Create) => kv.create_revision.cmp(&0),
                (_, CompareTarget::Mod) => kv.mod_revision.cmp(&0),
                (_, CompareTarget::Lease) => kv.lease.cmp(&0),
            };
            let ok = match result {
                CompareResult::Equal => ord.is_eq(),
                CompareResult::NotEqual => ord.is_ne(),
                CompareResult::Greater => ord.is_gt(),
                CompareResult::Less => ord.is_lt(),
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A crc32 over every record up to revision `rev` (0 = current), and the revision it covers;
    /// equal on every member that applied the same log.
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64)> {
        let at = if rev <= 0 {
            self.current_rev
        } else {
            self.check_rev(rev)?
        };
        let mut h = crc32fast::Hasher::new();
        let end = keys::rev_key(at + 1, 0);
        let mut err = None;
        self.backend.for_each(b"r", &end, &mut |k, v| {
            if let Some((main, sub)) = keys::parse_rev_key(k)
                && main <= self.compact_rev
            {
                match decode_record(v) {
                    Ok((_, kv)) if !self.kept(&kv.key, main, sub) => return true,
                    // Kept for watches since etcd's fix for issue 18089, but left out of the
                    // hash as etcd leaves it, so members of builds before and after agree.
                    Ok((true, _)) if main == self.compact_rev => return true,
                    Ok(_) => {}
                    Err(e) => {
                        err = Some(e);
                        return false;
                    }
                }
            }
            h.update(k);
            h.update(v);
            true
        })?;
        match err {
            Some(e) => Err(e),
            None => Ok((h.finalize(), at)),
        }
    }

    /// Whether the record of `key` at `(main, sub)` survived compaction: those at or below the
    /// compaction point may still be on disk while a dump runs ([`Mvcc::pin`]).
    fn kept(&self, key: &[u8], main: i64, sub: i64) -> bool {
        main > self.compact_rev
            || self
                .index
                .get(key)
                .is_some_and(|h| h.revs.iter().any(|r| r.main == main && r.sub == sub))
    }
}

/// A header at `revision`, as the operations inside a txn carry: etcd gives each the
/// revision the txn had reached when it ran (the one before the txn until its first change,
/// the txn's own after it).
fn revision_header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

fn op_put(p: &PutRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(p.clone())),
    }
}

fn op_delete(d: &DeleteRangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(d.clone())),
    }
}

/// Validates a request before it is proposed, as etcd's gRPC layer does: empty keys, ignore
/// flags, op counts and duplicate keys.
pub fn check_txn(t: &TxnRequest) -> Result<()> {
    if t.compare.len() > MAX_TXN_OPS
        || t.success.len() > MAX_TXN_OPS
        || t.failure.len() > MAX_TXN_OPS
    {
        return Err(StoreError::TooManyOps);
    }
    for c in &t.compare {
        if c.key.is_empty() {
            return Err(StoreError::EmptyKey);
        }
    }
    for op in t.success.iter().chain(&t.failure) {
        check_op(op)?;
    }
    check_intervals(&t.success)?;
    check_intervals(&t.failure)?;
    Ok(())
}

fn check_op(op: &RequestOp) -> Result<()> {
    match &op.request {
        Some(request_op::Request::RequestRange(r)) => check_key(&r.key),
        Some(request_op::Request::RequestPut(p)) => check_put(p),
        Some(request_op::Request::RequestDeleteRange(d)) => check_key(&d.key),
        Some(request_op::Request::RequestTxn(t)) => check_txn(t),
        None => Ok(()),
    }
}

/// The key must not be empty.
pub fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        Err(StoreError::EmptyKey)
    } else {
        Ok(())
    }
}

/// Put's own checks: key present, and no value/lease alongside the matching ignore flag.
pub fn check_put(p: &PutRequest) -> Result<()> {
    check_key(&p.key)?;
    if p.ignore_value && !p.value.is_empty() {
        return Err(StoreError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(StoreError::LeaseProvided);
    }
    Ok(())
}

struct Interval {
    key: Vec<u8>,
    end: Vec<u8>,
}

impl Interval {
    fn contains(&self, k: &[u8]) -> bool {
        KeyRange::new(&self.key, &self.end).contains(k)
    }
}

/// etcd's `checkIntervals`: within one branch, a key may be written once (puts in the two
/// branches of a nested txn may repeat, since only one runs) and not both put and deleted.
fn check_intervals(ops: &[RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<Interval>)> {
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => Some(Interval {
                key: d.key.clone(),
                end: d.range_end.clone(),
            }),
            _ => None,
        })
        .collect();
    let mut puts = BTreeSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
                return Err(StoreError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            if puts.contains(&k) && !puts_then.contains(&k) || dels.iter().any(|d| d.contains(&k)) {
                return Err(StoreError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || dels.iter().any(|d| d.contains(&p.key)) {
            return Err(StoreError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}
