//! Property tests of the frame decoder (docs/protocol.md §2, §2.6): whatever
//! a client sends in a text frame — arbitrary bytes, arbitrary JSON, or
//! requests with every field arbitrary — decoding never panics, and ends in
//! either a request that passes its own validation and survives a round
//! trip, or an `invalid_request` whose answer stays well within the reply
//! size limit. Case counts are sized for CI; `PROPTEST_CASES` raises them.

use natter_protocol::ErrorCode;
use natter_protocol::frames::{ClientFrame, ServerFrame};
use natter_protocol::limits::{MAX_FRAME_BYTES, MAX_REPLY_BYTES};
use proptest::prelude::*;
use serde_json::{Map, Number, Value};

/// Every request type, and a few that are not.
const TYPES: &[&str] = &[
    "keep_alive",
    "fetch_user_invite_code",
    "fetch_channel_invite_code",
    "invite",
    "accept",
    "reject",
    "disconnect",
    "fetch_connections",
    "create",
    "join",
    "fetch_channels",
    "enter",
    "leave",
    "quit",
    "write_message",
    "fetch_messages",
    "read",
    "typing",
    "",
    "Keep_Alive",
    "reply",
];

/// Every field a request has, and some it does not.
const FIELDS: &[&str] = &[
    "id",
    "type",
    "channel_id",
    "invite_code",
    "username",
    "usernames",
    "status",
    "title",
    "client_msg_id",
    "content",
    "after_seq",
    "before_seq",
    "limit",
    "seq",
    "extra",
];

/// Strings with what hurts: control characters, NUL, quotes, backslashes,
/// characters outside the BMP, and plain text.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_.-]{0,40}",
        "\\PC{0,40}",
        ".{0,40}",
        prop::collection::vec(any::<char>(), 0..40).prop_map(|c| c.into_iter().collect()),
        Just("pending".to_owned()),
        Just("accepted".to_owned()),
    ]
}

/// Numbers at and past every boundary the decoder checks.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-2_i64..=102).prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
    ]
}

/// Any JSON value, a few levels deep.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(FIELDS), inner), 0..6).prop_map(
                |entries| {
                    Value::Object(
                        entries
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v))
                            .collect::<Map<_, _>>(),
                    )
                }
            ),
        ]
    })
}

/// A frame shaped like a request: an id (usually valid), a type (usually
/// known) and any of the fields, each with any value.
fn request_like() -> impl Strategy<Value = Value> {
    let id = prop_oneof![
        4 => any::<u64>().prop_map(Value::from),
        1 => json(),
    ];
    let kind = prop_oneof![
        4 => prop::sample::select(TYPES).prop_map(Value::from),
        1 => json(),
    ];
    let fields = prop::collection::vec((prop::sample::select(FIELDS), json()), 0..6);
    (id, kind, fields).prop_map(|(id, kind, fields)| {
        let mut frame = Map::new();
        for (k, v) in fields {
            frame.insert(k.to_owned(), v);
        }
        frame.insert("id".into(), id);
        frame.insert("type".into(), kind);
        Value::Object(frame)
    })
}

/// The property: a decoded frame is valid and round-trips; a refused one
/// is an `invalid_request` whose answer is small.
fn decodes_to_a_request_or_a_small_error(text: &str) -> Result<(), TestCaseError> {
    match ClientFrame::decode(text) {
        Ok(frame) => {
            prop_assert!(frame.request.validate().is_ok(), "{text}");
            let again = serde_json::to_string(&frame).expect("a frame serializes");
            prop_assert_eq!(ClientFrame::decode(&again), Ok(frame));
        }
        Err(error) => {
            let answer = error.into_frame();
            let ServerFrame::Error { code, .. } = &answer else {
                return Err(TestCaseError::fail("not an error frame"));
            };
            prop_assert_eq!(*code, ErrorCode::InvalidRequest);
            let bytes = answer.to_json().len();
            prop_assert!(bytes <= 2048, "{bytes} bytes for {text}");
            prop_assert!(bytes <= MAX_REPLY_BYTES);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decodes_to_a_request_or_a_small_error(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn arbitrary_json(value in json()) {
        decodes_to_a_request_or_a_small_error(&value.to_string())?;
    }

    #[test]
    fn arbitrary_requests(value in request_like()) {
        decodes_to_a_request_or_a_small_error(&value.to_string())?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// A frame as large as the gateway takes, its bulk in one field.
    #[test]
    fn frames_up_to_the_size_limit(
        field in prop::sample::select(FIELDS),
        kind in prop::sample::select(TYPES),
        len in 0..MAX_FRAME_BYTES - 200,
        fill in prop::sample::select(&['x', '"', '\\', '\u{1b}', '😀', '\u{0}'][..]),
    ) {
        let bulk: String = std::iter::repeat_n(fill, len / fill.len_utf8().max(2)).collect();
        let mut frame = serde_json::json!({"id": 1, "type": kind});
        frame[field] = Value::String(bulk);
        let text = frame.to_string();
        prop_assume!(text.len() <= MAX_FRAME_BYTES);
        decodes_to_a_request_or_a_small_error(&text)?;
    }
}
