//! One-line explanations of failed TLS connections to the proxy, in the client's terms
//! (they name its flags: `--fingerprint`, `--server-name`, `--no-tls`).

use std::io;
use std::time::{Duration, UNIX_EPOCH};

use hakuriver_tunnel::tls::{rustls_error, PinMismatch, UntrustedCertificate};
use rustls::CertificateError;

const PIN_HINT: &str =
    "run `hakuriver-ssh-proxy fingerprint` on the Host and pass it with --fingerprint";

/// rustls describes presented names in debug form (`DnsName("a.example")`,
/// `IpAddress(192.0.2.1)`); users want the names.
fn plain_name(debug: &str) -> &str {
    for prefix in ["DnsName(", "IpAddress(", "Uri("] {
        if let Some(inner) = debug.strip_prefix(prefix).and_then(|r| r.strip_suffix(')')) {
            return inner.trim_matches('"');
        }
    }
    debug
}

/// A one-line explanation of a failed TLS connection to the proxy, for the user.
pub fn describe_tls_error(err: &io::Error) -> String {
    if let Some(tls) = rustls_error(err) {
        return describe_rustls_error(tls);
    }
    match err.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe => {
            "the proxy closed the connection during the TLS handshake; \
             is this a plain (non-TLS) port, or is the proxy overloaded?"
                .to_owned()
        }
        io::ErrorKind::ConnectionReset => {
            "the proxy reset the connection during the TLS handshake".to_owned()
        }
        io::ErrorKind::TimedOut => "the TLS handshake with the proxy timed out".to_owned(),
        _ => format!("TLS connection to the proxy failed: {err}"),
    }
}

/// [`describe_tls_error`] for a rustls error already taken out of its I/O error.
pub fn describe_rustls_error(err: &rustls::Error) -> String {
    use rustls::Error as E;
    match err {
        E::InvalidCertificate(cert) => describe_certificate_error(cert),
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => {
            "the proxy did not answer with TLS; is this a plain (non-TLS) port? (try --no-tls)"
                .to_owned()
        }
        E::AlertReceived(alert) => {
            format!("the proxy refused the TLS handshake (alert: {alert:?})")
        }
        E::PeerIncompatible(why) => {
            format!("the proxy and this client share no TLS version or cipher ({why:?})")
        }
        E::NoCertificatesPresented => "the proxy presented no certificate".to_owned(),
        other => format!("TLS error talking to the proxy: {other}"),
    }
}

fn describe_certificate_error(err: &CertificateError) -> String {
    match err {
        CertificateError::ExpiredContext { not_after, .. } => format!(
            "the proxy's certificate expired on {}",
            format_utc(not_after.as_secs())
        ),
        CertificateError::Expired => "the proxy's certificate has expired".to_owned(),
        CertificateError::NotValidYetContext { not_before, .. } => format!(
            "the proxy's certificate is not valid until {}; check the clocks on both machines",
            format_utc(not_before.as_secs())
        ),
        CertificateError::NotValidYet => {
            "the proxy's certificate is not valid yet; check the clocks on both machines".to_owned()
        }
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => {
            let names = if presented.is_empty() {
                "no names".to_owned()
            } else {
                presented.iter().map(|n| plain_name(n)).collect::<Vec<_>>().join(", ")
            };
            format!(
                "the proxy's certificate is not valid for {:?} (it is for {names}); \
                 connect with one of those names or set --server-name",
                expected.to_str()
            )
        }
        CertificateError::NotValidForName => {
            "the proxy's certificate is not valid for the name connected to; set --server-name"
                .to_owned()
        }
        CertificateError::UnknownIssuer => format!(
            "the proxy's certificate is not signed by a trusted CA (self-signed?); to pin it, {PIN_HINT}"
        ),
        CertificateError::Other(other) => {
            if let Some(pin) = other.0.downcast_ref::<PinMismatch>() {
                format!(
                    "the proxy presented certificate {} but the pinned fingerprint is {}; \
                     if its certificate was replaced on purpose, check `hakuriver-ssh-proxy fingerprint` \
                     on the Host and update --fingerprint",
                    pin.presented,
                    pin.expected
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" or ")
                )
            } else if let Some(untrusted) = other.0.downcast_ref::<UntrustedCertificate>() {
                format!(
                    "the proxy's certificate {} is not signed by a trusted CA (self-signed?); \
                     if that matches `hakuriver-ssh-proxy fingerprint` on the Host, pin it with --fingerprint",
                    untrusted.fingerprint
                )
            } else {
                format!("the proxy's certificate was rejected: {other}")
            }
        }
        other => format!("the proxy's certificate was rejected: {other}"),
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` for seconds since the Unix epoch.
fn format_utc(secs: u64) -> String {
    let rfc3339 = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs));
    // `2023-11-14T22:13:20Z` → `2023-11-14 22:13:20 UTC`
    let text = rfc3339.to_string().replacen('T', " ", 1);
    format!("{} UTC", text.trim_end_matches('Z'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presented_names_read_plainly() {
        assert_eq!(plain_name("DnsName(\"a.example\")"), "a.example");
        assert_eq!(plain_name("IpAddress(192.0.2.1)"), "192.0.2.1");
        assert_eq!(plain_name("something else"), "something else");
    }

    #[test]
    fn utc_dates_are_formatted_correctly() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(951_868_800), "2000-03-01 00:00:00 UTC");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(format_utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }

    #[test]
    fn describe_unknown_issuer_without_context_suggests_pinning() {
        let err = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let text = describe_tls_error(&err);
        assert!(
            text.contains("not signed by a trusted CA") && text.contains("--fingerprint"),
            "{text}"
        );
    }
}
