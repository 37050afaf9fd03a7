//! peer transport
