//! `etcdserverpb.Maintenance`: Status, Alarm, Hash, HashKV, Snapshot, Defragment.

use std::io::Read;
use std::pin::Pin;

use futures::Stream;
use keelson_etcdpb::etcdserverpb::alarm_request::AlarmAction;
use keelson_etcdpb::etcdserverpb::maintenance_server::Maintenance;
use keelson_etcdpb::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::Need;
use crate::error::StoreError;
use crate::etcd::auth::authorize;
use crate::raft::pb::InternalRequest;
use crate::raft::pb::internal_request::Request as Rq;
use crate::raft::pb::internal_response::Response as Rs;
use crate::raft::snapshot;
use crate::server::node::Node;
use crate::server::quota::Quota;

/// The etcd version we report: clients gate features on it, and we implement the 3.5 API.
pub const ETCD_VERSION: &str = "3.5.17";
/// The storage version field of 3.5-era Status responses.
pub const STORAGE_VERSION: &str = "3.5.0";

/// The Maintenance service.
#[derive(Debug, Clone)]
pub struct MaintenanceService {
    node: Node,
    quota: Quota,
}

impl MaintenanceService {
    /// The service for `node`.
    pub fn new(node: Node, quota: Quota) -> MaintenanceService {
        MaintenanceService { node, quota }
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

/// Size of each Snapshot stream message, as etcd (32 KiB).
const SNAPSHOT_CHUNK: usize = 32 * 1024;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        if req.get_ref().action != AlarmAction::Get as i32 {
            authorize(&self.node, &req, &[Need::Admin])?;
        }
        let a = req.into_inner();
        if a.action == AlarmAction::Get as i32 {
            let alarms = self
                .node
                .shared()
                .mvcc
                .read()
                .alarms()
                .iter()
                .filter(|(m, t)| {
                    (a.member_id == 0 || *m == a.member_id)
                        && (a.alarm == AlarmType::None as i32 || *t == a.alarm)
                })
                .map(|(m, t)| AlarmMember {
                    member_id: *m,
                    alarm: *t,
                })
                .collect();
            return Ok(Response::new(AlarmResponse {
                header: self.node.current_header(),
                alarms,
            }));
        }
        match self
            .node
            .propose(InternalRequest {
                request: Some(Rq::Alarm(a)),
                ..Default::default()
            })
            .await?
        {
            Rs::Alarm(mut r) => {
                r.header = self.node.current_header();
                Ok(Response::new(r))
            }
            _ => Err(StoreError::Internal("unexpected response to alarm".into()).into()),
        }
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let m = self.node.raft().metrics().borrow().clone();
        let ((db_size, db_size_in_use), errors) = {
            let mvcc = self.node.shared().mvcc.read();
            let errors = mvcc
                .alarms()
                .iter()
                .map(|(member, t)| {
                    let name = AlarmType::try_from(*t)
                        .map(|a| a.as_str_name())
                        .unwrap_or("UNKNOWN");
                    format!("memberID:{member} alarm:{name} ")
                })
                .collect();
            (
                (
                    mvcc.backend().size_bytes() as i64,
                    mvcc.backend().size_in_use() as i64,
                ),
                errors,
            )
        };
        let learner = self
            .node
            .members()
            .get(&self.node.id())
            .map(|(_, l)| *l)
            .unwrap_or(false);
        Ok(Response::new(StatusResponse {
            header: self.node.current_header(),
            version: ETCD_VERSION.to_string(),
            db_size,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            errors,
            db_size_in_use,
            is_learner: learner,
            storage_version: STORAGE_VERSION.to_string(),
            db_size_quota: self.quota.bytes() as i64,
            downgrade_info: None,
        }))
    }

    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        authorize(&self.node, &req, &[Need::Admin])?;
        // sled reclaims space itself (log-structured segments are rewritten in the background);
        // a flush makes the reported size current. An fsync: off the runtime's threads and
        // outside the state's lock.
        let backend = self.node.shared().mvcc.read().backend().clone();
        tokio::task::spawn_blocking(move || backend.flush())
            .await
            .map_err(|e| StoreError::Internal(format!("defragment: {e}")))?
            .map_err(StoreError::from)?;
        Ok(Response::new(DefragmentResponse {
            header: self.node.current_header(),
        }))
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        authorize(&self.node, &req, &[Need::Admin])?;
        let (hash, _) = self.node.shared().mvcc.read().hash_kv(0)?;
        Ok(Response::new(HashResponse {
            header: self.node.current_header(),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        authorize(&self.node, &req, &[Need::Admin])?;
        let m = self.node.shared().mvcc.read();
        let (hash, rev) = m.hash_kv(req.get_ref().revision)?;
        Ok(Response::new(HashKvResponse {
            header: self.node.header(m.current_revision()),
            hash,
            compact_revision: m.compact_revision(),
            hash_revision: rev,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        authorize(&self.node, &req, &[Need::Admin])?;
        // A consistent dump of the state (written to a file without holding the state's
        // lock), followed (like etcd) by its sha256 so a reader can verify it arrived whole.
        let shared = self.node.shared().clone();
        let (path, dumped) =
            tokio::task::spawn_blocking(move || snapshot::dump_to_file(&shared, &shared.snapshots))
                .await
                .map_err(|e| StoreError::Internal(format!("snapshot: {e}")))?
                .map_err(|e| StoreError::Internal(format!("snapshot: {e}")))?;
        let header = self.node.header(dumped.revision);
        // etcdctl expects the body in 512-byte pages (bbolt's) before the checksum; the padding
        // is ignored when the dump is read back.
        let padded = dumped.size.div_ceil(512) * 512;
        let total = padded + 32;
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let send = |blob: Vec<u8>, sent: u64| {
                tx.blocking_send(Ok(SnapshotResponse {
                    header,
                    remaining_bytes: total - sent,
                    blob,
                    version: STORAGE_VERSION.to_string(),
                }))
                .is_ok()
            };
            let result = (|| -> std::io::Result<()> {
                let mut file = std::fs::File::open(&path)?;
                let mut digest = Sha256::new();
                let mut sent = 0u64;
                while sent < padded {
                    let want = (padded - sent).min(SNAPSHOT_CHUNK as u64) as usize;
                    let mut chunk = vec![0u8; want];
                    let mut got = 0;
                    while got < want {
                        match file.read(&mut chunk[got..])? {
                            0 => break,
                            n => got += n,
                        }
                    }
                    // Past the end of the dump: the zero padding.
                    digest.update(&chunk);
                    sent += want as u64;
                    if !send(chunk, sent) {
                        return Ok(());
                    }
                }
                send(digest.finalize().to_vec(), total);
                Ok(())
            })();
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(Status::internal(format!("snapshot: {e}"))));
            }
            let _ = std::fs::remove_file(&path);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        authorize(&self.node, &req, &[Need::Admin])?;
        self.node.move_leader(req.into_inner().target_id).await?;
        // etcd's answer carries no header.
        Ok(Response::new(MoveLeaderResponse { header: None }))
    }

    async fn downgrade(
        &self,
        _req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: cluster version downgrade is not supported by keelson-store",
        ))
    }
}
