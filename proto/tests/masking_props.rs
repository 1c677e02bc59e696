//! Property tests of the secret masker: whatever text surrounds them,
//! masked output holds neither a secret value nor any encoding the masker
//! covers, and masked JSON stays valid JSON.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use oma_proto::masking::{Masker, encodings, marker};
use proptest::prelude::*;

const NAMES: [&str; 3] = ["ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY"];

/// Secret values: printable ASCII (quotes, backslashes, `%`, `/`, `+`, `=`
/// and spaces included) and a few multi-byte characters.
fn value() -> impl Strategy<Value = String> {
    "[ -~éü€😀]{8,32}"
}

fn filler() -> impl Strategy<Value = String> {
    "[ -~\n\té]{0,24}"
}

/// One piece of a text: filler, or secret `i`'s value in one of its
/// encodings, or the base64 of a text that holds it somewhere.
#[derive(Debug, Clone)]
enum Piece {
    Filler(String),
    Encoded {
        secret: usize,
        form: usize,
    },
    InBase64 {
        secret: usize,
        prefix: String,
        suffix: String,
        url: bool,
    },
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        filler().prop_map(Piece::Filler),
        (0..3usize, 0..64usize).prop_map(|(secret, form)| Piece::Encoded { secret, form }),
        (0..3usize, "[ -~]{0,5}", "[ -~]{0,5}", any::<bool>()).prop_map(|(secret, prefix, suffix, url)| {
            Piece::InBase64 {
                secret,
                prefix,
                suffix,
                url,
            }
        }),
    ]
}

fn render(pieces: &[Piece], values: &[String]) -> String {
    let mut text = String::new();
    for piece in pieces {
        match piece {
            Piece::Filler(filler) => text.push_str(filler),
            Piece::Encoded { secret, form } => {
                let value = &values[secret % values.len()];
                let forms = encodings(value);
                text.push_str(&forms[form % forms.len()]);
            }
            Piece::InBase64 {
                secret,
                prefix,
                suffix,
                url,
            } => {
                let inner = format!("{prefix}{}{suffix}", values[secret % values.len()]);
                text.push_str(&match url {
                    true => URL_SAFE_NO_PAD.encode(inner),
                    false => STANDARD.encode(inner),
                });
            }
        }
    }
    text
}

/// No value may be a piece of a marker (the masker cannot mask those; see
/// `Masker::new`), nor of two markers side by side.
fn usable(values: &[String]) -> bool {
    let markers: String = NAMES.iter().map(|n| marker(n)).collect::<Vec<_>>().join("");
    let doubled = format!("{markers}{markers}");
    values
        .iter()
        .all(|v| encodings(v).iter().all(|form| !doubled.contains(form.as_str())))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn masked_text_holds_no_covered_form(
        values in prop::collection::vec(value(), 1..=3),
        pieces in prop::collection::vec(piece(), 0..12),
    ) {
        prop_assume!(usable(&values));
        let masker = Masker::new(NAMES.iter().zip(&values)).unwrap();
        let text = render(&pieces, &values);
        let masked = masker.mask_str(&text);
        for value in &values {
            for form in encodings(value) {
                prop_assert!(!masked.contains(form.as_str()), "{form:?} left in {masked:?}");
            }
        }
        // Bytes are masked like text.
        let mut bytes = text.clone().into_bytes();
        masker.mask_bytes(&mut bytes);
        prop_assert_eq!(bytes, masked.as_bytes());
    }

    #[test]
    fn masked_json_stays_valid(
        values in prop::collection::vec(value(), 1..=3),
        pieces in prop::collection::vec(piece(), 0..8),
    ) {
        prop_assume!(usable(&values));
        let masker = Masker::new(NAMES.iter().zip(&values)).unwrap();
        let text = render(&pieces, &values);
        let json = serde_json::json!({ "text": text, "nested": [{ "a": text }] }).to_string();
        let masked = masker.mask_str(&json);
        let parsed: serde_json::Value = serde_json::from_str(&masked).unwrap();
        let decoded = parsed["text"].as_str().unwrap();
        for value in &values {
            prop_assert!(!decoded.contains(value.as_str()), "{value:?} left in {decoded:?}");
        }
    }
}
