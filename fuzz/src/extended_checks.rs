//! Invariants of the extended request line (`hakuriver_tunnel::protocol::extended`),
//! checked on arbitrary bytes. Used by the `extended_request` fuzz target and replayed
//! on stable by `crates/tunnel/tests/fuzz_corpus.rs`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use hakuriver_tunnel::protocol::extended::{
    parse_any_request, AnyRequest, ListReply, MAX_EXTENDED_LINE, MAX_NAME_LEN, MAX_TOKEN_LEN,
};
use hakuriver_tunnel::protocol::{parse_request, TaskRef};

/// The `extended_request` target: `data` as one request line, and as a LIST reply.
pub fn check_extended(data: &[u8]) {
    match parse_any_request(data) {
        Ok(AnyRequest::Extended(request)) => {
            let line = request.encode();
            assert!(line.len() <= MAX_EXTENDED_LINE, "encoded line too long");
            assert_eq!(
                parse_any_request(&line),
                Ok(AnyRequest::Extended(request.clone())),
                "round trip of {:?}",
                String::from_utf8_lossy(data)
            );
            if let Some(token) = &request.token {
                assert!(token.expose().len() <= MAX_TOKEN_LEN);
                assert!(!token.expose().is_empty());
                let shown = format!("{request:?}");
                assert!(
                    !shown.contains(&format!("token={}", token.expose())),
                    "a token printed"
                );
            }
            if let Some(TaskRef::Name(name)) = AnyRequest::Extended(request).target() {
                assert!(!name.is_empty() && name.len() <= MAX_NAME_LEN);
                assert!(!name.chars().any(char::is_control), "control in a name");
            }
        }
        // RESUME lines have their own target (resume_checks).
        Ok(AnyRequest::Resume(_)) => assert!(data.starts_with(b"HAKURIVER_SSH/1 RESUME ")),
        // Anything not extended is HakuRiver's line, parsed exactly as before.
        Ok(AnyRequest::Classic(request)) => assert_eq!(parse_request(data), Ok(request)),
        Err(e) => {
            if !data.starts_with(b"HAKURIVER_SSH/1 ") {
                assert_eq!(parse_request(data), Err(e));
            }
        }
    }
    if let Ok(reply) = ListReply::parse(data) {
        assert_eq!(ListReply::parse(&reply.encode()).ok(), Some(reply));
    }
}
