//! The secret store through the real binaries, on both backends: omactl and
//! the gRPC API create, list, update and delete secrets; the value never
//! shows up in an RPC response, the control plane's log, the audit log or
//! (in plaintext) the database; another tenant neither sees nor touches a
//! secret; a member without rights changes nothing; the offline key
//! rotation keeps every secret readable, and the old key no longer starts
//! the server.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use oma_control_plane::secrets_key;
use oma_control_plane::service::live::LiveConfig;
use oma_control_plane::service::sealing::SecretsKey;
use oma_control_plane::service::{Service, ServiceConfig};
use oma_control_plane::store::{Backend, Store};
use oma_integration_tests::{
    Bearer, ControlPlane, ControlPlaneOptions, Omactl, Process, START_DEADLINE, TestDatabase, bin, faults,
};
use oma_proto::ids::TenantId;
use oma_proto::pb::{self, secret_service_client::SecretServiceClient};
use prost::Message as _;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Secrets = SecretServiceClient<InterceptedService<Channel, Bearer>>;

async fn secrets_client(cp: &ControlPlane, token: &str) -> Secrets {
    SecretServiceClient::with_interceptor(cp.channel().await.unwrap(), Bearer::new(token))
}

/// A value no test would produce by chance.
fn unique_value(label: &str) -> String {
    format!("oma-test-{label}-{:032x}", rand::random::<u128>())
}

/// `omactl … --value-stdin`, fed `stdin`.
fn omactl_with_stdin(omactl: &Omactl, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(bin("omactl"))
        .env("OMACTL_CONFIG", omactl.config_dir.path().join("config.toml"))
        .env_remove("OMA_SERVER")
        .env_remove("OMA_TOKEN")
        .args(["--server", &omactl.server, "--token", &omactl.token])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn assert_absent(what: &str, haystack: &[u8], values: &[&str]) {
    for value in values {
        assert!(
            !haystack.windows(value.len()).any(|w| w == value.as_bytes()),
            "the secret value {value:?} appears in {what}"
        );
    }
}

/// Everything the test needs to know about how the server finds its key.
struct KeySetup {
    /// `--secrets-key-file` given to serve and admin; `None`: the default
    /// `secrets.key` beside the SQLite database.
    file: Option<PathBuf>,
    /// Where the key is, either way.
    path: PathBuf,
    backend: Backend,
    _dir: tempfile::TempDir,
}

fn admin_command(cp: &ControlPlane, keys: &KeySetup, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(bin("oma-control-plane"));
    command.arg("admin").args(cp.database.args());
    if let Some(file) = &keys.file {
        command.arg("--secrets-key-file").arg(file);
    }
    command
        .args(args)
        .env("OMA_LOG", "warn")
        .env_remove("OMA_SECRETS_KEY")
        .output()
        .unwrap()
}

/// The values as `resolve_secret_values` hands them to session start, read
/// straight from the database with the key in `key_file`.
async fn resolve(keys: &KeySetup, key_file: &Path, tenant: &str, names: &[&str]) -> Vec<(String, Vec<u8>)> {
    let store = Store::open(&keys.backend).unwrap();
    let key = secrets_key::read_key_file(key_file).unwrap();
    let service = Service::new(
        store,
        ServiceConfig {
            secrets_key: Some(key),
            ..ServiceConfig::default()
        },
        LiveConfig::default(),
    );
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    service
        .resolve_secret_values(
            &TenantId::from_trusted(tenant.to_owned()),
            &names,
            "system",
            "the secrets integration test",
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.name, r.value.expose().to_vec()))
        .collect()
}

