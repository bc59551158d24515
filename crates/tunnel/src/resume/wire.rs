//! The lines and keys of a resumable tunnel.
//!
//! ```text
//! client → host:  HAKURIVER_SSH/1 TUNNEL task=<id> [token=<token>] resume=<client key>\n
//! host → client:  SUCCESS RESUMABLE id=<tunnel> key=<host key> grace=<secs> window=<bytes>\n
//!                 (then frames both ways, see `frame`)
//!              |  SUCCESS\n (the host does not resume: raw bytes, as ever)
//!
//! later, on a new connection (TLS verified exactly as the first one):
//! client → host:  HAKURIVER_SSH/1 RESUME id=<tunnel> gen=<n> received=<bytes> proof=<mac>\n
//! host → client:  RESUMED received=<bytes> proof=<mac>\n (then frames) | ERROR <message>\n
//! ```
//!
//! Both keys are ephemeral X25519 public keys. Each side derives the tunnel's resume key
//! with HKDF-SHA256 from the shared secret, the tunnel id and both public keys, so the
//! key itself never crosses the wire, not even inside TLS; a passive observer of a plain
//! TCP tunnel learns nothing that lets it resume. A RESUME proves knowledge of the key
//! with an HMAC-SHA256 over the tunnel id, the resume's generation (each accepted resume
//! raises it by one, so a replayed line is stale) and the byte count it claims; RESUMED
//! answers with the host's own MAC over its count.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};

/// Length of an X25519 public key.
pub const KEY_LEN: usize = 32;
/// Length of a tunnel id.
pub const ID_LEN: usize = 16;

/// Why a resume line or key did not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A value is missing, repeated, malformed or of the wrong length.
    #[error("malformed resume field: {0}")]
    Malformed(&'static str),
    /// The system's random source or key agreement failed.
    #[error("key agreement failed")]
    Crypto,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64<const N: usize>(text: &str, what: &'static str) -> Result<[u8; N], WireError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| WireError::Malformed(what))?;
    bytes.try_into().map_err(|_| WireError::Malformed(what))
}

/// A resumable tunnel's identity, chosen at random by the host.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunnelId(pub [u8; ID_LEN]);

impl TunnelId {
    /// A fresh random id.
    pub fn random() -> Result<TunnelId, WireError> {
        let mut id = [0u8; ID_LEN];
        SystemRandom::new()
            .fill(&mut id)
            .map_err(|_| WireError::Crypto)?;
        Ok(TunnelId(id))
    }

    /// Parses the wire form.
    pub fn parse(text: &str) -> Result<TunnelId, WireError> {
        unb64(text, "id").map(TunnelId)
    }
}

impl fmt::Display for TunnelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&b64(&self.0))
    }
}

impl fmt::Debug for TunnelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TunnelId({self})")
    }
}

/// An X25519 public key, as offered in `resume=` or `key=`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    /// Parses the wire form.
    pub fn parse(text: &str) -> Result<PublicKey, WireError> {
        unb64(text, "key").map(PublicKey)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&b64(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// One side's ephemeral key pair, used once.
pub struct KeyPair {
    private: EphemeralPrivateKey,
    /// What the other side gets.
    pub public: PublicKey,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair({})", self.public)
    }
}

impl KeyPair {
    /// A fresh key pair.
    pub fn generate() -> Result<KeyPair, WireError> {
        let rng = SystemRandom::new();
        let private =
            EphemeralPrivateKey::generate(&X25519, &rng).map_err(|_| WireError::Crypto)?;
        let public = private
            .compute_public_key()
            .map_err(|_| WireError::Crypto)?;
        let public = PublicKey(public.as_ref().try_into().map_err(|_| WireError::Crypto)?);
        Ok(KeyPair { private, public })
    }

    /// The tunnel's resume key, from this pair, the peer's public key and the tunnel
    /// id. `client` and `host` are the two public keys in that order.
    pub fn agree(
        self,
        peer: &PublicKey,
        id: &TunnelId,
        client: &PublicKey,
        host: &PublicKey,
    ) -> Result<ResumeKey, WireError> {
        let peer = UnparsedPublicKey::new(&X25519, peer.0);
        agreement::agree_ephemeral(self.private, &peer, |shared| {
            let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, &id.0);
            let prk = salt.extract(shared);
            let info = [b"hakuriver-ssh resume 1".as_slice(), &client.0, &host.0];
            let okm = prk
                .expand(&info, hkdf::HKDF_SHA256)
                .map_err(|_| WireError::Crypto)?;
            let mut key = [0u8; 32];
            okm.fill(&mut key).map_err(|_| WireError::Crypto)?;
            Ok(ResumeKey(key))
        })
        .map_err(|_| WireError::Crypto)?
    }
}

