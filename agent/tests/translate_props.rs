//! Property tests of the ACP line translator: whatever an agent prints,
//! translating it never panics, the raw text is kept byte for byte, and the
//! typed view does not depend on how the JSON was spaced.
//!
//! `PROPTEST_CASES=20000 cargo test -p oma-agent --test translate_props`
//! (or `scripts/fuzz.sh`) runs it for longer.

use base64::Engine as _;
use oma_agent::session::translate::{
    content_block_from_acp, content_block_to_acp, permission_from_acp, stop_reason_from_acp, update_from_acp,
    update_from_raw,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// The field names the translator looks at, so random objects hit them.
const KEYS: &[&str] = &[
    "sessionUpdate",
    "content",
    "type",
    "text",
    "data",
    "mimeType",
    "uri",
    "name",
    "title",
    "description",
    "size",
    "resource",
    "blob",
    "toolCallId",
    "kind",
    "status",
    "rawInput",
    "rawOutput",
    "locations",
    "entries",
    "priority",
    "availableCommands",
    "input",
    "hint",
    "currentModeId",
    "configOptions",
    "updatedAt",
    "used",
    "cost",
    "_meta",
    "toolCall",
    "options",
    "optionId",
];

const UPDATE_KINDS: &[&str] = &[
    "user_message_chunk",
    "agent_message_chunk",
    "agent_thought_chunk",
    "tool_call",
    "tool_call_update",
    "plan",
    "available_commands_update",
    "current_mode_update",
    "config_option_update",
    "session_info_update",
    "usage_update",
    "oma_future_kind",
    "",
];

const BLOCK_TYPES: &[&str] = &["text", "image", "audio", "resource_link", "resource", "video", ""];

fn text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => any::<String>(),
        2 => prop::sample::select(KEYS).prop_map(str::to_owned),
        2 => prop::sample::select(UPDATE_KINDS).prop_map(str::to_owned),
        1 => prop::sample::select(BLOCK_TYPES).prop_map(str::to_owned),
        1 => prop::collection::vec(any::<u8>(), 0..48).prop_map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
        1 => "[a-z_]{0,12}",
        1 => Just("\u{0}\u{7f}\u{2028}\u{fffd}\"\\/\n".to_owned()),
    ]
    .boxed()
}

fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop::num::f64::NORMAL
            .prop_filter_map("finite", serde_json::Number::from_f64)
            .prop_map(Value::Number),
        Just(Value::from(0)),
    ]
    .boxed()
}

/// Any JSON value, biased towards the shapes and names ACP uses.
fn json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..8).prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
    .boxed()
}

/// A value of the type a field usually has, or anything.
fn field_value(key: &'static str) -> BoxedStrategy<Value> {
    let typed = match key {
        "data" | "blob" => prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| Value::String(base64::engine::general_purpose::STANDARD.encode(b)))
            .boxed(),
        "size" | "used" => any::<u64>().prop_map(Value::from).boxed(),
        "type" => prop::sample::select(BLOCK_TYPES).prop_map(Value::from).boxed(),
        "sessionUpdate" => prop::sample::select(UPDATE_KINDS).prop_map(Value::from).boxed(),
        "content" | "resource" | "input" => content_block().boxed(),
        "entries" | "availableCommands" | "options" | "locations" => prop::collection::vec(object_like(), 0..4)
            .prop_map(Value::Array)
            .boxed(),
        _ => text().prop_map(Value::String).boxed(),
    };
    prop_oneof![4 => typed, 1 => json(), 1 => Just(Value::Null)].boxed()
}

/// An object made of ACP field names with plausible (or wrong) values.
fn object_like() -> BoxedStrategy<Value> {
    prop::collection::vec(prop::sample::select(KEYS), 0..8)
        .prop_flat_map(|keys| {
            let values: Vec<BoxedStrategy<(String, Value)>> = keys
                .into_iter()
                .map(|k| field_value_leaf(k).prop_map(move |v| (k.to_owned(), v)).boxed())
                .collect();
            values
        })
        .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>()))
        .boxed()
}

