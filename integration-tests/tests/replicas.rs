//! Several control-plane replicas on one database: a daemon that knows
//! more than one moves to the next when its replica dies or drains, a
//! replica that starts leaves the runtimes of the others online, and the
//! runtimes of a replica that died go offline when their lease runs out.
//! Real binaries on 127.0.0.1 (SQLite shared by the replicas; the same
//! code paths serve PostgreSQL).

use std::time::Duration;

use oma_integration_tests::faults::{self, log_problems, turn_end};
use oma_integration_tests::world::World;
use oma_integration_tests::{wait_online, wait_runtime_status};
use oma_proto::pb;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const TURN: Duration = Duration::from_secs(90);
/// Daemon flags: reconnect fast.
const AGENT_ARGS: &[&str] = &["--reconnect-max", "500ms"];

/// Reads the whole log and asserts every event is there once, in order.
async fn assert_log(rig: &World, session_id: &str, chunk_turns: &[(String, Option<u64>)]) {
    let events = rig.read_log(session_id, Duration::from_secs(60)).await;
    let problems = log_problems(&events, chunk_turns);
    assert!(
        problems.is_empty(),
        "session {session_id} log is not exactly-once in order: {problems:#?}"
    );
}

/// A daemon paired with the rig's control plane that also knows
/// `second_url` (`credentials.toml` `other_server_urls`, what
/// `setup --also-server` writes).
async fn rig_knowing(second_url: &str, cp_args: &[&str]) -> World {
    let second_url = second_url.to_owned();
    World::builder()
        .serve_args(cp_args)
        .logs_to_files()
        .daemon_args_exactly(AGENT_ARGS)
        .turn_deadline(TURN)
        .prepare(move |machine| {
            let file = machine.config_dir.path().join("credentials.toml");
            let mut toml = std::fs::read_to_string(&file).unwrap();
            toml.push_str(&format!("other_server_urls = [\"{second_url}\"]\n"));
            std::fs::write(&file, toml).unwrap();
        })
        .start()
        .await
        .unwrap()
}

/// The second URL exists before its replica does: a proxy that refuses
/// connections until a replica runs behind it.
fn second_url_proxy() -> faults::Proxy {
    let second = faults::Proxy::start("127.0.0.1:9".parse().unwrap()).unwrap();
    second.refuse();
    second
}

/// Runs a turn of 20 chunks and checks it ended normally.
async fn chunk_turn(rig: &World, session: &str) -> String {
    let turn = rig.prompt(session, "chunks 20").await;
    let events = rig.collect(&turn).await;
    let end = turn_end(&events, &turn.id).expect("the turn ended");
    assert_eq!(end.stop_reason, pb::StopReason::EndTurn as i32);
    turn.id
}

/// Waits (30 s at most) until the daemon's stream is on the replica behind
/// `second`: it connected there and that replica takes a prompt (a replica
/// not holding the runtime's stream refuses it); then runs that turn of 20
/// chunks to its end.
async fn chunk_turn_on_the_new_replica(rig: &World, second: &faults::Proxy, session: &str) -> String {
    let turn = oma_integration_tests::wait_until(
        "the new replica to hold the runtime",
        Duration::from_secs(30),
        || async {
            if second.accepted() == 0 {
                return None;
            }
            rig.try_prompt(session, "chunks 20").await.ok()
        },
    )
    .await
    .unwrap();
    let events = rig.collect(&turn).await;
    let end = turn_end(&events, &turn.id).expect("the turn ended");
    assert_eq!(end.stop_reason, pb::StopReason::EndTurn as i32);
    turn.id
}

/// A replica that dies costs the daemon one failed attempt: its replica is
/// killed, another starts on the same database behind the second URL, and
/// the daemon moves there; the session goes on and its log is whole.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_moves_to_another_replica_when_its_replica_dies() {
    let second = second_url_proxy();
    let mut rig = rig_knowing(&second.url(), &[]).await;
    let session = rig.session().await;
    let first_turn = chunk_turn(&rig, &session).await;

    let addr = faults::replace_control_plane(&mut rig.cp).unwrap();
    second.set_target(addr);
    second.resume();
    rig.clients = rig.cp.clients().await.unwrap();
    let second_turn = chunk_turn_on_the_new_replica(&rig, &second, &session).await;
    assert_log(&rig, &session, &[(first_turn, Some(20)), (second_turn, Some(20))]).await;
    rig.assert_no_panic();
}

