//! What an admin's monitoring reads from a running control plane: the
//! Prometheus metrics on their own listener, the request log as JSON lines,
//! and health turning NOT_SERVING when the server is told to stop.

use std::net::SocketAddr;
use std::time::Duration;

use oma_integration_tests::world::World;
use oma_integration_tests::{ControlPlane, TestDatabase, faults, wait_until};
use oma_proto::pb;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const DEADLINE: Duration = Duration::from_secs(20);

fn metrics_addr(line: &str) -> Option<SocketAddr> {
    line.strip_prefix("oma-control-plane metrics on http://")?
        .strip_suffix("/metrics")?
        .parse()
        .ok()
}

/// `GET path` over plain HTTP/1.1: the status line and the body.
async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_the_request_log_show_what_the_server_did() {
    let mut w = World::builder()
        .serve_args(&["--metrics-listen", "127.0.0.1:0", "--log-format", "json"])
        .logs_to_files()
        .start()
        .await
        .unwrap();
    let addr = w.cp.process.wait_for_line(DEADLINE, metrics_addr).unwrap();

    let session = w.session().await;
    w.run_turn(&session, "hello").await;
    let missing = w
        .clients
        .sessions
        .clone()
        .get_session(pb::GetSessionRequest {
            session_id: "ses_00000000000000000000000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    let mut stranger = oma_integration_tests::Clients::new(
        w.cp.channel().await.unwrap(),
        oma_integration_tests::Bearer::new("oma_nobody.nothing"),
    );
    let refused = stranger
        .agents
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    let (status, body) = http_get(addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    let count = |series: &str| sample(&body, series).unwrap_or_else(|| panic!("no {series} in:\n{body}"));
    assert_eq!(
        count(r#"oma_grpc_requests_total{method="oma.v1.SessionService/GetSession",code="NOT_FOUND"}"#),
        1.0
    );
    assert_eq!(
        count(r#"oma_grpc_requests_total{method="oma.v1.AgentService/ListAgents",code="UNAUTHENTICATED"}"#),
        1.0
    );
    assert!(count(r#"oma_grpc_requests_total{method="oma.v1.SessionService/CreateSession",code="OK"}"#) >= 1.0);
    assert!(
        body.contains(r#"oma_grpc_request_duration_seconds_bucket{method="oma.v1.SessionService/CreateSession",le="#)
    );
    assert_eq!(count("oma_runtimes_connected"), 1.0);
    assert_eq!(count(r#"oma_sessions{status="idle"}"#), 1.0);
    assert_eq!(count(r#"oma_sessions{status="running"}"#), 0.0);
    let stored = count("oma_events_stored_total");
    let last_seq = w.get_session(&session).await.last_seq;
    assert_eq!(stored, last_seq as f64, "every stored event counted once");
    assert!(count("oma_event_commit_batch_events_count") >= 1.0);
    assert!(body.contains(r#"oma_store_operation_seconds_bucket{op="create_session",kind="write",outcome="ok""#));
    assert!(body.contains("# HELP oma_runtimes_connected"));
    let (status, _) = http_get(addr, "/nothing").await;
    assert!(status.contains("404"), "{status}");

    // The machine goes away: the gauge follows.
    w.machine.kill().unwrap();
    wait_until("oma_runtimes_connected to fall to 0", DEADLINE, || async {
        let (_, body) = http_get(addr, "/metrics").await;
        (sample(&body, "oma_runtimes_connected") == Some(0.0)).then_some(())
    })
    .await
    .unwrap();

    // The request log: one JSON object a line, one line a call, saying who.
    let log = faults::control_plane_log(&w.cp);
    let calls: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "oma::request")
        .collect();
    let get = calls
        .iter()
        .find(|c| c["fields"]["method"] == "oma.v1.SessionService/GetSession")
        .unwrap_or_else(|| panic!("no GetSession call in the request log:\n{log}"));
    assert_eq!(get["fields"]["code"], "NOT_FOUND");
    assert!(get["fields"]["who"].as_str().unwrap().starts_with("ten_"), "{get}");
    assert!(
        get["fields"]["peer"].as_str().unwrap().starts_with("127.0.0.1"),
        "{get}"
    );
    let unauthenticated = calls
        .iter()
        .find(|c| c["fields"]["code"] == "UNAUTHENTICATED")
        .unwrap_or_else(|| panic!("no refused call in the request log:\n{log}"));
    assert_eq!(unauthenticated["fields"]["who"], "");
    w.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread")]
async fn health_says_not_serving_as_soon_as_the_server_is_told_to_stop() {
    let database = TestDatabase::sqlite().unwrap();
    let options = faults::logged_options(&database, &[]);
    let mut cp = ControlPlane::start(database, options).unwrap();
    let mut health = HealthClient::new(cp.channel().await.unwrap());
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    let named = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "oma.v1.SessionService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(named.status(), ServingStatus::Serving);

    cp.process.signal("TERM").unwrap();
    let next = tokio::time::timeout(DEADLINE, watch.message())
        .await
        .expect("health said nothing after SIGTERM")
        .unwrap()
        .unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    drop((watch, health));
    let status = cp.process.wait_exit(DEADLINE).unwrap();
    assert!(status.success(), "{status:?}");
}

/// A load balancer must stop sending calls to a control plane whose
/// database is gone: health says NOT_SERVING while PostgreSQL cannot be
/// reached (here: a proxy in front of it refuses new connections and cuts
/// the open ones), and SERVING again once it can.
#[tokio::test(flavor = "multi_thread")]
async fn health_follows_the_database() {
    let Some(mut database) = TestDatabase::postgres("health_follows_the_database").unwrap() else {
        return;
    };
    let TestDatabase::Postgres { url, .. } = &mut database else {
        unreachable!("a PostgreSQL test database")
    };
    // postgres://user@HOST:PORT/name: put the proxy in place of HOST:PORT.
    let authority = url
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(authority, _)| authority.to_owned())
        .expect("OMA_TEST_POSTGRES_URL names user@host:port");
    let Ok(server) = authority.parse::<SocketAddr>() else {
        eprintln!("*** SKIPPED health_follows_the_database: {authority} is not an IP:port to proxy ***");
        return;
    };
    let proxy = faults::Proxy::start(server).unwrap();
    *url = url.replacen(&authority, &proxy.addr().to_string(), 1);
    let cp = faults::start_control_plane(database, &[]).unwrap();
    let mut health = HealthClient::new(cp.channel().await.unwrap());
    let status = |mut health: HealthClient<tonic::transport::Channel>| async move {
        health
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .ok()
            .map(|r| r.into_inner().status())
    };
    assert_eq!(status(health.clone()).await, Some(ServingStatus::Serving));

    proxy.refuse();
    proxy.cut();
    wait_until("health to say NOT_SERVING without the database", DEADLINE, || {
        let health = health.clone();
        async move { (status(health).await == Some(ServingStatus::NotServing)).then_some(()) }
    })
    .await
    .unwrap();

    proxy.resume();
    wait_until("health to say SERVING with the database back", DEADLINE, || {
        let health = health.clone();
        async move { (status(health).await == Some(ServingStatus::Serving)).then_some(()) }
    })
    .await
    .unwrap();
    // The server itself stayed up and answers calls that need the database.
    let named = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "oma.v1.SessionService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(named.status(), ServingStatus::Serving);
}
