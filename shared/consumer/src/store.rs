//! Idempotency keys and the delivery log in Postgres (SPEC §5), one row per
//! (destination, event_id, event_name): Meta deduplicates on the event name together with the
//! id, so one client id used for a `lead` and its `won` is two deliveries. The row also carries
//! its time partition (`bucket`, from the event's `occurred_at`: the same for every copy of
//! the event, see `leadpipe_db::partitions`), and every statement names it, so each touches
//! one partition.
//!
//! A batch is claimed in one statement: a new key, a `retrying` key, or an `in_flight` key
//! whose lease expired (its worker died) becomes `in_flight` with our lease; no transaction
//! is held across the destination call. While the batch is in hand its leases are renewed
//! ([`Store::renew`]), so a slow destination never lets another worker take over an event
//! that is still being sent. Outcomes are written in one statement afterwards, only on rows
//! still leased to us; [`Store::record`] names the rows whose lease was lost. An event the
//! destination takes nothing of (unmapped, consent blocked, expired) is claimed straight into
//! that final status, with no lease and no second statement
//! ([`ClaimRequest::settled`]).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use leadpipe_db::{DeliveryStatus, partitions};

/// What identifies one delivery of a destination: the event's id and its canonical name, and
/// the time partition its row is in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKey {
    /// The event's id.
    pub event_id: String,
    /// Its canonical name (`lead`, `won`, …).
    pub event_name: String,
    /// The start of its time partition (see [`Store::bucket_of`]).
    pub bucket: DateTime<Utc>,
}

impl EventKey {
    /// The key of `event_id` under `event_name`, in the partition starting at `bucket`.
    pub fn new(
        event_id: impl Into<String>,
        event_name: impl Into<String>,
        bucket: DateTime<Utc>,
    ) -> Self {
        Self {
            event_id: event_id.into(),
            event_name: event_name.into(),
            bucket,
        }
    }
}

impl std::fmt::Display for EventKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.event_id, self.event_name)
    }
}

/// One event to claim.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// Its key.
    pub key: EventKey,
    /// When it happened.
    pub occurred_at: Option<DateTime<Utc>>,
    /// Its source.
    pub source: String,
    /// When ingest accepted it.
    pub ingested_at: Option<DateTime<Utc>>,
    /// The client's id of the lead (the console finds an event by it).
    pub lead_id: Option<String>,
    /// The client's id of the order (`won`, `refund`).
    pub order_id: Option<String>,
    /// Decided before any request (unmapped, consent blocked, expired: a final status that is
    /// neither routed nor sent): the claim writes it at once, in the same statement, rather
    /// than taking a lease and updating the row afterwards. `None`: claim it to send.
    pub settled: Option<DeliveryStatus>,
}

/// What a claim found for each event.
#[derive(Debug, Default)]
pub struct Claim {
    /// Ours to send (or, for a request that came `settled`, written with that status).
    pub claimed: HashSet<EventKey>,
    /// Already decided (sent, dead-lettered, blocked…): ack without a request.
    pub done: HashSet<EventKey>,
    /// Held by another live worker: look again after the lease's remaining time.
    pub busy: HashMap<EventKey, Duration>,
    /// Accepted by the destination, its verdict pending: key → the reference recorded.
    pub awaiting: HashMap<EventKey, Option<String>>,
}

/// A key as a statement returns it: (event id, name, bucket).
type KeyRow = (String, String, DateTime<Utc>);

/// The keys of rows returned as `(event_id, event_name, bucket)`.
fn key_set(rows: Vec<KeyRow>) -> HashSet<EventKey> {
    rows.into_iter()
        .map(|(id, name, bucket)| EventKey::new(id, name, bucket))
        .collect()
}

/// Keys as the three arrays a statement unnests: event ids, event names and buckets.
type Columns<'a> = (Vec<&'a str>, Vec<&'a str>, Vec<DateTime<Utc>>);

fn columns<'a>(keys: impl Iterator<Item = &'a EventKey>) -> Columns<'a> {
    let mut out: Columns<'a> = (Vec::new(), Vec::new(), Vec::new());
    for k in keys {
        out.0.push(k.event_id.as_str());
        out.1.push(k.event_name.as_str());
        out.2.push(k.bucket);
    }
    out
}

