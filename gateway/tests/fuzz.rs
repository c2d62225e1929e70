//! Property tests for the two parsers that read bytes straight from the
//! internet: the client-frame decoder (`protocol::decode`) and the session
//! cookie check (`session::Signer::verify`, and `SessionStore::id_from_headers`
//! around it).
//!
//! Each property runs 2,000 random cases by default (a few seconds); set
//! `PROPTEST_CASES` for a long run (docs/hardening.md, "Fuzzing"). A failure
//! prints the shrunk input and saves its seed in
//! `gateway/tests/fuzz.proptest-regressions` (commit that file: its cases are
//! replayed first on every run).
//!
//! The expected results are written from `docs/protocol.md`, not from the
//! code, so a disagreement is either a bug or a doc to fix.

use std::collections::BTreeSet;
use std::sync::LazyLock;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use gateway::protocol::{ClientFrame, FrameError, MAX_CID_LEN, MAX_TEXT_CHARS, decode};
use gateway::session::{DEFAULT_COOKIE_NAME as COOKIE_NAME, SessionError, SessionStore, Signer};
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Map, Value, json};
use sha2::Sha256;

/// 2,000 cases per property unless `PROPTEST_CASES` says otherwise.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(2000);
    // Failures are saved beside this file, in fuzz.proptest-regressions.
    let failure_persistence = Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions")) as _);
    ProptestConfig { cases, failure_persistence, ..ProptestConfig::default() }
}

// === The client-frame decoder ===

/// The codes of the "Error codes" table in docs/protocol.md.
static DOCUMENTED_CODES: LazyLock<BTreeSet<String>> = LazyLock::new(|| {
    let doc = include_str!("../../docs/protocol.md");
    let section = doc.split("### Error codes").nth(1).expect("docs/protocol.md has an \"Error codes\" section");
    section
        .lines()
        .skip(1)
        .take_while(|line| !line.starts_with('#'))
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(code, _)| code.to_owned())
        .collect()
});

