//! A throwaway certificate authority for tests of TLS to the services: it
//! signs server certificates (for `localhost` and `127.0.0.1`) and client
//! certificates, and writes everything as PEM files into a scratch
//! directory, removed on drop. Nothing here is trusted by the system.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::services::{ScratchDir, ServerTls};

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key (PKCS#8).
    pub key: PathBuf,
}

/// A CA made for one test, and the files it wrote.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_file: PathBuf,
    dir: ScratchDir,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("ca_file", &self.ca_file).finish_non_exhaustive()
    }
}

impl Pki {
    /// A new CA named `name`, its certificate written to `ca.pem`.
    ///
    /// # Errors
    /// When a key cannot be made or a file written.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let dir = ScratchDir::new("warren-pki")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let ca_file = write(&dir.path, "ca.pem", &ca.pem())?;
        Ok(Self { ca, ca_file, dir })
    }

    /// The CA's certificate (PEM), for `--tls-ca-file` and the servers' CA.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The scratch directory the files are in.
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// A server certificate for `localhost` and `127.0.0.1`, signed by the CA.
    ///
    /// # Errors
    /// When it cannot be made or written.
    pub fn server(&self, name: &str) -> anyhow::Result<Pair> {
        self.issue(name, ExtendedKeyUsagePurpose::ServerAuth, vec!["localhost".into(), "127.0.0.1".into()])
    }

    /// A server's TLS settings: a certificate from [`Pki::server`], and this
    /// CA for client certificates, required or not.
    ///
    /// # Errors
    /// As [`Pki::server`].
    pub fn server_tls(&self, name: &str, require_client_cert: bool) -> anyhow::Result<ServerTls> {
        let Pair { cert, key } = self.server(name)?;
        Ok(ServerTls { cert, key, ca: self.ca_file.clone(), require_client_cert })
    }

    /// A client certificate with common name `name`, signed by the CA.
    ///
    /// # Errors
    /// When it cannot be made or written.
    pub fn client(&self, name: &str) -> anyhow::Result<Pair> {
        self.issue(name, ExtendedKeyUsagePurpose::ClientAuth, Vec::new())
    }

    fn issue(&self, name: &str, usage: ExtendedKeyUsagePurpose, names: Vec<String>) -> anyhow::Result<Pair> {
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca)?;
        Ok(Pair {
            cert: write(&self.dir.path, &format!("{name}.crt"), &cert.pem())?,
            key: write(&self.dir.path, &format!("{name}.key"), &key.serialize_pem())?,
        })
    }
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}
