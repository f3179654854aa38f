//! `DRY_RUN` must be asked for: a sender missing a credential or a mapping value refuses to
//! start (exit 2, naming every missing variable) instead of recording every conversion as
//! `dry_run`; asked for, it says so in `/readyz` and in `leadpipe_dry_run`.

use std::time::Duration;

use serde_json::Value;

use leadpipe_tests::{Pipeline, bin_path, eventually};

/// Runs `binary` against `p` with only `env` set of its destination's variables; returns the
/// exit code and stderr, failing if it does not exit within 20 s.
async fn refused(p: &Pipeline, binary: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = tokio::process::Command::new(bin_path(binary));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AMQP_URL", leadpipe_tests::amqp_url())
        .env("DATABASE_URL", &p.database_url)
        .env("LEADPIPE_NAMESPACE", p.names.namespace())
        .env(
            "LEADPIPE_CONFIG",
            format!("{}/../config/leadpipe.toml", env!("CARGO_MANIFEST_DIR")),
        )
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "error")
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .unwrap_or_else(|_| panic!("{binary} kept running without its credentials"))
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (binary, the variables set, the ones it must name as missing).
type Case = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
);

#[tokio::test]
async fn every_sender_without_its_credentials_and_without_dry_run_exits_2_naming_each_missing_variable()
 {
    let p = Pipeline::new().await;
    let cases: [Case; 6] = [
        ("meta-sender", &[], &["META_PIXEL_ID", "META_ACCESS_TOKEN"]),
        (
            "meta-sender",
            &[("META_PIXEL_ID", "123")],
            &["META_ACCESS_TOKEN"],
        ),
        ("ga4-sender", &[], &["GA4_MEASUREMENT_ID", "GA4_API_SECRET"]),
        // A new user's first run: Google credentials set, no conversion action configured.
        (
            "google-ads-sender",
            &[
                ("GOOGLE_ADS_CUSTOMER_ID", "1234567890"),
                ("GOOGLE_ADS_CLIENT_ID", "id"),
                ("GOOGLE_ADS_CLIENT_SECRET", "secret"),
                ("GOOGLE_ADS_REFRESH_TOKEN", "refresh"),
            ],
            &["GOOGLE_ADS_CONVERSION_ACTION_ID"],
        ),
        (
            "crm-writer",
            &[("CRM_WEBHOOK_URL", "http://127.0.0.1:9/crm")],
            &["CRM_WEBHOOK_SECRET"],
        ),
        (
            "crm-writer",
            &[("CRM_KIND", "hubspot")],
            &["HUBSPOT_ACCESS_TOKEN"],
        ),
    ];
    for (binary, env, missing) in cases {
        let (code, stderr) = refused(&p, binary, env).await;
        assert_eq!(code, Some(2), "{binary} {env:?}: {stderr}");
        for name in missing {
            assert!(
                stderr.contains(name),
                "{binary} {env:?} must name {name}: {stderr}"
            );
        }
        assert!(stderr.contains("DRY_RUN=true"), "{stderr}");
    }
    p.cleanup().await;
}

#[tokio::test]
async fn a_sender_asked_for_dry_run_says_so_in_readyz_and_in_a_metric() {
    // Arrange
    let p = Pipeline::new().await;
    let port = leadpipe_tests::free_port();
    let mut child = p.spawn_sender_binary(
        "ga4-sender",
        &[
            ("DRY_RUN", "true"),
            ("METRICS_ADDR", &format!("127.0.0.1:{port}")),
        ],
    );
    let base = format!("http://127.0.0.1:{port}");

    // Act
    let ready = eventually(Duration::from_secs(20), || async {
        reqwest::get(format!("{base}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

    // Assert
    assert!(ready, "ga4-sender in DRY_RUN never became ready");
    let body: Value = reqwest::get(format!("{base}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["dry_run"], true, "{body}");
    assert!(
        body["note"]
            .as_str()
            .is_some_and(|n| n.contains("nothing is sent to ga4")),
        "{body}"
    );
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"leadpipe_dry_run{destination="ga4"} 1"#),
        "{metrics}"
    );
    leadpipe_tests::sigterm_and_wait(&mut child).await;
    p.cleanup().await;
}

#[tokio::test]
async fn a_sender_whose_destination_is_not_enabled_refuses_to_start_naming_the_variable() {
    let p = Pipeline::new().await;
    let all = leadpipe_registry::REGISTRY.all();
    for (i, r) in all.iter().enumerate() {
        let other = all[(i + 1) % all.len()].name();
        let (code, stderr) = refused(
            &p,
            r.service,
            &[("DRY_RUN", "true"), ("LEADPIPE_DESTINATIONS", other)],
        )
        .await;
        assert_eq!(code, Some(2), "{}: {stderr}", r.service);
        assert!(
            stderr.contains("LEADPIPE_DESTINATIONS") && stderr.contains(r.name()),
            "{}: {stderr}",
            r.service
        );
    }
    p.cleanup().await;
}

#[tokio::test]
async fn a_sender_that_cannot_reach_its_database_or_bind_its_port_says_which() {
    let p = Pipeline::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = refused(
        &p,
        "meta-sender",
        &[("DRY_RUN", "true"), ("METRICS_ADDR", addr.as_str())],
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on METRICS_ADDR {addr}")),
        "{stderr}"
    );
    let (code, stderr) = refused(
        &p,
        "meta-sender",
        &[
            ("DRY_RUN", "true"),
            ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/leadpipe"),
        ],
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("connecting to DATABASE_URL"), "{stderr}");
    p.cleanup().await;
}