/// What docs/protocol.md says `decode` must answer.
#[derive(Debug)]
enum Expected {
    Frame(ClientFrame),
    /// Any of these codes (the doc does not order the rules).
    Refused(BTreeSet<&'static str>),
}

fn refused(codes: &[&'static str]) -> Expected {
    Expected::Refused(codes.iter().copied().collect())
}

/// "`cid` (1-64 characters)": characters, like the text limit, not bytes.
fn cid_ok(cid: &str) -> bool {
    (1..=MAX_CID_LEN).contains(&cid.chars().count())
}

fn room_ok(room: &str) -> bool {
    (1..=64).contains(&room.len()) && room.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

/// The documented rules, applied to a JSON text.
fn expected(text: &str) -> Expected {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => expected_for(&object),
        _ => refused(&["bad_json"]),
    }
}

fn expected_for(object: &Map<String, Value>) -> Expected {
    let string = |name: &str| object.get(name).and_then(Value::as_str);
    let Some(kind) = string("type") else { return refused(&["bad_frame"]) };
    if !matches!(kind, "join" | "leave" | "send" | "members" | "ping") {
        return refused(&["unknown_type"]);
    }
    // Every rule the frame breaks; `decode` may name any one of them.
    let mut broken = BTreeSet::new();
    let mut check = |field: &str, wrong: &'static str, ok: &dyn Fn(&str) -> bool| match object.get(field) {
        // "`bad_frame`: a field is missing", and for cid also "`bad_cid`: cid missing".
        None if field == "cid" => broken.extend(["bad_frame", "bad_cid"]),
        Some(Value::String(value)) if !ok(value) => {
            broken.insert(wrong);
        }
        Some(Value::String(_)) => {}
        _ => {
            broken.insert("bad_frame");
        }
    };
    if kind != "ping" {
        check("room", "bad_room", &room_ok);
    }
    if kind == "send" {
        check("cid", "bad_cid", &cid_ok);
        check("text", "bad_text", &|text| !text.trim().is_empty() && text.chars().count() <= MAX_TEXT_CHARS);
    }
    let since = object.get("since").filter(|since| !since.is_null());
    if kind == "join" && since.is_some_and(|since| since.as_u64().is_none()) {
        broken.insert("bad_frame");
    }
    if !broken.is_empty() {
        return Expected::Refused(broken);
    }
    let field = |name: &str| string(name).unwrap_or_default().to_owned();
    Expected::Frame(match kind {
        "join" => ClientFrame::Join { room: field("room"), since: since.and_then(Value::as_u64) },
        "leave" => ClientFrame::Leave { room: field("room") },
        "members" => ClientFrame::Members { room: field("room") },
        "send" => ClientFrame::Send { room: field("room"), text: field("text"), cid: field("cid") },
        _ => ClientFrame::Ping,
    })
}

/// Decodes `text` and checks the answer against the doc.
fn check_decode(text: &str) -> Result<(), TestCaseError> {
    let actual = decode(text);
    match (&actual, expected(text)) {
        (Ok(frame), Expected::Frame(want)) => prop_assert_eq!(frame, &want),
        (Err(error), Expected::Refused(codes)) => {
            prop_assert!(codes.contains(error.code), "code {:?}, expected one of {:?}", error.code, codes);
            check_error(text, error)?;
        }
        (actual, want) => prop_assert!(false, "decode gave {:?}, the doc says {:?}", actual, want),
    }
    if let Ok(ClientFrame::Send { text, cid, .. }) = &actual {
        prop_assert!((1..=MAX_TEXT_CHARS).contains(&text.chars().count()) && !text.trim().is_empty());
        prop_assert!(cid_ok(cid), "cid {:?}", cid);
    }
    if let Ok(ClientFrame::Join { room, .. } | ClientFrame::Leave { room } | ClientFrame::Members { room }) = &actual {
        prop_assert!(room_ok(room));
    }
    Ok(())
}

/// Every refusal has a documented code, echoes only the frame's own `cid`,
/// and encodes to a valid `error` frame.
fn check_error(text: &str, error: &FrameError) -> Result<(), TestCaseError> {
    prop_assert!(!error.code.is_empty());
    prop_assert!(DOCUMENTED_CODES.contains(error.code), "{:?} is not in docs/protocol.md", error.code);
    if let Some(cid) = &error.cid {
        let sent = serde_json::from_str::<Value>(text).ok();
        let sent = sent.as_ref().and_then(|frame| frame.get("cid")).and_then(Value::as_str);
        prop_assert_eq!(Some(cid.as_str()), sent, "the error carries a cid the frame did not send");
    }
    let frame: Value = serde_json::from_slice(&error.encode()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&frame["type"], "error");
    prop_assert_eq!(&frame["code"], error.code);
    Ok(())
}

fn valid_room() -> impl Strategy<Value = String> {
    "[a-z0-9_-]{1,64}"
}

/// Field values of every JSON type, biased to the edges of each rule.
fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => valid_room().prop_map(Value::from),
        2 => "[a-zA-Z0-9_ .!-]{0,70}".prop_map(Value::from),
        2 => "\\PC{0,70}".prop_map(Value::from),
        1 => any::<String>().prop_map(Value::from),
        1 => "[ \t\n\r\u{a0}\u{2003}\u{3000}]{0,6}".prop_map(Value::from),
        // Text around the 4,000-character limit, ASCII or not.
        1 => ("[ xé€😀]", (MAX_TEXT_CHARS - 3)..(MAX_TEXT_CHARS + 3)).prop_map(|(c, n)| Value::from(c.repeat(n))),
        // cids around the 64-character limit, ASCII or not.
        1 => ("[xé€😀]", (MAX_CID_LEN - 2)..(MAX_CID_LEN + 2)).prop_map(|(c, n)| Value::from(c.repeat(n))),
        2 => any::<u64>().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(Value::from),
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::from),
        1 => Just(json!(["lobby"])),
        1 => Just(json!({"room": "lobby"})),
    ]
}

/// A frame-shaped object: a `type` (valid, garbage, wrong type or missing),
/// each of room/text/cid/since present or not with a value of any type, and
/// sometimes unknown fields.
fn frame_object() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        8 => prop::sample::select(vec!["join", "leave", "send", "members", "ping"]).prop_map(Value::from),
        1 => "\\PC{0,12}".prop_map(Value::from),
        1 => field_value(),
    ];
    let field = || prop::option::weighted(0.85, field_value());
    let extra = prop::collection::btree_map("[a-z]{1,8}", field_value(), 0..3);
    (prop::option::weighted(0.95, kind), field(), field(), field(), field(), extra).prop_map(
        |(kind, room, text, cid, since, extra)| {
            let mut object: Map<String, Value> = extra.into_iter().collect();
            for (name, value) in [("type", kind), ("room", room), ("text", text), ("cid", cid), ("since", since)] {
                match value {
                    Some(value) => object.insert(name.to_owned(), value),
                    None => object.remove(name),
                };
            }
            Value::Object(object)
        },
    )
}

