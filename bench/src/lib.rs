//! Benchmarks and load generators: `keelson-bench api` (see `src/main.rs`).