/// A row a claim did not take: (event id, name, bucket, status, lease seconds left,
/// reference).
type FoundRow = (
    String,
    String,
    DateTime<Utc>,
    String,
    Option<f64>,
    Option<String>,
);

/// One outcome to write.
#[derive(Debug, Clone)]
pub struct Record {
    /// The delivery.
    pub key: EventKey,
    /// New status; `None` releases the claim (systemic pause) without deciding anything.
    pub status: Option<DeliveryStatus>,
    /// Requests made for it in this round (0 or 1).
    pub tried: i32,
    /// Last HTTP status.
    pub http_status: Option<u16>,
    /// Last error code.
    pub error_code: Option<String>,
    /// Last error message (no PII).
    pub error_message: Option<String>,
    /// Destination reference.
    pub reference: Option<String>,
    /// DRY_RUN payload (hashed identifiers only).
    pub payload: Option<serde_json::Value>,
}

/// The delivery log of one destination, as one worker (`owner`) sees it.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    destination: &'static str,
    owner: String,
    lease: Duration,
    width: chrono::TimeDelta,
    legacy: bool,
}

impl Store {
    /// A store for `destination`; `owner` names this worker in leases. Reads the width of
    /// the log's time partitions, and whether rows from before partitioning are left.
    pub async fn open(
        pool: PgPool,
        destination: &'static str,
        owner: String,
        lease: Duration,
    ) -> leadpipe_db::Result<Self> {
        let width = partitions::partition_width(&pool).await?;
        let legacy: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(format!(
                "{}_legacy",
                partitions::destination_table(destination)
            ))
            .fetch_one(&pool)
            .await?;
        Ok(Self {
            pool,
            destination,
            owner,
            lease,
            width,
            legacy,
        })
    }

    /// The key of an event: its id and name, in the partition of `occurred_at` (of its
    /// `ingested_at` when it has none: a body that never passed validation).
    pub fn key_of(&self, env: &leadpipe_events::Envelope) -> EventKey {
        let time = env
            .event
            .occurred_at_utc()
            .or_else(|| {
                DateTime::parse_from_rfc3339(&env.ingested_at)
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            })
            .unwrap_or(partitions::LEGACY_BUCKET);
        EventKey::new(env.event_id.clone(), env.event.name(), self.bucket_of(time))
    }

    /// The width of the delivery log's time partitions.
    pub fn width(&self) -> chrono::TimeDelta {
        self.width
    }

    /// The start of the time partition holding `t`.
    pub fn bucket_of(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        partitions::bucket_of(self.width, t)
    }

    /// The same store for one consumer channel of this process: each channel leases under
    /// its own name, so a copy of an event another channel has in flight is "busy", never
    /// claimed again by the process that already holds it.
    pub fn for_worker(&self, index: usize) -> Self {
        Self {
            owner: format!("{}#{index}", self.owner),
            ..self.clone()
        }
    }