/// Like `field_value`, without nesting blocks (keeps the recursion finite).
fn field_value_leaf(key: &'static str) -> BoxedStrategy<Value> {
    match key {
        "content" | "resource" | "input" => prop_oneof![json(), Just(Value::Null)].boxed(),
        "entries" | "availableCommands" | "options" | "locations" => json(),
        _ => field_value(key),
    }
}

/// An ACP content block, often well formed.
fn content_block() -> impl Strategy<Value = Value> {
    let resource = (
        text(),
        prop::option::of(text()),
        prop::option::of(field_value("blob")),
        prop::option::of(text()),
    )
        .prop_map(|(uri, text, blob, mime)| {
            let mut object = Map::new();
            object.insert("uri".into(), Value::String(uri));
            if let Some(text) = text {
                object.insert("text".into(), Value::String(text));
            }
            if let Some(blob) = blob {
                object.insert("blob".into(), blob);
            }
            if let Some(mime) = mime {
                object.insert("mimeType".into(), Value::String(mime));
            }
            Value::Object(object)
        });
    (
        prop::sample::select(BLOCK_TYPES),
        prop::collection::vec(
            prop::sample::select(
                &[
                    "text",
                    "data",
                    "mimeType",
                    "uri",
                    "name",
                    "title",
                    "description",
                    "size",
                ][..],
            ),
            0..8,
        ),
        prop::collection::vec(text(), 8),
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..32),
        prop::option::of(resource),
        prop::option::of(json()),
    )
        .prop_map(|(kind, keys, texts, size, bytes, resource, junk)| {
            let mut object = Map::new();
            object.insert("type".into(), Value::String(kind.into()));
            for (i, key) in keys.into_iter().enumerate() {
                let value = match key {
                    "size" => Value::from(size),
                    "data" => Value::String(base64::engine::general_purpose::STANDARD.encode(&bytes)),
                    _ => Value::String(texts[i % texts.len()].clone()),
                };
                object.insert(key.into(), value);
            }
            if let Some(resource) = resource {
                object.insert("resource".into(), resource);
            }
            if let Some(junk) = junk {
                object.insert("_meta".into(), junk);
            }
            Value::Object(object)
        })
}

/// A session/update `update` object of a known (or unknown) kind.
fn update() -> BoxedStrategy<Value> {
    (
        prop::sample::select(UPDATE_KINDS),
        object_like(),
        prop::option::of(content_block()),
    )
        .prop_map(|(kind, mut fields, content)| {
            let object = fields.as_object_mut().expect("an object");
            object.insert("sessionUpdate".into(), Value::String(kind.into()));
            if let Some(content) = content {
                object.insert("content".into(), content);
            }
            fields
        })
        .boxed()
}

/// The same JSON, spaced differently (as agents print it).
fn respaced(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("a value serializes")
}

