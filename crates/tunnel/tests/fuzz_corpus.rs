//! Replays the committed fuzz corpora (`fuzz/corpus/request_parser`,
//! `fuzz/corpus/response_parser`, `fuzz/corpus/extended_request`, `fuzz/corpus/resume_handshake`) through the very checks the fuzz targets run, on
//! stable, so CI catches a regression the fuzzer once explored.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../../../fuzz/src/protocol_checks.rs"]
mod protocol_checks;

#[path = "../../../fuzz/src/extended_checks.rs"]
mod extended_checks;

#[path = "../../../fuzz/src/resume_checks.rs"]
mod resume_checks;

use std::fs;
use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (the corpus is committed)", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let data = fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "{} holds only {} inputs",
        dir.display(),
        files.len()
    );
    files
}

fn replay(target: &str, check: fn(&[u8])) {
    for (path, data) in corpus(target) {
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails its check", path.display());
    }
}

#[test]
fn request_parser_corpus() {
    replay("request_parser", protocol_checks::check_request);
}

#[test]
fn extended_request_corpus() {
    replay("extended_request", extended_checks::check_extended);
}

#[test]
fn resume_handshake_corpus() {
    replay("resume_handshake", resume_checks::check_resume);
}

#[test]
fn response_parser_corpus() {
    replay("response_parser", protocol_checks::check_response);
}

#[test]
fn hand_written_edge_cases() {
    // A few inputs worth keeping even if the minimised corpus drops them.
    for line in [
        &b"REQUEST_TUNNEL 9223372036854775807\n"[..],
        b"REQUEST_TUNNEL 9223372036854775808\n",
        b"REQUEST_TUNNEL 00000000000000000000000000042\r\n",
        b"REQUEST_TUNNEL \x0b\x0c7\t\r\n",
        b"REQUEST_TUNNEL -0\n",
        b"REQUEST_TUNNEL \xd9\xa1\n",
        b"",
    ] {
        protocol_checks::check_parse_request(line);
        protocol_checks::check_response(line);
    }
    // read_line: cap 0, 1 and the real cap, over 1-byte buffers.
    for prefix in [[80u8, 0, 1], [1, 0, 2], [0, 0, 3]] {
        for payload in [&b""[..], b"\n", b"x", b"REQUEST_TUNNEL 1\nSSH-2.0-x\r\n"] {
            let mut data = prefix.to_vec();
            data.extend_from_slice(payload);
            protocol_checks::check_read_line(&data);
        }
    }
}
