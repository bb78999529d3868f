//! The fuzz targets' checks, shared with `tests/fuzz_corpus.rs` (which includes `checks.rs`
//! by path) so that every seed and every saved crash is replayed by `cargo test`.
#![forbid(unsafe_code)]

pub mod checks;
