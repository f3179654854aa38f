//! The console in a headless Chromium, used as a person would: log in, read the overview
//! (its figures checked against the delivery log), find a lead, open one destination's dead
//! letters, replay them once fixed and see them delivered. Skips, saying why, where Chromium
//! cannot start. With `LEADPIPE_CONSOLE_SCREENSHOTS=<dir>` (`make screenshots`) it saves a
//! screenshot of each page there.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use leadpipe_tests::browser::Browser;

use crate::console::{Console, TOKEN, assert_no_personal_data, dead_at_meta, decided_run};

const WAIT: Duration = Duration::from_secs(60);

async fn shot(browser: &mut Browser, name: &str) {
    if let Some(dir) = std::env::var_os("LEADPIPE_CONSOLE_SCREENSHOTS") {
        browser
            .screenshot(&PathBuf::from(dir).join(format!("{name}.png")))
            .await;
    }
}

#[tokio::test]
async fn in_a_browser_an_operator_checks_the_overview_finds_a_lead_and_replays_dead_letters() {
    // Arrange: a decided mixed stream (Meta refused two events), the console, a browser.
    let (run, _driver) = decided_run(120).await;
    let p = &run.p;
    let dead = dead_at_meta(p).await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    let console = Console::start(
        p,
        &[
            ("CONSOLE_ALLOW_REPLAY", "true".into()),
            ("CONSOLE_SENDERS", run.console_senders()),
        ],
    )
    .await;
    let Some(mut browser) = Browser::start().await else {
        run.stop().await;
        return;
    };
    let base = &console.base;

    // Act: log in with the token.
    browser.open(&format!("{base}/")).await;
    assert_eq!(browser.text("h1").await.as_deref(), Some("Log in"));
    shot(&mut browser, "login").await;
    browser.fill("#token", TOKEN).await;
    browser.click_and_wait("form.find button").await;

    // Assert: the overview, every figure the delivery log's.
    assert_eq!(browser.text("h1").await.as_deref(), Some("Overview"));
    assert_no_personal_data("the overview", &browser.html().await);
    let counts: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT destination, status, count(*) FROM deliveries GROUP BY 1, 2")
            .fetch_all(&p.pool)
            .await
            .unwrap();
    let want: HashMap<(String, String), i64> = counts
        .iter()
        .map(|(d, s, n)| ((d.clone(), s.clone()), *n))
        .collect();
    for table in ["#last-hour", "#last-day"] {
        let cells = browser
            .eval(&format!(
                "[...document.querySelectorAll('{table} td[data-status]')].map(td => \
                 [td.closest('tr').dataset.destination, td.dataset.status, Number(td.innerText)])"
            ))
            .await;
        let cells = cells.as_array().unwrap();
        assert_eq!(
            cells.len(),
            leadpipe_registry::REGISTRY.destinations().len() * 9,
            "{table}"
        );
        for c in cells {
            let key = (
                c[0].as_str().unwrap().to_owned(),
                c[1].as_str().unwrap().to_owned(),
            );
            assert_eq!(
                c[2].as_i64().unwrap(),
                want.get(&key).copied().unwrap_or(0),
                "{table} {key:?}"
            );
        }
    }
    let states = browser
        .eval("[...document.querySelectorAll('#destinations [data-state]')].map(s => s.dataset.state)")
        .await;
    assert_eq!(
        states,
        json!(vec![
            "ready";
            leadpipe_registry::REGISTRY.destinations().len()
        ])
    );
    shot(&mut browser, "overview").await;

    // Find the lead of a dead letter through the form.
    let lead: String = sqlx::query_scalar(
        "SELECT lead_id FROM deliveries WHERE destination = 'meta' AND event_id = $1",
    )
    .bind(&dead[0])
    .fetch_one(&p.pool)
    .await
    .unwrap();
    browser.click_and_wait("nav a[href='/events']").await;
    browser.fill("#lead_id", &lead).await;
    browser.click_and_wait("form.find button").await;
    let rows = browser
        .eval(&format!(
            "[...document.querySelectorAll('#deliveries tr[data-event=\"{}\"]')].map(tr => \
             [tr.dataset.destination, tr.querySelector('.status').innerText])",
            dead[0]
        ))
        .await;
    let rows: HashMap<String, String> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_owned(),
                r[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rows.len(),
        leadpipe_registry::REGISTRY.destinations().len(),
        "{rows:?}"
    );
    assert_eq!(rows["meta"], "dead_lettered");
    assert_no_personal_data("find by lead", &browser.html().await);
    shot(&mut browser, "find-by-lead").await;

    // Meta's dead letters, opened from the overview.
    browser.click_and_wait("nav a[href='/']").await;
    browser
        .click_and_wait("tr[data-destination='meta'] td[data-queue='dlq'] a")
        .await;
    assert_eq!(
        browser
            .text("tr[data-code='meta_100'] .count")
            .await
            .as_deref(),
        Some("2")
    );
    assert_no_personal_data("the dead letters", &browser.html().await);
    shot(&mut browser, "dead-letters").await;

    // The dry run, then the replay once the cause is fixed.
    browser
        .click_and_wait("tr[data-code='meta_100'] button")
        .await;
    assert_eq!(browser.text("#plan .replay").await.as_deref(), Some("2"));
    shot(&mut browser, "replay-dry-run").await;
    p.meta.accept_rejected();
    browser.click_and_wait("button.danger").await;
    assert!(browser.url().await.contains("/replays/"));
    let done = browser
        .wait_until(
            "document.querySelector('#progress').dataset.state === 'done'",
            WAIT,
        )
        .await;
    assert!(done, "{}", browser.html().await);
    assert_eq!(
        browser.text("#progress .replayed").await.as_deref(),
        Some("2")
    );
    shot(&mut browser, "replay-done").await;

    // Delivered, each once.
    for id in &dead {
        p.wait_status(id, "sent", WAIT).await;
        assert_eq!(p.meta.accepted().get(id), Some(&1), "{id}");
    }
    drop(browser);
    run.stop().await;
}
