//! Benchmarks and load generators (`keelson-bench store` comes with the store issue).
