//! An in-memory stand-in for the store's KV service, for unit tests of what the registry reads
//! and writes: single keys with revisions, and transactions whose comparisons are equalities
//! (the only ones the apiserver sends). It counts the reads it serves.

use std::collections::BTreeMap;
use std::sync::Arc;

use keelson_etcdpb::etcdserverpb::{self as pb, compare, kv_server, request_op, response_op};
use keelson_etcdpb::mvccpb::KeyValue;
use parking_lot::Mutex;
use tonic::{Request, Response, Status};

#[derive(Default)]
struct State {
    rev: i64,
    keys: BTreeMap<Vec<u8>, KeyValue>,
    reads: u64,
    /// Transactions still to apply and then answer as a connection that broke would.
    lose_answers: usize,
}

impl State {
    fn holds(&self, c: &pb::Compare) -> Result<bool, Status> {
        if c.result != compare::CompareResult::Equal as i32 || !c.range_end.is_empty() {
            return Err(Status::unimplemented("only equality on one key"));
        }
        let kv = self.keys.get(&c.key);
        let field = |f: fn(&KeyValue) -> i64| kv.map_or(0, f);
        Ok(match c.target_union {
            Some(compare::TargetUnion::ModRevision(r)) => field(|k| k.mod_revision) == r,
            Some(compare::TargetUnion::CreateRevision(r)) => field(|k| k.create_revision) == r,
            Some(compare::TargetUnion::Version(v)) => field(|k| k.version) == v,
            _ => return Err(Status::unimplemented("comparison")),
        })
    }

    /// Writes `key` at revision `rev`.
    fn write(&mut self, key: &[u8], value: Vec<u8>, rev: i64) {
        let (create_revision, version) = self
            .keys
            .get(key)
            .map_or((rev, 1), |k| (k.create_revision, k.version + 1));
        self.keys.insert(
            key.to_vec(),
            KeyValue {
                key: key.to_vec(),
                create_revision,
                mod_revision: rev,
                version,
                value,
                lease: 0,
            },
        );
    }
}

/// The fake store; clones share it.
#[derive(Clone, Default)]
pub struct FakeKv(Arc<Mutex<State>>);

impl FakeKv {
    /// Serves the KV service on a free loopback port, returning its URL.
    pub async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tonic::transport::Server::builder()
            .add_service(kv_server::KvServer::new(self.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        url
    }

    /// Writes `key` as another writer would; returns the new revision.
    pub fn put(&self, key: &[u8], value: Vec<u8>) -> i64 {
        let mut st = self.0.lock();
        st.rev += 1;
        let rev = st.rev;
        st.write(key, value, rev);
        rev
    }

    /// Deletes `key` as another writer would.
    pub fn delete(&self, key: &[u8]) {
        let mut st = self.0.lock();
        if st.keys.remove(key).is_some() {
            st.rev += 1;
        }
    }

    /// The stored value of `key` and its revision.
    pub fn get(&self, key: &[u8]) -> Option<(Vec<u8>, i64)> {
        let st = self.0.lock();
        st.keys.get(key).map(|k| (k.value.clone(), k.mod_revision))
    }

    /// How many reads (ranges, also inside transactions) were served.
    pub fn reads(&self) -> u64 {
        self.0.lock().reads
    }

    /// The next `n` transactions are applied, then answered with the error a connection that
    /// broke before the answer gives (`Unavailable`): the client cannot know they were applied.
    pub fn lose_answers(&self, n: usize) {
        self.0.lock().lose_answers = n;
    }

    /// The keys stored under `prefix`.
    pub fn keys_under(&self, prefix: &[u8]) -> Vec<Vec<u8>> {
        let st = self.0.lock();
        st.keys
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }
}

fn header(revision: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        revision,
        ..Default::default()
    })
}

#[tonic::async_trait]
impl kv_server::Kv for FakeKv {
    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let req = req.into_inner();
        if !req.range_end.is_empty() {
            return Err(Status::unimplemented("ranges of more than one key"));
        }
        let mut st = self.0.lock();
        st.reads += 1;
        let kvs: Vec<KeyValue> = st.keys.get(&req.key).cloned().into_iter().collect();
        Ok(Response::new(pb::RangeResponse {
            header: header(st.rev),
            count: kvs.len() as i64,
            kvs,
            more: false,
        }))
    }

    async fn put(&self, _: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        Err(Status::unimplemented("put outside a transaction"))
    }

    async fn delete_range(
        &self,
        _: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        Err(Status::unimplemented("delete outside a transaction"))
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let req = req.into_inner();
        let mut st = self.0.lock();
        let mut succeeded = true;
        for c in &req.compare {
            succeeded &= st.holds(c)?;
        }
        let rev = st.rev + 1;
        let mut wrote = false;
        let mut responses = Vec::new();
        for op in if succeeded {
            &req.success
        } else {
            &req.failure
        } {
            let response = match &op.request {
                Some(request_op::Request::RequestPut(p)) => {
                    st.write(&p.key, p.value.clone(), rev);
                    wrote = true;
                    response_op::Response::ResponsePut(pb::PutResponse::default())
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    let deleted = i64::from(st.keys.remove(&d.key).is_some());
                    wrote |= deleted > 0;
                    response_op::Response::ResponseDeleteRange(pb::DeleteRangeResponse {
                        deleted,
                        ..Default::default()
                    })
                }
                Some(request_op::Request::RequestRange(r)) => {
                    st.reads += 1;
                    let kvs: Vec<KeyValue> = st.keys.get(&r.key).cloned().into_iter().collect();
                    response_op::Response::ResponseRange(pb::RangeResponse {
                        count: kvs.len() as i64,
                        kvs,
                        ..Default::default()
                    })
                }
                _ => return Err(Status::unimplemented("operation")),
            };
            responses.push(pb::ResponseOp {
                response: Some(response),
            });
        }
        if wrote {
            st.rev = rev;
        }
        if st.lose_answers > 0 {
            st.lose_answers -= 1;
            return Err(Status::unavailable("error reading a body from connection"));
        }
        Ok(Response::new(pb::TxnResponse {
            header: header(st.rev),
            succeeded,
            responses,
        }))
    }

    async fn compact(
        &self,
        _: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        Err(Status::unimplemented("compaction"))
    }
}
