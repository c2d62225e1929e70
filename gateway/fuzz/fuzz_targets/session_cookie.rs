//! Fuzzes `gateway::session::Signer::verify`, the parser of the session
//! cookie: it must never panic, accept only values signed with its secret
//! (one changed character is refused), and tolerate a proxy's `<server>~`
//! prefix. Valid values are signed here independently of `Signer`, as the
//! npm package cookie-signature does. (gateway/tests/fuzz.rs checks the same
//! on stable with proptest.)
#![no_main]

use arbitrary::Arbitrary;
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use gateway::session::Signer;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::Sha256;

const SECRET: &str = "fuzz-secret";

/// What JavaScript's `encodeURIComponent` leaves alone.
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

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    /// Any cookie value.
    value: &'a str,
    /// A session id to sign.
    sid: &'a str,
    /// A proxy server name (cookie-safe characters are kept).
    server: &'a str,
    /// One character of the signed value to replace, and by what.
    at: usize,
    with: char,
}

fn signed(sid: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(sid.as_bytes());
    let signature = STANDARD_NO_PAD.encode(mac.finalize().into_bytes());
    utf8_percent_encode(&format!("s:{sid}.{signature}"), URI_COMPONENT).to_string()
}

fn decoded(value: &str) -> String {
    percent_decode_str(value).decode_utf8_lossy().into_owned()
}

fuzz_target!(|input: Input<'_>| {
    let signer = Signer::new(SECRET);

    // Anything: no panic; accepted only with a real signature, which then round-trips.
    if let Ok(id) = signer.verify(input.value) {
        assert_eq!(signer.verify(&signer.cookie_value(&id)).ok(), Some(id));
    }
    if input.sid.is_empty() {
        return;
    }

    // A valid value is accepted, re-signed identically, and with a server prefix.
    let value = signed(input.sid);
    let id = signer.verify(&value).expect("a signed value verifies");
    assert_eq!(signer.cookie_value(&id), value);
    let server: String =
        input.server.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')).collect();
    assert_eq!(signer.verify(&format!("{server}~{value}")).ok(), Some(id.clone()));
    assert!(Signer::new("another-secret").verify(&value).is_err());

    // One character changed: refused, unless only the case of a %XX escape changed.
    let mut chars: Vec<char> = value.chars().collect();
    let at = input.at % chars.len();
    if chars[at] != input.with {
        chars[at] = input.with;
        let changed: String = chars.into_iter().collect();
        if let Ok(other) = signer.verify(&changed) {
            assert_eq!(decoded(&changed), decoded(&value), "{changed:?} was accepted");
            assert_eq!(other, id);
        }
    }
});
