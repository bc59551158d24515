//! [`Fingerprint`]: the SHA-256 of a certificate, as users pin and print it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// SHA-256 of a certificate's DER encoding, the value users pin.
///
/// Displays as `sha256:<64 lowercase hex digits>`; parses that form, `SHA256:`, no prefix,
/// colon-separated bytes (as browsers and `openssl x509 -fingerprint` print them) and any
/// letter case.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(cert_der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(cert_der).into())
    }

    /// Wraps raw digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Fingerprint(bytes)
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Why a string is not a [`Fingerprint`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fingerprint {input:?}: {reason}; expected sha256: followed by 64 hex digits (colons between bytes allowed)")]
pub struct FingerprintParseError {
    input: String,
    reason: String,
}

impl FromStr for Fingerprint {
    type Err = FingerprintParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| FingerprintParseError {
            input: s.to_owned(),
            reason,
        };
        let trimmed = s.trim();
        let hex = match trimmed.get(..7) {
            Some(prefix) if prefix.eq_ignore_ascii_case("sha256:") => &trimmed[7..],
            _ => trimmed,
        };
        let digits: Vec<u8> = hex.bytes().filter(|&b| b != b':').collect();
        if let Some(bad) = digits.iter().find(|b| !b.is_ascii_hexdigit()) {
            return Err(fail(format!("{:?} is not a hex digit", char::from(*bad))));
        }
        if digits.len() != 64 {
            return Err(fail(format!("found {} hex digits", digits.len())));
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            *byte = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
        }
        Ok(Fingerprint(out))
    }
}

/// Value of an ASCII hex digit already checked with `is_ascii_hexdigit`.
fn hex_value(digit: u8) -> u8 {
    char::from(digit).to_digit(16).map_or(0, |v| v as u8)
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_display_is_prefixed_lowercase_hex() {
        let fp = Fingerprint::from_bytes([0xAB; 32]);
        assert_eq!(fp.to_string(), format!("sha256:{}", "ab".repeat(32)));
        let of_empty = Fingerprint::of(b"");
        assert_eq!(
            of_empty.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn fingerprint_parses_every_accepted_form() {
        let fp = Fingerprint::of(b"hakuriver");
        let hex: String = fp.to_string()["sha256:".len()..].to_owned();
        let colons = hex
            .as_bytes()
            .chunks(2)
            .map(|p| std::str::from_utf8(p).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        for form in [
            fp.to_string(),
            format!("SHA256:{hex}"),
            format!("Sha256:{}", hex.to_uppercase()),
            hex.clone(),
            hex.to_uppercase(),
            colons.clone(),
            colons.to_uppercase(),
            format!("sha256:{colons}"),
            format!("  {fp}\n"),
        ] {
            assert_eq!(form.parse::<Fingerprint>(), Ok(fp), "form {form:?}");
        }
    }

    #[test]
    fn fingerprint_rejects_malformed_input_clearly() {
        let hex = "ab".repeat(32);
        for (input, hint) in [
            (String::new(), "found 0 hex digits"),
            (hex[..62].to_owned(), "found 62 hex digits"),
            (format!("{hex}ab"), "found 66 hex digits"),
            (format!("{}zz", &hex[..62]), "'z' is not a hex digit"),
            (format!("sha1:{hex}"), "is not a hex digit"),
            (format!("md5 {hex}"), "is not a hex digit"),
        ] {
            let err = input.parse::<Fingerprint>().unwrap_err().to_string();
            assert!(err.contains(hint), "{input:?}: {err}");
            assert!(err.contains("expected sha256:"), "{err}");
            assert!(
                err.contains(&format!("{input:?}")),
                "error quotes the input: {err}"
            );
        }
    }

    #[test]
    fn fingerprint_round_trips_through_toml() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Section {
            fingerprints: Vec<Fingerprint>,
        }
        let fp = Fingerprint::of(b"x");
        let text = format!("fingerprints = [\"{}\"]", fp.to_string().to_uppercase());
        let parsed: Section = toml::from_str(&text).unwrap();
        assert_eq!(parsed.fingerprints, vec![fp]);
        let out = toml::to_string(&parsed).unwrap();
        assert!(out.contains(&fp.to_string()), "{out}");
        let bad = toml::from_str::<Section>("fingerprints = [\"sha256:12\"]").unwrap_err();
        assert!(bad.to_string().contains("invalid fingerprint"), "{bad}");
    }
}
