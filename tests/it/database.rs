//! The shared database: migrations and the delivery log's constraints.

use leadpipe_tests::fresh_database;

#[tokio::test]
async fn migrations_create_the_delivery_log_and_apply_twice_without_change() {
    // Arrange
    let (url, pool) = fresh_database().await;

    // Act
    leadpipe_db::migrate(&pool).await.unwrap();

    // Assert
    let insert = |name: &'static str| {
        sqlx::query(
            "INSERT INTO deliveries (destination, event_id, event_name, status, bucket)
             VALUES ('meta', 'e1', $1, 'sent', '2026-12-07')",
        )
        .bind(name)
        .execute(&pool)
    };
    insert("lead").await.unwrap();
    assert!(
        insert("lead").await.is_err(),
        "(destination, event_id, event_name, bucket) must be unique"
    );
    insert("won")
        .await
        .expect("one event id under another event name is another delivery");
    let bad_status = sqlx::query(
        "INSERT INTO deliveries (destination, event_id, event_name, status, bucket) VALUES ('meta', 'e2', 'lead', 'lost', now())",
    )
    .execute(&pool)
    .await;
    assert!(bad_status.is_err(), "unknown statuses must be refused");
    for name in leadpipe_registry::REGISTRY.all().iter().map(|r| r.name()) {
        sqlx::query(
            "INSERT INTO deliveries (destination, event_id, event_name, status, bucket) VALUES ($1, 'e3', 'lead', 'sent', now())",
        )
        .bind(name)
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("registered destination {name}: {e}"));
    }
    let bad_dest = sqlx::query(
        "INSERT INTO deliveries (destination, event_id, event_name, status, bucket) VALUES ('Meta Ads', 'e3', 'lead', 'sent', now())",
    )
    .execute(&pool)
    .await;
    assert!(
        bad_dest.is_err(),
        "a malformed destination name must be refused"
    );
    pool.close().await;
    leadpipe_tests::drop_database(&url).await;
}

#[tokio::test]
async fn the_migrate_command_creates_a_missing_database() {
    // Arrange
    let url = format!(
        "{}/t{}",
        leadpipe_tests::database_server_url(),
        uuid::Uuid::new_v4().simple()
    );

    // Act
    let out = tokio::process::Command::new(leadpipe_tests::bin_path("leadpipe"))
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .output()
        .await
        .unwrap();

    // Assert
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pool = leadpipe_db::connect(&url, 1).await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM deliveries")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    pool.close().await;
    leadpipe_tests::drop_database(&url).await;
}

#[tokio::test]
async fn keying_by_event_name_keeps_every_existing_row() {
    // Arrange: the delivery log as it was before the event name joined the key.
    let url = format!(
        "{}/t{}",
        leadpipe_tests::database_server_url(),
        uuid::Uuid::new_v4().simple()
    );
    let pool = leadpipe_db::connect(&url, 2).await.unwrap();
    let before: Vec<_> = leadpipe_db::MIGRATOR
        .iter()
        .filter(|m| m.version < 20261206000004)
        .collect();
    let mut conn = pool.acquire().await.unwrap();
    for m in &before {
        sqlx::raw_sql(sqlx::AssertSqlSafe(m.sql.as_str().to_owned()))
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO deliveries (destination, event_id, event_name, status, attempts)
         VALUES ('meta', 'e1', 'lead', 'sent', 1), ('ga4', 'e1', 'lead', 'retrying', 2),
                ('crm', 'e2', NULL, 'dead_lettered', 3)",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);

    // Act: the key migration and every later one (the registry's, which drops the list of
    // destinations) on top of those rows.
    let later: Vec<_> = leadpipe_db::MIGRATOR
        .iter()
        .filter(|m| m.version >= 20261206000004)
        .collect();
    assert!(later.len() >= 2, "the key and registry migrations");
    for m in later {
        sqlx::raw_sql(sqlx::AssertSqlSafe(m.sql.as_str().to_owned()))
            .execute(&pool)
            .await
            .unwrap();
    }

    // Assert
    let rows: Vec<(String, String, String, String, i32)> = sqlx::query_as(
        "SELECT destination, event_id, event_name, status, attempts FROM deliveries
         ORDER BY destination",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                "crm".into(),
                "e2".into(),
                "".into(),
                "dead_lettered".into(),
                3
            ),
            (
                "ga4".into(),
                "e1".into(),
                "lead".into(),
                "retrying".into(),
                2
            ),
            ("meta".into(), "e1".into(), "lead".into(), "sent".into(), 1),
        ]
    );
    pool.close().await;
    leadpipe_tests::drop_database(&url).await;
}
