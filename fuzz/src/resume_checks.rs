//! Invariants of the resume handshake (`hakuriver_tunnel::resume`) on arbitrary bytes:
//! the RESUME request line, the `SUCCESS RESUMABLE` and `RESUMED` replies, the frames
//! that follow them, and the session snapshot a restart hands to the next process. Used by the `resume_handshake` fuzz target and replayed on
//! stable by `crates/tunnel/tests/fuzz_corpus.rs`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use hakuriver_tunnel::protocol::extended::{encode_resume, parse_any_request, AnyRequest};
use hakuriver_tunnel::protocol::{parse_response, Response, MAX_RESPONSE_LINE};
use hakuriver_tunnel::resume::frame::{self, Parsed};
use hakuriver_tunnel::resume::{Session, Snapshot};

/// The `resume_handshake` target: `data` as a request line, a reply line and a frame
/// stream.
pub fn check_resume(data: &[u8]) {
    if let Ok(AnyRequest::Resume(request)) = parse_any_request(data) {
        let line = encode_resume(&request);
        assert!(line.len() < 512, "a RESUME line is short");
        assert_eq!(
            parse_any_request(&line),
            Ok(AnyRequest::Resume(request)),
            "round trip of {:?}",
            String::from_utf8_lossy(data)
        );
    }
    if let Ok(response @ (Response::Resumable(_) | Response::Resumed(_))) = parse_response(data) {
        let line = response.encode();
        assert!(line.len() <= MAX_RESPONSE_LINE);
        assert_eq!(parse_response(&line), Ok(response));
    }
    // A snapshot that decodes encodes back to one that decodes the same, and the session
    // it restores does its arithmetic without overflow.
    if let Ok(snapshot) = Snapshot::decode(data) {
        let again = Snapshot::decode(&snapshot.encode()).expect("re-decode");
        assert_eq!(
            (again.generation(), again.held()),
            (snapshot.generation(), snapshot.held())
        );
        let mut session = Session::restore(snapshot);
        let progress = session.progress();
        assert!(progress.sent >= session.held() as u64);
        let _ = session.all_but_closed();
        let _ = session.resume_from(progress.sent);
        let _ = session.resume_from(u64::MAX);
        let _ = session.resume_from(0);
    }
    // Frames: parsing never panics, never claims more than it was given, and control
    // frames encode back to the same bytes.
    let mut rest = data;
    loop {
        match frame::parse(rest) {
            Ok(Parsed::Incomplete) | Err(_) => break,
            Ok(Parsed::Data { len }) => {
                assert!(len > 0 && len <= frame::MAX_ACCEPTED_DATA);
                let skip = (frame::HEADER + len as usize).min(rest.len());
                rest = &rest[skip..];
            }
            Ok(Parsed::Control {
                frame: control,
                used,
            }) => {
                assert!(used <= rest.len());
                let mut again = Vec::new();
                frame::push_control(&mut again, &control);
                assert_eq!(&again[..], &rest[..used], "control frame round trip");
                rest = &rest[used..];
            }
        }
    }
}
