//! `--quota-backend-bytes`: writes that would grow the database past the quota raise the
//! NOSPACE alarm (through Raft, so every member refuses writes) and fail with
//! "database space exceeded", as in etcd. Reads, deletes and compaction still work, so an
//! operator can free space and disarm the alarm.
//!
//! etcd measures bbolt's file; keelson-store measures the bytes its state holds (keys and
//! values of the state tree, what `Status.dbSizeInUse` reports), because sled's size on disk
//! also counts the raft log and segments it has not reclaimed yet. A compaction therefore frees
//! quota at once; a defragment is not needed before disarming.

use keelson_etcdpb::etcdserverpb::alarm_request::AlarmAction;
use keelson_etcdpb::etcdserverpb::{AlarmRequest, AlarmType};

use super::node::Node;
use crate::error::{Result, StoreError};
use crate::raft::pb::{InternalRequest, internal_request};

/// etcd's default quota (2 GiB), used when the flag is 0.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;

/// The backend quota.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    bytes: u64,
}

impl Quota {
    /// A quota of `bytes` (0 = etcd's default).
    pub fn new(bytes: u64) -> Quota {
        Quota {
            bytes: if bytes == 0 {
                DEFAULT_QUOTA_BYTES
            } else {
                bytes
            },
        }
    }

    /// The limit in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Refuses a write of `cost` bytes that does not fit, raising the alarm.
    pub async fn check(&self, node: &Node, cost: usize) -> Result<()> {
        let (size, armed) = {
            let m = node.shared().mvcc.read();
            (m.backend().size_in_use(), m.no_space())
        };
        if armed {
            return Err(StoreError::NoSpace);
        }
        if size.saturating_add(cost as u64) <= self.bytes {
            return Ok(());
        }
        let alarm = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: node.id(),
            alarm: AlarmType::Nospace as i32,
        };
        if let Err(e) = node
            .propose(InternalRequest {
                request: Some(internal_request::Request::Alarm(alarm)),
                ..Default::default()
            })
            .await
        {
            tracing::warn!(error = %e, "raising the NOSPACE alarm failed");
        } else {
            tracing::warn!(
                size,
                quota = self.bytes,
                "database space exceeded; NOSPACE alarm raised"
            );
        }
        Err(StoreError::NoSpace)
    }
}
