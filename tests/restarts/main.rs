//! The broker and the database restarted mid-stream, and a broker memory alarm, under one
//! running sender or under the
//! whole pipeline as processes (ingest and the four senders on the mixed stream): nothing
//! accepted is lost, nothing is sent twice.
//!
//! A test binary of its own: the broker and the database are shared by every test, and cargo
//! runs test binaries one after another, so no other test sees them go away; inside this
//! binary the restarts take turns (`ONE_AT_A_TIME`). Each service is started again even if a
//! test fails half-way.

use std::collections::HashSet;
use std::time::Duration;

use leadpipe_tests::stream::{Driver, Posted, Processes, Repeats, Stream, check};
use leadpipe_tests::{Pipeline, SenderOptions, TestSender, eventually, recent_lead};

/// One restart at a time: the tests of this binary would otherwise restart things under each
/// other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts the broker's application again when dropped, whatever happened before.
struct StartAppOnDrop;

impl Drop for StartAppOnDrop {
    fn drop(&mut self) {
        for args in [&["start_app"][..], &["await_startup", "--timeout", "60"]] {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(args)
                .stdout(std::process::Stdio::null())
                .status();
        }
    }
}

async fn rabbitmqctl(args: &[&str]) {
    let status = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

/// Starts the broker's application again and waits until it serves; the guard is no longer
/// needed after that.
async fn start_app(guard: StartAppOnDrop) {
    rabbitmqctl(&["start_app"]).await;
    rabbitmqctl(&["await_startup", "--timeout", "60"]).await;
    drop(guard);
}

/// 300 leads (ids from `prefix`) and meta-sender working through them against a slowish
/// Meta, requests already flowing: the moment to take something away.
async fn stream_under_way(prefix: &str) -> (Pipeline, HashSet<String>, TestSender) {
    let p = Pipeline::new().await;
    p.meta.set_latency(Duration::from_millis(50));
    let mut ids = HashSet::new();
    for i in 0..300 {
        ids.insert(p.publish(&recent_lead(&format!("{prefix}{i}"))).await);
    }
    let sender = p
        .start_meta(SenderOptions {
            batch_size: 20,
            ..SenderOptions::default()
        })
        .await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            p.meta.requests().len() >= 2
        })
        .await
    );
    (p, ids, sender)
}

#[tokio::test]
async fn a_broker_restart_mid_stream_loses_nothing_and_sends_nothing_twice() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // Arrange: 300 leads, a sender working through them against a slowish Meta.
    let (p, ids, sender) = stream_under_way("L-br").await;

    // Act: the broker goes away and comes back while batches are in flight.
    let guard = StartAppOnDrop;
    rabbitmqctl(&["stop_app"]).await;
    start_app(guard).await;

    // Assert: the sender reconnects by itself; every event sent exactly once (a batch whose
    // ack was lost comes back and is acked as a duplicate, not sent again).
    p.wait_count("sent", 300, Duration::from_secs(120)).await;
    let accepted = p.meta.accepted();
    assert_eq!(accepted.keys().cloned().collect::<HashSet<_>>(), ids);
    assert!(
        accepted.values().all(|&n| n == 1),
        "an event was sent twice"
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            sender.readyz().await == 200
        })
        .await,
        "the sender did not report ready again"
    );
    sender.stop().await;
    p.cleanup().await;
}

/// The PostgreSQL cluster's version (the one directory under /etc/postgresql).
fn pg_version() -> String {
    std::fs::read_dir("/etc/postgresql")
        .expect("PostgreSQL is installed from Debian's packages")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max()
        .expect("a PostgreSQL cluster")
}

/// Starts the database again when dropped, whatever happened before.
struct StartPostgresOnDrop(String);

impl Drop for StartPostgresOnDrop {
    fn drop(&mut self) {
        // "Cluster is already running" after a restart that worked: nothing to say.
        let _ = std::process::Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &self.0, "main", "start"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Restarts the PostgreSQL cluster (started again even if the restart fails half-way).
async fn restart_postgres() {
    let version = pg_version();
    let guard = StartPostgresOnDrop(version.clone());
    let status = tokio::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .status()
        .await
        .expect("pg_ctlcluster runs");
    assert!(status.success(), "PostgreSQL did not restart");
    drop(guard);
}

#[tokio::test]
async fn a_database_restart_mid_stream_loses_nothing_and_sends_nothing_twice() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // Arrange
    let (p, ids, sender) = stream_under_way("L-pg").await;

    // Act: PostgreSQL restarts while batches are claimed and in flight.
    restart_postgres().await;

    // Assert: a batch sent while the database was away held its deliveries and wrote its
    // outcome once the database was back; the sender reconnects; every event sent, once.
    p.wait_count("sent", 300, Duration::from_secs(120)).await;
    let accepted = p.meta.accepted();
    assert_eq!(accepted.keys().cloned().collect::<HashSet<_>>(), ids);
    let twice: Vec<_> = accepted.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "events sent twice: {twice:?}");
    sender.stop().await;
    p.cleanup().await;
}

