//! Store errors, and their one mapping onto etcd's gRPC codes and messages.
//!
//! etcd clients branch on both the gRPC code and the exact message (`rpctypes` in etcd's Go
//! client turns the message back into a typed error), so every variant below reproduces etcd's
//! text verbatim.

use tonic::{Code, Status};

/// Everything the store can refuse or fail with. Each variant is documented by its message.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: member ID already exist")]
    MemberExist,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    MemberNotEnoughStarted,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: request timed out")]
    Timeout,
    /// A write that found no leader to propose to within the request timeout: etcd answers
    /// with its request context's error (code Unknown).
    #[error("context deadline exceeded")]
    DeadlineExceeded,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// The request is well formed but asks for something this store does not do.
    #[error("{0}")]
    InvalidArgument(String),
    /// A local failure (disk, encoding): the message says which step failed.
    #[error("etcdserver: internal error: {0}")]
    Internal(String),
}

impl StoreError {
    /// The stable number used when a deterministic apply-time error crosses Raft (see
    /// `InternalResponse.error`); only the variants an apply can produce are listed.
    pub fn apply_code(&self) -> u32 {
        match self {
            StoreError::KeyNotFound => 1,
            StoreError::Compacted => 2,
            StoreError::FutureRev => 3,
            StoreError::NoSpace => 4,
            StoreError::LeaseNotFound => 5,
            StoreError::LeaseExist => 6,
            StoreError::LeaseTtlTooLarge => 7,
            StoreError::MemberExist => 8,
            StoreError::MemberNotFound => 9,
            StoreError::EmptyKey => 10,
            StoreError::DuplicateKey => 11,
            StoreError::TooManyOps => 12,
            StoreError::RootUserNotExist => 13,
            StoreError::RootRoleNotExist => 14,
            StoreError::UserAlreadyExist => 15,
            StoreError::UserEmpty => 16,
            StoreError::UserNotFound => 17,
            StoreError::RoleAlreadyExist => 18,
            StoreError::RoleNotFound => 19,
            StoreError::RoleEmpty => 20,
            StoreError::RoleNotGranted => 21,
            StoreError::PermissionNotGranted => 22,
            StoreError::PermissionNotGiven => 23,
            StoreError::InvalidAuthMgmt => 24,
            StoreError::AuthOldRevision => 25,
            StoreError::PermissionDenied => 26,
            StoreError::AuthFailed => 27,
            _ => 0,
        }
    }

    /// Inverse of [`StoreError::apply_code`].
    pub fn from_apply_code(code: u32) -> StoreError {
        match code {
            1 => StoreError::KeyNotFound,
            2 => StoreError::Compacted,
            3 => StoreError::FutureRev,
            4 => StoreError::NoSpace,
            5 => StoreError::LeaseNotFound,
            6 => StoreError::LeaseExist,
            7 => StoreError::LeaseTtlTooLarge,
            8 => StoreError::MemberExist,
            9 => StoreError::MemberNotFound,
            10 => StoreError::EmptyKey,
            11 => StoreError::DuplicateKey,
            12 => StoreError::TooManyOps,
            13 => StoreError::RootUserNotExist,
            14 => StoreError::RootRoleNotExist,
            15 => StoreError::UserAlreadyExist,
            16 => StoreError::UserEmpty,
            17 => StoreError::UserNotFound,
            18 => StoreError::RoleAlreadyExist,
            19 => StoreError::RoleNotFound,
            20 => StoreError::RoleEmpty,
            21 => StoreError::RoleNotGranted,
            22 => StoreError::PermissionNotGranted,
            23 => StoreError::PermissionNotGiven,
            24 => StoreError::InvalidAuthMgmt,
            25 => StoreError::AuthOldRevision,
            26 => StoreError::PermissionDenied,
            27 => StoreError::AuthFailed,
            other => StoreError::Internal(format!("unknown apply error code {other}")),
        }
    }

    /// The gRPC code etcd uses for this error.
    pub fn code(&self) -> Code {
        use StoreError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | MemberBadUrls | RequestTooLarge | UserEmpty | RoleEmpty | AuthFailed
            | PermissionNotGiven | InvalidAuthMgmt | AuthOldRevision | InvalidArgument(_) => {
                Code::InvalidArgument
            }
            Compacted | FutureRev | LeaseTtlTooLarge => Code::OutOfRange,
            NoSpace => Code::ResourceExhausted,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            LeaseExist
            | MemberExist
            | PeerUrlExist
            | MemberNotEnoughStarted
            | MemberNotLearner
            | LearnerNotReady
            | TooManyLearners
            | NotLeader
            | BadLeaderTransferee
            | RootUserNotExist
            | RootRoleNotExist
            | UserAlreadyExist
            | UserNotFound
            | RoleAlreadyExist
            | RoleNotFound
            | RoleNotGranted
            | PermissionNotGranted
            | AuthNotEnabled => Code::FailedPrecondition,
            InvalidAuthToken => Code::Unauthenticated,
            NoLeader | Timeout | LeaderChanged | LeaderTransferTimeout | Stopped | Unhealthy => {
                Code::Unavailable
            }
            Corrupt => Code::DataLoss,
            PermissionDenied => Code::PermissionDenied,
            Internal(_) => Code::Internal,
            DeadlineExceeded => Code::Unknown,
        }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

impl From<crate::backend::BackendError> for StoreError {
    fn from(e: crate::backend::BackendError) -> StoreError {
        StoreError::Internal(e.to_string())
    }
}

/// Result with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
