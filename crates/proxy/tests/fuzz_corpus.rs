//! Replays the committed `fuzz/corpus/config_parser` and `fuzz/corpus/proxy_header`
//! inputs through the checks the `config_parser` and `proxy_header` fuzz targets run,
//! on stable.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../../../fuzz/src/config_checks.rs"]
mod config_checks;
#[path = "../../../fuzz/src/proxy_header_checks.rs"]
mod proxy_header_checks;

use std::fs;
use std::path::{Path, PathBuf};

/// The committed corpus of fuzz target `target`, sorted; at least 10 inputs.
fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (the corpus is committed)", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
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

#[test]
fn config_parser_corpus() {
    let files = corpus_files("config_parser");
    for path in files {
        let data = fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| config_checks::check_config(&data));
        assert!(outcome.is_ok(), "{} fails its check", path.display());
    }
}

#[test]
fn names_that_would_need_dns_are_recognised() {
    assert!(config_checks::resolves_names(
        "[network]\nhost_bind_ip = \"example.org\"\n"
    ));
    assert!(config_checks::resolves_names(
        "[ssh_proxy]\nlisten = [\"host:80\"]\n"
    ));
    assert!(!config_checks::resolves_names(
        "[network]\nhost_bind_ip = \"[::1]\"\n"
    ));
    assert!(!config_checks::resolves_names(
        "[ssh_proxy.tls]\nlisten = [\"127.0.0.1:0\"]\n"
    ));
}

#[test]
fn proxy_header_corpus() {
    let files = corpus_files("proxy_header");
    let mut complete = 0;
    for path in files {
        let data = fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| proxy_header_checks::check_proxy_header(&data));
        assert!(outcome.is_ok(), "{} fails its check", path.display());
        if let hakuriver_ssh_proxy::proxy_protocol::Decoded::Complete { .. } =
            hakuriver_ssh_proxy::proxy_protocol::decode(&data)
        {
            complete += 1;
        }
    }
    assert!(
        complete >= 4,
        "the corpus holds only {complete} valid headers"
    );
}
