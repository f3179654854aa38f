//! Faults injected into the mixed stream with every service as a process — the real `ingest`
//! binary and each sender's real binary on the real broker and database, fakes of every
//! destination. Each test ends with the same checks as the calm run (`stream::check`):
//! nothing accepted lost, nothing doubled (after a SIGKILL: only again under the same id the
//! destination dedupes on), the DLQs holding exactly the refused events with reasons, no
//! consent-denied event or raw PII at an ad destination. The broker and database restarts
//! are in `tests/restarts` (they stop services every test shares).

use std::time::Duration;

use leadpipe_tests::storm::{ResettingProxy, Strike};
use leadpipe_tests::stream::{Posted, Processes, Repeats, Stream, check};
use leadpipe_tests::{Pipeline, TcpProxy, eventually};

/// Events per test (plus duplicates, malformed events and refunds).
const EVENTS: usize = 200;
const WAIT: Duration = Duration::from_secs(120);

/// Fakes slow enough that senders are mid-work when the fault strikes.
fn slowed(p: &Pipeline) {
    let latency = Duration::from_millis(20);
    p.meta.set_latency(latency);
    p.ga4.set_latency(latency);
    p.google.set_latency(latency);
    p.crm.set_latency(latency);
}

/// Posts the whole stream, then checks it.
async fn post_all_and_check(run: &Processes) {
    let stream = Stream::new(EVENTS);
    let mut driver = run.driver();
    driver.post(&stream, 0..stream.batches.len()).await;
    check(&run.p, &stream, &driver, Repeats::Never, WAIT).await;
}

/// Asserts that every destination had events that needed more than one attempt: the storm
/// really struck each of them.
async fn struck_everywhere(p: &Pipeline) {
    let most: Vec<(String, i32)> = sqlx::query_as(
        "SELECT destination, max(attempts) FROM deliveries WHERE status = 'sent'
         GROUP BY destination ORDER BY destination",
    )
    .fetch_all(&p.pool)
    .await
    .unwrap();
    assert_eq!(
        most.len(),
        leadpipe_registry::REGISTRY.destinations().len(),
        "{most:?}"
    );
    assert!(
        most.iter().all(|(_, n)| *n > 1),
        "a calm destination: {most:?}"
    );
}

#[tokio::test]
async fn every_sender_sigkilled_mid_stream_and_restarted_loses_nothing() {
    // Arrange: the pipeline as processes, half the stream posted, requests flowing.
    let p = Pipeline::new().await;
    slowed(&p);
    let mut run = Processes::start(p, None, 1, vec![]).await;
    let stream = Stream::new(EVENTS);
    let mut driver = run.driver();
    let (first, rest) = stream.halves();
    driver.post(&stream, first).await;
    assert!(eventually(WAIT, || async { run.requests_seen() >= 4 }).await);

    // Act: every sender SIGKILLed while it works, the rest of the stream posted, restarted.
    let all: Vec<usize> = (0..run.senders.len()).collect();
    run.kill(&all).await;
    driver.post(&stream, rest).await;
    for i in all {
        run.restart(i);
    }

    // Assert
    check(&run.p, &stream, &driver, Repeats::SameIdAfterCrash, WAIT).await;
    run.stop().await;
}

#[tokio::test]
async fn two_replicas_of_every_sender_one_of_each_killed_mid_stream_loses_nothing() {
    // Arrange: two replicas of each sender.
    let p = Pipeline::new().await;
    slowed(&p);
    let mut run = Processes::start(p, None, 2, vec![]).await;
    let stream = Stream::new(EVENTS);
    let mut driver = run.driver();
    let (first, rest) = stream.halves();
    driver.post(&stream, first).await;
    assert!(eventually(WAIT, || async { run.requests_seen() >= 4 }).await);

    // Act: the first replica of each SIGKILLed; the survivors finish the stream.
    let first_replicas: Vec<usize> =
        (0..leadpipe_registry::REGISTRY.destinations().len()).collect();
    run.kill(&first_replicas).await;
    driver.post(&stream, rest).await;

    // Assert
    check(&run.p, &stream, &driver, Repeats::SameIdAfterCrash, WAIT).await;
    run.stop().await;
}

