//! The mixed stream of the end-to-end tests and its checks, shared by the in-process runs,
//! the runs with every service as a process, the fault-injection tests (`it`, `restarts`)
//! and the benchmarks.
//!
//! The stream holds every event name, 10 % exact duplicates, 2 % malformed events, 5 % with
//! consent denied, 1 % that a fake refuses for good, and refunds after their wins. A
//! [`Driver`] posts it to ingest in batches of 100 as a client would (a 503, a 429 or a
//! refused connection is posted again, same bytes, so same event ids). [`check`] then proves,
//! from the delivery log, the fakes' own records and the broker: every accepted event reached
//! each destination it is routed to exactly once (or, after a crash, again under the same
//! id the destination dedupes on), or sits in that destination's DLQ with a reason; nothing
//! else is in any DLQ; no ad destination saw a consent-denied event or unhashed PII.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use leadpipe_bus::Destination;

use leadpipe_consumer::testing::AdConsent;

use crate::fake_google::CLICK_NOT_FOUND;
use crate::fake_meta::REJECTED_EMAIL;
use crate::{Pipeline, TEST_SOURCE, eventually, signed};

/// What the stream holds for each event it generated.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Sent everywhere it is routed.
    Plain,
    /// `ad_user_data` denied.
    ConsentDenied,
    /// Meta refuses it for good.
    MetaRejects,
    /// Google refuses it for good.
    GoogleRejects,
}

/// Event `i` of a stream generated at `now`.
pub fn event(i: usize, now: chrono::DateTime<chrono::Utc>) -> (Value, Kind) {
    let occurred = (now - chrono::Duration::minutes(30) + chrono::Duration::milliseconds(i as i64))
        .to_rfc3339();
    let lead = format!("L-e2e-{i}");
    let mut e = json!({
        "source": TEST_SOURCE, "occurred_at": occurred, "lead_id": lead,
        "contact": {"email": format!("lead{i}@example.com"), "phone": "+1 650 555 1234",
                    "first_name": "Ada"},
        "consent": {"ad_user_data": "granted", "ad_personalization": "granted"},
        "context": {"transcript": format!("conversation {i}")}
    });
    let names = [
        "lead",
        "lead",
        "lead",
        "contact",
        "schedule",
        "sign_up",
        "start_trial",
        "mql",
        "sql",
        "won",
    ];
    let name = names[i % names.len()];
    e["event_name"] = json!(name);
    let mut kind = Kind::Plain;
    if name == "won" {
        e["order_id"] = json!(format!("O-{i}"));
        e["value"] = json!(100);
        e["currency"] = json!("usd");
        e["attribution"] = json!({"gclid": format!("Cj0-{i}")});
    }
    if i % 20 == 7 {
        e["consent"] = json!({"ad_user_data": "denied"});
        kind = Kind::ConsentDenied;
    } else if i % 100 == 13 {
        e["contact"]["email"] = json!(REJECTED_EMAIL);
        kind = Kind::MetaRejects;
    } else if i % 100 == 49 && name == "won" {
        e["attribution"]["gclid"] = json!(CLICK_NOT_FOUND);
        kind = Kind::GoogleRejects;
    }
    (e, kind)
}

