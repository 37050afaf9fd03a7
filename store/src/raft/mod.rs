//! Raft: openraft's type configuration, the sled log store, the state machine wrapper around
//! [`Mvcc`](crate::mvcc::Mvcc), and the gRPC peer transport.
//!
//! A log entry carries a [`pb::Batch`] of etcd requests: concurrent client writes are grouped
//! by the proposer in [`Node`](crate::server::node::Node) so that many of them share one append and one
//! fsync.

// openraft fixes the storage error type (`StorageError`, ~224 bytes); boxing it would fight the
// trait signatures.
#![allow(clippy::result_large_err)]

pub mod log_store;
pub mod network;
pub mod snapshot;
pub mod state_machine;

use openraft::{AnyError, StorageError, StorageIOError};
use prost::Message;
use serde::{Deserialize, Serialize};

/// The peer protocol and the replicated request types.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("keelson.raft");
}

/// Identifies a member: etcd's 64-bit member ID.
pub type NodeId = u64;

/// What Raft knows about a member: its name and peer URLs (client URLs are published through
/// the log once the member starts, see `MemberAttributes`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member's `--name` (empty until it has started, for members added with MemberAdd).
    pub name: String,
    /// `--initial-advertise-peer-urls`.
    pub peer_urls: Vec<String>,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.name, self.peer_urls.join(","))
    }
}

/// A protobuf message carried through openraft's serde bounds as its encoded bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pb<T>(pub T);

impl<T: Message> Serialize for Pb<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0.encode_to_vec())
    }
}

impl<'de, T: Message + Default> Deserialize<'de> for Pb<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<T: Message + Default> serde::de::Visitor<'_> for V<T> {
            type Value = Pb<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("protobuf bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Pb<T>, E> {
                T::decode(v).map(Pb).map_err(E::custom)
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Pb<T>, E> {
                self.visit_bytes(&v)
            }
        }
        d.deserialize_bytes(V(std::marker::PhantomData))
    }
}

/// bincode's bytes for `v`, as `bincode::serialize` makes them, without its sizing pass (which
/// would encode every protobuf payload twice).
pub fn to_bincode<T: Serialize>(v: &T) -> bincode::Result<Vec<u8>> {
    let mut out = Vec::new();
    bincode::serialize_into(&mut out, v)?;
    Ok(out)
}

/// A log entry's payload.
pub type Request = Pb<pb::Batch>;
/// What applying a payload returns: one response per request.
pub type Response = Pb<pb::BatchResponse>;

openraft::declare_raft_types!(
    /// Keelson's Raft types.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = snapshot::SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The openraft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<NodeId>;
/// A stored membership.
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;

/// A storage error for openraft, from anything displayable.
pub(crate) fn storage_error(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write(AnyError::error(e.to_string())).into()
}

/// A read-side storage error for openraft.
pub(crate) fn storage_read_error(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read(AnyError::error(e.to_string())).into()
}

#[cfg(test)]
mod tests;
