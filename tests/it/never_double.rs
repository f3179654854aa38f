//! Senders under slow, paused and misconfigured conditions: never a silent discard, never a
//! double send. Each test here failed before the runtime learnt the case.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leadpipe_bus::Destination;
use leadpipe_consumer::{Failure, Item, Outcome, Prepared};
use leadpipe_tests::{
    Pipeline, SenderOptions, eventually, recent_lead, spawn_sender, start_sender,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// A `won` of `lead_id`, an hour ago.
fn won(lead_id: &str, order: &str) -> Value {
    let mut e = recent_lead(lead_id);
    e["event_name"] = json!("won");
    e["order_id"] = json!(order);
    e["value"] = json!(120);
    e["currency"] = json!("usd");
    e
}

/// A claim of the lead `key` of the test source, as a sender makes it.
fn claim_request(
    key: leadpipe_consumer::store::EventKey,
    occurred: chrono::DateTime<chrono::Utc>,
    settled: Option<leadpipe_db::DeliveryStatus>,
) -> leadpipe_consumer::store::ClaimRequest {
    leadpipe_consumer::store::ClaimRequest {
        key,
        occurred_at: Some(occurred),
        source: "site-widget".into(),
        ingested_at: None,
        lead_id: None,
        order_id: None,
        settled,
    }
}

/// Sums a counter over several senders' `/metrics` pages.
fn counter(pages: &[String], series: &str) -> u64 {
    pages
        .iter()
        .flat_map(|p| p.lines())
        .filter_map(|l| l.strip_prefix(series))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn a_destination_slower_than_the_lease_never_gets_an_event_twice() {
    // Arrange: GA4 (which does not dedupe generate_lead) answers after 1.5 × LEASE_SECS; two
    // replicas share the queue.
    let p = Pipeline::new().await;
    let lease = Duration::from_secs(2);
    p.ga4.set_latency(lease * 3 / 2);
    let opts = SenderOptions {
        lease,
        ..SenderOptions::default()
    };
    let a = p.start_ga4(opts.clone()).await;
    let b = p.start_ga4(opts).await;
    let event = recent_lead("L-slow");

    // Act: the event is taken and its request hangs; once the lease would have run out, a
    // copy of the same event (a client retry) arrives and is consumed meanwhile.
    let id = p.publish(&event).await;
    p.wait_status_in(leadpipe_ga4_sender::DESTINATION, &id, "in_flight", WAIT)
        .await;
    tokio::time::sleep(lease + Duration::from_millis(300)).await;
    assert_eq!(p.publish(&event).await, id);

    // Assert: sent once; the copy waited for the lease and was then acked as a duplicate.
    p.wait_status_in(leadpipe_ga4_sender::DESTINATION, &id, "sent", WAIT)
        .await;
    let settled = eventually(WAIT, || async {
        let pages = [a.metrics().await, b.metrics().await];
        counter(
            &pages,
            r#"leadpipe_deliveries_total{destination="ga4",result="duplicate"}"#,
        ) >= 1
    })
    .await;
    assert!(settled, "the copy was never decided");
    assert_eq!(p.ga4.collected_counts().get(&id), Some(&1));
    let pages = [a.metrics().await, b.metrics().await];
    assert!(
        counter(
            &pages,
            r#"leadpipe_deliveries_total{destination="ga4",result="deferred"}"#
        ) >= 1,
        "the copy should have found the lease held"
    );
    assert_eq!(
        counter(&pages, r#"leadpipe_lost_leases_total{destination="ga4"}"#),
        0
    );
    a.stop().await;
    b.stop().await;
    p.cleanup().await;
}

/// A destination that passes its probe (a read) but refuses every write for `refusals`
/// requests (a token without write scope), then accepts; records what it accepted.
struct WriteScope {
    refusals: usize,
    calls: Mutex<usize>,
    sent: Arc<Mutex<Vec<String>>>,
}

impl leadpipe_consumer::Adapter for WriteScope {
    type Prepared = ();
    fn destination(&self) -> Destination {
        leadpipe_crm_writer::DESTINATION
    }
    fn max_batch(&self) -> usize {
        100
    }
    fn prepare(&self, _: &leadpipe_events::Envelope) -> Prepared<()> {
        Prepared::Send(())
    }
    async fn send(&self, items: Vec<Item<()>>) -> Vec<Outcome> {
        let call = {
            let mut calls = self.calls.lock().unwrap();
            *calls += 1;
            *calls
        };
        if call <= self.refusals {
            let refused = Failure::new("http_403", "the token lacks write scope").with_status(403);
            return items
                .iter()
                .map(|_| Outcome::Systemic(refused.clone()))
                .collect();
        }
        record_sent(&self.sent, items.into_iter().map(|i| i.event_id))
    }
    async fn probe(&self) -> bool {
        true
    }
}

/// Records `sent` and answers each as sent.
fn record_sent(sent: &Mutex<Vec<String>>, ids: impl Iterator<Item = String>) -> Vec<Outcome> {
    let mut sent = sent.lock().unwrap();
    ids.map(|id| {
        sent.push(id);
        Outcome::Sent {
            reference: None,
            http_status: Some(200),
        }
    })
    .collect()
}

#[tokio::test]
async fn a_destination_that_passes_its_probe_but_refuses_writes_never_drains_the_queue_to_the_dlq()
{
    // Arrange: 40 events wait; the work queue's delivery limit is 20, fewer than the cycles.
    let p = Pipeline::new().await;
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(p.publish(&recent_lead(&format!("L-scope-{i}"))).await);
    }
    let sent = Arc::new(Mutex::new(Vec::new()));
    let adapter = WriteScope {
        refusals: 30,
        calls: Mutex::new(0),
        sent: sent.clone(),
    };
    let mut runtime = p.runtime_settings(&SenderOptions::default());
    runtime.pause_probe_max = Duration::from_millis(40);
    runtime.batch_max_wait = Duration::from_millis(20);

    // Act: every cycle is send → systemic → pause → probe passes → trial; after 30 refused
    // requests the permission is granted.
    let sender = spawn_sender(runtime, adapter).await;
    let saw_paused: Arc<Mutex<Option<Value>>> = Arc::default();
    let delivered = eventually(WAIT, || async {
        if saw_paused.lock().unwrap().is_none() {
            let (status, body) = sender.readyz_body().await;
            if status == 503
                && body["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("paused"))
            {
                *saw_paused.lock().unwrap() = Some(body);
            }
        }
        sent.lock().unwrap().len() >= ids.len()
    })
    .await;

    // Assert: nothing dead-lettered, every event delivered once, a pause per refusal.
    assert!(
        delivered,
        "delivered {} of {}",
        sent.lock().unwrap().len(),
        ids.len()
    );
    assert_eq!(p.dlq_depth(leadpipe_crm_writer::DESTINATION).await, 0);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for id in sent.lock().unwrap().iter() {
        *counts.entry(id.clone()).or_default() += 1;
    }
    assert!(
        ids.iter().all(|id| counts.get(id) == Some(&1)),
        "{counts:?}"
    );
    let metrics = sender.metrics().await;
    // The first pause meets a refused batch on each of the two consumer channels; every later
    // cycle is one trial batch.
    let pauses = counter(
        &[metrics],
        r#"leadpipe_destination_pauses_total{destination="crm"}"#,
    );
    assert!(pauses >= 29, "paused {pauses} times");
    let body = saw_paused
        .lock()
        .unwrap()
        .clone()
        .expect("/readyz said paused");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("http_403") && r.contains("next probe in")),
        "{body}"
    );
    assert!(eventually(WAIT, || async { sender.readyz().await == 200 }).await);
    sender.stop().await;
    p.cleanup().await;
}

/// Panics preparing the event of lead `L-boom`; sends everything else.
struct PanicsOnOne {
    sent: Arc<Mutex<Vec<String>>>,
}

impl leadpipe_consumer::Adapter for PanicsOnOne {
    type Prepared = String;
    fn destination(&self) -> Destination {
        leadpipe_crm_writer::DESTINATION
    }
    fn max_batch(&self) -> usize {
        100
    }
    fn prepare(&self, env: &leadpipe_events::Envelope) -> Prepared<String> {
        let lead = env.event.lead_id.clone().unwrap_or_default();
        assert!(lead != "L-boom", "adapter bug on this event");
        Prepared::Send(lead)
    }
    async fn send(&self, items: Vec<Item<String>>) -> Vec<Outcome> {
        record_sent(&self.sent, items.into_iter().map(|i| i.prepared))
    }
    async fn probe(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn a_panic_preparing_one_event_dead_letters_it_alone_and_sends_its_neighbours_once() {
    // Arrange: three events in one batch, the middle one makes the adapter panic.
    let p = Pipeline::new().await;
    let a = p.publish(&recent_lead("L-before")).await;
    let boom = p.publish(&recent_lead("L-boom")).await;
    let c = p.publish(&recent_lead("L-after")).await;
    let sent = Arc::new(Mutex::new(Vec::new()));
    let runtime = p.runtime_settings(&SenderOptions::default());

    // Act
    let sender = start_sender(runtime, PanicsOnOne { sent: sent.clone() }).await;

    // Assert
    p.wait_status_in(
        leadpipe_crm_writer::DESTINATION,
        &boom,
        "dead_lettered",
        WAIT,
    )
    .await;
    p.wait_status_in(leadpipe_crm_writer::DESTINATION, &a, "sent", WAIT)
        .await;
    p.wait_status_in(leadpipe_crm_writer::DESTINATION, &c, "sent", WAIT)
        .await;
    let dead = p
        .broker
        .take(
            &p.names.dead_letter_queue(leadpipe_crm_writer::DESTINATION),
            1,
            WAIT,
        )
        .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id().as_deref(), Some(boom.as_str()));
    assert_eq!(
        dead[0].header("x-leadpipe-error-code").as_deref(),
        Some("adapter_panic")
    );
    assert_eq!(*sent.lock().unwrap(), ["L-before", "L-after"]);
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn a_lead_and_a_won_sharing_one_event_id_both_reach_meta() {
    // Arrange: a client that uses one pixel event id for the lead and for its won (Meta
    // deduplicates on event_name + event_id, so both are distinct conversions).
    let p = Pipeline::new().await;
    let mut lead = recent_lead("L-shared-id");
    lead["event_id"] = json!("px-4242");
    let mut purchase = won("L-shared-id", "O-4242");
    purchase["event_id"] = json!("px-4242");
    let sender = p.start_meta(SenderOptions::default()).await;

    // Act
    p.publish(&lead).await;
    p.publish(&purchase).await;

    // Assert: both delivered, each once, and both rows in the delivery log.
    let both = eventually(WAIT, || async {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM deliveries
             WHERE destination = 'meta' AND event_id = 'px-4242' AND status = 'sent'",
        )
        .fetch_one(&p.pool)
        .await
        .unwrap();
        n == 2
    })
    .await;
    assert!(both, "the lead and the won were not both sent");
    let mut seen: Vec<(String, String)> = p
        .meta
        .requests()
        .iter()
        .filter(|r| r.status == 200)
        .flat_map(|r| r.body["data"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            (
                e["event_name"].as_str().unwrap_or_default().to_owned(),
                e["event_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("Lead".to_owned(), "px-4242".to_owned()),
            ("Purchase".to_owned(), "px-4242".to_owned())
        ]
    );
    // `leadpipe trace` shows both.
    let out = tokio::process::Command::new(leadpipe_tests::bin_path("leadpipe"))
        .args(["trace", "px-4242"])
        .env("DATABASE_URL", &p.database_url)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("meta") && l.contains("lead") && l.contains("sent"))
            && text
                .lines()
                .any(|l| l.contains("meta") && l.contains("won") && l.contains("sent")),
        "{text}"
    );
    sender.stop().await;
    p.cleanup().await;
}

#[tokio::test]
async fn an_outcome_written_after_another_worker_took_the_lease_over_is_reported_lost() {
    // Arrange: worker A claims an event with a short lease and does not renew it (its
    // database was away, say); worker B takes the lapsed lease over.
    use leadpipe_consumer::store::{EventKey, Record, Store};
    let p = Pipeline::new().await;
    let lease = Duration::from_millis(300);
    let a = Store::open(p.pool.clone(), "meta", "worker-a".into(), lease)
        .await
        .unwrap();
    let b = Store::open(p.pool.clone(), "meta", "worker-b".into(), lease)
        .await
        .unwrap();
    let occurred = chrono::Utc::now();
    let key = EventKey::new("E-lease", "lead", a.bucket_of(occurred));
    let claim = claim_request(key.clone(), occurred, None);
    assert!(
        a.claim(std::slice::from_ref(&claim))
            .await
            .unwrap()
            .claimed
            .contains(&key)
    );
    let taken = eventually(WAIT, || async {
        b.claim(std::slice::from_ref(&claim))
            .await
            .unwrap()
            .claimed
            .contains(&key)
    })
    .await;
    assert!(taken, "worker B never took the lapsed lease over");

    // Act: A writes its outcome, and renews, too late.
    let record = |status| Record {
        key: key.clone(),
        status: Some(status),
        tried: 1,
        http_status: Some(200),
        error_code: None,
        error_message: None,
        reference: None,
        payload: None,
    };
    let lost = a
        .record(&[record(leadpipe_db::DeliveryStatus::Sent)])
        .await
        .unwrap();
    let renewed_lost = a.renew(std::slice::from_ref(&key)).await.unwrap();

    // Assert: both name the key; B's outcome is the one written.
    assert_eq!(lost, std::slice::from_ref(&key));
    assert_eq!(renewed_lost, std::slice::from_ref(&key));
    assert!(
        b.record(&[record(leadpipe_db::DeliveryStatus::Retrying)])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        p.row("E-lease").await.map(|r| r.0).as_deref(),
        Some("retrying")
    );
    p.cleanup().await;
}

#[tokio::test]
async fn an_event_decided_before_any_request_is_written_final_by_its_claim_where_a_claim_may_take_it()
 {
    // Arrange: on Meta's log, one event retried once by worker A, one sent by A, and one in
    // flight at worker B under a live lease.
    use leadpipe_consumer::store::{EventKey, Record, Store};
    use leadpipe_db::DeliveryStatus;
    let p = Pipeline::new().await;
    let lease = Duration::from_secs(60);
    let a = Store::open(p.pool.clone(), "meta", "worker-a".into(), lease)
        .await
        .unwrap();
    let b = Store::open(p.pool.clone(), "meta", "worker-b".into(), lease)
        .await
        .unwrap();
    let occurred = chrono::Utc::now();
    let key = |id: &str| EventKey::new(id, "lead", a.bucket_of(occurred));
    let request = |id: &str, settled| claim_request(key(id), occurred, settled);
    let record = |id: &str, status| Record {
        key: key(id),
        status: Some(status),
        tried: 1,
        http_status: Some(500),
        error_code: Some("http_500".into()),
        error_message: None,
        reference: None,
        payload: None,
    };
    a.claim(&[request("E-retrying", None), request("E-sent", None)])
        .await
        .unwrap();
    assert!(
        a.record(&[
            record("E-retrying", DeliveryStatus::Retrying),
            record("E-sent", DeliveryStatus::Sent),
        ])
        .await
        .unwrap()
        .is_empty()
    );
    assert!(
        b.claim(&[request("E-held", None)])
            .await
            .unwrap()
            .claimed
            .contains(&key("E-held"))
    );

    // Act: A claims them, and a new one, as decided without a request (unmapped).
    let unmapped = Some(DeliveryStatus::SkippedUnmapped);
    let claim = a
        .claim(&[
            request("E-new", unmapped),
            request("E-retrying", unmapped),
            request("E-sent", unmapped),
            request("E-held", unmapped),
        ])
        .await
        .unwrap();

    // Assert: the new and the retrying rows are written final with no lease (the retried
    // one keeps its attempt and its last error); the sent one is done, the held one busy.
    let mut claimed: Vec<String> = claim.claimed.iter().map(|k| k.event_id.clone()).collect();
    claimed.sort();
    assert_eq!(claimed, ["E-new", "E-retrying"]);
    assert!(claim.done.contains(&key("E-sent")), "{claim:?}");
    assert!(claim.busy.contains_key(&key("E-held")), "{claim:?}");
    // (event id, status, attempts, lease owner, no lease expiry, last error code)
    type Row = (String, String, i32, Option<String>, bool, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT event_id, status, attempts, lease_owner, lease_expires_at IS NULL,
                last_error_code
         FROM deliveries WHERE destination = 'meta' ORDER BY event_id",
    )
    .fetch_all(&p.pool)
    .await
    .unwrap();
    let row = |id: &str, status: &str, attempts, owner: Option<&str>, code: Option<&str>| {
        (
            id.to_owned(),
            status.to_owned(),
            attempts,
            owner.map(str::to_owned),
            owner.is_none(),
            code.map(str::to_owned),
        )
    };
    assert_eq!(
        rows,
        [
            row("E-held", "in_flight", 0, Some("worker-b"), None),
            row("E-new", "skipped_unmapped", 0, None, None),
            row("E-retrying", "skipped_unmapped", 1, None, Some("http_500")),
            row("E-sent", "sent", 1, None, None),
        ]
    );
    // Nothing of them is A's to renew.
    assert_eq!(
        a.renew(&[key("E-new"), key("E-retrying")])
            .await
            .unwrap()
            .len(),
        2
    );
    p.cleanup().await;
}
