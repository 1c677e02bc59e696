//! A session's modes and models as ACP reports them, read into
//! [`pb::SessionOptions`], and the one check both sides make of a choice.
//!
//! ACP (v1) offers modes in `modes {currentModeId, availableModes}` of the
//! session/new (and session/load) answer, switched with `session/set_mode`;
//! models as the config option of category `model` (or id `model`) in
//! `configOptions`, switched with `session/set_config_option`. Updates come
//! as `current_mode_update` and `config_option_update`.

use serde_json::Value;

use crate::pb;
use crate::validate::{Validated, ValidationError};

/// Most choices kept per list (an agent could send thousands).
pub const MAX_CHOICES: usize = 256;

/// The options in a session/new or session/load answer.
pub fn from_session_answer(answer: &Value) -> pb::SessionOptions {
    let mut options = pb::SessionOptions::default();
    if let Some(modes) = answer.get("modes") {
        apply_modes(&mut options, modes);
    }
    if let Some(config) = answer.get("configOptions") {
        apply_config_options(&mut options, config);
    }
    options
}

/// Applies one `session/update` `update` object; `true` when it changed
/// the options.
pub fn apply_update(options: &mut pb::SessionOptions, update: &Value) -> bool {
    let before = options.clone();
    match update.get("sessionUpdate").and_then(Value::as_str) {
        Some("current_mode_update") => {
            if let Some(mode) = update.get("currentModeId").and_then(Value::as_str) {
                options.mode_id = bounded(mode);
            }
        }
        Some("config_option_update") => {
            if let Some(config) = update.get("configOptions") {
                apply_config_options(options, config);
            }
        }
        _ => {}
    }
    *options != before
}

