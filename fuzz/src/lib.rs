//! The checks behind the fuzz targets.
//!
//! # Layout
//! - [`protocol_checks`]: request line parser, capped line reader under arbitrary
//!   chunking, reply parser.
//! - [`extended_checks`]: the extended request line and the LIST reply.
//! - [`resume_checks`]: the RESUME line, the resumable replies and the frames after them.
//! - [`config_checks`]: the proxy's config parser on arbitrary UTF-8.
//! - [`proxy_header_checks`]: the PROXY protocol v1/v2 header decoder on arbitrary bytes.
//!
//! These files are also compiled into stable regression tests
//! (`crates/tunnel/tests/fuzz_corpus.rs`, `crates/proxy/tests/fuzz_corpus.rs`) through
//! `#[path]`, so CI replays the committed corpus through exactly these checks.

pub mod config_checks;
pub mod extended_checks;
pub mod protocol_checks;
pub mod proxy_header_checks;
pub mod resume_checks;
