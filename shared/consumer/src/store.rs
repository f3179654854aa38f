//! Idempotency keys and the delivery log in Postgres (SPEC §5), one row per
//! (destination, event_id, event_name): Meta deduplicates on the event name together with the
//! id, so one client id used for a `lead` and its `won` is two deliveries.
//!
//! A batch is claimed in one statement: a new key, a `retrying` key, or an `in_flight` key
//! whose lease expired (its worker died) becomes `in_flight` with our lease; no transaction
//! is held across the destination call. While the batch is in hand its leases are renewed
//! ([`Store::renew`]), so a slow destination never lets another worker take over an event
//! that is still being sent. Outcomes are written in one statement afterwards, only on rows
//! still leased to us; [`Store::record`] names the rows whose lease was lost.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use leadpipe_db::DeliveryStatus;

/// What identifies one delivery of a destination: the event's id and its canonical name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKey {
    /// The event's id.
    pub event_id: String,
    /// Its canonical name (`lead`, `won`, …).
    pub event_name: String,
}

impl EventKey {
    /// The key of `event_id` under `event_name`.
    pub fn new(event_id: impl Into<String>, event_name: impl Into<String>) -> Self {
        Self {
            event_id: event_id.into(),
            event_name: event_name.into(),
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
    /// The event's id.
    pub event_id: String,
    /// Its canonical name (part of the key).
    pub event_name: String,
    /// Its source.
    pub source: String,
    /// When ingest accepted it.
    pub ingested_at: Option<DateTime<Utc>>,
}

/// What a claim found for each event.
#[derive(Debug, Default)]
pub struct Claim {
    /// Ours to send.
    pub claimed: HashSet<EventKey>,
    /// Already decided (sent, dead-lettered, blocked…): ack without a request.
    pub done: HashSet<EventKey>,
    /// Held by another live worker: look again after the lease's remaining time.
    pub busy: HashMap<EventKey, Duration>,
    /// Accepted by the destination, its verdict pending: key → the reference recorded.
    pub awaiting: HashMap<EventKey, Option<String>>,
}

/// The keys of rows returned as `(event_id, event_name)`.
fn key_set(rows: Vec<(String, String)>) -> HashSet<EventKey> {
    rows.into_iter()
        .map(|(id, name)| EventKey::new(id, name))
        .collect()
}

/// Keys as the two arrays a statement unnests: event ids and event names.
fn columns<'a>(keys: impl Iterator<Item = &'a EventKey>) -> (Vec<&'a str>, Vec<&'a str>) {
    keys.map(|k| (k.event_id.as_str(), k.event_name.as_str()))
        .unzip()
}

/// A row a claim did not take: (event id, name, status, lease seconds left, reference).
type FoundRow = (String, String, String, Option<f64>, Option<String>);

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
}

