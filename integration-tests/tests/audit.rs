//! Reading the audit log of a busy tenant: by time, action (or a noun's
//! every action) and actor, through the API and `omactl audit list`, on
//! both backends.

use oma_integration_tests::{ControlPlane, ControlPlaneOptions, Omactl, TestDatabase};
use oma_proto::pb;
use tonic::Code;

fn request(action: &str, actor: &str) -> pb::ListAuditEntriesRequest {
    pb::ListAuditEntriesRequest {
        action: action.into(),
        actor: actor.into(),
        ..Default::default()
    }
}

fn at(ms: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    })
}

fn millis(t: &Option<prost_types::Timestamp>) -> i64 {
    let t = t.as_ref().unwrap();
    t.seconds * 1000 + i64::from(t.nanos / 1_000_000)
}

async fn audit_filters(cp: ControlPlane) {
    let mut clients = cp.clients().await.unwrap();
    for name in ["ann", "bob"] {
        clients
            .identity
            .clone()
            .create_user(pb::CreateUserRequest {
                name: name.into(),
                role: pb::Role::Member as i32,
            })
            .await
            .unwrap();
    }
    let agent_id = clients
        .create_agent(pb::AgentSpec {
            name: "audited".into(),
            system_prompt: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let list = |req: pb::ListAuditEntriesRequest| {
        let mut audit = clients.audit.clone();
        async move { audit.list_audit_entries(req).await.map(|r| r.into_inner().entries) }
    };

    let everything = list(request("", "")).await.unwrap();
    let users = list(request("user.create", "")).await.unwrap();
    assert_eq!(users.len(), 2, "{users:?}");
    assert!(users.iter().all(|e| e.action == "user.create"));
    let agent_actions = list(request("agent.", "")).await.unwrap();
    assert!(!agent_actions.is_empty());
    assert!(
        agent_actions.iter().all(|e| e.action.starts_with("agent.")),
        "{agent_actions:?}"
    );
    assert!(agent_actions.iter().any(|e| e.target_id == agent_id));
    // `_` is a LIKE wildcard: escaped, "use_." matches no "user." entry.
    assert_eq!(list(request("use_.", "")).await.unwrap(), vec![]);

    let actor = users[0].actor.clone();
    assert!(actor.starts_with("user:usr_"), "{actor}");
    let by_actor = list(request("", &actor)).await.unwrap();
    assert!(by_actor.len() >= 3 && by_actor.iter().all(|e| e.actor == actor));
    assert_eq!(list(request("", "user:usr_nobody")).await.unwrap(), vec![]);

    // Time: since is inclusive, until exclusive.
    let newest = millis(&everything[0].time);
    let oldest = millis(&everything.last().unwrap().time);
    let since_newest = list(pb::ListAuditEntriesRequest {
        since: at(newest),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(!since_newest.is_empty() && since_newest.iter().all(|e| millis(&e.time) >= newest));
    let before_oldest = list(pb::ListAuditEntriesRequest {
        until: at(oldest),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(before_oldest, vec![]);
    let window = list(pb::ListAuditEntriesRequest {
        since: at(oldest),
        until: at(newest + 1),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(window.len(), everything.len());

    // Bad filters are refused with a sentence.
    for (req, says) in [
        (
            pb::ListAuditEntriesRequest {
                since: at(newest),
                until: at(oldest),
                ..Default::default()
            },
            "since: must be before until",
        ),
        (request("agent.%", ""), "is not an action name"),
        (request("AGENT.", ""), "is not an action name"),
        (request("", "user:\n"), "actor: must be"),
    ] {
        let status = list(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(says), "{status:?}");
    }

    // omactl: relative times, a noun's actions, the default limit.
    let omactl = Omactl::new(&cp.url(), &cp.admin_token).unwrap();
    let listed = omactl
        .json(&["audit", "list", "--since", "1h", "--action", "user."])
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    let one = omactl.json(&["audit", "list", "--limit", "1"]).unwrap();
    assert_eq!(one.as_array().unwrap().len(), 1);
    let none = omactl.json(&["audit", "list", "--until", "1h"]).unwrap();
    assert_eq!(none, serde_json::json!([]));
    let absolute = omactl
        .json(&["audit", "list", "--since", "2020-01-01T00:00:00Z", "--all"])
        .unwrap();
    assert_eq!(absolute.as_array().unwrap().len(), everything.len());
    let backwards = omactl
        .run(&["audit", "list", "--since", "1h", "--until", "2h"])
        .unwrap();
    assert_eq!(backwards.status.code(), Some(6), "{backwards:?}");
    assert!(String::from_utf8_lossy(&backwards.stderr).contains("since: must be before until"));
    let garbage = omactl.run(&["audit", "list", "--since", "yesterday"]).unwrap();
    assert_eq!(garbage.status.code(), Some(2), "{garbage:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_filters_sqlite() {
    audit_filters(ControlPlane::start_sqlite().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_filters_postgres() {
    let Some(db) = TestDatabase::postgres("audit_filters_postgres").unwrap() else {
        return;
    };
    audit_filters(ControlPlane::start(db, ControlPlaneOptions::default()).unwrap()).await;
}
