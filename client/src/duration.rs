//! Go-style durations (`15s`, `1m30s`, `500ms`) as the upstream components' flags take them.

pub use keelson_duration::parse_go_duration;
