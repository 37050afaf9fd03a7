//! The scheduler: scheduling queue, cache, the plugin framework and one module per upstream plugin.
//!
//! Nothing is implemented here yet: this crate is built by the scheduler issue.
