use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

use super::*;

/// A scratch directory of PEM files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("warren-platform-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path).expect("scratch dir");
        Self(path)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA, and a client certificate with its key, signed by it.
fn pki(dir: &Dir) -> (PathBuf, PathBuf, PathBuf) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
    let key = KeyPair::generate().expect("key");
    let client = CertificateParams::new(vec!["client".to_owned()]).expect("params").signed_by(&key, &ca).expect("cert");
    (
        dir.write("ca.pem", &ca.pem()),
        dir.write("client.crt", &client.pem()),
        dir.write("client.key", &key.serialize_pem()),
    )
}

fn files(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Files {
    Files {
        ca_file: ca.map(Path::to_path_buf),
        client_cert: cert.map(Path::to_path_buf),
        client_key: key.map(Path::to_path_buf),
    }
}

fn blocks(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

#[test]
fn tls_is_chosen_by_the_scheme() {
    assert!(is_tls_url("rediss://:pw@cache:6380"));
    assert!(is_tls_url("AMQPS://u:p@broker:5671/%2f"));
    assert!(!is_tls_url("redis://cache:6379"));
    assert!(!is_tls_url("amqp://u:p@broker/%2f"));
    assert!(for_url("redis://cache:6379", &files(Some(Path::new("/nowhere")), None, None)).expect("unused").is_none());
}

#[test]
fn the_extra_ca_is_added_to_the_system_roots() {
    let dir = Dir::new("extra");
    let (ca, cert, key) = pki(&dir);
    let tls = Tls::load(&files(Some(&ca), Some(&cert), Some(&key))).expect("loads");
    let extra = tls.extra_pem().expect("an extra root");
    assert_eq!(blocks(&extra), 1);
    let system = Tls::load(&Files::default()).map(|t| blocks(&t.roots_pem())).unwrap_or(0);
    assert_eq!(blocks(&tls.roots_pem()), system + 1, "the system's roots and the extra one");
    assert!(tls.roots_pem().ends_with(&extra), "the extra root comes last");
    let identity = tls.identity().expect("a client pair");
    assert!(identity.cert_pem().starts_with(b"-----BEGIN CERTIFICATE-----"));
    assert_eq!(format!("{identity:?}"), "Identity(REDACTED)");
    let shown = tls.to_string();
    assert!(shown.contains("+ 1 from") && shown.contains("client certificate"), "{shown}");
}

#[test]
fn bad_files_name_the_flag_and_the_file() {
    let dir = Dir::new("bad");
    let (ca, cert, key) = pki(&dir);
    let missing = dir.0.join("missing.pem");
    let error = Tls::load(&files(Some(&missing), None, None)).expect_err("missing");
    assert!(error.to_string().starts_with(&format!("--tls-ca-file {}: ", missing.display())), "{error}");

    let empty = dir.write("empty.pem", "not a certificate\n");
    let error = Tls::load(&files(Some(&empty), None, None)).expect_err("empty");
    assert!(matches!(error, TlsError::NoCertificate { .. }), "{error}");

    let error = Tls::load(&files(Some(&ca), Some(&cert), None)).expect_err("half a pair");
    assert!(matches!(error, TlsError::HalfPair), "{error}");

    let error = Tls::load(&files(Some(&ca), Some(&cert), Some(&cert))).expect_err("a certificate for a key");
    assert!(matches!(error, TlsError::NoKey { .. }), "{error}");

    let other = dir.write("other.key", &KeyPair::generate().expect("key").serialize_pem());
    let error = Tls::load(&files(Some(&ca), Some(&cert), Some(&other))).expect_err("another key");
    assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
    assert!(Tls::load(&files(Some(&ca), Some(&cert), Some(&key))).is_ok(), "the right pair");
}
