//! Ingest under hostile clients: what the headers decide is refused before any body is read,
//! a body must arrive in time, requests in flight are bounded, a batch costs its events in
//! the source's rate limit, and hundreds of slow uploads neither grow ingest's memory nor
//! delay a normal request.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use leadpipe_tests::{IngestOptions, Pipeline, TEST_SECRET, TEST_SOURCE, lead, sign, spawn_ingest};

/// Sends a POST's head (and `body_start`) on a raw connection and leaves the rest unsent.
async fn open_upload(
    base: &str,
    path: &str,
    headers: &[(&str, String)],
    content_length: usize,
    body_start: &[u8],
) -> TcpStream {
    let addr = base.trim_start_matches("http://");
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {content_length}\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body_start).await.unwrap();
    tcp
}

/// The status line's code of what the server answered on `tcp`, within `within`.
async fn status_of(tcp: &mut TcpStream, within: Duration) -> Option<u16> {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(within, tcp.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Headers that pass every check the headers alone decide (the body decides the rest).
fn plausible_headers(now: i64) -> Vec<(&'static str, String)> {
    vec![
        ("x-leadpipe-source", TEST_SOURCE.to_owned()),
        ("x-leadpipe-timestamp", now.to_string()),
        ("x-leadpipe-signature", format!("sha256={}", "0".repeat(64))),
    ]
}

/// (what, headers, declared length, expected status, a phrase of the message).
type HeadCase = (
    &'static str,
    Vec<(&'static str, String)>,
    usize,
    u16,
    &'static str,
);

#[tokio::test]
async fn what_the_headers_decide_is_refused_before_the_body_arrives() {
    let app = spawn_ingest(IngestOptions::default()).await;
    let now = chrono::Utc::now().timestamp();
    let cases: Vec<HeadCase> = vec![
        (
            "unknown source",
            vec![
                ("x-leadpipe-source", "nobody".into()),
                ("x-leadpipe-timestamp", now.to_string()),
                ("x-leadpipe-signature", format!("sha256={}", "0".repeat(64))),
            ],
            1000,
            401,
            "unknown source",
        ),
        (
            "stale timestamp",
            vec![
                ("x-leadpipe-source", TEST_SOURCE.into()),
                ("x-leadpipe-timestamp", (now - 3600).to_string()),
                ("x-leadpipe-signature", format!("sha256={}", "0".repeat(64))),
            ],
            1000,
            401,
            "300 seconds",
        ),
        (
            "a timestamp at the edge of i64",
            vec![
                ("x-leadpipe-source", TEST_SOURCE.into()),
                ("x-leadpipe-timestamp", i64::MIN.to_string()),
                ("x-leadpipe-signature", format!("sha256={}", "0".repeat(64))),
            ],
            1000,
            401,
            "300 seconds",
        ),
        (
            "malformed signature",
            vec![
                ("x-leadpipe-source", TEST_SOURCE.into()),
                ("x-leadpipe-timestamp", now.to_string()),
                ("x-leadpipe-signature", "md5=abc".into()),
            ],
            1000,
            401,
            "sha256=",
        ),
        (
            "declared body over the limit",
            plausible_headers(now),
            10 * 1024 * 1024,
            413,
            "larger than",
        ),
    ];
    for (what, headers, length, want, message) in cases {
        // Only the head is sent: the answer must not wait for a body.
        let mut tcp = open_upload(&app.base, "/v1/events", &headers, length, b"").await;
        let started = Instant::now();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer before the body"))
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {want}")),
            "{what}: {text}"
        );
        assert!(text.contains(message), "{what}: {text}");
        assert!(started.elapsed() < Duration::from_secs(1), "{what}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408_and_in_flight_requests_are_bounded() {
    // Arrange: a 300 ms body deadline, two requests in flight at most.
    let app = spawn_ingest(IngestOptions {
        body_timeout: Duration::from_millis(300),
        max_in_flight: 2,
        ..IngestOptions::default()
    })
    .await;
    let now = chrono::Utc::now().timestamp();
    let mut slow = Vec::new();
    for _ in 0..2 {
        slow.push(open_upload(&app.base, "/v1/events", &plausible_headers(now), 500, b"{").await);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Act + Assert: a third request while both are held is shed with 503 and Retry-After,
    // on any posting route (the limit is global); health still answers.
    let batch = serde_json::to_vec(&vec![lead("L-shed-b")]).unwrap();
    let r = app.post_signed("/v1/events/batch", &batch).await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "overloaded", "{body}");
    let r = app.post_event(&lead("L-shed")).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "overloaded", "{body}");
    assert_eq!(app.get("/healthz").await.status(), 200);

    // The held ones get 408 once their deadline passes, which frees the slots.
    for tcp in &mut slow {
        assert_eq!(status_of(tcp, Duration::from_secs(3)).await, Some(408));
    }
    let r = app.post_event(&lead("L-after")).await;
    assert_eq!(r.status(), 202);
    app.stop().await;
}

#[tokio::test]
async fn a_source_limited_to_10_per_second_posting_batches_gets_429_past_10_events() {
    let app = spawn_ingest(IngestOptions {
        rate_limit_per_second: 10,
        ..IngestOptions::default()
    })
    .await;
    let batch = |from: usize, n: usize| {
        let events: Vec<Value> = (from..from + n)
            .map(|i| lead(&format!("L-rb{i}")))
            .collect();
        serde_json::to_vec(&events).unwrap()
    };

    // Two batches of 4 fit in the second's 10 events; a third of 4 does not.
    let r = app.post_signed("/v1/events/batch", &batch(0, 4)).await;
    assert_eq!(r.status(), 200);
    let r = app.post_signed("/v1/events/batch", &batch(4, 4)).await;
    assert_eq!(r.status(), 200);
    let r = app.post_signed("/v1/events/batch", &batch(8, 4)).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "rate_limited");

    // A batch larger than a second's worth never fits: refused, saying why, no Retry-After.
    let r = app.post_signed("/v1/events/batch", &batch(20, 11)).await;
    assert_eq!(r.status(), 429);
    assert!(!r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "batch_over_rate_limit", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("11 events") && message.contains("10 events"),
        "{message}"
    );
    app.stop().await;
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn six_hundred_slow_uploads_neither_grow_ingest_nor_delay_a_normal_request() {
    // Arrange: the real binary, with a 4 s body deadline so the test ends soon.
    let p = Pipeline::new().await;
    let ingest = p
        .spawn_ingest_binary(
            &leadpipe_tests::amqp_url(),
            &[("INGEST_BODY_TIMEOUT_MS", "4000".to_owned())],
        )
        .await;
    let pid = ingest.child.id().expect("a running ingest");
    let before = rss_kib(pid);

    // Act: 600 uploads of 256 KiB with plausible headers, each sending a byte a second.
    let now = chrono::Utc::now().timestamp();
    let mut uploads = Vec::new();
    for _ in 0..600 {
        uploads.push(
            open_upload(
                &ingest.base,
                "/v1/events",
                &plausible_headers(now),
                256 * 1024,
                b"[",
            )
            .await,
        );
    }
    let trickle = async {
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for tcp in &mut uploads {
                let _ = tcp.write_all(b" ").await;
            }
        }
    };
    // Meanwhile, a normal signed request.
    let normal = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let body = serde_json::to_vec(&lead("L-normal")).unwrap();
        let ts = chrono::Utc::now().timestamp();
        let started = Instant::now();
        let r = reqwest::Client::new()
            .post(format!("{}/v1/events", ingest.base))
            .header("content-type", "application/json")
            .header("x-leadpipe-source", TEST_SOURCE)
            .header("x-leadpipe-timestamp", ts.to_string())
            .header("x-leadpipe-signature", sign(TEST_SECRET, ts, &body))
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), started.elapsed())
    };
    let ((status, took), ()) = tokio::join!(normal, trickle);
    let during = rss_kib(pid);

    // Assert: the normal request was answered at once; memory stayed small; the slow
    // uploads were cut off with 408 at their deadline.
    assert_eq!(status, 202);
    assert!(
        took < Duration::from_secs(1),
        "the normal request took {took:?}"
    );
    assert!(
        during < 128 * 1024,
        "ingest RSS {during} KiB with 600 slow uploads (was {before} KiB)"
    );
    let mut timed_out = 0;
    for tcp in &mut uploads {
        if status_of(tcp, Duration::from_secs(6)).await == Some(408) {
            timed_out += 1;
        }
    }
    assert_eq!(timed_out, 600, "slow uploads answered 408");
    println!(
        "600 slow uploads: ingest RSS {before} KiB before, {during} KiB during; normal request in {took:?}"
    );
    drop(uploads);
    drop(ingest);
    p.cleanup().await;
}

#[tokio::test]
async fn the_new_ingest_variables_are_checked_at_start_up() {
    for (var, value, why) in [
        ("INGEST_BODY_TIMEOUT_MS", "0", "at least 1"),
        ("INGEST_BODY_TIMEOUT_MS", "soon", "milliseconds"),
        ("INGEST_MAX_IN_FLIGHT", "0", "at least 1"),
    ] {
        let out = tokio::process::Command::new(leadpipe_tests::bin_path("ingest"))
            .env(
                "LEADPIPE_SOURCES",
                format!("{}/../config/sources.toml", env!("CARGO_MANIFEST_DIR")),
            )
            .env("SITE_WIDGET_SECRET", "dev-secret")
            .env("INGEST_ADDR", "127.0.0.1:0")
            .env(var, value)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(var) && stderr.contains(why), "{stderr}");
    }
}
