//! A session's mode and model: switches the control plane asks for, and
//! putting every new child in the wanted ones (or the mode that makes the
//! agent ask).

use oma_proto::pb;

use super::Actor;

impl Actor {
    /// A switch asked for by the control plane: remembered (every later
    /// child starts in it too) and applied now if the child runs.
    pub(super) async fn set_options(&mut self, mode_id: String, model_id: String) {
        if !mode_id.is_empty() {
            self.state.wanted_mode = Some(mode_id);
        }
        if !model_id.is_empty() {
            self.state.wanted_model = Some(model_id);
        }
        self.save_state();
        if self.acp.as_ref().is_some_and(|a| a.is_alive()) {
            self.apply_wanted_options().await;
        }
    }

    /// Puts the child's session in the wanted mode and model (the start's,
    /// or the last switch asked for), checking them against what it offers,
    /// then records the options as an `options_changed` event. A choice the
    /// agent does not offer, or one it refuses, is an error event; the
    /// session goes on in the agent's own.
    pub(super) async fn apply_wanted_options(&mut self) {
        // A switch asked for, else the start's choice, else the mode that
        // makes the agent ask (so the permission policy decides).
        let wanted_mode = self
            .state
            .wanted_mode
            .clone()
            .or_else(|| Some(self.start.mode_id.clone()).filter(|m| !m.is_empty()))
            .or_else(|| self.ask_mode.clone())
            .unwrap_or_default();
        let wanted_model = self
            .state
            .wanted_model
            .clone()
            .unwrap_or_else(|| self.start.model_id.clone());
        let mode = (!wanted_mode.is_empty() && wanted_mode != self.options.mode_id).then_some(wanted_mode);
        let model = (!wanted_model.is_empty() && wanted_model != self.options.model_id).then_some(wanted_model);
        let turn = self.running_turn.clone().unwrap_or_default();
        for (what, wanted) in [("mode", mode), ("model", model)] {
            let Some(wanted) = wanted else { continue };
            let (mode_id, model_id) = match what {
                "mode" => (wanted.as_str(), ""),
                _ => ("", wanted.as_str()),
            };
            if let Err(e) = oma_proto::session_options::check(&self.options, mode_id, model_id) {
                let error = pb::SessionError {
                    code: "option_invalid".into(),
                    message: e.message,
                };
                self.emit(pb::session_event::Kind::Error(error), &turn);
                continue;
            }
            let Some(acp) = &self.acp else { return };
            let result = match what {
                "mode" => acp.set_mode(&wanted).await.map(|()| {
                    self.options.mode_id = wanted.clone();
                }),
                _ => match self.model_config_id.clone() {
                    Some(config_id) => acp.set_config_option(&config_id, &wanted).await.map(|answer| {
                        let changed = answer
                            .get("configOptions")
                            .map(|config| {
                                let update = serde_json::json!({
                                    "sessionUpdate": "config_option_update",
                                    "configOptions": config,
                                });
                                oma_proto::session_options::apply_update(&mut self.options, &update)
                            })
                            .unwrap_or(false);
                        if !changed {
                            self.options.model_id = wanted.clone();
                        }
                    }),
                    None => Err("the agent has no model option".to_owned()),
                },
            };
            if let Err(e) = result {
                let error = pb::SessionError {
                    code: "option_failed".into(),
                    message: format!("switching the {what} to {wanted:?} failed: {e}"),
                };
                self.emit(pb::session_event::Kind::Error(error), &turn);
            }
        }
        self.emit(pb::session_event::Kind::OptionsChanged(self.options.clone()), &turn);
    }
}
