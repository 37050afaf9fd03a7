//! How the state machine lays its records out in the [`Backend`](crate::backend::Backend).
//!
//! | prefix | key                         | value                                  |
//! |--------|-----------------------------|----------------------------------------|
//! | `r`    | main rev (8, BE) + sub (8)  | kind byte (0 put, 1 delete) + `mvccpb.KeyValue` |
//! | `l`    | lease id (8, BE)            | granted TTL seconds (8, BE)            |
//! | `a`    | member id (8, BE)           | `MemberAttributes` protobuf            |
//! | `A`    | member id (8) + alarm (4)   | empty                                  |
//! | `m`    | name                        | metadata (current/compacted revision, raft state) |

/// Record kind byte: a put.
pub const KIND_PUT: u8 = 0;
/// Record kind byte: a delete (tombstone).
pub const KIND_DELETE: u8 = 1;

/// Key of the record written at revision `(main, sub)`.
pub fn rev_key(main: i64, sub: i64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b'r';
    k[1..9].copy_from_slice(&(main as u64).to_be_bytes());
    k[9..17].copy_from_slice(&(sub as u64).to_be_bytes());
    k
}

/// `(main, sub)` of a record key.
pub fn parse_rev_key(k: &[u8]) -> Option<(i64, i64)> {
    if k.len() != 17 || k[0] != b'r' {
        return None;
    }
    let main = u64::from_be_bytes(k[1..9].try_into().ok()?) as i64;
    let sub = u64::from_be_bytes(k[9..17].try_into().ok()?) as i64;
    Some((main, sub))
}

/// Key of a lease record.
pub fn lease_key(id: i64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'l';
    k[1..].copy_from_slice(&(id as u64).to_be_bytes());
    k
}

/// Key of a member's published attributes.
pub fn member_key(id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'a';
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

/// Key of an active alarm.
pub fn alarm_key(member: u64, alarm: i32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = b'A';
    k[1..9].copy_from_slice(&member.to_be_bytes());
    k[9..].copy_from_slice(&alarm.to_be_bytes());
    k
}

/// Key of a metadata entry.
pub fn meta_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(b'm');
    k.extend_from_slice(name.as_bytes());
    k
}