/// The secret both ends of one resumable tunnel share. `Debug` hides it; it leaves the
/// process only into the systemd fd store (a memfd), never into a log or onto the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct ResumeKey(pub [u8; 32]);

impl fmt::Debug for ResumeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResumeKey(<redacted>)")
    }
}

/// Which side computes a MAC: the client's RESUME or the host's RESUMED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The RESUME line.
    Client,
    /// The RESUMED line.
    Host,
}

impl ResumeKey {
    /// What a proof signs: the side, the tunnel, the generation and the count.
    fn message(side: Side, id: &TunnelId, generation: u64, received: u64) -> Vec<u8> {
        let mut msg = Vec::with_capacity(48);
        msg.extend_from_slice(match side {
            Side::Client => b"resume",
            Side::Host => b"resumed",
        });
        msg.extend_from_slice(&id.0);
        msg.extend_from_slice(&generation.to_be_bytes());
        msg.extend_from_slice(&received.to_be_bytes());
        msg
    }

    fn hmac_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.0)
    }

    /// The proof for one resume, in wire form.
    pub fn proof(&self, side: Side, id: &TunnelId, generation: u64, received: u64) -> String {
        let msg = Self::message(side, id, generation, received);
        b64(hmac::sign(&self.hmac_key(), &msg).as_ref())
    }

    /// Whether `proof` is the right one (compared in constant time).
    pub fn verify(
        &self,
        side: Side,
        id: &TunnelId,
        generation: u64,
        received: u64,
        proof: &str,
    ) -> bool {
        let Ok(proof) = URL_SAFE_NO_PAD.decode(proof) else {
            return false;
        };
        let msg = Self::message(side, id, generation, received);
        hmac::verify(&self.hmac_key(), &msg, &proof).is_ok()
    }
}

/// The host's `SUCCESS RESUMABLE ...` reply: the tunnel is resumable on these terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The tunnel's id.
    pub id: TunnelId,
    /// The host's public key.
    pub key: PublicKey,
    /// How long the host keeps the tunnel after the connection drops, in seconds.
    pub grace_secs: u64,
    /// Most unacknowledged bytes either side keeps (and so may have in flight).
    pub window: u64,
}

/// The word after `SUCCESS` that makes a reply a [`Grant`].
pub const GRANT_WORD: &str = "RESUMABLE";

impl Grant {
    /// The reply line, newline included.
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "SUCCESS {GRANT_WORD} id={} key={} grace={} window={}\n",
            self.id, self.key, self.grace_secs, self.window
        )
        .into_bytes()
    }

    /// Parses what follows `SUCCESS RESUMABLE `.
    pub fn parse_fields(rest: &str) -> Result<Grant, WireError> {
        let fields = Fields::parse(rest, &["id", "key", "grace", "window"])?;
        Ok(Grant {
            id: TunnelId::parse(fields.get("id")?)?,
            key: PublicKey::parse(fields.get("key")?)?,
            grace_secs: fields.number("grace")?,
            window: fields.number("window")?,
        })
    }
}

/// A client's `RESUME` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeRequest {
    /// The tunnel to resume.
    pub id: TunnelId,
    /// Which resume of this tunnel this is (1 for the first).
    pub generation: u64,
    /// Bytes the client has received (and passed on) so far.
    pub received: u64,
    /// The MAC over the three.
    pub proof: String,
}

impl ResumeRequest {
    /// A signed request.
    pub fn new(key: &ResumeKey, id: TunnelId, generation: u64, received: u64) -> Self {
        ResumeRequest {
            id,
            generation,
            received,
            proof: key.proof(Side::Client, &id, generation, received),
        }
    }

    /// The fields of the wire line (after `HAKURIVER_SSH/1 RESUME `).
    pub fn encode_fields(&self) -> String {
        format!(
            "id={} gen={} received={} proof={}",
            self.id, self.generation, self.received, self.proof
        )
    }

    /// Parses the fields after `HAKURIVER_SSH/1 RESUME `.
    pub fn parse_fields(rest: &str) -> Result<ResumeRequest, WireError> {
        let fields = Fields::parse(rest, &["id", "gen", "received", "proof"])?;
        let proof = fields.get("proof")?;
        if proof.len() > 64 {
            return Err(WireError::Malformed("proof"));
        }
        Ok(ResumeRequest {
            id: TunnelId::parse(fields.get("id")?)?,
            generation: fields.number("gen")?,
            received: fields.number("received")?,
            proof: proof.to_owned(),
        })
    }
}

/// The host's `RESUMED` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// Bytes the host has received from the client (and passed on) so far.
    pub received: u64,
    /// The host's MAC over it.
    pub proof: String,
}

/// The first word of a [`Resumed`] line.
pub const RESUMED_WORD: &str = "RESUMED";

