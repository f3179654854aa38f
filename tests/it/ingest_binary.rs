//! The real `ingest` binary: start-up errors, the quick start's sample lead, and SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use leadpipe_bus::Names;
use leadpipe_tests::{Broker, bin_path, eventually, free_port, unique_namespace};

fn repo_file(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn a_missing_secret_variable_stops_ingest_at_start_up_naming_it() {
    // Act
    let out = tokio::process::Command::new(bin_path("ingest"))
        .env("LEADPIPE_SOURCES", repo_file("config/sources.toml"))
        .env_remove("SITE_WIDGET_SECRET")
        .env("INGEST_ADDR", format!("127.0.0.1:{}", free_port()))
        .output()
        .await
        .unwrap();

    // Assert
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SITE_WIDGET_SECRET is not set"), "{stderr}");
}

#[tokio::test]
async fn a_cluster_node_that_is_not_an_amqp_url_is_named_without_its_password() {
    // Act
    let out = tokio::process::Command::new(bin_path("ingest"))
        .env("LEADPIPE_SOURCES", repo_file("config/sources.toml"))
        .env("SITE_WIDGET_SECRET", "x")
        .env("INGEST_ADDR", format!("127.0.0.1:{}", free_port()))
        .env(
            "AMQP_URL",
            "amqp://guest:hunter2@127.0.0.1:5701/%2f,http://guest:hunter2@127.0.0.1:5702/",
        )
        .output()
        .await
        .unwrap();

    // Assert: exit 2, the variable and the entry named, its password not.
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("AMQP_URL"), "{stderr}");
    assert!(stderr.contains("127.0.0.1:5702"), "{stderr}");
    assert!(
        stderr.contains("is not an amqp:// or amqps:// URL"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[tokio::test]
async fn a_bad_variable_is_named_at_start_up() {
    for (var, value) in [
        ("INGEST_ADDR", "not-an-address"),
        ("LEADPIPE_NAMESPACE", "has space"),
        ("LEADPIPE_CONFIG", "/nonexistent/leadpipe.toml"),
        ("INGEST_MAX_BODY_BYTES", "lots"),
        ("AMQP_QUORUM_GROUP_SIZE", "0"),
        ("AMQP_QUORUM_GROUP_SIZE", "three"),
        (
            "AMQP_URL",
            "amqp://127.0.0.1:5672/%2f,,amqp://127.0.0.1:5673/%2f",
        ),
    ] {
        let out = tokio::process::Command::new(bin_path("ingest"))
            .env("LEADPIPE_SOURCES", repo_file("config/sources.toml"))
            .env("SITE_WIDGET_SECRET", "x")
            .env("INGEST_ADDR", format!("127.0.0.1:{}", free_port()))
            .env(var, value)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(var), "{var}: {stderr}");
    }
}

#[tokio::test]
async fn the_sample_lead_is_accepted_by_the_real_binary_which_exits_cleanly_on_sigterm() {
    // Arrange
    let namespace = unique_namespace("b");
    let port = free_port();
    let mut child = tokio::process::Command::new(bin_path("ingest"))
        .env("LEADPIPE_SOURCES", repo_file("config/sources.toml"))
        .env("LEADPIPE_CONFIG", repo_file("config/leadpipe.toml"))
        .env("SITE_WIDGET_SECRET", "dev-secret")
        .env("LEADPIPE_NAMESPACE", &namespace)
        .env("INGEST_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "debug")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let ready = eventually(Duration::from_secs(20), || async {
        http.get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ready, "ingest never became ready");

    // Act: the quick start's command.
    let send = tokio::process::Command::new(bin_path("leadpipe"))
        .args([
            "send",
            &repo_file("examples/lead.json"),
            "--source",
            "site-widget",
        ])
        .arg("--url")
        .arg(format!("http://127.0.0.1:{port}"))
        .env("LEADPIPE_SOURCES", repo_file("config/sources.toml"))
        .env("SITE_WIDGET_SECRET", "dev-secret")
        .output()
        .await
        .unwrap();

    // Assert
    let stderr = String::from_utf8_lossy(&send.stderr);
    assert!(send.status.success(), "{stderr}");
    assert!(stderr.contains("1 accepted, 0 failed"), "{stderr}");
    let broker = Broker::connect(Names::new(namespace)).await;
    for q in broker.work_queues() {
        let m = &broker.take(&q, 1, Duration::from_secs(20)).await[0];
        assert_eq!(m.body["event"]["contact"]["country"], "US");
    }

    // Act: SIGTERM.
    let status = leadpipe_tests::sigterm_and_wait(&mut child).await;

    // Assert: a clean exit, and logs without PII.
    assert!(status.success());
    let out = child.wait_with_output().await.unwrap();
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(logs.contains("\"event accepted\""), "{logs}");
    // Strings that cannot occur by chance in ids, trace ids or timestamps.
    for pii in [
        "jane.doe",
        "Jane",
        "6505551234",
        "555-1234",
        "203.0.113.7",
        "Mozilla",
    ] {
        assert!(!logs.contains(pii), "PII {pii:?} in logs: {logs}");
    }
    broker.delete().await;
}

#[tokio::test]
async fn an_unsupported_otlp_protocol_is_named_at_start_up() {
    // Act: an OTLP endpoint with a protocol that is not built in.
    let out = tokio::process::Command::new(bin_path("ingest"))
        .env("LEADPIPE_SOURCES", repo_file("config/sources.toml"))
        .env("SITE_WIDGET_SECRET", "x")
        .env("INGEST_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .output()
        .await
        .unwrap();

    // Assert
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{stderr}");
}

#[tokio::test]
async fn ingest_with_some_destinations_enabled_declares_only_their_queues_and_says_which() {
    // Arrange: only meta and crm enabled.
    let namespace = unique_namespace("d");
    let port = free_port();
    let mut child = tokio::process::Command::new(bin_path("ingest"))
        .env("LEADPIPE_SOURCES", repo_file("config/sources.toml"))
        .env("LEADPIPE_CONFIG", repo_file("config/leadpipe.toml"))
        .env("SITE_WIDGET_SECRET", "dev-secret")
        .env("LEADPIPE_NAMESPACE", &namespace)
        .env("LEADPIPE_DESTINATIONS", "crm, meta")
        .env("INGEST_ADDR", format!("127.0.0.1:{port}"))
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ready = eventually(Duration::from_secs(20), || async {
        reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ready, "ingest never became ready");

    // Assert: the enabled queues exist, the others do not.
    let names = Names::new(namespace.clone());
    let broker = Broker::connect(names.clone()).await;
    for d in leadpipe_registry::REGISTRY.destinations() {
        let conn = leadpipe_bus::connect(&leadpipe_tests::amqp_url(), "test")
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        let exists = leadpipe_bus::topology::queue_depth(&channel, &names.work_queue(d))
            .await
            .is_ok();
        let enabled = ["meta", "crm"].contains(&d.as_str());
        assert_eq!(exists, enabled, "{}", d.as_str());
        let _ = conn.close(200, "done".into()).await;
    }

    // Assert: the start-up log names them, in queue order.
    let status = leadpipe_tests::sigterm_and_wait(&mut child).await;
    assert!(status.success());
    let out = child.wait_with_output().await.unwrap();
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(logs.contains(r#""destinations":"meta,crm""#), "{logs}");
    broker.delete().await;

    // A name that is not registered stops ingest at start-up, naming the variable.
    let out = tokio::process::Command::new(bin_path("ingest"))
        .env("LEADPIPE_SOURCES", repo_file("config/sources.toml"))
        .env("SITE_WIDGET_SECRET", "dev-secret")
        .env("LEADPIPE_DESTINATIONS", "meta,snapchat")
        .env("INGEST_ADDR", format!("127.0.0.1:{}", free_port()))
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("LEADPIPE_DESTINATIONS") && stderr.contains("\"snapchat\""),
        "{stderr}"
    );
}