/// Any JSON value, a few levels deep, with the protocol's keys likely.
fn any_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        prop::sample::select(vec!["type", "room", "text", "cid", "since"]).prop_map(str::to_owned),
        "\\PC{0,6}",
    ];
    field_value().prop_recursive(4, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Text that is almost JSON: tokens of the protocol glued at random, so the
/// parser sees truncated strings, stray escapes, duplicate keys and nesting.
fn json_soup() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"",
            "\\",
            "\\u",
            "\\ud800",
            "null",
            "true",
            "-",
            "1e999",
            "0.5",
            "18446744073709551616",
            "\"type\"",
            "\"join\"",
            "\"send\"",
            "\"members\"",
            "\"room\"",
            "\"text\"",
            "\"cid\"",
            "\"since\"",
            "\"lobby\"",
            " ",
            "\u{0}",
            "\u{feff}",
        ])
        .prop_map(str::to_owned),
        "\\PC{1,4}",
    ];
    prop::collection::vec(token, 0..48).prop_map(|tokens| tokens.concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decode_answers_any_text(text in prop_oneof![any::<String>(), "\\PC{0,200}", json_soup()]) {
        check_decode(&text)?;
    }

    #[test]
    fn decode_answers_deep_nesting(depth in 0usize..5000, open in prop::sample::select(vec!["[", "{\"type\":"])) {
        check_decode(&open.repeat(depth))?;
    }

    #[test]
    fn decode_follows_the_doc_for_frames(frame in frame_object()) {
        check_decode(&frame.to_string())?;
    }

    #[test]
    fn decode_follows_the_doc_for_any_json(value in any_json()) {
        check_decode(&value.to_string())?;
    }

    #[test]
    fn valid_frames_are_accepted(
        room in valid_room(),
        text in "[ ]{0,3}\\PC{1,60}[ ]{0,3}".prop_filter("not blank", |t| !t.trim().is_empty()),
        cid in "\\PC{1,64}",
        since in prop::option::of(any::<u64>()),
    ) {
        let join = json!({"type": "join", "room": room, "since": since}).to_string();
        prop_assert_eq!(decode(&join), Ok(ClientFrame::Join { room: room.clone(), since }));
        let send = json!({"type": "send", "room": room, "text": text, "cid": cid}).to_string();
        prop_assert_eq!(decode(&send), Ok(ClientFrame::Send { room, text, cid }));
    }
}

// === The session cookie ===

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

/// The cookie value express-session would set for `sid`, computed here
/// independently of `Signer`: `encodeURIComponent("s:" + sid + "." + sig)`.
fn express_cookie(secret: &str, sid: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(sid.as_bytes());
    let signature = STANDARD_NO_PAD.encode(mac.finalize().into_bytes());
    utf8_percent_encode(&format!("s:{sid}.{signature}"), URI_COMPONENT).to_string()
}

fn secret() -> impl Strategy<Value = String> {
    "[ -~]{1,40}"
}

/// Session ids: express-session's (24 random bytes, base64url) and, since
/// `verify` must not care, any non-empty text.
fn sid() -> impl Strategy<Value = String> {
    prop_oneof!["[A-Za-z0-9_-]{32}", "\\PC{1,40}"]
}

/// Strings rich in what the cookie parser looks at: escapes (valid, broken,
/// lower-case, non-UTF-8), `~`, `s:`, dots, base64, non-ASCII; sometimes huge.
fn cookie_soup() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        prop::sample::select(vec![
            "s%3A",
            "s%3a",
            "s:",
            "%",
            "%3",
            "%2B",
            "%2F",
            "%2b",
            "%FF",
            "%C3",
            "%E2%82%AC",
            "%00",
            "~",
            "gw1~",
            ".",
            "..",
            "=",
            "+",
            "/",
            "é",
            "\u{0}",
        ])
        .prop_map(str::to_owned),
        "[A-Za-z0-9+/_-]{1,43}",
        "\\PC{1,3}",
    ];
    let soup = prop::collection::vec(token, 0..24).prop_map(|tokens| tokens.concat());
    prop_oneof![
        8 => soup,
        1 => any::<String>(),
        1 => ("\\PC{1,16}", 0usize..8192).prop_map(|(piece, n)| piece.repeat(n)),
    ]
}

/// A valid cookie value with one character replaced by another.
fn mutated(value: &str, at: prop::sample::Index, with: char) -> Option<String> {
    let mut chars: Vec<char> = value.chars().collect();
    let at = at.index(chars.len());
    if chars[at] == with {
        return None;
    }
    chars[at] = with;
    Some(chars.into_iter().collect())
}

