//! Resource quota accounting, shared by the apiserver's ResourceQuota admission plugin and the
//! resource quota controller so that both charge exactly the same: what an object uses in
//! quota terms ([`usage`]), which quotas an object falls under ([`scope`]), and the exact
//! quantity arithmetic both need ([`quantity`]).

pub mod quantity;
pub mod scope;
pub mod usage;

pub use usage::Usage;
