//! Certificates and keys on disk: self-signed generation, PEM loading, reloading.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::Path;

use common::*;
use hakuriver_tunnel::tls::{
    client_config, load_cert_chain, load_cert_pair, load_private_key, self_signed, CertPair,
    ClientTrust, Fingerprint, ServerCertStore, TlsError, SELF_SIGNED_CERT_FILE, SELF_SIGNED_DIR,
    SELF_SIGNED_KEY_FILE,
};
use rustls::pki_types::PrivateKeyDer;

#[test]
fn self_signed_generates_once_then_reuses() {
    let state = tempfile::tempdir().unwrap();
    let names = vec![
        "proxy.test".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let first = self_signed(state.path(), &names).unwrap();
    let second = self_signed(state.path(), &["other.test".to_owned()]).unwrap();
    assert!(first.fingerprint().is_some());
    assert_eq!(first.fingerprint(), second.fingerprint());

    let dir = state.path().join(SELF_SIGNED_DIR);
    let leftovers: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join(SELF_SIGNED_KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.join(SELF_SIGNED_CERT_FILE)), 0o644);
        assert_eq!(mode(&dir), 0o700);
    }
}

#[test]
fn self_signed_regenerates_when_a_file_is_missing() {
    let state = tempfile::tempdir().unwrap();
    let names = vec!["localhost".to_owned()];
    let first = self_signed(state.path(), &names).unwrap();
    fs::remove_file(
        state
            .path()
            .join(SELF_SIGNED_DIR)
            .join(SELF_SIGNED_CERT_FILE),
    )
    .unwrap();
    let second = self_signed(state.path(), &names).unwrap();
    assert_ne!(first.fingerprint(), second.fingerprint());
    assert_eq!(
        self_signed(state.path(), &names).unwrap().fingerprint(),
        second.fingerprint()
    );
}

#[test]
fn self_signed_rejects_an_invalid_name() {
    let state = tempfile::tempdir().unwrap();
    let err = self_signed(state.path(), &["bad name\u{7f}é".to_owned()]).unwrap_err();
    assert!(matches!(err, TlsError::InvalidName { .. }), "{err}");
    assert!(!state
        .path()
        .join(SELF_SIGNED_DIR)
        .join(SELF_SIGNED_KEY_FILE)
        .exists());
}

#[test]
fn load_cert_pair_reads_chain_and_pkcs8_key() {
    let dir = tempfile::tempdir().unwrap();
    let root = mint_ca("root");
    let intermediate = mint_ca_signed_by("intermediate", Some(&root));
    let mut pair = valid_leaf(&intermediate, &["proxy.test"]);
    pair.chain.push(intermediate.cert.der().clone());
    let cert = write(dir.path(), "chain.pem", &chain_pem(&pair.chain));
    let key = write(dir.path(), "key.pem", &key_pem(&pair.key));
    let loaded = load_cert_pair(&cert, &key).unwrap();
    assert_eq!(loaded.chain, pair.chain);
    assert_eq!(loaded.fingerprint(), pair.fingerprint());
    assert_eq!(loaded.fingerprint(), Some(Fingerprint::of(&pair.chain[0])));
}

#[test]
fn load_cert_pair_accepts_a_sec1_key() {
    let dir = tempfile::tempdir().unwrap();
    let pair = self_signed_pair();
    let sec1 = sec1_from_pkcs8(pair.key.secret_der());
    let cert = write(dir.path(), "cert.pem", &chain_pem(&pair.chain));
    let key = write(dir.path(), "key.pem", &pem("EC PRIVATE KEY", &sec1));
    let loaded = load_cert_pair(&cert, &key).unwrap();
    assert!(matches!(loaded.key, PrivateKeyDer::Sec1(_)));
}