impl Resumed {
    /// The reply line, newline included.
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{RESUMED_WORD} received={} proof={}\n",
            self.received, self.proof
        )
        .into_bytes()
    }

    /// Parses what follows `RESUMED `.
    pub fn parse_fields(rest: &str) -> Result<Resumed, WireError> {
        let fields = Fields::parse(rest, &["received", "proof"])?;
        Ok(Resumed {
            received: fields.number("received")?,
            proof: fields.get("proof")?.to_owned(),
        })
    }
}

/// `key=value` words, each key once, only the expected ones.
struct Fields<'a> {
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Fields<'a> {
    fn parse(text: &'a str, keys: &'static [&'static str]) -> Result<Self, WireError> {
        let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(keys.len());
        for word in text.trim_end_matches(['\r', '\n']).split(' ') {
            let (key, value) = word.split_once('=').ok_or(WireError::Malformed("field"))?;
            let Some(known) = keys.iter().find(|k| **k == key) else {
                return Err(WireError::Malformed("unknown field"));
            };
            if pairs.iter().any(|(k, _)| k == known) {
                return Err(WireError::Malformed("repeated field"));
            }
            pairs.push((known, value));
        }
        Ok(Fields { pairs })
    }

    fn get(&self, key: &'static str) -> Result<&'a str, WireError> {
        self.pairs
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .ok_or(WireError::Malformed(key))
    }

    fn number(&self, key: &'static str) -> Result<u64, WireError> {
        let text = self.get(key)?;
        if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(WireError::Malformed(key));
        }
        text.parse().map_err(|_| WireError::Malformed(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair_of_keys() -> (ResumeKey, ResumeKey, TunnelId) {
        let client = KeyPair::generate().expect("client");
        let host = KeyPair::generate().expect("host");
        let id = TunnelId::random().expect("id");
        let (c, h) = (client.public, host.public);
        let kc = client.agree(&h, &id, &c, &h).expect("client side");
        let kh = host.agree(&c, &id, &c, &h).expect("host side");
        (kc, kh, id)
    }

    #[test]
    fn both_sides_derive_the_same_key_and_proofs_bind_every_field() {
        let (kc, kh, id) = pair_of_keys();
        assert_eq!(kc, kh);
        assert_eq!(format!("{kc:?}"), "ResumeKey(<redacted>)");
        let request = ResumeRequest::new(&kc, id, 1, 4096);
        assert!(kh.verify(Side::Client, &id, 1, 4096, &request.proof));
        assert!(!kh.verify(Side::Client, &id, 2, 4096, &request.proof));
        assert!(!kh.verify(Side::Client, &id, 1, 4097, &request.proof));
        assert!(!kh.verify(Side::Host, &id, 1, 4096, &request.proof));
        let other = TunnelId::random().expect("id");
        assert!(!kh.verify(Side::Client, &other, 1, 4096, &request.proof));
        let (stranger, _, _) = pair_of_keys();
        assert!(!stranger.verify(Side::Client, &id, 1, 4096, &request.proof));
        assert!(!kh.verify(Side::Client, &id, 1, 4096, "not base64!"));
    }

    #[test]
    fn lines_round_trip_and_reject_junk() {
        let (k, _, id) = pair_of_keys();
        let grant = Grant {
            id,
            key: KeyPair::generate().expect("k").public,
            grace_secs: 300,
            window: 1 << 20,
        };
        let line = String::from_utf8(grant.encode()).expect("utf8");
        let rest = line
            .strip_prefix("SUCCESS RESUMABLE ")
            .expect("prefix")
            .trim_end();
        assert_eq!(Grant::parse_fields(rest), Ok(grant));
        let request = ResumeRequest::new(&k, id, 3, 77);
        assert_eq!(
            ResumeRequest::parse_fields(&request.encode_fields()),
            Ok(request.clone())
        );
        for junk in [
            "",
            "id=x gen=1 received=1 proof=a",
            &format!("id={id} gen=1 received=1"),
            &format!("id={id} gen=1 gen=2 received=1 proof=a"),
            &format!("id={id} gen=-1 received=1 proof=a"),
            &format!("id={id} gen=1 received=99999999999999999999999 proof=a"),
            &format!("id={id} gen=1 received=1 proof=a extra=1"),
        ] {
            assert!(ResumeRequest::parse_fields(junk).is_err(), "{junk:?}");
        }
        let resumed = Resumed {
            received: 9,
            proof: k.proof(Side::Host, &id, 3, 9),
        };
        let line = String::from_utf8(resumed.encode()).expect("utf8");
        let rest = line.strip_prefix("RESUMED ").expect("prefix");
        assert_eq!(Resumed::parse_fields(rest), Ok(resumed));
    }
}
