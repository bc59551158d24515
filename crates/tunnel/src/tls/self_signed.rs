//! The proxy's self-signed certificate, generated once into its state directory.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{load_cert_pair, CertPair, TlsError};

/// Directory under the state directory that holds the self-signed certificate.
pub const SELF_SIGNED_DIR: &str = "tls";
/// File name of the self-signed certificate (PEM) inside [`SELF_SIGNED_DIR`].
pub const SELF_SIGNED_CERT_FILE: &str = "self-signed-cert.pem";
/// File name of the self-signed certificate's private key (PEM, PKCS#8, mode 0600).
pub const SELF_SIGNED_KEY_FILE: &str = "self-signed-key.pem";
/// How long a generated self-signed certificate stays valid. Pinning ignores validity,
/// so this only needs to outlive the installation.
pub const SELF_SIGNED_VALIDITY: Duration = Duration::from_secs(10 * 366 * 24 * 60 * 60);
/// Subject common name of generated certificates.
const SELF_SIGNED_COMMON_NAME: &str = "hakuriver-ssh-proxy";

/// Loads the proxy's self-signed certificate from `state_dir/tls/`, generating it on first
/// use.
///
/// Generation uses ECDSA P-256 with `names` as subject alternative names (each an IP
/// address if it parses as one, else a DNS name), valid for [`SELF_SIGNED_VALIDITY`].
/// The key file is created with mode 0600 (never readable by others, not even briefly),
/// the certificate with 0644, the `tls` directory with 0700. Later calls reuse the files
/// as they are, whatever `names` says: delete both files to regenerate.
pub fn self_signed(state_dir: &Path, names: &[String]) -> Result<CertPair, TlsError> {
    let dir = state_dir.join(SELF_SIGNED_DIR);
    let cert_path = dir.join(SELF_SIGNED_CERT_FILE);
    let key_path = dir.join(SELF_SIGNED_KEY_FILE);
    if cert_path.exists() && key_path.exists() {
        let pair = load_cert_pair(&cert_path, &key_path)?;
        tracing::debug!(cert = %cert_path.display(), fingerprint = ?pair.fingerprint(), "reusing self-signed certificate");
        return Ok(pair);
    }

    let (cert_pem, key_pem) = generate_self_signed(names)?;
    create_private_dir(&dir)?;
    // Write both under temporary names and rename the certificate last, so a crash never
    // leaves a certificate next to a key it does not belong to from a fresh generation.
    let key_tmp = dir.join(format!("{SELF_SIGNED_KEY_FILE}.tmp"));
    let cert_tmp = dir.join(format!("{SELF_SIGNED_CERT_FILE}.tmp"));
    write_new_file(&key_tmp, key_pem.as_bytes(), 0o600)?;
    write_new_file(&cert_tmp, cert_pem.as_bytes(), 0o644)?;
    rename(&key_tmp, &key_path)?;
    rename(&cert_tmp, &cert_path)?;

    let pair = load_cert_pair(&cert_path, &key_path)?;
    tracing::info!(cert = %cert_path.display(), fingerprint = ?pair.fingerprint(), "generated self-signed certificate");
    Ok(pair)
}

/// Mints a self-signed ECDSA P-256 certificate; returns (certificate PEM, PKCS#8 key PEM).
fn generate_self_signed(names: &[String]) -> Result<(String, String), TlsError> {
    let mut params = rcgen::CertificateParams::default();
    for name in names {
        let san = match name.parse::<std::net::IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(name.clone().try_into().map_err(|source| {
                TlsError::InvalidName {
                    name: name.clone(),
                    source,
                }
            })?),
        };
        params.subject_alt_names.push(san);
    }
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, SELF_SIGNED_COMMON_NAME);
    let now = SystemTime::now();
    // A day of slack for clients whose clock runs behind.
    params.not_before = (now - Duration::from_secs(24 * 60 * 60)).into();
    params.not_after = (now + SELF_SIGNED_VALIDITY).into();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(TlsError::Generate)?;
    let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })
}

/// Creates `path` with `mode` from the start (a leftover from an interrupted run is
/// replaced) and writes `contents` durably.
fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    let wrap = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(wrap(e)),
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(wrap)?;
    file.write_all(contents).map_err(wrap)?;
    file.sync_all().map_err(wrap)
}

fn rename(from: &Path, to: &Path) -> Result<(), TlsError> {
    fs::rename(from, to).map_err(|source| TlsError::Write {
        path: to.to_owned(),
        source,
    })
}