async fn secret_store(mut cp: ControlPlane, keys: KeySetup) {
    let dir = tempfile::tempdir().unwrap();
    let api_key = unique_value("api-key");
    let api_key_2 = unique_value("api-key-2");
    let piped = unique_value("piped");
    let refused = unique_value("refused");
    let values = [api_key.as_str(), api_key_2.as_str(), piped.as_str(), refused.as_str()];

    let mut clients = cp.clients().await.unwrap();
    let tenant_id = clients
        .identity
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap()
        .id;
    let (_, member_token) = clients.new_user("mia", pb::Role::Member).await.unwrap();
    let other_admin_token = cp.create_tenant("other").unwrap();
    let mut admin = secrets_client(&cp, &cp.admin_token).await;
    let mut member = secrets_client(&cp, &member_token.secret).await;
    let mut other = secrets_client(&cp, &other_admin_token).await;

    // omactl: create from a file and from stdin; list; update.
    let omactl = Omactl::new(&cp.url(), &cp.admin_token).unwrap();
    let value_file = dir.path().join("value");
    std::fs::write(&value_file, format!("{api_key}\n")).unwrap();
    let created = omactl
        .json(&[
            "secrets",
            "create",
            "anthropic-key",
            "--kind",
            "api_key",
            "--value-file",
            value_file.to_str().unwrap(),
        ])
        .unwrap();
    assert_eq!(created["name"], "anthropic-key");
    assert_eq!(created["kind"], "api_key");
    assert_eq!(created["version"], 1);
    let secret_id = created["id"].as_str().unwrap().to_owned();
    assert!(secret_id.starts_with("sec_"), "{created}");
    let out = omactl_with_stdin(&omactl, &["secrets", "create", "piped", "--value-stdin"], &piped);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_absent("omactl's output", &out.stdout, &values);
    let listed = omactl.json(&["secrets", "list"]).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["anthropic-key", "piped"]);
    let wide = omactl.run(&["secrets", "list", "-o", "wide"]).unwrap();
    assert!(String::from_utf8_lossy(&wide.stdout).contains(&secret_id));
    std::fs::write(&value_file, &api_key_2).unwrap();
    let updated = omactl
        .json(&[
            "secrets",
            "update",
            &secret_id,
            "--value-file",
            value_file.to_str().unwrap(),
        ])
        .unwrap();
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["kind"], "api_key", "the kind is kept");
    let stale = omactl
        .run(&[
            "secrets",
            "update",
            "anthropic-key",
            "--expected-version",
            "1",
            "--value-file",
            value_file.to_str().unwrap(),
        ])
        .unwrap();
    assert_eq!(stale.status.code(), Some(6), "{stale:?}");
    let taken = omactl
        .run(&[
            "secrets",
            "create",
            "piped",
            "--value-file",
            value_file.to_str().unwrap(),
        ])
        .unwrap();
    assert_eq!(taken.status.code(), Some(6), "{taken:?}");
    assert!(
        String::from_utf8_lossy(&taken.stderr).contains("already exists"),
        "{taken:?}"
    );
    let no_source = omactl.run(&["secrets", "create", "x"]).unwrap();
    assert_eq!(
        no_source.status.code(),
        Some(2),
        "a value source is required: {no_source:?}"
    );

    // The API: metadata only, precise refusals.
    let got = admin
        .get_secret(pb::GetSecretRequest {
            name: "anthropic-key".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.secret.as_ref().unwrap().version, 2);
    assert_absent("GetSecret's response", &got.encode_to_vec(), &values);
    let list = admin
        .list_secrets(pb::ListSecretsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.secrets.len(), 2);
    assert_absent("ListSecrets' response", &list.encode_to_vec(), &values);
    let paged = admin
        .list_secrets(pb::ListSecretsRequest {
            page: Some(pb::PageRequest {
                page_size: 1,
                page_token: String::new(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paged.secrets[0].name, "anthropic-key");
    let rest = admin
        .list_secrets(pb::ListSecretsRequest {
            page: Some(pb::PageRequest {
                page_size: 1,
                page_token: paged.next_page_token,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.secrets[0].name, "piped");
    let too_big = admin
        .create_secret(pb::CreateSecretRequest {
            name: "big".into(),
            kind: pb::SecretKind::File as i32,
            value: vec![b'x'; 64 * 1024 + 1],
        })
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), Code::InvalidArgument);
    assert_eq!(
        too_big.message(),
        "value: is 65537 bytes, more than the limit of 65536 bytes (64 KiB)"
    );
    let bad_kind = admin
        .create_secret(pb::CreateSecretRequest {
            name: "odd".into(),
            kind: 42,
            value: b"v".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_kind.code(), Code::InvalidArgument, "{bad_kind:?}");
    let duplicate = admin
        .create_secret(pb::CreateSecretRequest {
            name: "piped".into(),
            kind: 0,
            value: refused.clone().into_bytes(),
        })
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists, "{duplicate:?}");

    // A member reads metadata and changes nothing.
    assert_eq!(
        member
            .list_secrets(pb::ListSecretsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .secrets
            .len(),
        2
    );
    let denied = [
        member
            .create_secret(pb::CreateSecretRequest {
                name: "mine".into(),
                kind: 0,
                value: refused.clone().into_bytes(),
            })
            .await
            .unwrap_err(),
        member
            .update_secret(pb::UpdateSecretRequest {
                name: "anthropic-key".into(),
                value: refused.clone().into_bytes(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        member
            .delete_secret(pb::DeleteSecretRequest {
                name: "anthropic-key".into(),
            })
            .await
            .unwrap_err(),
    ];
    for status in &denied {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("admin"), "{status:?}");
    }
    let member_cli = Omactl::new(&cp.url(), &member_token.secret).unwrap();
    let out = member_cli
        .run(&["secrets", "delete", "anthropic-key", "--yes"])
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs the admin role"),
        "{out:?}"
    );

    // Another tenant: nothing to see or touch, and the same answer as for a
    // name that exists nowhere.
    assert!(
        other
            .list_secrets(pb::ListSecretsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .secrets
            .is_empty()
    );
    let foreign = [
        other
            .get_secret(pb::GetSecretRequest {
                name: "anthropic-key".into(),
            })
            .await
            .unwrap_err(),
        other
            .update_secret(pb::UpdateSecretRequest {
                name: "anthropic-key".into(),
                value: refused.clone().into_bytes(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        other
            .delete_secret(pb::DeleteSecretRequest {
                name: "anthropic-key".into(),
            })
            .await
            .unwrap_err(),
    ];
    for status in &foreign {
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert_eq!(status.message(), "secret \"anthropic-key\" not found");
    }
    let after = admin
        .get_secret(pb::GetSecretRequest {
            name: "anthropic-key".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .secret
        .unwrap();
    assert_eq!(after.version, 2, "the refused calls changed nothing");

    // Delete: omactl, then it is gone.
    let deleted = omactl.json(&["secrets", "delete", "piped", "--yes"]).unwrap();
    assert!(deleted["deleted"].as_str().unwrap().starts_with("sec_"), "{deleted}");
    let gone = omactl.run(&["secrets", "get", "piped"]).unwrap();
    assert_eq!(gone.status.code(), Some(5), "{gone:?}");

    // The audit log: each change with the secret's name, never a value.
    let audit = clients
        .audit
        .list_audit_entries(pb::ListAuditEntriesRequest {
            action: "secret.".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["secret.delete", "secret.update", "secret.create", "secret.create"]
    );
    assert!(
        audit
            .iter()
            .any(|e| e.target_id == secret_id && e.detail_json.contains("anthropic-key"))
    );
    for entry in &audit {
        assert_absent("the audit log", entry.detail_json.as_bytes(), &values);
    }

    // Rotation: stop the server, rotate offline, and the secrets still
    // resolve under the new key; the old key no longer starts the server.
    let old_key = dir.path().join("old.key");
    std::fs::copy(&keys.path, &old_key).unwrap();
    cp.process.signal("TERM").unwrap();
    cp.process.wait_exit(Duration::from_secs(30)).unwrap();
    let old_id = secrets_key::read_key_file(&keys.path).unwrap().id().to_owned();
    let rotated = admin_command(&cp, &keys, &["rotate-secrets-key"]);
    let said = String::from_utf8_lossy(&rotated.stdout).into_owned();
    assert!(
        rotated.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    assert!(said.contains("re-encrypted 1 secrets of 1 tenants"), "{said}");
    let new_id = secrets_key::read_key_file(&keys.path).unwrap().id().to_owned();
    assert_ne!(new_id, old_id);
    assert!(said.contains(&new_id) && said.contains(&old_id), "{said}");
    assert_absent("the rotation's output", &rotated.stdout, &values);

    let refusal_log = dir.path().join("old-key.log");
    let mut with_old = cp.options.clone();
    with_old.extra_args = vec!["--secrets-key-file".into(), old_key.display().to_string()];
    with_old.stderr_log = Some(refusal_log.clone());
    let mut process: Process = ControlPlane::spawn(&cp.database, &with_old, "127.0.0.1:0").unwrap();
    let status = process.wait_exit(START_DEADLINE).unwrap();
    assert!(!status.success(), "the old key must not start the server");
    let refusal = std::fs::read_to_string(&refusal_log).unwrap();
    assert!(
        refusal.contains(&format!(
            "encrypted under key {new_id}, but the configured secrets key is {old_id}"
        )),
        "{refusal}"
    );

    faults::restart_control_plane(&mut cp).unwrap();
    let mut admin = secrets_client(&cp, &cp.admin_token).await;
    assert_eq!(
        resolve(&keys, &keys.path, &tenant_id, &["anthropic-key"]).await,
        [("anthropic-key".to_owned(), api_key_2.clone().into_bytes())]
    );
    let used = admin
        .get_secret(pb::GetSecretRequest {
            name: "anthropic-key".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .secret
        .unwrap();
    assert!(used.last_used_time.is_some(), "{used:?}");
    assert_eq!(used.version, 2);

    // The database and the log: no value in plaintext anywhere.
    cp.process.signal("TERM").unwrap();
    cp.process.wait_exit(Duration::from_secs(30)).unwrap();
    let store = Store::open(&keys.backend).unwrap();
    let rows = store
        .write_blocking("test", oma_control_plane::store::secrets::all)
        .unwrap();
    assert_eq!(rows.len(), 1);
    for row in &rows {
        assert_eq!(row.key_id, new_id);
        assert_absent("a stored ciphertext", &row.ciphertext, &values);
    }
    drop(store);
    if let Backend::Sqlite { path } = &keys.backend {
        let folder = path.parent().unwrap();
        let mut files = 0;
        for entry in std::fs::read_dir(folder).unwrap() {
            let entry = entry.unwrap().path();
            // -wal and -shm go away when the last connection closes, which
            // the store just dropped may still be doing.
            if entry.file_name().unwrap().to_string_lossy().starts_with("oma.db")
                && let Ok(bytes) = std::fs::read(&entry)
            {
                assert_absent(&entry.display().to_string(), &bytes, &values);
                files += 1;
            }
        }
        assert!(files >= 1);
    }
    let log = std::fs::read(cp.options.stderr_log.as_ref().unwrap()).unwrap();
    assert!(!log.is_empty(), "the log was written (at debug)");
    assert_absent("the control plane's log", &log, &values);
}

fn options(log: &Path, keys: &KeySetup) -> ControlPlaneOptions {
    ControlPlaneOptions {
        stderr_log: Some(log.to_owned()),
        log_filter: Some("debug,h2=info,tower=info,hyper=info".into()),
        extra_args: keys
            .file
            .iter()
            .flat_map(|f| ["--secrets-key-file".to_owned(), f.display().to_string()])
            .collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn secret_store_sqlite() {
    let db = TestDatabase::sqlite().unwrap();
    let TestDatabase::Sqlite { dir } = &db else {
        unreachable!()
    };
    let keys = KeySetup {
        file: None,
        path: dir.path().join("secrets.key"),
        backend: Backend::Sqlite {
            path: dir.path().join("oma.db"),
        },
        _dir: tempfile::tempdir().unwrap(),
    };
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("cp.log");
    let cp = ControlPlane::start(db, options(&log, &keys)).unwrap();
    // The embedded default made its own key, private, beside the database.
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&keys.path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    secret_store(cp, keys).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn secret_store_postgres() {
    let Some(db) = TestDatabase::postgres("secret_store_postgres").unwrap() else {
        return;
    };
    let TestDatabase::Postgres { url, .. } = &db else {
        unreachable!()
    };
    let key_dir = tempfile::tempdir().unwrap();
    let path = key_dir.path().join("secrets.key");
    secrets_key::write_key_file(&path, &SecretsKey::generate()).unwrap();
    let keys = KeySetup {
        file: Some(path.clone()),
        path,
        backend: Backend::Postgres { url: url.clone() },
        _dir: key_dir,
    };
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("cp.log");
    let cp = ControlPlane::start(db, options(&log, &keys)).unwrap();
    secret_store(cp, keys).await;
}