impl Store {
    /// A store for `destination`; `owner` names this worker in leases.
    pub fn new(pool: PgPool, destination: &'static str, owner: String, lease: Duration) -> Self {
        Self {
            pool,
            destination,
            owner,
            lease,
        }
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

    /// Claims `events` (ids unique within the call) in one statement.
    pub async fn claim(&self, events: &[ClaimRequest]) -> sqlx::Result<Claim> {
        let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        let names: Vec<&str> = events.iter().map(|e| e.event_name.as_str()).collect();
        let sources: Vec<&str> = events.iter().map(|e| e.source.as_str()).collect();
        let ingested: Vec<Option<DateTime<Utc>>> = events.iter().map(|e| e.ingested_at).collect();
        let claimed: Vec<(String, String)> = sqlx::query_as(
            "INSERT INTO deliveries AS d
                 (destination, event_id, status, event_name, source, ingested_at,
                  lease_owner, lease_expires_at)
             SELECT $1, u.id, 'in_flight', u.name, u.source, u.ingested, $2,
                    now() + make_interval(secs => $3)
             FROM unnest($4::text[], $5::text[], $6::text[], $7::timestamptz[])
                  AS u(id, name, source, ingested)
             ON CONFLICT (destination, event_id, event_name) DO UPDATE
             SET status = 'in_flight', lease_owner = EXCLUDED.lease_owner,
                 lease_expires_at = EXCLUDED.lease_expires_at, updated_at = now()
             WHERE d.status = 'retrying'
                OR (d.status = 'in_flight'
                    AND (d.lease_expires_at IS NULL OR d.lease_expires_at < now()
                         OR d.lease_owner = EXCLUDED.lease_owner))
             RETURNING d.event_id, d.event_name",
        )
        .bind(self.destination)
        .bind(&self.owner)
        .bind(self.lease.as_secs_f64())
        .bind(&ids)
        .bind(&names)
        .bind(&sources)
        .bind(&ingested)
        .fetch_all(&self.pool)
        .await?;
        let mut claim = Claim {
            claimed: key_set(claimed),
            ..Claim::default()
        };
        let rest: Vec<&ClaimRequest> = events
            .iter()
            .filter(|e| {
                !claim
                    .claimed
                    .contains(&EventKey::new(e.event_id.clone(), e.event_name.clone()))
            })
            .collect();
        if rest.is_empty() {
            return Ok(claim);
        }
        let rest_ids: Vec<&str> = rest.iter().map(|e| e.event_id.as_str()).collect();
        let rest_names: Vec<&str> = rest.iter().map(|e| e.event_name.as_str()).collect();
        let rows: Vec<FoundRow> = sqlx::query_as(
            "SELECT d.event_id, d.event_name, d.status,
                    EXTRACT(EPOCH FROM (d.lease_expires_at - now()))::float8, d.destination_ref
             FROM deliveries d
             JOIN unnest($2::text[], $3::text[]) AS u(id, name)
               ON d.event_id = u.id AND d.event_name = u.name
             WHERE d.destination = $1",
        )
        .bind(self.destination)
        .bind(&rest_ids)
        .bind(&rest_names)
        .fetch_all(&self.pool)
        .await?;
        for (id, name, status, left, reference) in rows {
            let id = EventKey::new(id, name);
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
        let (ids, names) = columns(keys.iter());
        let held: Vec<(String, String)> = sqlx::query_as(
            "UPDATE deliveries AS d SET lease_expires_at = now() + make_interval(secs => $3)
             FROM unnest($4::text[], $5::text[]) AS u(id, name)
             WHERE d.destination = $1 AND d.event_id = u.id AND d.event_name = u.name
               AND d.lease_owner = $2 AND d.status = 'in_flight'
             RETURNING d.event_id, d.event_name",
        )
        .bind(self.destination)
        .bind(&self.owner)
        .bind(self.lease.as_secs_f64())
        .bind(&ids)
        .bind(&names)
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
        let (ids, names) = columns(records.iter().map(|r| &r.key));
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
        let written: Vec<(String, String)> = sqlx::query_as(
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
                         $8::text[], $9::text[], $10::text[], $11::text[])
                  AS u(id, status, tried, http, code, msg, ref, payload, name)
             WHERE d.destination = $1 AND d.event_id = u.id AND d.event_name = u.name
               AND d.lease_owner = $2
             RETURNING d.event_id, d.event_name",
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
        let (ids, names) = columns(verdicts.iter().map(|v| &v.key));
        let statuses: Vec<&str> = verdicts.iter().map(|v| v.status.as_str()).collect();
        let codes: Vec<Option<&str>> = verdicts.iter().map(|v| v.error_code.as_deref()).collect();
        let messages: Vec<Option<&str>> = verdicts
            .iter()
            .map(|v| v.error_message.as_deref())
            .collect();
        let done: Vec<(String, String)> = sqlx::query_as(
            "UPDATE deliveries AS d
             SET status = u.status, last_error_code = u.code, last_error_message = u.message,
                 sent_at = CASE WHEN u.status = 'sent' THEN now() ELSE d.sent_at END,
                 updated_at = now()
             FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
                  AS u(id, status, code, message, name)
             WHERE d.destination = $1 AND d.event_id = u.id AND d.event_name = u.name
               AND d.status = 'accepted'
             RETURNING d.event_id, d.event_name",
        )
        .bind(self.destination)
        .bind(&ids)
        .bind(&statuses)
        .bind(&codes)
        .bind(&messages)
        .bind(&names)
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
