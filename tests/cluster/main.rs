//! The whole pipeline on a three-node RabbitMQ cluster (`scripts/rabbit-cluster.sh`), every
//! service a process given the three nodes in `AMQP_URL`, the mixed stream of
//! `tests/it/pipeline.rs` with its checks:
//! - the node holding the most work-queue leaders is SIGKILLed mid-stream; the rest of the
//!   stream is posted and every event taken up at every destination while it is down (the
//!   services moved to the survivors); it is started again, and everything is decided;
//! - two nodes are stopped gracefully, one after the other: with no quorum left, ingest answers
//!   `503` and never `202`; a node comes back and everything is delivered.
//!
//! Each test reports the longest run of `503` answers ingest gave. A test binary of its own
//! (`make test-cluster`, run by `.ci/run`): its nodes come and go, and the tests take turns.
//! It skips, saying why, where the cluster cannot start. `AMQP_URL` must list the cluster's
//! nodes (the Makefile sets it from `scripts/rabbit-cluster.sh urls`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use leadpipe_tests::eventually;
use leadpipe_tests::stream::{Driver, Posted, Processes, Repeats, Stream, check};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const EVENTS: usize = 2_000;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbit-cluster.sh")
}

fn cluster(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(script())
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Starts every node again when dropped, whatever happened.
struct NodesBack;

impl Drop for NodesBack {
    fn drop(&mut self) {
        let _ = cluster(&["start"]);
    }
}

/// The cluster, running; `None` (and a line saying why) where it cannot start here.
fn cluster_up() -> Option<NodesBack> {
    let urls = std::env::var("AMQP_URL").unwrap_or_default();
    if leadpipe_bus::node_urls(&urls).len() < 3 {
        eprintln!(
            "SKIPPED: AMQP_URL does not list the cluster's three nodes (run `make test-cluster`)"
        );
        return None;
    }
    match cluster(&["start"]) {
        Ok(_) => Some(NodesBack),
        Err(e) => {
            eprintln!("SKIPPED: the RabbitMQ cluster cannot start here: {e}");
            None
        }
    }
}

/// The namespace's queues, as the management API of the first running node lists them.
async fn namespace_queues(namespace: &str) -> Option<Vec<serde_json::Value>> {
    let http = reqwest::Client::new();
    for port in [15701, 15702, 15703] {
        let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/api/queues/%2f"))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
        else {
            continue;
        };
        let Ok(serde_json::Value::Array(queues)) = r.json::<serde_json::Value>().await else {
            continue;
        };
        let prefix = format!("{namespace}.");
        return Some(
            queues
                .into_iter()
                .filter(|q| q["name"].as_str().is_some_and(|n| n.starts_with(&prefix)))
                .collect(),
        );
    }
    None
}

/// The node (1-3) that leads the most of the namespace's work queues, from the management API
/// of any running node.
async fn busiest_leader(namespace: &str) -> usize {
    let queues = namespace_queues(namespace)
        .await
        .expect("no node's management API answers");
    let mut counts = [0usize; 4];
    for q in &queues {
        if let Some(n) = q["leader"]
            .as_str()
            .and_then(|l| l.strip_prefix("leadpipe-rabbit-"))
            .and_then(|s| s.split('@').next())
            .and_then(|n| n.parse::<usize>().ok())
            && n <= 3
        {
            counts[n] += 1;
        }
    }
    (1..=3).max_by_key(|&n| counts[n]).unwrap_or(1)
}

/// Posts the batches of `range` as a client would (again after 200 ms while ingest is
/// unavailable); returns the longest run of unavailable answers.
async fn post_timing_503s(
    driver: &mut Driver,
    stream: &Stream,
    range: std::ops::Range<usize>,
) -> Duration {
    let mut longest = Duration::ZERO;
    for index in range {
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut since: Option<Instant> = None;
        while driver.post_once(stream, index).await == Posted::Unavailable {
            since.get_or_insert_with(Instant::now);
            assert!(Instant::now() < deadline, "ingest never took batch {index}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Some(s) = since {
            longest = longest.max(s.elapsed());
        }
    }
    longest
}

async fn pipeline_under_way() -> (Processes, Stream, Driver, std::ops::Range<usize>) {
    Processes::under_way(EVENTS, Duration::ZERO).await
}

#[tokio::test]
async fn the_node_leading_the_work_queues_killed_mid_stream_loses_and_doubles_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(_back) = cluster_up() else { return };
    // Arrange: the whole pipeline on the cluster, half the stream posted.
    let (run, stream, mut driver, rest) = pipeline_under_way().await;
    let victim = busiest_leader(run.p.names.namespace()).await;

    // Act: its Erlang VM is killed; the client posts the rest meanwhile.
    cluster(&["kill-node", &victim.to_string()]).unwrap();
    let killed = Instant::now();
    let longest_503 = post_timing_503s(&mut driver, &stream, rest).await;

    // Assert: while the node is still down, every accepted event is taken up at every
    // destination (the services moved to the survivors): sent, refused, skipped, or accepted
    // by the destination and waiting for its verdict.
    let want = driver.accepted.len() * leadpipe_registry::REGISTRY.destinations().len();
    let taken_up = eventually(Duration::from_secs(120), || async {
        rows_where(&run.p, OPEN, false).await == want
    })
    .await;
    let down_for = killed.elapsed();
    let waiting = rows_where(&run.p, &["accepted"], true).await;
    if !taken_up {
        panic!(
            "while node {victim} was down, {} of {want} deliveries were taken up; left, by \
             destination and status: {:?}; the namespace's queues (name, messages, leader): \
             {:?}",
            rows_where(&run.p, OPEN, false).await,
            open_rows(&run.p).await,
            queues_of(run.p.names.namespace()).await
        );
    }
    // The node comes back: what waited in a delay queue whose dead-letter worker still
    // addressed it (RabbitMQ 3.10) goes on. Then each event exactly once or in its DLQ with a
    // reason.
    cluster(&["start-node", &victim.to_string()]).unwrap();
    let rows = check(
        &run.p,
        &stream,
        &driver,
        Repeats::Never,
        Duration::from_secs(300),
    )
    .await;
    println!(
        "cluster, node {victim} (most work-queue leaders) SIGKILLed mid-stream: {} events \
         accepted; all {want} deliveries taken up while it was down ({:.1} s), {waiting} of \
         them accepted and waiting for a verdict; {rows} decided once it was back, duplicates \
         0, lost 0; longest 503 window {:.1} s",
        driver.accepted.len(),
        down_for.as_secs_f64(),
        longest_503.as_secs_f64()
    );
    run.stop().await;
}

/// How many rows of the delivery log have one of `statuses` (`among`), or none of them.
async fn rows_where(p: &leadpipe_tests::Pipeline, statuses: &[&str], among: bool) -> usize {
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM deliveries WHERE (status = ANY($1)) = $2")
            .bind(statuses)
            .bind(among)
            .fetch_one(&p.pool)
            .await
            .unwrap();
    n as usize
}

/// The rows still in flight or retrying, by destination and status.
async fn open_rows(p: &leadpipe_tests::Pipeline) -> Vec<(String, String, i64)> {
    sqlx::query_as(
        "SELECT destination, status, count(*) FROM deliveries WHERE status = ANY($1)
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(OPEN)
    .fetch_all(&p.pool)
    .await
    .unwrap()
}

/// The namespace's queues that hold messages: name, messages, leader.
async fn queues_of(namespace: &str) -> Vec<(String, i64, String)> {
    namespace_queues(namespace)
        .await
        .unwrap_or_default()
        .iter()
        .filter(|q| q["messages"].as_i64().unwrap_or(0) > 0)
        .map(|q| {
            (
                q["name"].as_str().unwrap_or_default().to_owned(),
                q["messages"].as_i64().unwrap_or(0),
                q["leader"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Rows past the sending: sent, refused, skipped, or accepted and waiting for a verdict.
const OPEN: &[&str] = &["in_flight", "retrying"];

#[tokio::test]
async fn with_two_of_three_nodes_stopped_ingest_answers_503_never_202_then_recovers() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(_back) = cluster_up() else { return };
    // Arrange
    let (run, stream, mut driver, rest) = pipeline_under_way().await;
    let (third, last) = (rest.start..rest.start + 1, rest.start + 1..rest.end);

    // Act: one node stops (a majority is left), then a second one.
    cluster(&["stop-node", "3"]).unwrap();
    let with_two = post_timing_503s(&mut driver, &stream, third).await;
    cluster(&["stop-node", "2"]).unwrap();
    let mut refused = 0;
    let no_quorum = Instant::now();
    while no_quorum.elapsed() < Duration::from_secs(20) {
        let before = driver.accepted.len();
        assert_eq!(
            driver.post_once(&stream, last.start).await,
            Posted::Unavailable,
            "ingest answered a batch while only one node of three was up"
        );
        assert_eq!(driver.accepted.len(), before);
        refused += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A node comes back: the quorum with it.
    cluster(&["start-node", "2"]).unwrap();
    let back = post_timing_503s(&mut driver, &stream, last).await;

    // Assert
    let rows = check(
        &run.p,
        &stream,
        &driver,
        Repeats::Never,
        Duration::from_secs(300),
    )
    .await;
    cluster(&["start-node", "3"]).unwrap();
    println!(
        "cluster, two of three nodes stopped: {refused} posts refused with 503 over 20 s without \
         a quorum, none accepted; {} events accepted in all, {rows} deliveries decided, \
         duplicates 0, lost 0; longest 503 window with one node stopped {:.1} s, once the quorum \
         came back {:.1} s",
        driver.accepted.len(),
        with_two.as_secs_f64(),
        back.as_secs_f64()
    );
    run.stop().await;
}

#[tokio::test]
async fn the_consoles_overview_shows_the_cluster_queues_rates_from_the_management_api() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(_back) = cluster_up() else { return };
    // Arrange: the pipeline on the cluster, the console reading node 1's management API.
    let run = Processes::start(leadpipe_tests::Pipeline::new().await, None, 1, vec![]).await;
    let (_console, base) = leadpipe_tests::spawn_console(
        &run.p,
        &leadpipe_tests::bin_path("leadpipe"),
        &[
            ("CONSOLE_SENDERS", run.console_senders()),
            ("RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15701".into()),
        ],
    )
    .await;
    let overview = format!("{base}/");

    // Act: a client posts for as long as it takes the broker's rates to show traffic.
    let stream = Stream::new(20_000);
    let mut driver = run.driver();
    let mut page = String::new();
    let mut seen = false;
    for index in 0..stream.batches.len() {
        driver.post(&stream, index..index + 1).await;
        if index % 10 == 0 {
            page = reqwest::get(&overview).await.unwrap().text().await.unwrap();
            let at = page.find(r#"<tr data-destination="meta""#).unwrap();
            let row = &page[at..at + page[at..].find("</tr>").unwrap()];
            let rate = |which: &str| {
                let cell = format!(r#"data-rate="{which}">"#);
                row.find(&cell)
                    .and_then(|i| row[i + cell.len()..].split('<').next())
                    .and_then(|v| v.parse::<f64>().ok())
            };
            if rate("in").is_some_and(|r| r > 0.0) && rate("out").is_some_and(|r| r > 0.0) {
                seen = true;
                break;
            }
        }
    }

    // Assert: the rates in and out of Meta's work queue are the broker's, with no error.
    assert!(seen, "the overview never showed Meta's queue rates: {page}");
    assert!(!page.contains(r#"id="management""#), "{page}");
    println!(
        "console on the cluster: Meta's work-queue rates shown after {} events posted",
        driver.accepted.len()
    );
    run.stop().await;
}