fn decoded(value: &str) -> String {
    percent_decode_str(value).decode_utf8_lossy().into_owned()
}

/// A store whose Redis is never reached: `id_from_headers` only reads cookies.
fn offline_store(signer: Signer) -> SessionStore {
    let target = gateway::redis_client::Target::node("redis://127.0.0.1:1");
    let redis = gateway::redis_client::Redis::open(&target, &platform::tls::Files::default()).expect("a plain URL");
    let redis = gateway::redis_client::SharedConnection::new(redis); // connects at its first command
    SessionStore::new(redis, signer, Duration::from_secs(60), false)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn verify_refuses_junk(value in cookie_soup(), secret in secret()) {
        // Junk never panics, and is never accepted but by a real signature.
        if let Ok(id) = Signer::new(&secret).verify(&value) {
            let signer = Signer::new(&secret);
            prop_assert_eq!(signer.verify(&signer.cookie_value(&id)).ok(), Some(id));
        }
    }

    #[test]
    fn verify_round_trips(secret in secret(), sid in sid()) {
        let signer = Signer::new(&secret);
        let value = express_cookie(&secret, &sid);
        let id = signer.verify(&value).map_err(|e| TestCaseError::fail(format!("{value:?} refused: {e}")))?;
        prop_assert_eq!(signer.cookie_value(&id), value, "Signer signs as express-session does");
        prop_assert_eq!(signer.verify(&signer.cookie_value(&id)).ok(), Some(id));
    }

    #[test]
    fn verify_refuses_other_secrets(secret in secret(), other in secret(), sid in sid()) {
        prop_assume!(secret != other);
        let value = express_cookie(&secret, &sid);
        prop_assert!(matches!(Signer::new(&other).verify(&value), Err(SessionError::BadSignature)));
    }

    #[test]
    fn verify_refuses_any_one_character_change(
        secret in secret(),
        sid in sid(),
        at in any::<prop::sample::Index>(),
        with in prop_oneof![Just('~'), Just('%'), Just('.'), Just('s'), "[A-Za-z0-9]".prop_map(|c| c.chars().next().unwrap_or('x')), any::<char>()],
    ) {
        let value = express_cookie(&secret, &sid);
        let Some(changed) = mutated(&value, at, with) else { return Ok(()) };
        let signer = Signer::new(&secret);
        if let Ok(id) = signer.verify(&changed) {
            // Only a change of case inside a %XX escape decodes to the same value.
            prop_assert_eq!(decoded(&changed), decoded(&value), "{:?} was accepted", changed);
            prop_assert_eq!(Some(id), signer.verify(&value).ok());
        }
    }

    #[test]
    fn verify_tolerates_a_proxy_prefix(secret in secret(), sid in sid(), server in "[A-Za-z0-9_.-]{0,32}") {
        let signer = Signer::new(&secret);
        let value = express_cookie(&secret, &sid);
        let prefixed = signer.verify(&format!("{server}~{value}")).ok();
        prop_assert!(prefixed.is_some(), "{:?} refused", format!("{server}~{value}"));
        prop_assert_eq!(prefixed, signer.verify(&value).ok());
    }

    #[test]
    fn cookie_headers_never_panic(
        headers in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..4),
        soups in prop::collection::vec(cookie_soup(), 0..3),
        sid in sid(),
        place in any::<prop::sample::Index>(),
    ) {
        let signer = Signer::new("secret");
        let store = offline_store(signer.clone());
        let mut map = HeaderMap::new();
        for bytes in headers {
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                map.append(http::header::COOKIE, value);
            }
        }
        for soup in &soups {
            if let Ok(value) = HeaderValue::from_str(&format!("{COOKIE_NAME}={soup}")) {
                map.append(http::header::COOKIE, value);
            }
        }
        let _ = store.id_from_headers(&map);
        // A valid cookie among junk ones is found.
        let mut cookies: Vec<String> = soups
            .iter()
            .map(|soup| format!("junk={}", soup.replace(|c: char| !c.is_ascii_graphic() || c == ';', "")))
            .collect();
        let good = express_cookie("secret", &sid);
        cookies.insert(place.index(cookies.len() + 1), format!("{COOKIE_NAME}={good}"));
        let mut map = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(&cookies.join("; ")) {
            map.append(http::header::COOKIE, value);
            prop_assert_eq!(store.id_from_headers(&map).ok(), signer.verify(&good).ok());
        }
    }
}
