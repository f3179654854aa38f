//! The delivery log stays bounded: time partitions made ahead and dropped past a destination's
//! retention, rows written while a partition was missing kept, rows from before partitioning
//! honoured, and a copy of an event whose row was dropped recorded `expired`, never sent.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use serde_json::json;

use leadpipe_consumer::registry::Retention;
use leadpipe_consumer::store::{ClaimRequest, EventKey, Store};
use leadpipe_db::partitions::{self, interval_table};
use leadpipe_tests::{Pipeline, TEST_SOURCE, eventually, fresh_database, stream};

const WAIT: Duration = Duration::from_secs(30);

async fn tables_of(pool: &sqlx::PgPool, destination: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = to_regclass($1) ORDER BY 1",
    )
    .bind(partitions::destination_table(destination))
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn exists(pool: &sqlx::PgPool, table: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn insert_sent(
    pool: &sqlx::PgPool,
    destination: &str,
    id: &str,
    bucket: chrono::DateTime<Utc>,
) {
    sqlx::query(
        "INSERT INTO deliveries (destination, event_id, event_name, status, attempts, bucket)
         VALUES ($1, $2, 'lead', 'sent', 1, $3)",
    )
    .bind(destination)
    .bind(id)
    .bind(bucket)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn partitions_are_made_ahead_of_time_and_dropped_past_the_retention() {
    // Arrange: the log as a sender left it twenty days ago, one row in an old partition.
    let (url, pool) = fresh_database().await;
    let day = TimeDelta::days(1);
    let retention = TimeDelta::days(8);
    let now = Utc::now();
    let then = now - TimeDelta::days(20);
    let first = partitions::maintain(&pool, "meta", retention, then)
        .await
        .unwrap();
    let old = interval_table("meta", partitions::bucket_of(day, then));
    assert!(
        first.created.contains(&"deliveries_meta".to_owned()),
        "{first:?}"
    );
    assert!(first.created.contains(&old), "{first:?}");
    insert_sent(&pool, "meta", "E-old", partitions::bucket_of(day, then)).await;

    // Act
    let round = partitions::maintain(&pool, "meta", retention, now)
        .await
        .unwrap();

    // Assert: today's, yesterday's and the next two days' partitions exist; the old ones
    // are gone, with their row; a second round changes nothing.
    let tables = tables_of(&pool, "meta").await;
    for offset in [-1, 0, 1, 2] {
        let start = partitions::bucket_of(day, now) + TimeDelta::days(offset);
        assert!(
            tables.contains(&interval_table("meta", start)),
            "day {offset}: {tables:?}"
        );
    }
    assert!(round.dropped.contains(&old), "{round:?}");
    assert_eq!(
        round.dropped.len(),
        4,
        "the four partitions of then: {round:?}"
    );
    assert!(!tables.contains(&old), "{tables:?}");
    assert!(tables.contains(&"deliveries_meta_default".to_owned()));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE event_id = 'E-old'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let again = partitions::maintain(&pool, "meta", retention, now)
        .await
        .unwrap();
    assert!(!again.changed(), "{again:?}");
    // Another destination is untouched by meta's rounds.
    assert!(tables_of(&pool, "ga4").await.is_empty());
    pool.close().await;
    leadpipe_tests::drop_database(&url).await;
}

#[tokio::test]
async fn rows_written_while_a_partition_was_missing_are_moved_into_it_and_never_lost() {
    // Arrange: rows of a destination with no table yet (top-level default), and rows for a
    // day that has no partition yet (the destination's default).
    let (url, pool) = fresh_database().await;
    let day = TimeDelta::days(1);
    let now = Utc::now();
    let today = partitions::bucket_of(day, now);
    insert_sent(&pool, "ga4", "E-early", today).await;
    partitions::maintain(&pool, "ga4", TimeDelta::days(4), now - TimeDelta::days(10))
        .await
        .unwrap();
    let in_default: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM deliveries_ga4_default WHERE event_id = 'E-early'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        in_default, 1,
        "moved into ga4's table, its default while today has no partition"
    );
    insert_sent(&pool, "ga4", "E-late", today).await;

    // Act
    let round = partitions::maintain(&pool, "ga4", TimeDelta::days(4), now)
        .await
        .unwrap();

    // Assert
    assert_eq!(round.moved_rows, 2, "{round:?}");
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT tableoid::regclass::text, event_id FROM deliveries ORDER BY event_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let table = interval_table("ga4", today);
    assert_eq!(
        rows,
        [
            (table.clone(), "E-early".to_owned()),
            (table, "E-late".to_owned())
        ]
    );
    pool.close().await;
    leadpipe_tests::drop_database(&url).await;
}

#[tokio::test]
async fn partitioning_keeps_every_existing_row_and_a_claim_honours_them() {
    // Arrange: the delivery log as it was before partitioning, with decided and open rows.
    let url = format!(
        "{}/t{}",
        leadpipe_tests::database_server_url(),
        uuid::Uuid::new_v4().simple()
    );
    let pool = leadpipe_db::connect(&url, 2).await.unwrap();
    const PARTITIONING: i64 = 20261207000006;
    let mut conn = pool.acquire().await.unwrap();
    for m in leadpipe_db::MIGRATOR
        .iter()
        .filter(|m| m.version < PARTITIONING)
    {
        sqlx::raw_sql(sqlx::AssertSqlSafe(m.sql.as_str().to_owned()))
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO deliveries (destination, event_id, event_name, status, attempts, source)
         VALUES ('meta', 'e1', 'lead', 'sent', 1, 's'), ('meta', 'e2', 'lead', 'retrying', 2, 's'),
                ('ga4', 'e1', 'lead', 'dead_lettered', 3, 's'),
                ('google_ads', 'e3', 'won', 'accepted', 1, 's')",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);

    // Act: this migration and any later one.
    for m in leadpipe_db::MIGRATOR
        .iter()
        .filter(|m| m.version >= PARTITIONING)
    {
        sqlx::raw_sql(sqlx::AssertSqlSafe(m.sql.as_str().to_owned()))
            .execute(&pool)
            .await
            .unwrap();
    }

    // Assert: every row, each in its destination's legacy partition.
    let rows: Vec<(String, String, String, String, i32)> = sqlx::query_as(
        "SELECT tableoid::regclass::text, destination, event_id, status, attempts
         FROM deliveries ORDER BY destination, event_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let row = |t: &str, d: &str, e: &str, s: &str, a| {
        (t.to_owned(), d.to_owned(), e.to_owned(), s.to_owned(), a)
    };
    assert_eq!(
        rows,
        [
            row("deliveries_ga4_legacy", "ga4", "e1", "dead_lettered", 3),
            row(
                "deliveries_google_ads_legacy",
                "google_ads",
                "e3",
                "accepted",
                1
            ),
            row("deliveries_meta_legacy", "meta", "e1", "sent", 1),
            row("deliveries_meta_legacy", "meta", "e2", "retrying", 2),
        ]
    );

    // A claim of their copies: the sent one is done, the retrying one is ours (moved into
    // its event's partition, its attempts kept), the accepted one awaits its verdict.
    partitions::maintain(&pool, "meta", TimeDelta::days(8), Utc::now())
        .await
        .unwrap();
    let store = Store::open(pool.clone(), "meta", "w".into(), Duration::from_secs(60))
        .await
        .unwrap();
    let occurred = Utc::now() - TimeDelta::hours(1);
    let request = |id: &str| ClaimRequest {
        key: EventKey::new(id, "lead", store.bucket_of(occurred)),
        occurred_at: Some(occurred),
        source: TEST_SOURCE.into(),
        ingested_at: None,
        lead_id: None,
        order_id: None,
        settled: None,
    };
    let claim = store.claim(&[request("e1"), request("e2")]).await.unwrap();
    assert!(claim.done.contains(&request("e1").key), "{claim:?}");
    assert!(claim.claimed.contains(&request("e2").key), "{claim:?}");
    let moved: (String, String, i32) = sqlx::query_as(
        "SELECT tableoid::regclass::text, status, attempts FROM deliveries
         WHERE destination = 'meta' AND event_id = 'e2'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        moved,
        (
            interval_table("meta", store.bucket_of(occurred)),
            "in_flight".to_owned(),
            2
        )
    );
    let google = Store::open(
        pool.clone(),
        "google_ads",
        "w".into(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let key = EventKey::new("e3", "won", google.bucket_of(occurred));
    let claim = google
        .claim(&[ClaimRequest {
            key: key.clone(),
            occurred_at: Some(occurred),
            source: TEST_SOURCE.into(),
            ingested_at: None,
            lead_id: None,
            order_id: None,
            settled: None,
        }])
        .await
        .unwrap();
    assert!(claim.awaiting.contains_key(&key), "{claim:?}");

    // The legacy partition goes once its rows are past the retention, not before.
    let kept = partitions::maintain(&pool, "ga4", TimeDelta::days(4), Utc::now())
        .await
        .unwrap();
    assert!(kept.dropped.is_empty(), "{kept:?}");
    let later = Utc::now() + TimeDelta::days(5);
    let dropped = partitions::maintain(&pool, "ga4", TimeDelta::days(4), later)
        .await
        .unwrap();
    assert!(
        dropped
            .dropped
            .contains(&"deliveries_ga4_legacy".to_owned()),
        "{dropped:?}"
    );
    pool.close().await;
    leadpipe_tests::drop_database(&url).await;
}

#[tokio::test]
async fn a_copy_of_an_event_whose_row_was_dropped_is_recorded_expired_not_sent_for_every_ad_destination()
 {
    let p = Pipeline::new().await;
    let day = TimeDelta::days(1);
    let mut senders = Vec::new();
    let mut copies = Vec::new();
    // Every copy reaches every ad destination's queue: each is older than the longest
    // retention, so none may be sent anywhere.
    let oldest = leadpipe_registry::REGISTRY
        .all()
        .iter()
        .filter_map(|r| r.retention.own().ok())
        .max()
        .unwrap();
    let occurred = Utc::now() - oldest - TimeDelta::days(1) - TimeDelta::hours(1);
    for r in leadpipe_registry::REGISTRY.all() {
        let Retention::AcceptanceWindow(_) = r.retention else {
            continue;
        };
        // Arrange: the event was sent when it was fresh; it is now older than the
        // destination's retention, so the sender drops its partition at start.
        let destination = r.name();
        let retention = r.retention.own().unwrap();
        let (mut event, _) = stream::event(9, Utc::now());
        if !stream::routed("won", r.destination) {
            event["event_name"] = json!("lead");
        }
        event["lead_id"] = json!(format!("L-pruned-{destination}"));
        event["order_id"] = json!(format!("O-pruned-{destination}"));
        event["occurred_at"] = json!(occurred.to_rfc3339());
        let envelope = leadpipe_tests::envelope_of(&event);
        partitions::maintain(&p.pool, destination, retention, occurred)
            .await
            .unwrap();
        let old = interval_table(destination, partitions::bucket_of(day, occurred));
        assert!(exists(&p.pool, &old).await, "{old}");
        sqlx::query(
            "INSERT INTO deliveries (destination, event_id, event_name, status, attempts, bucket,
                                     occurred_at)
             VALUES ($1, $2, $3, 'sent', 1, $4, $5)",
        )
        .bind(destination)
        .bind(&envelope.event_id)
        .bind(envelope.event.name())
        .bind(partitions::bucket_of(day, occurred))
        .bind(occurred)
        .execute(&p.pool)
        .await
        .unwrap();

        // Act: the sender starts (maintaining its partitions), then the copy arrives.
        senders.push(p.spawn_destination_binary(r.destination));
        assert!(
            eventually(WAIT, || async { !exists(&p.pool, &old).await }).await,
            "{destination}-sender never dropped {old}"
        );
        p.publish(&event).await;
        copies.push((r, envelope.event_id, old));
    }
    assert_eq!(copies.len(), 4, "meta, ga4, google_ads, tiktok");

    // Assert: recorded expired, in the destination's default partition; nothing sent.
    for (r, id, old) in &copies {
        p.wait_status_in(r.destination, id, "expired", WAIT).await;
        let table: String = sqlx::query_scalar(
            "SELECT tableoid::regclass::text FROM deliveries WHERE destination = $1 AND event_id = $2",
        )
        .bind(r.name())
        .bind(id)
        .fetch_one(&p.pool)
        .await
        .unwrap();
        assert_eq!(table, format!("deliveries_{}_default", r.name()), "{old}");
        let fake = p.fake(r.destination);
        assert!(fake.kept().is_empty(), "{}: {:?}", r.name(), fake.kept());
    }
    for mut s in senders {
        leadpipe_tests::sigterm_and_wait(&mut s).await;
    }
    p.cleanup().await;
}

#[tokio::test]
async fn senders_starting_together_each_make_their_tables_without_a_deadlock() {
    // Arrange: a log no sender has maintained yet.
    let (url, pool) = fresh_database().await;
    let names: Vec<&str> = leadpipe_registry::REGISTRY
        .all()
        .iter()
        .map(|r| r.name())
        .collect();

    // Act: every destination's first round at once.
    let rounds = futures::future::join_all(names.iter().map(|d| {
        let pool = pool.clone();
        async move { partitions::maintain(&pool, d, TimeDelta::days(8), Utc::now()).await }
    }))
    .await;

    // Assert
    for (d, round) in names.iter().zip(rounds) {
        let round = round.unwrap_or_else(|e| panic!("{d}: {e}"));
        assert!(
            round.created.contains(&partitions::destination_table(d)),
            "{d}: {round:?}"
        );
    }
    pool.close().await;
    leadpipe_tests::drop_database(&url).await;
}

#[tokio::test]
async fn a_grown_partition_is_analyzed_so_writing_an_outcome_probes_its_key() {
    // Arrange: today's Meta partition with 20,000 leased rows, never analyzed.
    let (url, pool) = fresh_database().await;
    let now = Utc::now();
    partitions::maintain(&pool, "meta", TimeDelta::days(8), now)
        .await
        .unwrap();
    let bucket = partitions::bucket_of(TimeDelta::days(1), now);
    let today = interval_table("meta", bucket);
    sqlx::query(
        "INSERT INTO deliveries (destination, event_id, event_name, status, lease_owner, bucket)
         SELECT 'meta', 'E-' || n, 'lead', 'in_flight', 'worker-' || (n % 4), $1
         FROM generate_series(1, 20000) n",
    )
    .bind(bucket)
    .execute(&pool)
    .await
    .unwrap();

    // Act: a sender's statistics rounds (the insert is counted once its backend reports it).
    let deadline = std::time::Instant::now() + WAIT;
    let analyzed = loop {
        let tables = partitions::analyze_changed(&pool, "meta").await.unwrap();
        if !tables.is_empty() || std::time::Instant::now() > deadline {
            break tables;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let again = partitions::analyze_changed(&pool, "meta").await.unwrap();

    // Assert: analyzed once; a batch of outcomes is then planned as a probe of each key,
    // never a scan of the partition.
    assert_eq!(analyzed, vec![today.clone()]);
    assert!(again.is_empty(), "nothing changed since: {again:?}");
    let ids: Vec<String> = (1..=30).map(|n| format!("E-{}", n * 600)).collect();
    let (plan,): (serde_json::Value,) = sqlx::query_as(
        "EXPLAIN (FORMAT JSON)
         UPDATE deliveries AS d SET status = 'sent', lease_owner = NULL, updated_at = now()
         FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS u(id, name, bucket)
         WHERE d.destination = 'meta' AND d.event_id = u.id AND d.event_name = u.name
           AND d.bucket = u.bucket AND d.lease_owner = 'worker-0'",
    )
    .bind(&ids)
    .bind(vec!["lead"; ids.len()])
    .bind(vec![bucket; ids.len()])
    .fetch_one(&pool)
    .await
    .unwrap();
    let scans = plan_nodes_on(&plan, &today);
    assert!(
        !scans.is_empty() && scans.iter().all(|n| n == "Index Scan"),
        "{today} read by {scans:?}: {plan}"
    );
    pool.close().await;
    leadpipe_tests::drop_database(&url).await;
}

/// The node types of `plan` (EXPLAIN's JSON) that read `table`.
fn plan_nodes_on(plan: &serde_json::Value, table: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![plan];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Array(items) => stack.extend(items),
            serde_json::Value::Object(node) => {
                if node.get("Relation Name").and_then(|r| r.as_str()) == Some(table)
                    && let Some(kind) = node.get("Node Type").and_then(|k| k.as_str())
                {
                    found.push(kind.to_owned());
                }
                stack.extend(node.values());
            }
            _ => {}
        }
    }
    found
}