/// The refund of a won, after it.
fn refund_of(won: &Value, i: usize) -> Value {
    let mut r = won.clone();
    r["event_name"] = json!("refund");
    r["occurred_at"] = json!((chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339());
    r["value"] = json!(30);
    r["refund"] = if i.is_multiple_of(2) {
        json!({"kind": "partial", "remaining_value": 70})
    } else {
        json!({"kind": "full"})
    };
    r
}

/// Whether the shipped mapping routes `name` to `destination`.
pub fn routed(name: &str, destination: Destination) -> bool {
    // Parsed once: the checks ask for every accepted event at every destination.
    static SHIPPED: std::sync::LazyLock<leadpipe_config::mapping::MappingConfig> =
        std::sync::LazyLock::new(crate::shipped_mapping);
    SHIPPED
        .sections(destination.as_str())
        .any(|(n, _)| n == name)
}

/// A generated stream, in the batches it is posted in: everything else first (duplicates and
/// malformed events at the end), then the refunds.
pub struct Stream {
    /// Batches of at most 100 events, in posting order.
    pub batches: Vec<Vec<(Value, Kind)>>,
    /// How many events are malformed (ingest must refuse exactly these).
    pub malformed: usize,
}

impl Stream {
    /// A stream of `n` distinct events plus duplicates, malformed ones and refunds.
    pub fn new(n: usize) -> Self {
        let now = chrono::Utc::now();
        let mut events: Vec<(Value, Kind)> = (0..n).map(|i| event(i, now)).collect();
        let refunds: Vec<(Value, Kind)> = events
            .iter()
            .enumerate()
            .filter(|(_, (e, k))| e["event_name"] == "won" && *k == Kind::Plain)
            .map(|(i, (e, _))| (refund_of(e, i), Kind::Plain))
            .collect();
        let duplicates: Vec<(Value, Kind)> = events.iter().step_by(10).cloned().collect();
        let malformed: Vec<(Value, Kind)> = (0..n / 50)
            .map(|i| {
                let mut e = event(i, now).0;
                e["contact"]["email"] = json!("not-an-email");
                e["lead_id"] = json!(format!("L-bad-{i}"));
                (e, Kind::Plain)
            })
            .collect();
        let malformed_count = malformed.len();
        events.extend(duplicates);
        events.extend(malformed);
        let mut batches: Vec<Vec<(Value, Kind)>> =
            events.chunks(100).map(<[(Value, Kind)]>::to_vec).collect();
        batches.extend(refunds.chunks(100).map(<[(Value, Kind)]>::to_vec));
        Self {
            batches,
            malformed: malformed_count,
        }
    }

    /// The first half of the batches, and the rest.
    pub fn halves(&self) -> (Range<usize>, Range<usize>) {
        let half = self.batches.len() / 2;
        (0..half, half..self.batches.len())
    }
}

/// Posts a stream to ingest as a client would, and keeps what ingest answered.
pub struct Driver {
    base: String,
    http: reqwest::Client,
    /// Accepted events: event_id → (event name, kind).
    pub accepted: HashMap<String, (String, Kind)>,
    /// Accepted events as posted: event_id → event.
    pub events: HashMap<String, Value>,
    /// Events ingest refused (422 items).
    pub refused: usize,
    /// Answers that asked to post again (503, 429) or connections refused.
    pub unavailable: usize,
}

/// How a batch post ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Posted {
    /// 200 with per-item results (kept).
    Answered,
    /// Ingest could not take it now (503, 429, or no connection): post it again.
    Unavailable,
}

