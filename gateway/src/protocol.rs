//! The client protocol v1 (`docs/protocol.md`): JSON frames in and out, and
//! every rule a frame must follow. Pure: no sockets, no state.

use bytes::Bytes;
use proto::warren::v1::Message;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The longest message text, in characters.
pub const MAX_TEXT_CHARS: usize = 4000;
/// The longest client id of a send.
pub const MAX_CID_LEN: usize = 64;

/// A frame from the client, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// Join a room, replaying after `since` (or the last 50 without it).
    Join { room: String, since: Option<u64> },
    /// Leave a room.
    Leave { room: String },
    /// Send a message to a joined room.
    Send { room: String, text: String, cid: String },
    /// Ask for the whole member list of a joined room (`joined` carries it
    /// only up to a size).
    Members { room: String },
    /// An application-level heartbeat (browsers cannot see WebSocket pings).
    Ping,
}

impl ClientFrame {
    /// The frame's `type`, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Join { .. } => "join",
            Self::Leave { .. } => "leave",
            Self::Send { .. } => "send",
            Self::Members { .. } => "members",
            Self::Ping => "ping",
        }
    }
}

/// Why a client frame was refused: the `error` frame's code and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct FrameError {
    /// Machine-readable code (see `docs/protocol.md`).
    pub code: &'static str,
    /// For people.
    pub message: String,
    /// The send this answers, when the frame carried one.
    pub cid: Option<String>,
    /// When a retry may succeed (rate limits).
    pub retry_after: Option<std::time::Duration>,
    /// The room a refused `join` named, so that the client knows which to
    /// join again.
    pub room: Option<String>,
}

impl FrameError {
    /// An error with this code and message.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), cid: None, retry_after: None, room: None }
    }

    /// The same error, answering the send with this cid.
    pub fn with_cid(mut self, cid: Option<String>) -> Self {
        self.cid = cid;
        self
    }

    /// The same error, answering a join of `room`.
    pub fn with_room(mut self, room: &str) -> Self {
        self.room = Some(room.to_owned());
        self
    }

    /// The same error, saying when to retry.
    pub fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }
}

#[derive(Deserialize)]
struct JoinFields {
    room: String,
    since: Option<u64>,
}

/// The fields of a frame that names only a room (`leave`, `members`).
#[derive(Deserialize)]
struct RoomFields {
    room: String,
}

#[derive(Deserialize)]
struct SendFields {
    room: String,
    text: String,
    cid: String,
}

/// Parses and validates one text frame.
///
/// # Errors
/// A [`FrameError`] naming the first rule the frame breaks.
pub fn decode(text: &str) -> Result<ClientFrame, FrameError> {
    let value: Value =
        serde_json::from_str(text).map_err(|_| FrameError::new("bad_json", "the frame is not valid JSON"))?;
    let Value::Object(ref object) = value else {
        return Err(FrameError::new("bad_json", "the frame must be a JSON object"));
    };
    let cid = object.get("cid").and_then(Value::as_str).map(str::to_owned);
    let kind = object
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| FrameError::new("bad_frame", "the frame needs a string field \"type\""))?;
    let fields_error = |e: serde_json::Error| FrameError::new("bad_frame", format!("{kind}: {e}"));
    match kind {
        "join" => {
            let JoinFields { room, since } = serde_json::from_value(value.clone()).map_err(fields_error)?;
            check_room(&room)?;
            Ok(ClientFrame::Join { room, since })
        }
        "leave" | "members" => {
            let RoomFields { room } = serde_json::from_value(value.clone()).map_err(fields_error)?;
            check_room(&room)?;
            Ok(if kind == "leave" { ClientFrame::Leave { room } } else { ClientFrame::Members { room } })
        }
        "send" => {
            let SendFields { room, text, cid } =
                serde_json::from_value(value.clone()).map_err(|e| fields_error(e).with_cid(cid.clone()))?;
            check_cid(&cid)?;
            let with_cid = |error: FrameError| error.with_cid(Some(cid.clone()));
            check_room(&room).map_err(with_cid)?;
            check_text(&text).map_err(with_cid)?;
            Ok(ClientFrame::Send { room, text, cid })
        }
        "ping" => Ok(ClientFrame::Ping),
        other => {
            // Echo a bounded piece of what the client sent, not all of it.
            let shown: String = other.chars().take(32).collect();
            Err(FrameError::new("unknown_type", format!("unknown frame type {shown:?}")).with_cid(cid))
        }
    }
}