/// Every second request to every destination struck with `strike`.
async fn storm(strike: Strike, env: Vec<(&'static str, String)>) {
    let p = Pipeline::new().await;
    for fake in &p.fakes {
        fake.set_storm_of(2, strike);
    }
    let run = Processes::start(p, None, 1, env).await;
    post_all_and_check(&run).await;
    struck_everywhere(&run.p).await;
    run.stop().await;
}

#[tokio::test]
async fn a_storm_of_one_503_in_two_requests_loses_and_doubles_nothing() {
    storm(Strike::Unavailable, vec![]).await;
}

#[tokio::test]
async fn a_storm_of_one_429_with_retry_after_in_two_requests_loses_and_doubles_nothing() {
    storm(
        Strike::RateLimited {
            retry_after_secs: 1,
        },
        vec![],
    )
    .await;
}

#[tokio::test]
async fn a_storm_of_one_10_s_hang_in_two_requests_times_out_and_loses_and_doubles_nothing() {
    // Each sender gives a request 1 s; the destination hangs for 10.
    let timeouts = [
        "META_TIMEOUT_MS",
        "GA4_TIMEOUT_MS",
        "GOOGLE_ADS_TIMEOUT_MS",
        "CRM_TIMEOUT_MS",
    ]
    .map(|k| (k, "1000".to_owned()))
    .to_vec();
    storm(Strike::Hang(Duration::from_secs(10)), timeouts).await;
}

#[tokio::test]
async fn connection_resets_on_every_second_connection_lose_and_double_nothing() {
    // Arrange: every sender reaches its destination through a hop that resets every second
    // connection and closes the others after each answer.
    let p = Pipeline::new().await;
    let addr = |url: &str| {
        url.trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    // Every URL a sender is given points through a resetting hop to its fake (one hop per
    // fake address, shared by that fake's URLs).
    let mut proxies: Vec<(String, ResettingProxy)> = Vec::new();
    let mut env: Vec<(&'static str, String)> = Vec::new();
    for fake in &p.fakes {
        for (key, value) in fake.sender_env() {
            // Credentials are fetched directly: the storm is on the data endpoints.
            let Some(rest) = value
                .strip_prefix("http://")
                .filter(|_| !key.ends_with("TOKEN_URL"))
            else {
                continue;
            };
            let host = rest.split('/').next().unwrap().to_owned();
            if !proxies.iter().any(|(h, _)| *h == host) {
                let proxy = ResettingProxy::start(addr(&value), 2).await;
                proxies.push((host.clone(), proxy));
            }
            let proxy = &proxies.iter().find(|(h, _)| *h == host).unwrap().1;
            env.push((
                key,
                value.replacen(&format!("http://{host}"), &proxy.url(), 1),
            ));
        }
    }
    let run = Processes::start(p, None, 1, env).await;

    // Act + Assert
    post_all_and_check(&run).await;
    struck_everywhere(&run.p).await;
    run.stop().await;
    for (host, proxy) in &proxies {
        let resets = proxy.resets.load(std::sync::atomic::Ordering::Relaxed);
        assert!(resets > 0, "{host}: no connection was reset");
    }
}

#[tokio::test]
async fn the_broker_unreachable_at_ingest_mid_stream_answers_503_then_recovers() {
    // Arrange: ingest reaches the broker through a hop the test can cut.
    let p = Pipeline::new().await;
    let hop = TcpProxy::to_broker().await;
    let run = Processes::start(p, Some(hop.amqp_url()), 1, vec![]).await;
    let stream = Stream::new(EVENTS);
    let mut driver = run.driver();
    let (first, rest) = stream.halves();
    driver.post(&stream, first).await;

    // Act: the broker goes away from ingest; a batch is refused with 503 as long as it is.
    hop.cut();
    assert_eq!(
        driver.post_once(&stream, rest.start).await,
        Posted::Unavailable
    );
    let health = reqwest::get(format!("{}/readyz", run.ingest.base))
        .await
        .unwrap()
        .status();
    assert_eq!(health, 503, "ingest reports ready without its broker");
    hop.restore();
    driver.post(&stream, rest).await;

    // Assert: clients posted again after the 503s; nothing lost or doubled.
    assert!(driver.unavailable >= 1);
    check(&run.p, &stream, &driver, Repeats::Never, WAIT).await;
    run.stop().await;
}
