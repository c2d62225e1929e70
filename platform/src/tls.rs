//! TLS to the services: which certificate authorities a client trusts, and
//! the certificate it shows when the server asks for one (mutual TLS).
//!
//! TLS is chosen by the URL's scheme (`rediss://`, `amqps://`, see
//! [`is_tls_url`]); these settings only say what to trust and what to show.
//! A client trusts the system's roots, as rustls-native-certs finds them
//! (`SSL_CERT_FILE`, `SSL_CERT_DIR`, else the distribution's bundle), plus the
//! certificates of an extra CA bundle (`--tls-ca-file`): a managed service
//! signed by a private CA is reached without giving up the public ones.
//!
//! The two client libraries take roots differently, so [`Tls`] offers both:
//! redis-rs replaces the system's roots with the PEM it is given
//! ([`Tls::roots_pem`]: system and extra together), lapin adds the PEM it is
//! given to the system roots it loads itself ([`Tls::extra_pem`]).

use std::fmt;
use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where the TLS material is, as given by flag or environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Files {
    /// A PEM bundle of CA certificates trusted on top of the system's.
    pub ca_file: Option<PathBuf>,
    /// A PEM certificate (chain) shown to servers that ask for one.
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of `client_cert` (PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
}

impl Files {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.client_cert.is_none() && self.client_key.is_none()
    }
}

/// Whether `url` asks for TLS (`rediss://`, `amqps://`).
pub fn is_tls_url(url: &str) -> bool {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase());
    matches!(scheme.as_deref(), Some("rediss" | "amqps"))
}

/// The TLS material for `url`: loaded when the URL asks for TLS, `None`
/// otherwise (the files, if any, are then not read).
///
/// # Errors
/// As [`Tls::load`].
pub fn for_url(url: &str, files: &Files) -> Result<Option<Tls>, TlsError> {
    if is_tls_url(url) { Tls::load(files).map(Some) } else { Ok(None) }
}

/// What a TLS client trusts and what it shows, loaded and checked once at
/// start-up.
pub struct Tls {
    system: Vec<CertificateDer<'static>>,
    extra: Vec<CertificateDer<'static>>,
    files: Files,
    identity: Option<Identity>,
    problems: Vec<String>,
}

impl Tls {
    /// Loads the system's roots, the extra CA bundle and the client pair.
    ///
    /// System roots that cannot be used as trust anchors are left out (a
    /// distribution's bundle may hold one that is too old to parse); the
    /// store's problems are kept for a warning ([`Tls::problems`]).
    ///
    /// # Errors
    /// A file that cannot be read, is not PEM, holds no certificate (or no
    /// key), a CA certificate that cannot be a trust anchor, a key that does
    /// not match its certificate, half a client pair, or no root at all.
    pub fn load(files: &Files) -> Result<Self, TlsError> {
        let found = rustls_native_certs::load_native_certs();
        let mut problems: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        let mut store = RootCertStore::empty();
        let before = found.certs.len();
        let system: Vec<_> = found.certs.into_iter().filter(|cert| store.add(cert.clone()).is_ok()).collect();
        if system.len() < before {
            problems
                .push(format!("{} system root certificates cannot be trust anchors: left out", before - system.len()));
        }
        let extra = match &files.ca_file {
            Some(path) => extra_roots(path)?,
            None => Vec::new(),
        };
        if system.is_empty() && extra.is_empty() {
            return Err(TlsError::NoRoots { problems: problems.join("; ") });
        }
        let identity = match (&files.client_cert, &files.client_key) {
            (Some(cert), Some(key)) => Some(Identity::load(cert, key)?),
            (None, None) => None,
            _ => return Err(TlsError::HalfPair),
        };
        Ok(Self { system, extra, files: files.clone(), identity, problems })
    }

    /// Every trusted root, the system's and the extra ones, as one PEM
    /// bundle: for a client whose CA list replaces the system's (redis-rs).
    pub fn roots_pem(&self) -> String {
        encode(self.system.iter().chain(&self.extra))
    }

    /// The extra roots alone, as PEM: for a client that adds them to the
    /// system roots it loads itself (lapin with rustls-native-certs).
    pub fn extra_pem(&self) -> Option<String> {
        (!self.extra.is_empty()).then(|| encode(self.extra.iter()))
    }

