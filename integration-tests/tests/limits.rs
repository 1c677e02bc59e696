//! Server-wide limits through the real binary: the per-address rate of
//! unauthenticated and failed calls, the cap on requests in flight, the
//! request timeout, and a connect-code exchange that never needs the write
//! lock to refuse a guess.

use std::time::Duration;

use diesel::connection::SimpleConnection as _;
use diesel::{Connection as _, SqliteConnection};
use oma_integration_tests::{Bearer, Clients, ControlPlane, ControlPlaneOptions, TestDatabase};
use oma_proto::pb;
use tonic::Code;

fn start(extra: &[&str]) -> anyhow::Result<ControlPlane> {
    ControlPlane::start(
        TestDatabase::sqlite()?,
        ControlPlaneOptions {
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    )
}

fn guess(code: &str) -> pb::ExchangeConnectCodeRequest {
    pb::ExchangeConnectCodeRequest {
        code: code.into(),
        machine_id: "m-1".into(),
        ..Default::default()
    }
}

/// Pairs a machine and returns its token.
async fn pair(admin: &mut Clients, anonymous: &mut Clients) -> anyhow::Result<String> {
    let code = admin
        .runtimes
        .create_connect_code(pb::CreateConnectCodeRequest::default())
        .await?
        .into_inner()
        .code;
    Ok(anonymous
        .runtimes
        .exchange_connect_code(guess(&code))
        .await?
        .into_inner()
        .machine_token)
}

#[tokio::test]
async fn guesses_and_bad_tokens_from_one_address_are_rate_limited() -> anyhow::Result<()> {
    let cp = start(&["--unauthenticated-rate", "1/m,burst=4"])?;
    let channel = cp.channel().await?;
    let mut anonymous = Clients::new(channel.clone(), Bearer::none());
    let mut admin = Clients::new(channel.clone(), Bearer::new(&cp.admin_token));
    let mut forged = Clients::new(
        channel.clone(),
        Bearer::new("oma_00000000000000000000000000000000.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    );

    for _ in 0..2 {
        let status = anonymous
            .runtimes
            .exchange_connect_code(guess("0000-0000-0000-0000"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    for _ in 0..2 {
        let status = forged.identity.who_am_i(pb::WhoAmIRequest {}).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    // The address has used its burst: guesses and bad tokens alike are now
    // refused before any lookup, with a sentence saying why.
    let status = anonymous
        .runtimes
        .exchange_connect_code(guess("0000-0000-0000-0000"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("too many unauthenticated or failed requests from 127.0.0.1"),
        "{status:?}"
    );
    let status = forged.identity.who_am_i(pb::WhoAmIRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // A valid token is never held back by the guesses of its address.
    admin.identity.who_am_i(pb::WhoAmIRequest {}).await?;
    // Health answers from memory and is never limited (load balancers poll it).
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for _ in 0..10 {
        health.check(tonic_health::pb::HealthCheckRequest::default()).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_refused_guess_never_waits_for_the_write_lock() -> anyhow::Result<()> {
    let cp = start(&[])?;
    let channel = cp.channel().await?;
    let mut anonymous = Clients::new(channel.clone(), Bearer::none());
    // Served calls mean the start-up writes are done.
    Clients::new(channel, Bearer::new(&cp.admin_token))
        .identity
        .who_am_i(pb::WhoAmIRequest {})
        .await?;
    let TestDatabase::Sqlite { dir } = &cp.database else {
        unreachable!("started on SQLite")
    };
    // Another writer holds SQLite's write lock for the whole exchange: an
    // exchange that took it would wait out the busy timeout and fail.
    let mut holder = SqliteConnection::establish(&dir.path().join("oma.db").display().to_string())?;
    holder.batch_execute("BEGIN IMMEDIATE")?;
    for code in ["0000-0000-0000-0000", "ABCD-EFGH-JKMN-PQRS"] {
        let status = anonymous.runtimes.exchange_connect_code(guess(code)).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    holder.batch_execute("ROLLBACK")?;
    Ok(())
}

#[tokio::test]
async fn requests_beyond_the_in_flight_cap_are_refused_at_once() -> anyhow::Result<()> {
    let cp = start(&["--max-requests-in-flight", "1"])?;
    let channel = cp.channel().await?;
    let mut admin = Clients::new(channel.clone(), Bearer::new(&cp.admin_token));
    let mut anonymous = Clients::new(channel.clone(), Bearer::none());
    let machine_token = pair(&mut admin, &mut anonymous).await?;

    // A stream that never says Hello keeps its handler busy (it waits for
    // the Hello): the one slot is taken. The stream and the first probe race
    // for the slot; when the probe wins, the stream itself is refused, and
    // the test opens it again.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (hold, busy, refused) = loop {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the stream never held the one slot"
        );
        let mut stream = pb::runtime_stream_service_client::RuntimeStreamServiceClient::with_interceptor(
            channel.clone(),
            Bearer::new(&machine_token),
        );
        let (hold, held) = tokio::sync::mpsc::channel::<pb::AgentFrame>(1);
        let busy = tokio::spawn(async move {
            stream
                .open_stream(tokio_stream::wrappers::ReceiverStream::new(held))
                .await
        });
        let refused = oma_integration_tests::wait_until("a call to be refused", Duration::from_secs(30), || {
            let stream_ended = busy.is_finished();
            let mut admin = Clients::new(channel.clone(), Bearer::new(&cp.admin_token));
            async move {
                if stream_ended {
                    return Some(None);
                }
                match admin.identity.who_am_i(pb::WhoAmIRequest {}).await {
                    Err(status) if status.code() == Code::ResourceExhausted => Some(Some(status)),
                    _ => None,
                }
            }
        })
        .await?;
        match refused {
            Some(status) if !busy.is_finished() => break (hold, busy, status),
            _ => match busy.await? {
                // Lost the race for the slot: try again.
                Err(status) if status.code() == Code::ResourceExhausted => continue,
                other => anyhow::bail!("the stream without Hello was answered early: {other:?}"),
            },
        }
    };
    assert!(refused.message().contains("limit of 1 requests"), "{refused:?}");

    // The slot comes back when the handler answers.
    drop(hold);
    let _ = busy.await;
    oma_integration_tests::wait_until("calls to be served again", Duration::from_secs(10), || {
        let mut admin = Clients::new(channel.clone(), Bearer::new(&cp.admin_token));
        async move { admin.identity.who_am_i(pb::WhoAmIRequest {}).await.ok() }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_handler_that_takes_too_long_is_cut_off() -> anyhow::Result<()> {
    let cp = start(&["--request-timeout", "1s"])?;
    let channel = cp.channel().await?;
    let mut admin = Clients::new(channel.clone(), Bearer::new(&cp.admin_token));
    let mut anonymous = Clients::new(channel.clone(), Bearer::none());
    let machine_token = pair(&mut admin, &mut anonymous).await?;
    let mut stream = pb::runtime_stream_service_client::RuntimeStreamServiceClient::with_interceptor(
        channel,
        Bearer::new(&machine_token),
    );
    // No Hello: the handler waits (up to the 15 s hello timeout) until the
    // request timeout ends it.
    let (_hold, held) = tokio::sync::mpsc::channel::<pb::AgentFrame>(1);
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        stream.open_stream(tokio_stream::wrappers::ReceiverStream::new(held)),
    )
    .await?
    .unwrap_err();
    assert!(
        matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{status:?}"
    );
    // The server goes on serving.
    admin.identity.who_am_i(pb::WhoAmIRequest {}).await?;
    Ok(())
}

#[tokio::test]
async fn tenant_quotas_on_machines_and_connect_codes() -> anyhow::Result<()> {
    let cp = start(&["--quota-runtimes", "1", "--quota-connect-codes", "2"])?;
    let channel = cp.channel().await?;
    let mut admin = Clients::new(channel.clone(), Bearer::new(&cp.admin_token));
    let mut anonymous = Clients::new(channel.clone(), Bearer::none());
    let code = || {
        let mut admin = Clients::new(channel.clone(), Bearer::new(&cp.admin_token));
        async move {
            admin
                .runtimes
                .create_connect_code(pb::CreateConnectCodeRequest::default())
                .await
                .map(|r| r.into_inner().code)
        }
    };
    let first = code().await?;
    let second = code().await?;
    let status = code().await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("quota of 2 unused connect codes"),
        "{status:?}"
    );

    let runtime = anonymous
        .runtimes
        .exchange_connect_code(guess(&first))
        .await?
        .into_inner()
        .runtime
        .unwrap();
    // One runtime is the quota: the second code is refused and NOT spent.
    let mut second_machine = guess(&second);
    second_machine.machine_id = "m-2".into();
    let status = anonymous
        .runtimes
        .exchange_connect_code(second_machine.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("quota of 1 runtimes"), "{status:?}");
    let listed = admin
        .runtimes
        .list_runtimes(pb::ListRuntimesRequest::default())
        .await?
        .into_inner()
        .runtimes;
    assert_eq!(listed.len(), 1, "nothing half-written");

    admin
        .runtimes
        .delete_runtime(pb::DeleteRuntimeRequest { runtime_id: runtime.id })
        .await?;
    anonymous.runtimes.exchange_connect_code(second_machine).await?;
    Ok(())
}

#[tokio::test]
async fn tenant_quotas_on_agents_and_sessions() -> anyhow::Result<()> {
    let cp = start(&["--quota-agents", "1", "--quota-sessions", "1"])?;
    let channel = cp.channel().await?;
    let mut admin = Clients::new(channel.clone(), Bearer::new(&cp.admin_token));
    let mut anonymous = Clients::new(channel.clone(), Bearer::none());
    let code = admin
        .runtimes
        .create_connect_code(pb::CreateConnectCodeRequest::default())
        .await?
        .into_inner()
        .code;
    let runtime_id = anonymous
        .runtimes
        .exchange_connect_code(guess(&code))
        .await?
        .into_inner()
        .runtime
        .unwrap()
        .id;
    let spec = |name: &str| pb::AgentSpec {
        name: name.into(),
        runtime_binding: Some(pb::RuntimeBinding {
            runtime_id: runtime_id.clone(),
            acp_agent_id: "test".into(),
            local_skill_blocklist: Vec::new(),
        }),
        ..Default::default()
    };
    let agent = admin
        .agents
        .create_agent(pb::CreateAgentRequest {
            spec: Some(spec("one")),
            allow_unknown_skills: false,
        })
        .await?
        .into_inner()
        .agent
        .unwrap();
    let status = admin
        .agents
        .create_agent(pb::CreateAgentRequest {
            spec: Some(spec("two")),
            allow_unknown_skills: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("quota of 1 agents"), "{status:?}");

    let create = || pb::CreateSessionRequest {
        agent_id: agent.id.clone(),
        title: String::new(),
        ..Default::default()
    };
    let session = admin
        .sessions
        .create_session(create())
        .await?
        .into_inner()
        .session
        .unwrap();
    let status = admin.sessions.create_session(create()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("quota of 1 sessions"), "{status:?}");
    // A deleted session no longer counts.
    admin
        .sessions
        .delete_session(pb::DeleteSessionRequest {
            session_id: session.id,
            ..Default::default()
        })
        .await?;
    admin.sessions.create_session(create()).await?;
    Ok(())
}
