//! The shared database: migrations and the delivery log's constraints.

use leadpipe_tests::fresh_database;

#[tokio::test]
async fn migrations_create_the_delivery_log_and_apply_twice_without_change() {
    // Arrange
    let (url, pool) = fresh_database().await;

    // Act
    leadpipe_db::migrate(&pool).await.unwrap();

    // Assert
    sqlx::query(
        "INSERT INTO deliveries (destination, event_id, status) VALUES ('meta', 'e1', 'sent')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let dup = sqlx::query(
        "INSERT INTO deliveries (destination, event_id, status) VALUES ('meta', 'e1', 'sent')",
    )
    .execute(&pool)
    .await;
    assert!(dup.is_err(), "(destination, event_id) must be unique");
    let bad_status = sqlx::query(
        "INSERT INTO deliveries (destination, event_id, status) VALUES ('meta', 'e2', 'lost')",
    )
    .execute(&pool)
    .await;
    assert!(bad_status.is_err(), "unknown statuses must be refused");
    let bad_dest = sqlx::query(
        "INSERT INTO deliveries (destination, event_id, status) VALUES ('tiktok', 'e3', 'sent')",
    )
    .execute(&pool)
    .await;
    assert!(bad_dest.is_err(), "unknown destinations must be refused");
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
