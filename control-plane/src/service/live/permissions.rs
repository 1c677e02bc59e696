//! Permission requests: what the agent's policy decides before any person
//! is asked. Pure, so each rule is tested here; the event log applies the
//! decision in the transaction that stores the request.

use oma_proto::model::PermissionPolicy;
use oma_proto::pb;

/// The options of one request that the policy can pick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offered {
    /// Every option id, in the agent's order (stored to check answers).
    pub option_ids: Vec<String>,
    /// The option a rejection picks: reject-once, else reject-always.
    pub reject: Option<String>,
    /// The option `allow_once` picks.
    pub allow_once: Option<String>,
}

impl Offered {
    pub fn of(request: &pb::PermissionRequested) -> Offered {
        let find = |kind: pb::PermissionOptionKind| {
            request
                .options
                .iter()
                .find(|o| o.kind == kind as i32)
                .map(|o| o.option_id.clone())
        };
        Offered {
            option_ids: request.options.iter().map(|o| o.option_id.clone()).collect(),
            reject: find(pb::PermissionOptionKind::RejectOnce).or_else(|| find(pb::PermissionOptionKind::RejectAlways)),
            allow_once: find(pb::PermissionOptionKind::AllowOnce),
        }
    }
}

/// What happens to a request when it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyDecision {
    /// A person answers (or its timeout rejects it).
    AskPerson,
    /// Answered now with this option; `None` cancels the request (the
    /// agent offered no option the policy may pick).
    Answer(Option<String>),
}

/// `allow_once`, never `allow_always`: Gemini refuses the latter in an
/// untrusted folder, and "always" would outlive this request.
pub fn decide(policy: PermissionPolicy, offered: &Offered) -> PolicyDecision {
    match policy {
        PermissionPolicy::Ask => PolicyDecision::AskPerson,
        PermissionPolicy::AllowOnce => PolicyDecision::Answer(offered.allow_once.clone()),
        PermissionPolicy::Reject => PolicyDecision::Answer(offered.reject.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::PermissionOptionKind as Kind;

    fn request(options: &[(&str, Kind)]) -> pb::PermissionRequested {
        pb::PermissionRequested {
            request_id: "r1".into(),
            options: options
                .iter()
                .map(|(id, kind)| pb::PermissionOption {
                    option_id: (*id).into(),
                    kind: *kind as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn all_four() -> Offered {
        Offered::of(&request(&[
            ("always", Kind::AllowAlways),
            ("once", Kind::AllowOnce),
            ("never", Kind::RejectAlways),
            ("no", Kind::RejectOnce),
        ]))
    }

    #[test]
    fn ask_waits_for_a_person() {
        assert_eq!(decide(PermissionPolicy::Ask, &all_four()), PolicyDecision::AskPerson);
    }

    #[test]
    fn allow_once_never_picks_allow_always() {
        assert_eq!(
            decide(PermissionPolicy::AllowOnce, &all_four()),
            PolicyDecision::Answer(Some("once".into()))
        );
        let only_always = Offered::of(&request(&[("always", Kind::AllowAlways), ("no", Kind::RejectOnce)]));
        assert_eq!(
            decide(PermissionPolicy::AllowOnce, &only_always),
            PolicyDecision::Answer(None)
        );
    }

    #[test]
    fn reject_prefers_reject_once_and_falls_back_to_reject_always() {
        assert_eq!(
            decide(PermissionPolicy::Reject, &all_four()),
            PolicyDecision::Answer(Some("no".into()))
        );
        let only_never = Offered::of(&request(&[("once", Kind::AllowOnce), ("never", Kind::RejectAlways)]));
        assert_eq!(
            decide(PermissionPolicy::Reject, &only_never),
            PolicyDecision::Answer(Some("never".into()))
        );
        let no_reject = Offered::of(&request(&[("once", Kind::AllowOnce)]));
        assert_eq!(
            decide(PermissionPolicy::Reject, &no_reject),
            PolicyDecision::Answer(None)
        );
    }

    #[test]
    fn every_option_id_is_kept_in_order() {
        assert_eq!(all_four().option_ids, ["always", "once", "never", "no"]);
    }
}
