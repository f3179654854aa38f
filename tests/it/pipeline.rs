//! The whole pipeline in one process: ingest and the four senders on the real broker and
//! database, with fakes of every destination, fed a mixed stream over HTTP — every event
//! name, exact duplicates, malformed events, denied consent, events a destination refuses
//! for good, refunds after their wins. Then, from the fakes' own records and the broker:
//! every accepted event reached each destination it is routed to exactly once, or sits in
//! that destination's DLQ with a reason; nothing else is in any DLQ; no ad destination saw a
//! consent-denied event or unhashed PII. `E2E_EVENTS` sets the size (`make e2e`: 20,000).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};

use leadpipe_bus::Destination;
use leadpipe_tests::fake_google::CLICK_NOT_FOUND;
use leadpipe_tests::fake_meta::REJECTED_EMAIL;
use leadpipe_tests::{IngestOptions, Pipeline, SenderOptions, eventually, spawn_ingest};

/// What the stream holds for each event it generated.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Plain,
    ConsentDenied,
    MetaRejects,
    GoogleRejects,
}

fn event(i: usize, now: chrono::DateTime<chrono::Utc>) -> (Value, Kind) {
    let occurred = (now - chrono::Duration::minutes(30) + chrono::Duration::milliseconds(i as i64))
        .to_rfc3339();
    let lead = format!("L-e2e-{i}");
    let mut e = json!({
        "source": "site-widget", "occurred_at": occurred, "lead_id": lead,
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

fn routed(name: &str, destination: Destination) -> bool {
    match destination {
        Destination::Meta => [
            "lead",
            "contact",
            "schedule",
            "sign_up",
            "start_trial",
            "won",
        ]
        .contains(&name),
        Destination::Ga4 => ["lead", "sign_up", "mql", "sql", "won", "refund"].contains(&name),
        Destination::GoogleAds => ["won", "refund"].contains(&name),
        Destination::Crm => true,
    }
}

#[tokio::test]
async fn a_mixed_stream_reaches_every_destination_exactly_once_or_its_dlq_with_a_reason() {
    let n: usize = std::env::var("E2E_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    run_stream(n, false).await;
}

#[tokio::test]
async fn a_destination_storm_of_one_failed_request_in_two_loses_and_doubles_nothing() {
    // Every second request to every destination answers 503; the same checks must hold.
    run_stream(200, true).await;
}

async fn run_stream(n: usize, storm: bool) {
    let wait = Duration::from_secs(60 + n as u64 / 50);
    // Arrange: ingest and four senders on one namespace.
    let p = Pipeline::new().await;
    let ingest = spawn_ingest(IngestOptions {
        namespace: Some(p.names.namespace().to_owned()),
        ..IngestOptions::default()
    })
    .await;
    let opts = if storm {
        p.meta.set_storm(2);
        p.ga4.set_storm(2);
        p.google.set_storm(2);
        p.crm.set_storm(2);
        // Under a storm an event may fail many times in a row: retries must outlast it, and
        // one failing batch after another is the storm, not a reason to pause.
        SenderOptions {
            max_attempts: 40,
            pause_after_failed_batches: 1000,
            ..SenderOptions::default()
        }
    } else {
        SenderOptions::default()
    };
    let senders = vec![
        p.start_meta(opts.clone()).await,
        p.start_ga4(opts.clone()).await,
        p.start_google(opts.clone()).await,
        p.start_crm(opts.clone()).await,
    ];
    let now = chrono::Utc::now();
    let mut stream: Vec<(Value, Kind)> = (0..n).map(|i| event(i, now)).collect();
    let wins: Vec<(Value, Kind)> = stream
        .iter()
        .enumerate()
        .filter(|(_, (e, k))| e["event_name"] == "won" && *k == Kind::Plain)
        .map(|(i, (e, _))| (refund_of(e, i), Kind::Plain))
        .collect();
    let duplicates: Vec<(Value, Kind)> = stream.iter().step_by(10).cloned().collect();
    let malformed = (0..n / 50).map(|i| {
        let mut e = event(i, now).0;
        e["contact"]["email"] = json!("not-an-email");
        e["lead_id"] = json!(format!("L-bad-{i}"));
        (e, Kind::Plain)
    });
    stream.extend(duplicates);
    stream.extend(malformed);

    // Act: wins and everything else first, then the refunds, in batches of 100.
    let mut kinds: HashMap<String, (String, Kind)> = HashMap::new();
    let (mut rejected, mut posted) = (0usize, 0usize);
    for part in [stream, wins] {
        for chunk in part.chunks(100) {
            let body: Vec<&Value> = chunk.iter().map(|(e, _)| e).collect();
            let response = ingest
                .post_signed("/v1/events/batch", &serde_json::to_vec(&body).unwrap())
                .await;
            assert_eq!(response.status(), 200);
            let answer: Value = response.json().await.unwrap();
            for r in answer["results"].as_array().unwrap() {
                posted += 1;
                let (e, kind) = &chunk[r["index"].as_u64().unwrap() as usize];
                match r["status"].as_str() {
                    Some("accepted") => {
                        let id = r["event_id"].as_str().unwrap().to_owned();
                        kinds.insert(id, (e["event_name"].as_str().unwrap().to_owned(), *kind));
                    }
                    _ => rejected += 1,
                }
            }
        }
    }
    assert_eq!(rejected, n / 50, "only the malformed ones are refused");

    // Every accepted event decided at every destination.
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
    let want = kinds.len() * 4;
    assert!(
        eventually(wait, || async { decided().await == want }).await,
        "decided {} of {want}",
        decided().await
    );

    // Assert, per destination, from the delivery log, the fakes and the DLQs.
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT destination, event_id, status FROM deliveries")
            .fetch_all(&p.pool)
            .await
            .unwrap();
    let status: HashMap<(String, String), String> =
        rows.into_iter().map(|(d, id, s)| ((d, id), s)).collect();
    let expect = |d: Destination, name: &str, kind: Kind| -> &'static str {
        // Ad destinations decide consent before anything else.
        let ad = matches!(d, Destination::Meta | Destination::GoogleAds);
        if ad && kind == Kind::ConsentDenied {
            return "blocked_consent";
        }
        if !routed(name, d) {
            return "skipped_unmapped";
        }
        match (d, kind) {
            (Destination::Meta, Kind::MetaRejects) => "dead_lettered",
            (Destination::GoogleAds, Kind::GoogleRejects) => "dead_lettered",
            _ => "sent",
        }
    };
    let mut dead: HashMap<Destination, HashSet<String>> = HashMap::new();
    for (id, (name, kind)) in &kinds {
        for d in Destination::ALL {
            let got = status
                .get(&(d.as_str().to_owned(), id.clone()))
                .map(String::as_str);
            let want = expect(d, name, *kind);
            assert_eq!(got, Some(want), "{} {name} {kind:?} {id}", d.as_str());
            if want == "dead_lettered" {
                dead.entry(d).or_default().insert(id.clone());
            }
        }
    }
    // Exactly once at each fake.
    let meta_sent: HashSet<String> = kinds
        .iter()
        .filter(|(id, (name, kind))| {
            expect(Destination::Meta, name, *kind) == "sent" && !id.is_empty()
        })
        .map(|(id, _)| id.clone())
        .collect();
    let meta_accepted = p.meta.accepted();
    assert_eq!(
        meta_accepted.keys().cloned().collect::<HashSet<_>>(),
        meta_sent
    );
    let twice: Vec<(&String, Option<&(String, Kind)>)> = meta_accepted
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(id, _)| (id, kinds.get(id)))
        .collect();
    if !twice.is_empty() {
        for (id, _) in &twice {
            let reqs: Vec<(u16, usize, Vec<usize>)> = p
                .meta
                .requests()
                .iter()
                .filter(|r| r.body.to_string().contains(id.as_str()))
                .map(|r| {
                    let data = r.body["data"].as_array().unwrap();
                    let pos = data
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| e["event_id"] == id.as_str())
                        .map(|(i, _)| i)
                        .collect();
                    (r.status, data.len(), pos)
                })
                .collect();
            eprintln!("{id}: {reqs:?}");
        }
    }
    assert!(twice.is_empty(), "Meta counted events twice: {twice:?}");
    let ga4 = p.ga4.collected_counts();
    assert!(ga4.values().all(|&c| c == 1), "GA4 got an event twice");
    assert_eq!(
        ga4.len(),
        kinds
            .iter()
            .filter(|(_, (name, _))| routed(name, Destination::Ga4))
            .count()
    );
    let crm = p.crm.written();
    assert_eq!(crm.len(), kinds.len());
    assert!(crm.values().all(|&c| c == 1), "the CRM got an event twice");
    let google_pairs: Vec<(String, String)> = p
        .google
        .accepted_events()
        .into_iter()
        .map(|(_, e)| {
            (
                e["transactionId"].to_string(),
                e["conversionValue"].to_string(),
            )
        })
        .collect();
    let unique: HashSet<&(String, String)> = google_pairs.iter().collect();
    assert_eq!(
        unique.len(),
        google_pairs.len(),
        "Google got a conversion twice"
    );
    // Only the refused events are in the DLQs.
    for d in Destination::ALL {
        let expected = dead.remove(&d).unwrap_or_default();
        let queue = p.names.dead_letter_queue(d);
        let got: HashSet<String> = p
            .broker
            .take(&queue, expected.len(), Duration::from_secs(10))
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
    // No consent-denied event and no unhashed PII at an ad destination.
    let denied: HashSet<&String> = kinds
        .iter()
        .filter(|(_, (_, k))| *k == Kind::ConsentDenied)
        .map(|(id, _)| id)
        .collect();
    assert!(
        p.meta
            .event_ids_seen()
            .iter()
            .all(|id| !denied.contains(id))
    );
    for (body, event) in p.ga4.collected() {
        if denied.contains(
            &event["params"]["event_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ) {
            assert!(
                body.get("user_data").is_none(),
                "user_data of a consent-denied event"
            );
        }
    }
    let ad_traffic = [
        p.meta
            .requests()
            .iter()
            .map(|r| r.body.to_string())
            .collect::<Vec<_>>(),
        p.ga4
            .requests()
            .iter()
            .map(|r| r.body.to_string())
            .collect(),
        p.google
            .ingests()
            .iter()
            .map(|r| r.body.to_string())
            .collect(),
    ]
    .concat();
    for body in &ad_traffic {
        assert!(
            !body.contains("@example.com") && !body.contains("650 555"),
            "unhashed PII: {body}"
        );
    }
    eprintln!(
        "e2e{}: {posted} posted, {} accepted, {rejected} refused, {} delivery rows",
        if storm { " (storm)" } else { "" },
        kinds.len(),
        want
    );
    for s in senders {
        s.stop().await;
    }
    ingest.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn the_ingest_requests_trace_reaches_each_destination_call() {
    // Arrange: ingest and three senders; a lead posted with its caller's traceparent.
    let p = Pipeline::new().await;
    let ingest = spawn_ingest(IngestOptions {
        namespace: Some(p.names.namespace().to_owned()),
        ..IngestOptions::default()
    })
    .await;
    let senders = vec![
        p.start_meta(SenderOptions::default()).await,
        p.start_ga4(SenderOptions::default()).await,
        p.start_crm(SenderOptions::default()).await,
    ];
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let body = serde_json::to_vec(&leadpipe_tests::recent_lead("L-trace")).unwrap();
    let ts = chrono::Utc::now().timestamp();

    // Act
    let response = ingest
        .http
        .post(format!("{}/v1/events", ingest.base))
        .header("content-type", "application/json")
        .header("x-leadpipe-source", leadpipe_tests::TEST_SOURCE)
        .header("x-leadpipe-timestamp", ts.to_string())
        .header(
            "x-leadpipe-signature",
            leadpipe_tests::sign(leadpipe_tests::TEST_SECRET, ts, &body),
        )
        .header("traceparent", &caller)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for d in [Destination::Meta, Destination::Ga4, Destination::Crm] {
        p.wait_status_in(d, &id, "sent", Duration::from_secs(30))
            .await;
    }

    // Assert: every destination call carries the same trace, under a span id of its own.
    let seen = [
        p.meta.requests()[0].traceparent.clone(),
        p.ga4.requests()[0].traceparent.clone(),
        p.crm.deliveries()[0].traceparent.clone(),
    ];
    for tp in seen {
        let tp = tp.expect("a destination call without traceparent");
        let parsed = leadpipe_telemetry::traceparent::TraceParent::parse(&tp).unwrap();
        assert_eq!(parsed.trace_id, trace_id, "{tp}");
        assert_ne!(tp, caller, "no span of its own");
    }
    for s in senders {
        s.stop().await;
    }
    ingest.stop().await;
    p.cleanup().await;
}