/// The whole pipeline as processes, half of a mixed stream posted and requests flowing.
async fn pipeline_under_way() -> (Processes, Stream, Driver, std::ops::Range<usize>) {
    Processes::under_way(200, Duration::from_millis(20)).await
}

#[tokio::test]
async fn a_broker_restart_under_the_whole_pipeline_answers_503_then_loses_and_doubles_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // Arrange: ingest and the four senders as processes, the stream half posted.
    let (run, stream, mut driver, rest) = pipeline_under_way().await;

    // Act: the broker stops; ingest refuses a batch with 503 meanwhile; it starts again and
    // the client posts the rest (and that batch again).
    let guard = StartAppOnDrop;
    rabbitmqctl(&["stop_app"]).await;
    assert_eq!(
        driver.post_once(&stream, rest.start).await,
        Posted::Unavailable
    );
    start_app(guard).await;
    driver.post(&stream, rest).await;

    // Assert: every service reconnected by itself; every check of the calm run holds.
    check(
        &run.p,
        &stream,
        &driver,
        Repeats::Never,
        Duration::from_secs(180),
    )
    .await;
    run.stop().await;
}

#[tokio::test]
async fn a_database_restart_under_the_whole_pipeline_loses_and_doubles_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // Arrange
    let (run, stream, mut driver, rest) = pipeline_under_way().await;

    // Act: PostgreSQL restarts while all four senders are claiming and sending.
    restart_postgres().await;
    driver.post(&stream, rest).await;

    // Assert
    check(
        &run.p,
        &stream,
        &driver,
        Repeats::Never,
        Duration::from_secs(180),
    )
    .await;
    run.stop().await;
}

/// What `rabbitmqctl eval <expression>` prints (failing if it fails).
async fn rabbitmqctl_eval(expression: &str) -> String {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(["eval", expression])
        .output()
        .await
        .expect("rabbitmqctl runs");
    assert!(out.status.success(), "rabbitmqctl eval {expression} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The broker's memory high watermark as a fraction, to put it back.
async fn memory_watermark() -> String {
    let text = rabbitmqctl_eval("vm_memory_monitor:get_vm_memory_high_watermark().").await;
    assert!(
        text.parse::<f64>().is_ok(),
        "the watermark is a fraction here: {text}"
    );
    text
}

/// Puts the memory watermark back when dropped, whatever happened before.
struct RestoreWatermarkOnDrop(String);

impl Drop for RestoreWatermarkOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["set_vm_memory_high_watermark", &self.0])
            .stdout(std::process::Stdio::null())
            .status();
    }
}

/// Whether the broker reports a memory alarm.
async fn memory_alarm() -> bool {
    rabbitmqctl_eval("rabbit_alarm:get_alarms().")
        .await
        .contains("memory")
}

#[tokio::test]
async fn a_memory_alarm_under_the_whole_pipeline_holds_publishes_and_resends_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // Arrange: the whole pipeline, half the stream posted and requests flowing (Google's
    // accepted events need a publish each to wait for their verdicts).
    let (run, stream, mut driver, rest) = pipeline_under_way().await;
    let original = memory_watermark().await;
    let guard = RestoreWatermarkOnDrop(original.clone());

    // Act: a memory alarm blocks every publish for longer than a publish's confirm deadline
    // (5 s), while consuming goes on; then it clears and the client posts the rest.
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]).await;
    assert!(
        eventually(Duration::from_secs(30), memory_alarm).await,
        "no memory alarm"
    );
    let blocked_at = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    rabbitmqctl(&["set_vm_memory_high_watermark", &original]).await;
    drop(guard);
    assert!(
        eventually(Duration::from_secs(30), || async { !memory_alarm().await }).await,
        "the alarm did not clear"
    );
    println!("memory alarm held {:?}", blocked_at.elapsed());
    driver.post(&stream, rest).await;

    // Assert: nothing lost, nothing uploaded twice (no repeat allowed at any destination),
    // every sender consuming again.
    check(
        &run.p,
        &stream,
        &driver,
        Repeats::Never,
        Duration::from_secs(180),
    )
    .await;
    run.stop().await;
}