impl Driver {
    /// A driver for ingest at `base` (`http://host:port`).
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            accepted: HashMap::new(),
            events: HashMap::new(),
            refused: 0,
            unavailable: 0,
        }
    }

    /// Posts batch `index` once.
    pub async fn post_once(&mut self, stream: &Stream, index: usize) -> Posted {
        let batch = &stream.batches[index];
        let body: Vec<&Value> = batch.iter().map(|(e, _)| e).collect();
        let body = serde_json::to_vec(&body).unwrap();
        let request = self.http.post(format!("{}/v1/events/batch", self.base));
        let answer = signed(request, body).send().await;
        let response = match answer {
            Ok(r) if r.status() == 200 => r,
            Ok(r) if r.status() == 503 || r.status() == 429 => {
                self.unavailable += 1;
                return Posted::Unavailable;
            }
            Ok(r) => panic!("ingest answered {} to a batch", r.status()),
            Err(_) => {
                self.unavailable += 1;
                return Posted::Unavailable;
            }
        };
        let answer: Value = response.json().await.unwrap();
        for r in answer["results"].as_array().unwrap() {
            let (e, kind) = &batch[r["index"].as_u64().unwrap() as usize];
            if r["status"] == "accepted" {
                let id = r["event_id"].as_str().unwrap().to_owned();
                self.accepted.insert(
                    id.clone(),
                    (e["event_name"].as_str().unwrap().to_owned(), *kind),
                );
                self.events.insert(id, e.clone());
            } else {
                self.refused += 1;
            }
        }
        Posted::Answered
    }

    /// Posts the batches of `range`, each until ingest answers it (within two minutes),
    /// waiting 200 ms between tries as a client's retry would.
    pub async fn post(&mut self, stream: &Stream, range: Range<usize>) {
        for index in range {
            let deadline = Instant::now() + Duration::from_secs(120);
            while self.post_once(stream, index).await == Posted::Unavailable {
                assert!(Instant::now() < deadline, "ingest never took batch {index}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Whether a destination may have been sent an event more than once.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Repeats {
    /// Never: every event exactly once.
    Never,
    /// A process was killed: an event it had sent but not yet marked may be sent again, under
    /// the same event_id / transaction id (the destination's dedupe key).
    SameIdAfterCrash,
}

/// Waits (up to `wait`) until every accepted event is decided at every destination, then
/// asserts everything the module promises. Returns the number of delivery rows.
pub async fn check(
    p: &Pipeline,
    stream: &Stream,
    driver: &Driver,
    repeats: Repeats,
    wait: Duration,
) -> usize {
    assert_eq!(
        driver.refused, stream.malformed,
        "only the malformed ones are refused"
    );
    let accepted = &driver.accepted;
    let decided = || async {
        let (c,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM deliveries
             WHERE status NOT IN ('in_flight', 'retrying', 'accepted')",
        )
        .fetch_one(&p.pool)
        .await
        .unwrap();
        c as usize
    };
    let want = accepted.len() * leadpipe_registry::REGISTRY.destinations().len();
    if !eventually(wait, || async { decided().await == want }).await {
        let undecided: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT destination, status, count(*) FROM deliveries
             WHERE status IN ('in_flight', 'retrying', 'accepted')
             GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .fetch_all(&p.pool)
        .await
        .unwrap();
        let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM deliveries")
            .fetch_one(&p.pool)
            .await
            .unwrap();
        panic!(
            "decided {} of {want}; {rows} rows, undecided (destination, status, rows): \
             {undecided:?}",
            decided().await
        );
    }

    // The delivery log: every event decided as expected at every destination.
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT destination, event_id, status FROM deliveries")
            .fetch_all(&p.pool)
            .await
            .unwrap();
    let status: HashMap<(String, String), String> =
        rows.into_iter().map(|(d, id, s)| ((d, id), s)).collect();
    let events = &driver.events;
    let expect = |d: Destination, id: &String, name: &str, kind: Kind| -> &'static str {
        let fake = p.fake(d);
        // Ad destinations decide consent before anything else.
        if fake.ad_consent() == AdConsent::Blocks && kind == Kind::ConsentDenied {
            return "blocked_consent";
        }
        if !routed(name, d) {
            return "skipped_unmapped";
        }
        if events.get(id).is_some_and(|e| fake.refuses(e)) {
            return "dead_lettered";
        }
        "sent"
    };
    let mut dead: HashMap<Destination, HashSet<String>> = HashMap::new();
    let mut sent: HashMap<Destination, usize> = HashMap::new();
    for (id, (name, kind)) in accepted {
        for d in leadpipe_registry::REGISTRY.destinations() {
            let got = status
                .get(&(d.as_str().to_owned(), id.clone()))
                .map(String::as_str);
            let want = expect(d, id, name, *kind);
            assert_eq!(got, Some(want), "{} {name} {kind:?} {id}", d.as_str());
            match want {
                "dead_lettered" => {
                    dead.entry(d).or_default().insert(id.clone());
                }
                "sent" => *sent.entry(d).or_default() += 1,
                _ => {}
            }
        }
    }

    // The destinations' own records: each sent event kept, once (or again under its key).
    for fake in &p.fakes {
        let d = fake.destination();
        let kept = fake.kept();
        if fake.kept_by_event_id() {
            let expected: HashSet<String> = accepted
                .iter()
                .filter(|(id, (name, kind))| expect(d, id, name, *kind) == "sent")
                .map(|(id, _)| id.clone())
                .collect();
            let keys: HashSet<String> = kept.keys().cloned().collect();
            let lost: Vec<&String> = expected.difference(&keys).take(5).collect();
            let extra: Vec<&String> = keys.difference(&expected).take(5).collect();
            assert!(
                lost.is_empty() && extra.is_empty(),
                "{}: lost {lost:?}, unexpected {extra:?}",
                d.as_str()
            );
        } else if sent.get(&d).is_some_and(|&n| n > 0) {
            assert!(!kept.is_empty(), "{} kept nothing", d.as_str());
        }
        let twice: Vec<(&String, &usize)> = kept.iter().filter(|(_, n)| **n > 1).collect();
        if repeats == Repeats::Never {
            assert!(
                twice.is_empty(),
                "{} counted events twice: {:?}",
                d.as_str(),
                twice.iter().take(5).collect::<Vec<_>>()
            );
        }
    }

    // Only the refused events are in the DLQs, each with a reason (read through a connection
    // of its own: the pipeline's may have died with a broker restart). A dead letter whose
    // confirm was lost with a node is published again: the DLQ may hold it twice (a replay
    // of both sends it once, the delivery log deciding).
    let broker = crate::Broker::connect(p.names.clone()).await;
    for d in leadpipe_registry::REGISTRY.destinations() {
        let expected = dead.remove(&d).unwrap_or_default();
        let queue = p.names.dead_letter_queue(d);
        let got: HashSet<String> = broker
            .take_at_least(&queue, expected.len(), Duration::from_secs(10))
            .await
            .iter()
            .filter_map(|m| {
                assert!(
                    m.header("x-leadpipe-error-code").is_some(),
                    "a dead letter without a reason"
                );
                m.message_id()
            })
            .collect();
        assert_eq!(got, expected, "{}", d.as_str());
    }

    // No consent-denied event with matching keys and no unhashed PII at an ad destination.
    let denied: HashSet<&String> = accepted
        .iter()
        .filter(|(_, (_, k))| *k == Kind::ConsentDenied)
        .map(|(id, _)| id)
        .collect();
    for fake in p
        .fakes
        .iter()
        .filter(|f| f.ad_consent() != AdConsent::NotGated)
    {
        let d = fake.destination();
        assert!(
            fake.event_ids_with_user_data()
                .iter()
                .all(|id| !denied.contains(id)),
            "{}: matching keys of a consent-denied event",
            d.as_str()
        );
        for body in fake.bodies() {
            assert!(
                !body.contains("@example.com") && !body.contains("650 555"),
                "{}: unhashed PII: {body}",
                d.as_str()
            );
        }
    }
    want
}

/// Sender variables of every process-run stream: retries outlast a storm, and a run of
/// failing batches is the storm, not a reason to pause.
pub const STORMPROOF: [(&str, &str); 3] = [
    ("MAX_ATTEMPTS", "40"),
    ("PAUSE_AFTER_FAILED_BATCHES", "1000"),
    ("RETRY_MAX_MS", "3000"),
];

/// The sender binary of `d` with its metrics listener at `addr`.
fn spawn_at(
    p: &Pipeline,
    d: Destination,
    addr: &str,
    env: &[(&'static str, String)],
) -> tokio::process::Child {
    let env: Vec<(&str, String)> = env
        .iter()
        .cloned()
        .chain([("METRICS_ADDR", addr.to_owned())])
        .collect();
    p.spawn_destination_binary_with(d, &env)
}

/// The whole pipeline as processes: the real `ingest` binary and each sender's real binary
/// (`replicas` of each), on one [`Pipeline`]'s namespace, database and fakes.
pub struct Processes {
    /// The namespace, database and fakes.
    pub p: Pipeline,
    /// The ingest process.
    pub ingest: crate::IngestProcess,
    /// Sender processes, by destination.
    pub senders: Vec<(Destination, tokio::process::Child)>,
    /// Each sender's `/metrics`, `/healthz`, `/readyz` base URL, in the order of `senders`.
    pub metrics: Vec<String>,
    env: Vec<(&'static str, String)>,
}

impl Processes {
    /// Starts ingest (its broker at `ingest_amqp`, else the broker itself) and `replicas` of
    /// every sender with [`STORMPROOF`]; `env` goes to every process.
    pub async fn start(
        p: Pipeline,
        ingest_amqp: Option<String>,
        replicas: usize,
        env: Vec<(&'static str, String)>,
    ) -> Self {
        let ingest = p
            .spawn_ingest_binary(&ingest_amqp.unwrap_or_else(crate::amqp_url), &env)
            .await;
        let env: Vec<(&'static str, String)> = STORMPROOF
            .iter()
            .map(|(k, v)| (*k, (*v).to_owned()))
            .chain(env)
            .collect();
        let mut senders = Vec::new();
        let mut metrics = Vec::new();
        for _ in 0..replicas {
            for d in leadpipe_registry::REGISTRY.destinations() {
                let addr = format!("127.0.0.1:{}", crate::free_port());
                senders.push((d, spawn_at(&p, d, &addr, &env)));
                metrics.push(format!("http://{addr}"));
            }
        }
        Self {
            p,
            ingest,
            senders,
            metrics,
            env,
        }
    }

    /// The whole pipeline as processes on a new [`Pipeline`] whose fakes answer after
    /// `latency`, half of a mixed stream of `events` posted and requests flowing: the moment
    /// to take something away. Returns the run, the stream, its driver and the half left.
    pub async fn under_way(
        events: usize,
        latency: Duration,
    ) -> (Self, Stream, Driver, Range<usize>) {
        let p = Pipeline::new().await;
        for fake in &p.fakes {
            fake.set_latency(latency);
        }
        let run = Self::start(p, None, 1, vec![]).await;
        let stream = Stream::new(events);
        let mut driver = run.driver();
        let (first, rest) = stream.halves();
        driver.post(&stream, first).await;
        assert!(
            eventually(Duration::from_secs(60), || async {
                run.requests_seen() >= 4
            })
            .await
        );
        (run, stream, driver, rest)
    }

    /// `CONSOLE_SENDERS` for these senders: `destination=<metrics URL>,…`.
    pub fn console_senders(&self) -> String {
        self.senders
            .iter()
            .zip(&self.metrics)
            .map(|((d, _), url)| format!("{}={url}", d.as_str()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A driver posting to this ingest.
    pub fn driver(&self) -> Driver {
        Driver::new(&self.ingest.base)
    }

    /// Requests the fakes have seen so far, all destinations together.
    pub fn requests_seen(&self) -> usize {
        self.p.fakes.iter().map(|f| f.requests_seen()).sum()
    }

    /// SIGKILLs the sender processes at `indexes` (in start order) and waits for them.
    pub async fn kill(&mut self, indexes: &[usize]) {
        for &i in indexes {
            let child = &mut self.senders[i].1;
            child.start_kill().unwrap();
            child.wait().await.unwrap();
        }
    }

    /// Starts the sender at `index` again (same destination, same variables).
    pub fn restart(&mut self, index: usize) {
        let d = self.senders[index].0;
        let addr = self.metrics[index].trim_start_matches("http://").to_owned();
        self.senders[index].1 = spawn_at(&self.p, d, &addr, &self.env);
    }

    /// Kills every process and drops the namespace and database.
    pub async fn stop(mut self) {
        for (_, child) in &mut self.senders {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        let _ = self.ingest.child.start_kill();
        let _ = self.ingest.child.wait().await;
        self.p.cleanup().await;
    }
}
