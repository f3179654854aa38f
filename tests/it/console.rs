//! The operator console (`leadpipe console`), the real binary on a delivery log: its token,
//! and finding an event's rows at every destination.

use std::time::Duration;

use leadpipe_tests::{Pipeline, bin_path, eventually, free_port};

const TOKEN: &str = "console-test-token";

/// The console on `p`'s database with `TOKEN`, answering; its base URL.
async fn console(p: &Pipeline) -> (tokio::process::Child, String) {
    let port = free_port();
    let child = tokio::process::Command::new(bin_path("leadpipe"))
        .arg("console")
        .env("DATABASE_URL", &p.database_url)
        .env("CONSOLE_ADDR", format!("127.0.0.1:{port}"))
        .env("CONSOLE_TOKEN", TOKEN)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let up = eventually(Duration::from_secs(20), || async {
        reqwest::get(&base).await.is_ok()
    })
    .await;
    assert!(up, "the console never answered");
    (child, base)
}

async fn insert(p: &Pipeline, destination: &str, id: &str, status: &str, error: Option<&str>) {
    sqlx::query(
        "INSERT INTO deliveries (destination, event_id, event_name, status, attempts,
                                 last_http_status, last_error_code, last_error_message, bucket)
         VALUES ($1, $2, 'lead', $3, 2, 400, $4, $5, date_trunc('day', now()))",
    )
    .bind(destination)
    .bind(id)
    .bind(status)
    .bind(error.map(|_| "meta_100"))
    .bind(error)
    .execute(&p.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn the_console_finds_an_events_rows_at_every_destination_behind_its_token() {
    // Arrange: one event sent to GA4 and refused by Meta, with a message that holds markup.
    let p = Pipeline::new().await;
    insert(&p, "ga4", "evt-1", "sent", None).await;
    insert(
        &p,
        "meta",
        "evt-1",
        "dead_lettered",
        Some("bad <script>x</script> value"),
    )
    .await;
    let (_console, base) = console(&p).await;
    let http = reqwest::Client::new();
    let get = |path: &str, token: Option<&str>| {
        let mut r = http.get(format!("{base}{path}"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };

    // Act + Assert: without the token, or with another one, 401.
    let none = get("/events?event_id=evt-1", None).await.unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    assert!(!none.text().await.unwrap().contains("dead_lettered"));
    assert_eq!(get("/", Some("wrong")).await.unwrap().status(), 401);

    // With it: every destination's row, the error code and message escaped.
    let found = get("/events?event_id=evt-1", Some(TOKEN)).await.unwrap();
    assert_eq!(found.status(), 200);
    let html = found.text().await.unwrap();
    assert!(html.contains(r#"<tr data-destination="ga4">"#), "{html}");
    assert!(html.contains(r#"<tr data-destination="meta">"#), "{html}");
    assert!(
        html.contains("dead_lettered") && html.contains("meta_100"),
        "{html}"
    );
    assert!(
        html.contains("bad &lt;script&gt;x&lt;/script&gt; value"),
        "{html}"
    );
    assert!(!html.contains("<script>"), "{html}");

    // An id with no row says why there may be none.
    let missing = get("/events?event_id=nope", Some(TOKEN)).await.unwrap();
    assert_eq!(missing.status(), 200);
    assert!(
        missing
            .text()
            .await
            .unwrap()
            .contains("No delivery recorded for")
    );
}

#[tokio::test]
async fn without_a_token_the_console_refuses_an_address_other_machines_reach() {
    // Act
    let out = tokio::process::Command::new(bin_path("leadpipe"))
        .arg("console")
        .env("CONSOLE_ADDR", format!("0.0.0.0:{}", free_port()))
        .env_remove("CONSOLE_TOKEN")
        .output()
        .await
        .unwrap();

    // Assert: exit 2, naming the variable and the way out.
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CONSOLE_TOKEN"), "{stderr}");
    assert!(stderr.contains("127.0.0.1"), "{stderr}");

    // A bad address is named too.
    let out = tokio::process::Command::new(bin_path("leadpipe"))
        .arg("console")
        .env("CONSOLE_ADDR", "localhost")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CONSOLE_ADDR"));
}