    /// The client certificate and key, when mutual TLS is configured.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// What was wrong with the system's store (unreadable files, roots left
    /// out), for a warning; empty when nothing was.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("system_roots", &self.system.len())
            .field("extra_roots", &self.extra.len())
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// For the start-up log: `146 system roots + 1 from /etc/warren/ca.pem, client certificate /etc/warren/tls.crt`.
impl fmt::Display for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} system roots", self.system.len())?;
        if let Some(path) = &self.files.ca_file {
            write!(f, " + {} from {}", self.extra.len(), path.display())?;
        }
        match &self.files.client_cert {
            Some(path) if self.identity.is_some() => write!(f, ", client certificate {}", path.display()),
            _ => f.write_str(", no client certificate"),
        }
    }
}

/// A client certificate chain and its private key, both PEM as read (the
/// form both client libraries take). Its `Debug` shows neither.
pub struct Identity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl Identity {
    fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_pem = read(CLIENT_CERT, cert)?;
        let chain = certificates(CLIENT_CERT, cert, &cert_pem)?;
        let key_pem = read(CLIENT_KEY, key)?;
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| match error {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey { path: key.to_path_buf() },
            other => TlsError::Pem { flag: CLIENT_KEY, path: key.to_path_buf(), reason: other.to_string() },
        })?;
        let mismatch =
            |reason: String| TlsError::KeyMismatch { cert: cert.to_path_buf(), key: key.to_path_buf(), reason };
        let signer = rustls::crypto::ring::sign::any_supported_type(&private).map_err(|e| mismatch(e.to_string()))?;
        match rustls::sign::CertifiedKey::new(chain, signer).keys_match() {
            // A key type whose public half rustls cannot derive: the server decides.
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(error) => return Err(mismatch(error.to_string())),
        }
        Ok(Self { cert_pem, key_pem })
    }

    /// The certificate chain, PEM.
    pub fn cert_pem(&self) -> &[u8] {
        &self.cert_pem
    }

    /// The private key, PEM. Never log it.
    pub fn key_pem(&self) -> &[u8] {
        &self.key_pem
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Identity(REDACTED)")
    }
}

const CA_FILE: &str = "--tls-ca-file";
const CLIENT_CERT: &str = "--tls-client-cert";
const CLIENT_KEY: &str = "--tls-client-key";

/// Why the TLS material cannot be used. Names the flag and the file, never
/// a key's content.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("{flag} {}: {source}", path.display())]
    Read {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not well-formed PEM.
    #[error("{flag} {}: not PEM: {reason}", path.display())]
    Pem {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A file that should hold certificates holds none.
    #[error("{flag} {}: no PEM CERTIFICATE block in it", path.display())]
    NoCertificate {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A certificate of the CA bundle cannot be a trust anchor.
    #[error("--tls-ca-file {}: certificate {index} cannot be a trust anchor: {reason}", path.display())]
    NotAnAnchor {
        /// The file.
        path: PathBuf,
        /// Its position in the file, from 1.
        index: usize,
        /// What rustls said.
        reason: String,
    },
    /// The key file holds no private key.
    #[error("--tls-client-key {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key does not belong to the certificate, or cannot be used.
    #[error("--tls-client-key {} does not go with --tls-client-cert {}: {reason}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// Only one of the client certificate and key is given.
    #[error("--tls-client-cert and --tls-client-key go together: give both or neither")]
    HalfPair,
    /// Nothing to trust: the system store is empty and no CA file is given.
    #[error(
        "no certificate authority to trust: the system has none (install ca-certificates, or set SSL_CERT_FILE) \
         and no --tls-ca-file is given{}",
        if problems.is_empty() { String::new() } else { format!(" ({problems})") }
    )]
    NoRoots {
        /// What was wrong with the system's store, if anything.
        problems: String,
    },
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { flag, path: path.to_path_buf(), source })
}

/// The certificates of a PEM file, at least one.
fn certificates(flag: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|error| TlsError::Pem {
        flag,
        path: path.to_path_buf(),
        reason: error.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { flag, path: path.to_path_buf() });
    }
    Ok(certs)
}

/// The CA bundle's certificates, each checked to be a usable trust anchor.
fn extra_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = certificates(CA_FILE, path, &read(CA_FILE, path)?)?;
    let mut store = RootCertStore::empty();
    for (index, cert) in certs.iter().enumerate() {
        store.add(cert.clone()).map_err(|error| TlsError::NotAnAnchor {
            path: path.to_path_buf(),
            index: index + 1,
            reason: error.to_string(),
        })?;
    }
    Ok(certs)
}

fn encode<'a>(certs: impl Iterator<Item = &'a CertificateDer<'static>>) -> String {
    let blocks: Vec<pem::Pem> = certs.map(|cert| pem::Pem::new("CERTIFICATE", cert.to_vec())).collect();
    pem::encode_many_config(&blocks, pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF))
}

#[cfg(test)]
mod tests;
