//! The PROXY protocol header decoder (`hakuriver_ssh_proxy::proxy_protocol::decode`) on
//! arbitrary bytes, and the byte-exact reading that follows its hints.

use hakuriver_ssh_proxy::proxy_protocol::{decode, Decoded, MAX_V1_HEADER, MAX_V2_HEADER};

/// Decodes `data` and checks what the proxy relies on: no panic; a complete header
/// lies inside the input and decodes the same alone; every shorter prefix asks for
/// more without overshooting; reading by the hints ends where `decode` says.
pub fn check_proxy_header(data: &[u8]) {
    let whole = decode(data);
    match &whole {
        Decoded::Complete { len, .. } => {
            assert!(*len <= data.len(), "header longer than its input");
            assert!(*len <= MAX_V2_HEADER.max(MAX_V1_HEADER));
            assert_eq!(
                decode(&data[..*len]),
                whole,
                "decode looked past the header"
            );
            for k in 0..*len {
                match decode(&data[..k]) {
                    Decoded::Incomplete(more) => {
                        assert!(more >= 1 && k + more <= *len, "hint overshoots at {k}")
                    }
                    other => panic!("prefix of {k} bytes decodes as {other:?}"),
                }
            }
        }
        Decoded::Incomplete(more) => {
            assert!(*more >= 1);
            assert!(data.len() + more <= MAX_V2_HEADER, "asks for too much");
        }
        Decoded::Invalid(why) => assert!(!why.is_empty()),
    }
    // What read_header does: start empty, read exactly the hinted count each time.
    let mut have = 0usize;
    let read = loop {
        match decode(&data[..have]) {
            Decoded::Incomplete(more) if have + more <= data.len() => have += more,
            Decoded::Incomplete(_) => break None,
            done => break Some(done),
        }
    };
    if let Decoded::Complete { .. } = whole {
        assert_eq!(read, Some(whole), "reading by the hints disagrees");
    }
}
