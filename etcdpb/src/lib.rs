//! etcd's v3 API as Rust types: messages, gRPC clients and gRPC server traits.
//!
//! The protos under `proto/` carry etcd's package, message and field names and numbers unchanged,
//! so these stubs interoperate with `etcdctl`, the Go client and the `etcd-client` crate. They are
//! compiled by `build.rs` with protox, so a fresh machine needs nothing but cargo.
//!
//! Both keelson-store (server side) and the apiserver (client side) use this crate; it holds no
//! logic of its own beyond [`prefix_end`], the API's convention for prefix ranges.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `mvccpb`: KeyValue and Event.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// `authpb`: users, roles and permissions.
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// `etcdserverpb`: the KV, Watch, Lease, Cluster, Maintenance and Auth services.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// `v3lockpb`: the Lock concurrency service.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// `v3electionpb`: the Election concurrency service.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// The `range_end` that makes a range cover every key starting with `prefix` (etcd's
/// `clientv3.GetPrefixRangeEnd`: the prefix with its last byte below 0xff incremented, or `\0`,
/// every key, when there is none).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
