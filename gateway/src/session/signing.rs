//! The session cookie's value: `s:<sid>.<sig>`, URL-encoded, where `sig` is
//! the unpadded base64 HMAC-SHA256 of `<sid>` keyed by the secret, exactly
//! what the npm package `cookie-signature` computes (express-session's
//! format); and the rule for cookie names.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::Sha256;

use super::{SessionError, SessionId};

/// What `encodeURIComponent` leaves alone; everything else is escaped.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// Signs and checks cookie values.
#[derive(Clone)]
pub struct Signer {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// A signer keyed by `secret`.
    pub fn new(secret: &str) -> Self {
        #[allow(clippy::expect_used)]
        let mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
        Self { mac }
    }

    /// The cookie value for `id`, URL-encoded: `s%3A<sid>.<sig>`.
    pub fn cookie_value(&self, id: &SessionId) -> String {
        let mut mac = self.mac.clone();
        mac.update(id.0.as_bytes());
        let signature = STANDARD_NO_PAD.encode(mac.finalize().into_bytes());
        utf8_percent_encode(&format!("s:{}.{signature}", id.0), URI_COMPONENT).to_string()
    }

    /// Checks a cookie value and returns its session id.
    ///
    /// Tolerates a `<server>~` prefix that a proxy in cookie-prefix mode adds.
    ///
    /// # Errors
    /// `BadSignature` for anything but a correctly signed value.
    pub fn verify(&self, cookie_value: &str) -> Result<SessionId, SessionError> {
        // As sent, then without a `<server>~` prefix (which may itself hold
        // anything but `~`).
        self.verify_exact(cookie_value).or_else(|error| match cookie_value.split_once('~') {
            Some((_, rest)) => self.verify_exact(rest),
            None => Err(error),
        })
    }

    fn verify_exact(&self, value: &str) -> Result<SessionId, SessionError> {
        let decoded = percent_decode_str(value).decode_utf8().map_err(|_| SessionError::BadSignature)?;
        let signed = decoded.strip_prefix("s:").ok_or(SessionError::BadSignature)?;
        let (sid, signature) = signed.rsplit_once('.').ok_or(SessionError::BadSignature)?;
        let signature = STANDARD_NO_PAD.decode(signature).map_err(|_| SessionError::BadSignature)?;
        let mut mac = self.mac.clone();
        mac.update(sid.as_bytes());
        mac.verify_slice(&signature).map_err(|_| SessionError::BadSignature)?;
        if sid.is_empty() {
            return Err(SessionError::BadSignature);
        }
        Ok(SessionId(sid.to_owned()))
    }
}

/// Whether `name` can name a cookie: an RFC 6265 token (visible ASCII
/// without separators), which every browser and balancer takes as is.
pub fn is_cookie_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_cookie_signature() {
        // cookie-signature: sign('hello', 'tobiiscool') ===
        // 'hello.DGDUkGlIkCzPz+C0B064FNgHdEjox7ch8tOBGslZ5QI'
        let signer = Signer::new("tobiiscool");
        let value = signer.cookie_value(&SessionId("hello".to_owned()));
        assert_eq!(value, "s%3Ahello.DGDUkGlIkCzPz%2BC0B064FNgHdEjox7ch8tOBGslZ5QI");
        assert_eq!(signer.verify(&value).expect("valid"), SessionId("hello".to_owned()));
    }

    #[test]
    fn forged_and_malformed_values_are_refused() {
        let signer = Signer::new("secret");
        let good = signer.cookie_value(&SessionId::generate());
        assert!(Signer::new("other").verify(&good).is_err());
        assert!(signer.verify(&good.replace("s%3A", "")).is_err());
        assert!(signer.verify(&good[..good.len() - 2]).is_err());
        assert!(signer.verify("s%3Aabc").is_err());
        assert!(signer.verify("").is_err());
        assert!(signer.verify("s%3A.%%%").is_err());
    }

    #[test]
    fn a_proxy_prefix_is_tolerated() {
        let signer = Signer::new("secret");
        let id = SessionId::generate();
        let value = signer.cookie_value(&id);
        assert_eq!(signer.verify(&format!("gw1~{value}")).expect("valid"), id);
        assert_eq!(signer.verify(&format!("s:1~{value}")).expect("valid"), id, "a prefix that looks signed");
    }
}
