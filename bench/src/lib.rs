//! Keelson's benchmarks and load generators. The `keelson-bench` binary (`src/main.rs`) holds
//! the micro and component benchmarks; the library holds what `keelson bench` shares with it:
//! the scale runs (density and load, ClusterLoader2's methodology on hollow nodes), starting a
//! cluster, and reading processes from `/proc`.

pub mod cluster;
pub mod procs;
pub mod scale;
pub mod webhook_server;