/// A replica told to stop drains: it ends its runtime streams at once
/// instead of holding them through its grace period, so the daemon moves to
/// the next replica right away; the session goes on there, its log whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_draining_replica_sends_its_runtimes_to_another_at_once() {
    let second = second_url_proxy();
    // A grace far beyond the wait below: only the drain frees the runtime
    // in time (its stream is a call in flight, which the grace would keep).
    let mut rig = rig_knowing(&second.url(), &["--shutdown-grace", "300s"]).await;
    let session = rig.session().await;
    let first_turn = chunk_turn(&rig, &session).await;

    let (replica, addr) = faults::start_another_replica(&rig.cp).unwrap();
    second.set_target(addr);
    second.resume();
    let draining = std::mem::replace(&mut rig.cp.process, replica);
    rig.cp.addr = addr;
    rig.clients = rig.cp.clients().await.unwrap();
    draining.signal("TERM").unwrap();
    let second_turn = chunk_turn_on_the_new_replica(&rig, &second, &session).await;
    assert_log(&rig, &session, &[(first_turn, Some(20)), (second_turn, Some(20))]).await;
    rig.assert_no_panic();
    drop(draining);
}

/// Waits until the server's health says SERVING (it does after the start's
/// sweep of runtime statuses).
async fn wait_serving(channel: tonic::transport::Channel) {
    let health = HealthClient::new(channel);
    oma_integration_tests::wait_until("health to say SERVING", Duration::from_secs(30), || {
        let mut health = health.clone();
        async move {
            let answer = health
                .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                .await
                .ok()?;
            (answer.into_inner().status() == ServingStatus::Serving).then_some(())
        }
    })
    .await
    .unwrap();
}

/// A replica that starts beside a live one leaves the other's runtimes
/// online (before, every start marked every runtime offline).
#[tokio::test(flavor = "multi_thread")]
async fn a_starting_replica_leaves_the_runtimes_of_others_online() {
    let mut rig = World::builder().logs_to_files().start().await.unwrap();
    let runtime_id = rig.machine.runtime_id.clone();
    wait_online(&mut rig.clients, &runtime_id, Duration::from_secs(30))
        .await
        .unwrap();

    let (replica, addr) = faults::start_another_replica(&rig.cp).unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    wait_serving(channel).await;
    let runtime = rig.clients.get_runtime(&runtime_id).await.unwrap();
    assert_eq!(runtime.status(), pb::RuntimeStatus::Online, "{runtime:?}");
    // And the runtime still works through the replica that holds it.
    let session = rig.session().await;
    let turn = rig.prompt(&session, "chunks 5").await;
    let events = rig.collect(&turn).await;
    assert!(turn_end(&events, &turn.id).is_some());
    rig.assert_no_panic();
    drop(replica);
}

/// A replica killed without a word leaves its runtimes recorded online
/// only until their lease runs out: another replica's sweep marks them
/// offline (the daemon here knows no other replica, so it stays away).
#[tokio::test(flavor = "multi_thread")]
async fn the_runtimes_of_a_dead_replica_go_offline_when_their_lease_runs_out() {
    let mut rig = World::builder()
        .serve_args(&["--heartbeat-interval", "1s"])
        .logs_to_files()
        .start()
        .await
        .unwrap();
    let runtime_id = rig.machine.runtime_id.clone();
    wait_online(&mut rig.clients, &runtime_id, Duration::from_secs(30))
        .await
        .unwrap();
    let (replica, addr) = faults::start_another_replica(&rig.cp).unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    wait_serving(channel).await;
    // Its lease is live: the new replica's start left it online.
    let runtime = rig.clients.get_runtime(&runtime_id).await.unwrap();
    assert_eq!(runtime.status(), pb::RuntimeStatus::Online, "{runtime:?}");
    faults::kill_control_plane(&mut rig.cp).unwrap();
    rig.cp.process = replica;
    rig.cp.addr = addr;
    rig.clients = rig.cp.clients().await.unwrap();
    // The lease runs three heartbeat intervals (3 s); the sweep runs every 1 s.
    wait_runtime_status(
        &rig.clients,
        &runtime_id,
        pb::RuntimeStatus::Offline,
        Duration::from_secs(20),
    )
    .await
    .unwrap();
}