#[test]
fn load_cert_pair_refuses_a_key_of_another_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let a = self_signed_pair();
    let b = self_signed_pair();
    let cert = write(dir.path(), "a-cert.pem", &chain_pem(&a.chain));
    let key = write(dir.path(), "b-key.pem", &key_pem(&b.key));
    let err = load_cert_pair(&cert, &key).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("a-cert.pem") && msg.contains("b-key.pem"),
        "{msg}"
    );
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pair = self_signed_pair();
    let missing = dir.path().join("missing.pem");
    let empty = write(dir.path(), "empty.pem", "");
    let cert_only = write(dir.path(), "cert-only.pem", &chain_pem(&pair.chain));
    let garbled = write(
        dir.path(),
        "garbled.pem",
        "-----BEGIN CERTIFICATE-----\n%%%%\n-----END CERTIFICATE-----\n",
    );

    let err = load_cert_chain(&missing).unwrap_err();
    assert!(
        matches!(err, TlsError::Read { .. }) && err.to_string().contains("missing.pem"),
        "{err}"
    );
    let err = load_cert_chain(&empty).unwrap_err();
    assert!(
        matches!(err, TlsError::NoCertificates { .. }) && err.to_string().contains("empty.pem"),
        "{err}"
    );
    let err = load_private_key(&cert_only).unwrap_err();
    assert!(
        matches!(err, TlsError::NoPrivateKey { .. }) && err.to_string().contains("cert-only.pem"),
        "{err}"
    );
    let err = load_cert_chain(&garbled).unwrap_err();
    assert!(
        matches!(err, TlsError::Pem { .. }) && err.to_string().contains("garbled.pem"),
        "{err}"
    );
    let err = load_cert_pair(&cert_only, &missing).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
}

#[test]
fn cert_pair_debug_hides_the_key() {
    let pair = self_signed_pair();
    let shown = format!("{pair:?}");
    assert!(shown.contains("sha256:"), "{shown}");
    assert!(
        !shown.contains(&format!("{:?}", pair.key.secret_der())),
        "{shown}"
    );
}

#[test]
fn client_config_reports_a_bad_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "ca.pem", "");
    let err = client_config(&ClientTrust {
        pins: vec![],
        ca_file: Some(empty),
    })
    .unwrap_err();
    assert!(err.to_string().contains("ca.pem"), "{err}");
}

#[test]
fn replace_with_a_broken_pair_keeps_the_current_certificate() {
    let good = self_signed_pair();
    let fp = good.fingerprint().unwrap();
    let store = ServerCertStore::new(good).unwrap();
    let mut broken = self_signed_pair();
    broken.key = self_signed_pair().key;
    assert!(matches!(
        store.replace(broken),
        Err(TlsError::InvalidPair(_))
    ));
    let empty = CertPair {
        chain: vec![],
        key: self_signed_pair().key,
    };
    assert!(store.replace(empty).is_err());
    assert_eq!(store.fingerprint(), fp);
}

#[test]
fn reload_rereads_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let first = self_signed_pair();
    let second = self_signed_pair();
    let cert = write(dir.path(), "cert.pem", &chain_pem(&first.chain));
    let key = write(dir.path(), "key.pem", &key_pem(&first.key));
    let store = ServerCertStore::from_files(&cert, &key).unwrap();
    assert_eq!(store.fingerprint(), first.fingerprint().unwrap());
    assert_eq!(store.reload().unwrap(), first.fingerprint().unwrap());

    // Half-way through a rotation (new certificate, old key) the reload is refused and
    // the old certificate stays.
    write(dir.path(), "cert.pem", &chain_pem(&second.chain));
    let err = store.reload().unwrap_err();
    assert!(err.to_string().contains("key.pem"), "{err}");
    assert_eq!(store.fingerprint(), first.fingerprint().unwrap());

    write(dir.path(), "key.pem", &key_pem(&second.key));
    assert_eq!(store.reload().unwrap(), second.fingerprint().unwrap());
    assert_eq!(store.fingerprint(), second.fingerprint().unwrap());
}

#[test]
fn reload_of_a_self_signed_store_keeps_the_certificate() {
    let state = tempfile::tempdir().unwrap();
    let store = ServerCertStore::self_signed(state.path(), &["localhost".to_owned()]).unwrap();
    let fp = store.fingerprint();
    assert_eq!(store.reload().unwrap(), fp);
    let memory = ServerCertStore::new(self_signed_pair()).unwrap();
    assert_eq!(memory.reload().unwrap(), memory.fingerprint());
}

/// The SEC1 `ECPrivateKey` inside a PKCS#8 wrapper, read by the `pkcs8` crate.
fn sec1_from_pkcs8(pkcs8: &[u8]) -> Vec<u8> {
    pkcs8::PrivateKeyInfo::try_from(pkcs8)
        .unwrap()
        .private_key
        .to_vec()
}
