//! Transport: gRPC health and reflection without a token, TLS with rustls.

use oma_integration_tests::{Bearer, Clients, ControlPlane, ControlPlaneOptions, TestDatabase};
use oma_proto::pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

#[tokio::test]
async fn health_and_reflection_need_no_token() {
    let cp = ControlPlane::start_sqlite().unwrap();
    let channel = cp.channel().await.unwrap();

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "oma.v1.AgentService", "oma.v1.SessionService"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "oma.v1.IdentityService",
        "oma.v1.RuntimeService",
        "oma.v1.AgentService",
        "oma.v1.SessionService",
        "oma.v1.AuditService",
        "oma.v1.SecretService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
}

struct TlsFiles {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    cert_pem: String,
}

fn self_signed() -> TlsFiles {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let cert_pem = certified.cert.pem();
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    TlsFiles {
        _dir: dir,
        cert,
        key,
        cert_pem,
    }
}

#[tokio::test]
async fn serves_tls_with_rustls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = self_signed();
    let cp = ControlPlane::start(
        TestDatabase::sqlite().unwrap(),
        ControlPlaneOptions {
            tls: Some((tls.cert.clone(), tls.key.clone())),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(cp.url().starts_with("https://localhost:"));

    let channel = Channel::from_shared(cp.url())
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&tls.cert_pem))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut clients = Clients::new(channel, Bearer::new(&cp.admin_token));
    let who = clients
        .identity
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(who.tenant.unwrap().name, "default");

    // A plaintext client gets nowhere.
    let plaintext = Channel::from_shared(format!("http://{}", cp.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        let mut clients = Clients::new(channel, Bearer::new(&cp.admin_token));
        assert!(clients.identity.who_am_i(pb::WhoAmIRequest {}).await.is_err());
    }

    // A client that does not trust the certificate is refused.
    let untrusted = Channel::from_shared(cp.url())
        .unwrap()
        .tls_config(ClientTlsConfig::new().domain_name("localhost"))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = untrusted {
        let mut clients = Clients::new(channel, Bearer::new(&cp.admin_token));
        assert!(clients.identity.who_am_i(pb::WhoAmIRequest {}).await.is_err());
    }
}

#[test]
fn refuses_plaintext_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(oma_integration_tests::bin("oma-control-plane"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refusing to serve plaintext on 0.0.0.0:0"), "{stderr}");
}

#[test]
fn omactl_verifies_the_server_with_a_ca_file() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = self_signed();
    let cp = ControlPlane::start(
        TestDatabase::sqlite().unwrap(),
        ControlPlaneOptions {
            tls: Some((tls.cert.clone(), tls.key.clone())),
            ..Default::default()
        },
    )
    .unwrap();
    let mut omactl = oma_integration_tests::Omactl::new(&cp.url(), &cp.admin_token).unwrap();
    // System roots do not know this self-signed certificate.
    let untrusted = omactl.run(&["whoami"]).unwrap();
    assert!(!untrusted.status.success());
    assert!(String::from_utf8_lossy(&untrusted.stderr).starts_with("error: "));
    omactl.extra = vec!["--ca-file".into(), tls.cert.display().to_string()];
    let who = omactl.json(&["whoami"]).unwrap();
    assert_eq!(who["tenant"]["name"], "default");
}
