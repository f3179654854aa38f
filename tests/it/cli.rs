//! The `leadpipe` operator CLI against a pipeline with a dead letter: dlq stats, list,
//! replay (dry run, filtered, twice) and trace.

use std::time::Duration;

use serde_json::json;

use leadpipe_tests::fake_meta::REJECTED_EMAIL;
use leadpipe_tests::{Pipeline, SenderOptions, bin_path, eventually, recent_lead};

const WAIT: Duration = Duration::from_secs(30);

async fn cli(p: &Pipeline, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(bin_path("leadpipe"))
        .args(args)
        .env("AMQP_URL", leadpipe_tests::amqp_url())
        .env("DATABASE_URL", &p.database_url)
        .env("LEADPIPE_NAMESPACE", p.names.namespace())
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn an_operator_inspects_traces_and_replays_a_dead_letter_exactly_once() {
    // Arrange: one event Meta rejects, dead-lettered by meta-sender.
    let p = Pipeline::new().await;
    let mut bad = recent_lead("L-cli");
    bad["contact"]["email"] = json!(REJECTED_EMAIL);
    let id = p.publish(&bad).await;
    let sender = p.start_meta(SenderOptions::default()).await;
    p.wait_status(&id, "dead_lettered", WAIT).await;
    let dlq = p.names.dead_letter_queue(leadpipe_meta_sender::DESTINATION);
    assert!(eventually(WAIT, || async { p.broker.depth(&dlq).await == 1 }).await);

    // Act + Assert: stats and list read without consuming, and print no PII.
    let (ok, stats, _) = cli(&p, &["dlq", "stats"]).await;
    assert!(ok);
    assert!(
        stats.lines().any(|l| l.starts_with("meta")
            && l.contains("meta_100")
            && l.trim_end().ends_with('1')),
        "{stats}"
    );
    let (ok, list, _) = cli(&p, &["dlq", "list", "meta"]).await;
    assert!(ok);
    assert!(
        list.contains(&id) && list.contains("code=meta_100") && list.contains("http=400"),
        "{list}"
    );
    assert!(!list.contains("reject@"), "PII in the listing: {list}");
    // A quorum queue takes the unacked reads back through its log after the CLI's channel
    // closes, so "ready" returns to 1 shortly after, never to 0 for good.
    assert!(
        eventually(WAIT, || async { p.broker.depth(&dlq).await == 1 }).await,
        "reading must not consume"
    );

    // Trace shows where the event is and why.
    let (ok, trace, _) = cli(&p, &["trace", &id]).await;
    assert!(ok);
    assert!(
        trace.contains("dead_lettered") && trace.contains("meta_100"),
        "{trace}"
    );
    let (ok, _, err) = cli(&p, &["trace", "no-such-event"]).await;
    assert!(!ok && err.contains("no delivery recorded"), "{err}");
    // By the client's lead id, too; without any id it says what it needs.
    let (ok, by_lead, _) = cli(&p, &["trace", "--lead-id", "L-cli"]).await;
    assert!(
        ok && by_lead.contains(&format!("event {id}")) && by_lead.contains("dead_lettered"),
        "{by_lead}"
    );
    let (ok, _, err) = cli(&p, &["trace", "--lead-id", "L-nobody"]).await;
    assert!(
        !ok && err.contains("no delivery recorded for lead_id L-nobody"),
        "{err}"
    );
    let (ok, _, err) = cli(&p, &["trace"]).await;
    assert!(!ok && err.contains("--lead-id"), "{err}");

    // A dry run moves nothing; a filter that matches nothing moves nothing.
    let (ok, dry, _) = cli(&p, &["dlq", "replay", "meta", "--dry-run"]).await;
    assert!(
        ok && dry.contains("1 of 1 message(s) would be replayed"),
        "{dry}"
    );
    let (ok, none, _) = cli(&p, &["dlq", "replay", "meta", "--error-code", "http_500"]).await;
    assert!(ok && none.contains("replayed 0 message(s)"), "{none}");
    assert!(eventually(WAIT, || async { p.broker.depth(&dlq).await == 1 }).await);

    // After the fix, a replay delivers it, once.
    p.meta.accept_rejected();
    let (ok, replayed, _) = cli(&p, &["dlq", "replay", "meta", "--error-code", "meta_100"]).await;
    assert!(
        ok && replayed.contains("replayed 1 message(s)"),
        "{replayed}"
    );
    p.wait_status(&id, "sent", WAIT).await;
    assert_eq!(p.meta.accepted()[&id], 1);

    // Replaying again sends nothing twice.
    let (ok, again, _) = cli(&p, &["dlq", "replay", "meta"]).await;
    assert!(ok && again.contains("replayed 0 message(s)"), "{again}");
    assert_eq!(p.meta.accepted()[&id], 1);

    // A bad destination is named.
    let (ok, _, err) = cli(&p, &["dlq", "list", "metta"]).await;
    assert!(
        !ok && err.contains("\"metta\"") && err.contains(&leadpipe_registry::REGISTRY.names()),
        "{err}"
    );
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn trace_shows_a_google_ads_event_accepted_then_its_final_status() {
    // Arrange: Data Manager keeps the request PROCESSING for the first two status requests.
    let p = Pipeline::new().await;
    p.google.set_pending_polls(2);
    let mut won = recent_lead("L-trace");
    won["event_name"] = json!("won");
    won["order_id"] = json!("O-trace");
    won["value"] = json!(10);
    won["currency"] = json!("usd");
    let id = p.publish(&won).await;
    let sender = p.start_google(SenderOptions::default()).await;

    // Act + Assert: accepted, with the request id, while Google processes it…
    p.wait_status_in(
        leadpipe_google_ads_sender::DESTINATION,
        &id,
        "accepted",
        WAIT,
    )
    .await;
    let (ok, trace, _) = cli(&p, &["trace", &id]).await;
    assert!(ok);
    assert!(
        trace.contains("google_ads") && trace.contains("accepted") && trace.contains("req-1#0"),
        "{trace}"
    );
    // …then sent once the status says so.
    p.wait_status_in(leadpipe_google_ads_sender::DESTINATION, &id, "sent", WAIT)
        .await;
    let (_, trace, _) = cli(&p, &["trace", &id]).await;
    assert!(
        trace.contains("sent") && !trace.contains("accepted"),
        "{trace}"
    );
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn send_follows_ingest_addr_and_says_truthfully_when_nothing_was_posted() {
    // Arrange: a port nothing listens on.
    let port = leadpipe_tests::free_port();
    let root = format!("{}/..", env!("CARGO_MANIFEST_DIR"));

    // Act: INGEST_ADDR says where ingest listens; no INGEST_URL.
    let out = tokio::process::Command::new(bin_path("leadpipe"))
        .args([
            "send",
            &format!("{root}/examples/lead.json"),
            "--source",
            "site-widget",
        ])
        .env("LEADPIPE_SOURCES", format!("{root}/config/sources.toml"))
        .env("SITE_WIDGET_SECRET", "dev-secret")
        .env("INGEST_ADDR", format!("0.0.0.0:{port}"))
        .env_remove("INGEST_URL")
        .output()
        .await
        .unwrap();

    // Assert
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("0/1 posted"), "{stderr}");
    assert!(stderr.contains("1 failed"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "could not connect to http://127.0.0.1:{port}/v1/events"
        )),
        "{stderr}"
    );
}

/// Puts `event` straight into meta's DLQ as dead-lettered at `failed_at`.
async fn dead_letter(
    p: &Pipeline,
    event: &serde_json::Value,
    failed_at: chrono::DateTime<chrono::Utc>,
) -> String {
    use lapin::types::{AMQPValue, FieldTable};
    let env = leadpipe_tests::envelope_of(event);
    let mut headers = FieldTable::default();
    for (k, v) in [
        ("x-leadpipe-error-code", "meta_100".to_owned()),
        ("x-leadpipe-failed-at", failed_at.to_rfc3339()),
    ] {
        headers.insert(k.into(), AMQPValue::LongString(v.into()));
    }
    p.broker
        .channel
        .basic_publish(
            p.names.dead_letter_exchange().as_str().into(),
            "meta".into(),
            Default::default(),
            &serde_json::to_vec(&env).unwrap(),
            lapin::BasicProperties::default()
                .with_message_id(env.event_id.as_str().into())
                .with_headers(headers)
                .with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    env.event_id
}

#[tokio::test]
async fn replay_since_a_time_keeps_events_the_destination_would_now_refuse_as_too_old() {
    // Arrange: three dead letters — recent and fresh, recent but 8 days old (Meta takes 7),
    // and one dead-lettered three days ago.
    let p = Pipeline::new().await;
    let now = chrono::Utc::now();
    let fresh = dead_letter(
        &p,
        &recent_lead("L-fresh"),
        now - chrono::Duration::minutes(30),
    )
    .await;
    let mut old_event = recent_lead("L-old");
    old_event["occurred_at"] = json!((now - chrono::Duration::days(8)).to_rfc3339());
    let old = dead_letter(&p, &old_event, now - chrono::Duration::minutes(20)).await;
    let earlier = dead_letter(
        &p,
        &recent_lead("L-earlier"),
        now - chrono::Duration::days(3),
    )
    .await;
    let dlq = p.names.dead_letter_queue(leadpipe_meta_sender::DESTINATION);
    assert!(eventually(WAIT, || async { p.broker.depth(&dlq).await == 3 }).await);

    // Act
    let (ok, out, err) = cli(&p, &["dlq", "replay", "meta", "--since", "2h"]).await;

    // Assert: the fresh one moved; the old one stayed, said so; the earlier one untouched.
    assert!(ok, "{err}");
    assert!(out.contains("replayed 1 message(s)"), "{out}");
    assert!(out.contains("1 of them too old for meta"), "{out}");
    assert!(err.contains("3/3"), "no progress: {err}");
    let work = p.names.work_queue(leadpipe_meta_sender::DESTINATION);
    let moved = p.broker.take(&work, 1, WAIT).await;
    assert_eq!(moved[0].message_id().as_deref(), Some(fresh.as_str()));
    let left: Vec<String> = p
        .broker
        .take(&dlq, 2, WAIT)
        .await
        .iter()
        .filter_map(|m| m.message_id())
        .collect();
    assert!(left.contains(&old) && left.contains(&earlier), "{left:?}");
    let (ok, _, err) = cli(&p, &["dlq", "replay", "meta", "--since", "yesterday"]).await;
    assert!(!ok && err.contains("--since"), "{err}");
    p.cleanup().await;
}

#[tokio::test]
async fn thirty_inspections_spend_no_delivery_attempt_and_a_replay_then_finds_every_message() {
    // Arrange: three dead letters.
    let p = Pipeline::new().await;
    let now = chrono::Utc::now();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            dead_letter(
                &p,
                &recent_lead(&format!("L-inspected-{i}")),
                now - chrono::Duration::minutes(5),
            )
            .await,
        );
    }
    let dlq = p.names.dead_letter_queue(leadpipe_meta_sender::DESTINATION);
    assert!(eventually(WAIT, || async { p.broker.depth(&dlq).await == 3 }).await);

    // Act: thirty inspections, each of stats, list and a dry-run replay in turn (on RabbitMQ
    // 4.x a quorum queue's default delivery limit of 20 would have discarded them).
    for round in 0..30 {
        let args: &[&str] = match round % 3 {
            0 => &["dlq", "stats"],
            1 => &["dlq", "list", "meta"],
            _ => &["dlq", "replay", "meta", "--dry-run"],
        };
        let (ok, out, err) = cli(&p, args).await;
        assert!(ok, "{args:?}: {out}{err}");
    }

    // Assert: every message is still there with no delivery counted against it, and a replay
    // moves all three.
    assert_eq!(p.broker.depth(&dlq).await, 3);
    let counts = p.broker.delivery_counts(&dlq).await;
    assert_eq!(counts.len(), 3);
    assert!(counts.iter().all(|c| *c <= 1), "delivery counts {counts:?}");
    assert!(eventually(WAIT, || async { p.broker.depth(&dlq).await == 3 }).await);
    let (ok, out, err) = cli(&p, &["dlq", "replay", "meta"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("replayed 3 message(s)"), "{out}");
    let work = p.names.work_queue(leadpipe_meta_sender::DESTINATION);
    let moved = p.broker.take(&work, 3, WAIT).await;
    let mut moved_ids: Vec<String> = moved.iter().filter_map(|m| m.message_id()).collect();
    moved_ids.sort();
    ids.sort();
    assert_eq!(moved_ids, ids);
    p.cleanup().await;
}

#[tokio::test]
async fn destinations_lists_the_enabled_ones_with_what_each_lacks_to_send() {
    let bin = bin_path("leadpipe");
    let run = |env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(&bin);
        command.arg("destinations");
        for v in [
            "LEADPIPE_DESTINATIONS",
            "META_PIXEL_ID",
            "META_ACCESS_TOKEN",
        ] {
            command.env_remove(v);
        }
        for var in leadpipe_registry::REGISTRY
            .all()
            .iter()
            .flat_map(|r| (r.missing_credentials)())
        {
            command.env_remove(var);
        }
        command.envs(env.iter().copied());
        let out = command.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // Every registered destination by default, each with its service, port and gaps.
    let (ok, all, _) = run(&[]);
    assert!(ok);
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(
        lines.len(),
        leadpipe_registry::REGISTRY.all().len(),
        "{all}"
    );
    assert!(
        lines.contains(&"meta meta-sender 9101 META_PIXEL_ID,META_ACCESS_TOKEN"),
        "{all}"
    );

    // A subset, one of them with its credentials: nothing missing there.
    let (ok, some, _) = run(&[
        ("LEADPIPE_DESTINATIONS", "meta,crm"),
        ("META_PIXEL_ID", "1"),
        ("META_ACCESS_TOKEN", "t"),
    ]);
    assert!(ok);
    assert_eq!(
        some.lines().collect::<Vec<_>>(),
        [
            "meta meta-sender 9101 -",
            "crm crm-writer 9104 CRM_WEBHOOK_URL,CRM_WEBHOOK_SECRET"
        ]
    );

    // A conversion action in the mapping stands in for GOOGLE_ADS_CONVERSION_ACTION_ID.
    let mapping = std::env::temp_dir().join(format!("leadpipe-dest-{}.toml", std::process::id()));
    std::fs::write(
        &mapping,
        "[events.won.google_ads]\nkind = \"click_conversion\"\nconversion_action_id = \"987654321\"\n",
    )
    .unwrap();
    let (ok, google, err) = run(&[
        ("LEADPIPE_DESTINATIONS", "google_ads"),
        ("LEADPIPE_CONFIG", mapping.to_str().unwrap()),
    ]);
    let _ = std::fs::remove_file(&mapping);
    assert!(ok, "{err}");
    assert_eq!(
        google.trim(),
        "google_ads google-ads-sender 9103 GOOGLE_ADS_CUSTOMER_ID,GOOGLE_ADS_CLIENT_ID,\
         GOOGLE_ADS_CLIENT_SECRET,GOOGLE_ADS_REFRESH_TOKEN"
    );

    // A name that is not registered is refused, naming the variable and the registered ones.
    let (ok, _, err) = run(&[("LEADPIPE_DESTINATIONS", "meta,metta")]);
    assert!(!ok);
    assert!(
        err.contains("LEADPIPE_DESTINATIONS") && err.contains("metta"),
        "{err}"
    );
}

#[tokio::test]
async fn maintain_makes_a_destinations_partitions_and_refuses_a_width_naming_the_flag() {
    // Arrange: a fresh delivery log.
    let p = Pipeline::new().await;

    // Act: one round for Meta, with hour-wide partitions.
    let (ok, out, err) = cli(
        &p,
        &[
            "maintain",
            "--destination",
            "meta",
            "--partition-secs",
            "3600",
        ],
    )
    .await;

    // Assert: made ahead, and said so.
    assert!(ok, "{err}");
    assert!(out.contains("delivery log partitions: 1 h wide"), "{out}");
    assert!(out.contains("meta: retention 7 d 23 h 59 min;"), "{out}");
    let (made,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'deliveries_meta'::regclass",
    )
    .fetch_one(&p.pool)
    .await
    .unwrap();
    assert!(made > 1, "{made} partitions");

    // A width that does not divide a day: refused, naming the flag and the reason.
    let (ok, _, err) = cli(&p, &["maintain", "--partition-secs", "7000"]).await;
    assert!(!ok);
    assert!(err.contains("--partition-secs 7000"), "{err}");
    assert!(err.contains("must divide a day"), "{err}");

    // A log that holds rows keeps its width.
    sqlx::query(
        "INSERT INTO deliveries (destination, event_id, event_name, status, attempts, bucket)
         VALUES ('meta', 'e1', 'lead', 'sent', 1, date_trunc('hour', now()))",
    )
    .execute(&p.pool)
    .await
    .unwrap();
    let (ok, _, err) = cli(&p, &["maintain", "--partition-secs", "86400"]).await;
    assert!(!ok);
    assert!(err.contains("--partition-secs 86400"), "{err}");
    assert!(err.contains("holds rows"), "{err}");
    let (kept,): (i32,) = sqlx::query_as("SELECT partition_secs FROM delivery_log_settings")
        .fetch_one(&p.pool)
        .await
        .unwrap();
    assert_eq!(kept, 3600);

    // An unknown destination is named.
    let (ok, _, err) = cli(&p, &["maintain", "--destination", "myspace"]).await;
    assert!(!ok);
    assert!(
        err.contains("--destination") && err.contains("myspace"),
        "{err}"
    );
}