/// Whether `room` matches `[a-z0-9_-]{1,64}` (the contract's rule).
pub use proto::rules::is_valid_room;

/// One rule of the protocol, as an error frame would state it.
///
/// # Errors
/// The [`FrameError`] that says which rule broke.
pub fn check_room(room: &str) -> Result<(), FrameError> {
    if is_valid_room(room) {
        Ok(())
    } else {
        Err(FrameError::new("bad_room", "room names are 1-64 of a-z, 0-9, '_' and '-'"))
    }
}

/// One rule of the protocol, as an error frame would state it.
///
/// # Errors
/// The [`FrameError`] that says which rule broke.
pub fn check_text(text: &str) -> Result<(), FrameError> {
    if text.trim().is_empty() {
        return Err(FrameError::new("bad_text", "the text is empty"));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(FrameError::new("bad_text", format!("the text is over {MAX_TEXT_CHARS} characters")));
    }
    Ok(())
}

/// One rule of the protocol, as an error frame would state it.
///
/// # Errors
/// The [`FrameError`] that says which rule broke.
pub fn check_cid(cid: &str) -> Result<(), FrameError> {
    let chars = cid.chars().count();
    if chars == 0 || chars > MAX_CID_LEN {
        return Err(FrameError::new("bad_cid", format!("cid must be 1 to {MAX_CID_LEN} characters")));
    }
    Ok(())
}

