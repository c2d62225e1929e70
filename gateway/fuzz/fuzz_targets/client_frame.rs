//! Fuzzes `gateway::protocol::decode`, the parser of every text frame a
//! client sends: it must never panic, and what it accepts must follow the
//! rules of docs/protocol.md. (gateway/tests/fuzz.rs checks the same on
//! stable with proptest, against a full model of the rules.)
#![no_main]

use gateway::protocol::{ClientFrame, MAX_CID_LEN, MAX_TEXT_CHARS, decode};
use libfuzzer_sys::fuzz_target;

fn room_ok(room: &str) -> bool {
    (1..=64).contains(&room.len()) && room.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

fuzz_target!(|data: &[u8]| {
    // Text frames are UTF-8: the socket closes with 1007 before decode otherwise.
    let Ok(text) = std::str::from_utf8(data) else { return };
    match decode(text) {
        Ok(ClientFrame::Join { room, .. } | ClientFrame::Leave { room } | ClientFrame::Members { room }) => {
            assert!(room_ok(&room), "{room:?}");
        }
        Ok(ClientFrame::Send { room, text, cid }) => {
            assert!(room_ok(&room), "{room:?}");
            assert!(!text.trim().is_empty() && text.chars().count() <= MAX_TEXT_CHARS, "{text:?}");
            assert!((1..=MAX_CID_LEN).contains(&cid.chars().count()), "{cid:?}");
        }
        Ok(_) => {}
        Err(error) => {
            assert!(!error.code.is_empty());
            // The answer is a valid `error` frame.
            let frame: serde_json::Value = serde_json::from_slice(&error.encode()).expect("error frames are JSON");
            assert_eq!(frame["code"], error.code);
        }
    }
});