    /// This worker's name in leases.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// How long a claim is ours unless renewed (`LEASE_SECS`).
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Claims `events` (keys unique within the call) in one statement (two while rows from
    /// before partitioning are left: an open one is first moved into its event's partition).
    pub async fn claim(&self, events: &[ClaimRequest]) -> sqlx::Result<Claim> {
        let (ids, names, buckets) = columns(events.iter().map(|e| &e.key));
        let sources: Vec<&str> = events.iter().map(|e| e.source.as_str()).collect();
        let ingested: Vec<Option<DateTime<Utc>>> = events.iter().map(|e| e.ingested_at).collect();
        let occurred: Vec<Option<DateTime<Utc>>> = events.iter().map(|e| e.occurred_at).collect();
        let leads: Vec<Option<&str>> = events.iter().map(|e| e.lead_id.as_deref()).collect();
        let orders: Vec<Option<&str>> = events.iter().map(|e| e.order_id.as_deref()).collect();
        let settled: Vec<&str> = events
            .iter()
            .map(|e| e.settled.map(DeliveryStatus::as_str).unwrap_or("in_flight"))
            .collect();
        if self.legacy {
            sqlx::query(
                "WITH u AS (SELECT * FROM unnest($2::text[], $3::text[], $4::timestamptz[],
                                                 $5::timestamptz[]) AS u(id, name, bucket, occurred)),
                 moved AS (
                     DELETE FROM deliveries l USING u
                     WHERE l.destination = $1 AND l.bucket = $6 AND l.event_id = u.id
                       AND l.event_name = u.name
                       AND l.status IN ('in_flight', 'retrying', 'accepted')
                     RETURNING l.destination, l.event_id, l.status, l.attempts, l.event_name,
                               l.source, l.lease_owner, l.lease_expires_at, l.last_http_status,
                               l.last_error_code, l.last_error_message, l.destination_ref,
                               l.dry_run_payload, l.ingested_at, l.first_seen_at, l.updated_at,
                               l.sent_at, u.occurred, u.bucket, l.lead_id, l.order_id)
                 INSERT INTO deliveries SELECT * FROM moved ON CONFLICT DO NOTHING",
            )
            .bind(self.destination)
            .bind(&ids)
            .bind(&names)
            .bind(&buckets)
            .bind(&occurred)
            .bind(partitions::LEGACY_BUCKET)
            .execute(&self.pool)
            .await?;
        }
        // A settled row takes its final status and no lease; every other row is leased to
        // this worker. An existing row is taken over on the same terms as before.
        let claimed: Vec<KeyRow> = sqlx::query_as(
            "INSERT INTO deliveries AS d
                 (destination, event_id, status, event_name, source, ingested_at,
                  lease_owner, lease_expires_at, occurred_at, bucket, lead_id, order_id)
             SELECT $1, u.id, u.status, u.name, u.source, u.ingested,
                    CASE WHEN u.status = 'in_flight' THEN $2 END,
                    CASE WHEN u.status = 'in_flight' THEN now() + make_interval(secs => $3) END,
                    u.occurred, u.bucket, u.lead, u.ord
             FROM unnest($4::text[], $5::text[], $6::text[], $7::timestamptz[],
                         $8::timestamptz[], $9::timestamptz[], $12::text[], $13::text[],
                         $14::text[])
                  AS u(id, name, source, ingested, occurred, bucket, lead, ord, status)
             WHERE NOT ($10::bool AND EXISTS (
                 SELECT 1 FROM deliveries l
                 WHERE l.destination = $1 AND l.bucket = $11 AND l.event_id = u.id
                   AND l.event_name = u.name))
             ON CONFLICT (destination, event_id, event_name, bucket) DO UPDATE
             SET status = EXCLUDED.status, lease_owner = EXCLUDED.lease_owner,
                 lease_expires_at = EXCLUDED.lease_expires_at, updated_at = now()
             WHERE d.status = 'retrying'
                OR (d.status = 'in_flight'
                    AND (d.lease_expires_at IS NULL OR d.lease_expires_at < now()
                         OR d.lease_owner = $2))
             RETURNING d.event_id, d.event_name, d.bucket",
        )
        .bind(self.destination)
        .bind(&self.owner)
        .bind(self.lease.as_secs_f64())
        .bind(&ids)
        .bind(&names)
        .bind(&sources)
        .bind(&ingested)
        .bind(&occurred)
        .bind(&buckets)
        .bind(self.legacy)
        .bind(partitions::LEGACY_BUCKET)
        .bind(&leads)
        .bind(&orders)
        .bind(&settled)
        .fetch_all(&self.pool)
        .await?;
        let mut claim = Claim {
            claimed: key_set(claimed),
            ..Claim::default()
        };
        let rest: Vec<&EventKey> = events
            .iter()
            .map(|e| &e.key)
            .filter(|k| !claim.claimed.contains(*k))
            .collect();
        if rest.is_empty() {
            return Ok(claim);
        }
        let (rest_ids, rest_names, rest_buckets) = columns(rest.iter().copied());
        // A decided row from before partitioning answers for its event's key.
        let rows: Vec<FoundRow> = sqlx::query_as(
            "SELECT d.event_id, d.event_name, u.bucket, d.status,
                    EXTRACT(EPOCH FROM (d.lease_expires_at - now()))::float8, d.destination_ref
             FROM unnest($2::text[], $3::text[], $4::timestamptz[]) AS u(id, name, bucket)
             JOIN deliveries d
               ON d.destination = $1 AND d.event_id = u.id AND d.event_name = u.name
              AND d.bucket = u.bucket
             UNION ALL
             SELECT d.event_id, d.event_name, u.bucket, d.status, NULL, d.destination_ref
             FROM unnest($2::text[], $3::text[], $4::timestamptz[]) AS u(id, name, bucket)
             JOIN deliveries d
               ON d.destination = $1 AND d.event_id = u.id AND d.event_name = u.name
              AND d.bucket = $6
             WHERE $5",
        )
        .bind(self.destination)
        .bind(&rest_ids)
        .bind(&rest_names)
        .bind(&rest_buckets)
        .bind(self.legacy)
        .bind(partitions::LEGACY_BUCKET)
        .fetch_all(&self.pool)
        .await?;
        for (id, name, bucket, status, left, reference) in rows {
            let id = EventKey::new(id, name, bucket);
            match DeliveryStatus::parse(&status) {
                Some(DeliveryStatus::Accepted) => {
                    claim.awaiting.insert(id, reference);
                }
                Some(s) if s.is_final() => {
                    claim.done.insert(id);
                }
                _ => {
                    let left = Duration::from_secs_f64(left.unwrap_or(1.0).max(0.1));
                    claim.busy.insert(id, left);
                }
            }
        }
        Ok(claim)
    }

    /// Extends this worker's lease on `keys` by the lease length; returns the keys whose
    /// lease it no longer holds (taken over, or already decided).
    pub async fn renew(&self, keys: &[EventKey]) -> sqlx::Result<Vec<EventKey>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, names, buckets) = columns(keys.iter());
        let held: Vec<KeyRow> = sqlx::query_as(
            "UPDATE deliveries AS d SET lease_expires_at = now() + make_interval(secs => $3)
             FROM unnest($4::text[], $5::text[], $6::timestamptz[]) AS u(id, name, bucket)
             WHERE d.destination = $1 AND d.event_id = u.id AND d.event_name = u.name
               AND d.bucket = u.bucket AND d.lease_owner = $2 AND d.status = 'in_flight'
             RETURNING d.event_id, d.event_name, d.bucket",
        )
        .bind(self.destination)
        .bind(&self.owner)
        .bind(self.lease.as_secs_f64())
        .bind(&ids)
        .bind(&names)
        .bind(&buckets)
        .fetch_all(&self.pool)
        .await?;
        let held: HashSet<EventKey> = key_set(held);
        Ok(keys
            .iter()
            .filter(|k| !held.contains(*k))
            .cloned()
            .collect())
    }

    /// Writes outcomes (only for rows this worker still leases) in one statement; returns the
    /// keys whose row it no longer leased (their outcome was not written: another worker took
    /// the lease over).
    pub async fn record(&self, records: &[Record]) -> sqlx::Result<Vec<EventKey>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, names, buckets) = columns(records.iter().map(|r| &r.key));
        // '' stands for "leave as is" (release) and NULL-able columns use '' / 0 / '' as
        // absent, turned back into NULL in SQL.
        let statuses: Vec<&str> = records
            .iter()
            .map(|r| r.status.map(DeliveryStatus::as_str).unwrap_or(""))
            .collect();
        let tried: Vec<i32> = records.iter().map(|r| r.tried).collect();
        let http: Vec<i32> = records
            .iter()
            .map(|r| r.http_status.map(i32::from).unwrap_or(0))
            .collect();
        let text = |f: fn(&Record) -> &Option<String>| -> Vec<String> {
            records
                .iter()
                .map(|r| f(r).clone().unwrap_or_default())
                .collect()
        };
        let codes = text(|r| &r.error_code);
        let messages = text(|r| &r.error_message);
        let refs = text(|r| &r.reference);
        let payloads: Vec<String> = records
            .iter()
            .map(|r| {
                r.payload
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_default()
            })
            .collect();
        let written: Vec<KeyRow> = sqlx::query_as(
            "UPDATE deliveries AS d SET
                 status = COALESCE(NULLIF(u.status, ''), d.status),
                 attempts = d.attempts + u.tried,
                 last_http_status = COALESCE(NULLIF(u.http, 0), d.last_http_status),
                 last_error_code = CASE WHEN u.status = 'sent' THEN NULL
                                        ELSE COALESCE(NULLIF(u.code, ''), d.last_error_code) END,
                 last_error_message = CASE WHEN u.status = 'sent' THEN NULL
                                        ELSE COALESCE(NULLIF(u.msg, ''), d.last_error_message) END,
                 destination_ref = COALESCE(NULLIF(u.ref, ''), d.destination_ref),
                 dry_run_payload = COALESCE(NULLIF(u.payload, '')::jsonb, d.dry_run_payload),
                 sent_at = CASE WHEN u.status = 'sent' THEN now() ELSE d.sent_at END,
                 lease_owner = NULL,
                 lease_expires_at = CASE WHEN u.status = '' THEN now() ELSE NULL END,
                 updated_at = now()
             FROM unnest($3::text[], $4::text[], $5::int4[], $6::int4[], $7::text[],
                         $8::text[], $9::text[], $10::text[], $11::text[], $12::timestamptz[])
                  AS u(id, status, tried, http, code, msg, ref, payload, name, bucket)
             WHERE d.destination = $1 AND d.event_id = u.id AND d.event_name = u.name
               AND d.bucket = u.bucket AND d.lease_owner = $2
             RETURNING d.event_id, d.event_name, d.bucket",
        )
        .bind(self.destination)
        .bind(&self.owner)
        .bind(&ids)
        .bind(&statuses)
        .bind(&tried)
        .bind(&http)
        .bind(&codes)
        .bind(&messages)
        .bind(&refs)
        .bind(&payloads)
        .bind(&names)
        .bind(&buckets)
        .fetch_all(&self.pool)
        .await?;
        let written: HashSet<EventKey> = key_set(written);
        Ok(records
            .iter()
            .filter(|r| !written.contains(&r.key))
            .map(|r| r.key.clone())
            .collect())
    }

    /// Verdicts on `accepted` events: `sent`, `dead_lettered` with the destination's reason,
    /// or `retrying` (to be sent again). Rows no longer `accepted` are left alone; returns the
    /// ids that were updated.
    pub async fn resolve(&self, verdicts: &[Resolution]) -> sqlx::Result<HashSet<EventKey>> {
        if verdicts.is_empty() {
            return Ok(HashSet::new());
        }
        let (ids, names, buckets) = columns(verdicts.iter().map(|v| &v.key));
        let statuses: Vec<&str> = verdicts.iter().map(|v| v.status.as_str()).collect();
        let codes: Vec<Option<&str>> = verdicts.iter().map(|v| v.error_code.as_deref()).collect();
        let messages: Vec<Option<&str>> = verdicts
            .iter()
            .map(|v| v.error_message.as_deref())
            .collect();
        let done: Vec<KeyRow> = sqlx::query_as(
            "UPDATE deliveries AS d
             SET status = u.status, last_error_code = u.code, last_error_message = u.message,
                 sent_at = CASE WHEN u.status = 'sent' THEN now() ELSE d.sent_at END,
                 updated_at = now()
             FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::timestamptz[])
                  AS u(id, status, code, message, name, bucket)
             WHERE d.destination = $1 AND d.event_id = u.id AND d.event_name = u.name
               AND d.bucket = u.bucket AND d.status = 'accepted'
             RETURNING d.event_id, d.event_name, d.bucket",
        )
        .bind(self.destination)
        .bind(&ids)
        .bind(&statuses)
        .bind(&codes)
        .bind(&messages)
        .bind(&names)
        .bind(&buckets)
        .fetch_all(&self.pool)
        .await?;
        Ok(key_set(done))
    }
}

/// A verdict to write on an `accepted` row.
#[derive(Debug, Clone)]
pub struct Resolution {
    /// The delivery.
    pub key: EventKey,
    /// `Sent`, `DeadLettered` or `Retrying`.
    pub status: DeliveryStatus,
    /// The destination's reason, for a failure.
    pub error_code: Option<String>,
    /// Its message (no PII).
    pub error_message: Option<String>,
}