/// The model config option's id in a `configOptions` array, if any.
pub fn model_config_id(config_options: &Value) -> Option<String> {
    model_option(config_options)
        .and_then(|o| o.get("id"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn model_option(config_options: &Value) -> Option<&Value> {
    let list = config_options.as_array()?;
    list.iter()
        .find(|o| o.get("category").and_then(Value::as_str) == Some("model"))
        .or_else(|| {
            list.iter()
                .find(|o| o.get("id").and_then(Value::as_str) == Some("model"))
        })
}

fn apply_modes(options: &mut pb::SessionOptions, modes: &Value) {
    options.mode_id = modes
        .get("currentModeId")
        .and_then(Value::as_str)
        .map(bounded)
        .unwrap_or_default();
    options.modes = modes
        .get("availableModes")
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(|m| choice(m, "id")).take(MAX_CHOICES).collect())
        .unwrap_or_default();
}

fn apply_config_options(options: &mut pb::SessionOptions, config: &Value) {
    let Some(model) = model_option(config) else { return };
    options.model_id = model
        .get("currentValue")
        .and_then(Value::as_str)
        .map(bounded)
        .unwrap_or_default();
    let mut models = Vec::new();
    if let Some(list) = model.get("options").and_then(Value::as_array) {
        for entry in list {
            // Grouped: {group, name, options: [...]}; flat: {value, name}.
            match entry.get("options").and_then(Value::as_array) {
                Some(group) => models.extend(group.iter().filter_map(|m| choice(m, "value"))),
                None => models.extend(choice(entry, "value")),
            }
        }
    }
    models.truncate(MAX_CHOICES);
    options.models = models;
}

fn choice(value: &Value, id_key: &str) -> Option<pb::SessionChoice> {
    let id = value.get(id_key)?.as_str()?;
    Some(pb::SessionChoice {
        id: bounded(id),
        name: value
            .get("name")
            .and_then(Value::as_str)
            .map(bounded)
            .unwrap_or_default(),
        description: value
            .get("description")
            .and_then(Value::as_str)
            .map(|d| d.chars().take(1000).collect())
            .unwrap_or_default(),
    })
}

/// Ids and names are kept to one bounded line.
fn bounded(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(128).collect()
}

/// Checks a choice of mode and/or model (empty: unchanged) against what the
/// agent offers, listing the valid ones when it is not offered.
pub fn check(options: &pb::SessionOptions, mode_id: &str, model_id: &str) -> Validated<()> {
    for (field, wanted, offered, what) in [
        ("mode_id", mode_id, &options.modes, "mode"),
        ("model_id", model_id, &options.models, "model"),
    ] {
        if wanted.is_empty() || offered.iter().any(|c| c.id == wanted) {
            continue;
        }
        let valid = match offered.is_empty() {
            true => format!("this agent offers no {what} to choose"),
            false => format!(
                "valid: {}",
                offered.iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(", ")
            ),
        };
        return Err(ValidationError::new(
            field,
            format!("{what} {wanted:?} is not offered; {valid}"),
        ));
    }
    Ok(())
}

/// Bounds on an options event from a machine.
pub fn reported(options: &pb::SessionOptions) -> Validated<()> {
    if options.modes.len() > MAX_CHOICES || options.models.len() > MAX_CHOICES {
        return Err(ValidationError::new(
            "modes",
            format!("more than {MAX_CHOICES} choices"),
        ));
    }
    crate::validate::opaque_id("mode_id", &options.mode_id, false)?;
    crate::validate::opaque_id("model_id", &options.model_id, false)?;
    for (i, c) in options.modes.iter().chain(&options.models).enumerate() {
        crate::validate::opaque_id(&format!("choices[{i}].id"), &c.id, true)?;
        crate::validate::text(&format!("choices[{i}].description"), &c.description, 1000, false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer() -> Value {
        json!({
            "sessionId": "s1",
            "modes": {"currentModeId": "auto", "availableModes": [
                {"id": "default", "name": "Ask"}, {"id": "auto", "name": "Auto", "description": "no asking"}
            ]},
            "configOptions": [
                {"id": "effort", "name": "Effort", "type": "select", "currentValue": "low", "options": [{"value": "low", "name": "Low"}]},
                {"id": "model", "name": "Model", "category": "model", "type": "select", "currentValue": "sonnet",
                 "options": [{"group": "g", "name": "Anthropic", "options": [{"value": "sonnet", "name": "Sonnet"}, {"value": "opus", "name": "Opus"}]}]}
            ]
        })
    }

    #[test]
    fn modes_and_models_are_read_from_the_answer() {
        let o = from_session_answer(&answer());
        assert_eq!(o.mode_id, "auto");
        assert_eq!(
            o.modes.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["default", "auto"]
        );
        assert_eq!(o.model_id, "sonnet");
        assert_eq!(
            o.models.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["sonnet", "opus"]
        );
        assert_eq!(model_config_id(&answer()["configOptions"]).as_deref(), Some("model"));
        assert_eq!(
            from_session_answer(&json!({"sessionId": "x"})),
            pb::SessionOptions::default()
        );
    }

    #[test]
    fn updates_change_the_current_choice() {
        let mut o = from_session_answer(&answer());
        assert!(apply_update(
            &mut o,
            &json!({"sessionUpdate": "current_mode_update", "currentModeId": "default"})
        ));
        assert_eq!(o.mode_id, "default");
        assert!(!apply_update(&mut o, &json!({"sessionUpdate": "agent_message_chunk"})));
        let mut config = answer()["configOptions"].clone();
        config[1]["currentValue"] = json!("opus");
        assert!(apply_update(
            &mut o,
            &json!({"sessionUpdate": "config_option_update", "configOptions": config})
        ));
        assert_eq!(o.model_id, "opus");
    }

    #[test]
    fn a_choice_not_offered_lists_the_valid_ones() {
        let o = from_session_answer(&answer());
        assert!(check(&o, "default", "opus").is_ok());
        assert!(check(&o, "", "").is_ok());
        let e = check(&o, "yolo", "").unwrap_err();
        assert_eq!(e.field, "mode_id");
        assert!(
            e.message.contains("\"yolo\" is not offered; valid: default, auto"),
            "{e}"
        );
        let e = check(&o, "", "gpt").unwrap_err();
        assert!(e.message.contains("valid: sonnet, opus"), "{e}");
        let e = check(&pb::SessionOptions::default(), "x", "").unwrap_err();
        assert!(e.message.contains("offers no mode"), "{e}");
    }
}