/// A frame to the client.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    /// First frame on every socket.
    Welcome {
        user: &'a str,
        instance: &'a str,
        /// The stream's token, on the Server-Sent Events transport: what
        /// the client's `POST /sse?stream=` names.
        #[serde(skip_serializing_if = "Option::is_none")]
        stream: Option<&'a str>,
    },
    /// A join took effect; `count` users are in the room now, the joiner
    /// included, and `members` lists them, sorted, unless there are more
    /// than a cap (then `truncated`; the client asks with `members`). Built
    /// by [`ServerFrame::joined`].
    Joined {
        room: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        members: Option<&'a [String]>,
        count: usize,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    /// Answers `members`: every user in the room, sorted.
    Members { room: &'a str, members: &'a [String] },
    /// A leave took effect.
    Left { room: &'a str },
    /// A chat message.
    Message { room: &'a str, id: u64, user: &'a str, text: &'a str, ts: i64, cid: &'a str },
    /// A send is durable.
    Ack { cid: &'a str, id: u64 },
    /// Something was refused.
    Error {
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        cid: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
    },
    /// What changed in a room's presence over one batch interval: users
    /// whose first socket (on any gateway) joined, and users whose last
    /// socket left; each sorted, net of changes that cancelled out.
    #[serde(rename = "presence_diff")]
    PresenceDiff { room: &'a str, joins: &'a [&'a str], leaves: &'a [&'a str] },
    /// Reconnect (elsewhere) after this delay.
    Reconnect { after_ms: u64 },
    /// Answers a `ping`.
    Pong,
}

impl<'a> ServerFrame<'a> {
    /// The `joined` frame for a room whose members are `members` (sorted):
    /// the list itself only when it holds at most `cap` names, the count
    /// always. A big room's list would make every join cost its size.
    pub fn joined(room: &'a str, members: &'a [String], cap: usize) -> Self {
        let truncated = members.len() > cap;
        ServerFrame::Joined { room, members: (!truncated).then_some(members), count: members.len(), truncated }
    }
}

impl ServerFrame<'_> {
    /// The frame as JSON text, ready to share between sockets.
    pub fn encode(&self) -> Bytes {
        // Serializing these plain structs cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// The `message` frame for a bridge message.
    pub fn message(message: &Message) -> ServerFrame<'_> {
        ServerFrame::Message {
            room: &message.room,
            id: message.id,
            user: &message.user,
            text: &message.text,
            ts: message.ts,
            cid: &message.cid,
        }
    }
}

impl FrameError {
    /// The `error` frame that answers this.
    pub fn encode(&self) -> Bytes {
        let retry_after_ms = self.retry_after.map(|wait| u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1));
        let (cid, room) = (self.cid.as_deref(), self.room.as_deref());
        ServerFrame::Error { code: self.code, message: &self.message, cid, retry_after_ms, room }.encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> &'static str {
        decode(text).expect_err("must be refused").code
    }

    #[test]
    fn valid_frames() {
        assert_eq!(
            decode(r#"{"type":"join","room":"lobby","since":41}"#),
            Ok(ClientFrame::Join { room: "lobby".into(), since: Some(41) })
        );
        assert_eq!(
            decode(r#"{"type":"join","room":"lobby"}"#),
            Ok(ClientFrame::Join { room: "lobby".into(), since: None })
        );
        assert_eq!(decode(r#"{"type":"leave","room":"a-b_1"}"#), Ok(ClientFrame::Leave { room: "a-b_1".into() }));
        assert_eq!(decode(r#"{"type":"members","room":"lobby"}"#), Ok(ClientFrame::Members { room: "lobby".into() }));
        assert_eq!(decode(r#"{"type":"ping"}"#), Ok(ClientFrame::Ping));
        assert_eq!(
            decode(r#"{"type":"send","room":"lobby","text":"hi","cid":"c-1","user":"mallory"}"#),
            Ok(ClientFrame::Send { room: "lobby".into(), text: "hi".into(), cid: "c-1".into() })
        );
    }

    #[test]
    fn each_rule_has_its_code() {
        assert_eq!(code("{not json"), "bad_json");
        assert_eq!(code("[1,2]"), "bad_json");
        assert_eq!(code(r#"{"room":"lobby"}"#), "bad_frame");
        assert_eq!(code(r#"{"type":"dance"}"#), "unknown_type");
        assert_eq!(code(r#"{"type":"join","room":7}"#), "bad_frame");
        assert_eq!(code(r#"{"type":"join","room":"lobby","since":-1}"#), "bad_frame");
        assert_eq!(code(r#"{"type":"join","room":"Lobby!"}"#), "bad_room");
        assert_eq!(code(r#"{"type":"members"}"#), "bad_frame");
        assert_eq!(code(r#"{"type":"members","room":"Lobby!"}"#), "bad_room");
        assert_eq!(code(r#"{"type":"send","room":"lobby","text":"  ","cid":"c"}"#), "bad_text");
        let long = "x".repeat(MAX_TEXT_CHARS + 1);
        assert_eq!(code(&format!(r#"{{"type":"send","room":"lobby","text":"{long}","cid":"c"}}"#)), "bad_text");
        assert_eq!(code(r#"{"type":"send","room":"lobby","text":"hi","cid":""}"#), "bad_cid");
    }

    #[test]
    fn send_errors_carry_the_cid() {
        let error = decode(r#"{"type":"send","room":"lobby","text":"","cid":"c-9"}"#).expect_err("empty");
        assert_eq!(error.cid.as_deref(), Some("c-9"));
        let json: Value = serde_json::from_slice(&error.encode()).expect("json");
        assert_eq!(json["type"], "error");
        assert_eq!(json["cid"], "c-9");
    }

    #[test]
    fn text_limit_counts_characters_not_bytes() {
        let text = "é".repeat(MAX_TEXT_CHARS);
        assert!(check_text(&text).is_ok());
    }

    #[test]
    fn server_frames_have_the_documented_shape() {
        let json: Value =
            serde_json::from_slice(&ServerFrame::Welcome { user: "a", instance: "gw-1", stream: None }.encode())
                .expect("json");
        assert_eq!(json, serde_json::json!({"type":"welcome","user":"a","instance":"gw-1"}));
        let json: Value = serde_json::from_slice(&ServerFrame::Reconnect { after_ms: 5 }.encode()).expect("json");
        assert_eq!(json, serde_json::json!({"type":"reconnect","after_ms":5}));
        let diff = ServerFrame::PresenceDiff { room: "lobby", joins: &["bob"], leaves: &["carol", "dan"] };
        let json: Value = serde_json::from_slice(&diff.encode()).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"type":"presence_diff","room":"lobby","joins":["bob"],"leaves":["carol","dan"]})
        );
        let members = ["alice".to_owned(), "bob".to_owned()];
        let json: Value =
            serde_json::from_slice(&ServerFrame::Members { room: "lobby", members: &members }.encode()).expect("json");
        assert_eq!(json, serde_json::json!({"type":"members","room":"lobby","members":["alice","bob"]}));
    }

    #[test]
    fn joined_lists_the_members_up_to_the_cap_and_always_counts_them() {
        let members = ["alice".to_owned(), "bob".to_owned()];
        let json = |cap| -> Value {
            serde_json::from_slice(&ServerFrame::joined("lobby", &members, cap).encode()).expect("json")
        };
        assert_eq!(json(2), serde_json::json!({"type":"joined","room":"lobby","members":["alice","bob"],"count":2}));
        assert_eq!(json(1), serde_json::json!({"type":"joined","room":"lobby","count":2,"truncated":true}));
        assert_eq!(json(0)["truncated"], true, "a cap of 0 never lists");
    }
}