fn config() -> ProptestConfig {
    // PROPTEST_CASES overrides this; the default keeps `cargo test` quick.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    ProptestConfig {
        cases,
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any string at all: never a panic; when it is JSON, raw is the input.
    #[test]
    fn any_text_never_panics_and_raw_is_the_input(line in any::<String>()) {
        if let Ok(update) = update_from_raw(&line) {
            prop_assert_eq!(update.raw_json, line);
        }
    }

    /// Text that is almost an update (a prefix, or an update with junk).
    #[test]
    fn truncated_and_padded_updates_never_panic(value in update(), cut in any::<prop::sample::Index>(), junk in any::<String>()) {
        let text = value.to_string();
        let mut end = cut.index(text.len() + 1);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        for line in [&text[..end], &format!("{text}{junk}"), &format!("{junk}{text}")] {
            if let Ok(update) = update_from_raw(line) {
                prop_assert_eq!(update.raw_json.as_str(), line);
            }
        }
    }

    /// Any JSON value: translated, never a panic, raw kept, kind read.
    #[test]
    fn any_json_translates_and_keeps_its_bytes(value in json()) {
        let compact = value.to_string();
        let from_value = update_from_acp(&value);
        prop_assert_eq!(&from_value.raw_json, &compact);
        let from_raw = update_from_raw(&compact).expect("JSON text parses");
        prop_assert_eq!(&from_raw.raw_json, &compact);
        prop_assert_eq!(&from_raw.kind, &from_value.kind);
        // (The typed views may differ in a float's last digit: see
        // `typed_json_fields_keep_numbers_exactly`.)
        let expected_kind = value.get("sessionUpdate").and_then(Value::as_str).unwrap_or_default();
        prop_assert_eq!(from_value.kind.as_str(), expected_kind);
    }

    /// Updates of every kind, well formed or not, compact or pretty.
    #[test]
    fn updates_translate_the_same_however_spaced(value in update()) {
        let compact = value.to_string();
        let pretty = respaced(&value);
        let a = update_from_raw(&compact).expect("JSON");
        let b = update_from_raw(&pretty).expect("JSON");
        prop_assert_eq!(&a.raw_json, &compact, "raw is the agent's text, byte for byte");
        prop_assert_eq!(&b.raw_json, &pretty, "raw is the agent's text, byte for byte");
        prop_assert_eq!(&a.kind, &b.kind);
        prop_assert_eq!(&a.typed, &b.typed);
        if UPDATE_KINDS[..UPDATE_KINDS.len() - 2].contains(&a.kind.as_str()) {
            // A known kind: typed, or (malformed) raw only; never a panic.
        } else {
            prop_assert!(a.typed.is_none(), "an unknown kind has no typed view: {:?}", a.typed);
        }
    }

    /// A content block that translates survives a round trip unchanged.
    #[test]
    fn content_blocks_round_trip(value in content_block()) {
        if let Some(block) = content_block_from_acp(&value) {
            let back = content_block_to_acp(&block);
            prop_assert_eq!(content_block_from_acp(&back), Some(block), "via {}", back);
        }
    }

    /// Permission params and stop reasons of any shape: never a panic, and
    /// every option kept has its id.
    #[test]
    fn permission_requests_and_stop_reasons_never_panic(params in json(), fields in object_like(), reason in text()) {
        for params in [&params, &fields] {
            let (_, options) = permission_from_acp(params);
            let offered = params.get("options").and_then(Value::as_array).map_or(0, Vec::len);
            prop_assert!(options.len() <= offered);
            prop_assert!(options.iter().all(|o| !o.option_id.is_empty() || offered > 0));
        }
        let _ = stop_reason_from_acp(&reason);
    }
}

/// The typed view's JSON fields (`raw_input_json`, `content_json`, …) are
/// re-serialized from the parsed value; a float must come out as the agent
/// wrote it. Found by `updates_translate_the_same_however_spaced`:
/// serde_json without its `float_roundtrip` feature parses
/// 4.365937609600597e+182 one ULP off, so it is written back as
/// 4.3659376096005974e+182.
#[test]
#[ignore = "bug: typed JSON fields re-serialize floats lossily (serde_json lacks the float_roundtrip feature)"]
fn typed_json_fields_keep_numbers_exactly() {
    let line = r#"{"sessionUpdate":"tool_call","toolCallId":"t1","title":"x","rawInput":{"v":4.365937609600597e+182}}"#;
    let update = update_from_raw(line).unwrap();
    assert_eq!(update.raw_json, line);
    match update.typed {
        Some(oma_proto::pb::session_update::Typed::ToolCall(call)) => {
            assert_eq!(call.raw_input_json, r#"{"v":4.365937609600597e+182}"#)
        }
        other => panic!("{other:?}"),
    }
}

/// Nesting far deeper than any agent sends: an error, not a stack overflow.
#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    for depth in [129, 10_000, 1_000_000] {
        let line = format!(
            "{{\"sessionUpdate\":\"plan\",\"entries\":{}{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert!(update_from_raw(&line).is_err(), "depth {depth}");
    }
}
