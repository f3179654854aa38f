//! Runtime settings shared by every sender (SPEC §5 variables, plus the runtime's knobs).

use std::net::SocketAddr;
use std::time::Duration;

use leadpipe_config::{AmqpSettings, ConfigError, DatabaseSettings, env};

use crate::registry::Registration;

/// A duration variable in milliseconds, `default` when unset.
fn millis(name: &str, default: Duration) -> Result<Duration, ConfigError> {
    let ms = u64::try_from(default.as_millis()).unwrap_or(u64::MAX);
    Ok(Duration::from_millis(env::parse_or(
        name,
        ms,
        "milliseconds",
    )?))
}

/// How a sender consumes, batches, retries and pauses.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// `AMQP_URL`, `LEADPIPE_NAMESPACE`.
    pub amqp: AmqpSettings,
    /// `DATABASE_URL`.
    pub database: DatabaseSettings,
    /// `METRICS_ADDR`: `/metrics`, `/healthz`, `/readyz`.
    pub metrics_addr: SocketAddr,
    /// `BATCH_SIZE`: most events per batch (capped by the destination's own limit).
    pub batch_size: usize,
    /// `BATCH_MAX_WAIT_MS`: how long a batch waits to fill once its first event arrived.
    pub batch_max_wait: Duration,
    /// `PREFETCH`: unacked deliveries per consumer channel (default: the batch size).
    pub prefetch: u16,
    /// `CONCURRENCY`: consumer channels, each working one batch at a time.
    pub concurrency: usize,
    /// `MAX_ATTEMPTS`: requests per event before it is dead-lettered.
    pub max_attempts: u32,
    /// `RETRY_BASE_MS`: the first retry's upper bound; doubles per attempt.
    pub retry_base: Duration,
    /// `RETRY_MAX_MS`: the longest retry delay (and cap on `Retry-After`).
    pub retry_max: Duration,
    /// `LEASE_SECS`: how long a claim is ours before another worker may take it over.
    pub lease: Duration,
    /// `PAUSE_PROBE_MAX_MS`: longest wait between probes while paused (starts at 500 ms).
    pub pause_probe_max: Duration,
    /// `PAUSE_AFTER_FAILED_BATCHES`: consecutive batches whose every request failed
    /// transiently before consumption pauses ("every request failing").
    pub pause_after_failed_batches: u32,
    /// `DRY_RUN`: build and record every request, send nothing. Only when asked for: a
    /// sender missing a credential or mapping value without it refuses to start.
    pub dry_run: bool,
    /// `MAX_POLLS`: verdict requests for an accepted event before it is dead-lettered as
    /// `verdict_timeout` (destinations that report later only).
    pub max_polls: u32,
    /// How long the delivery log keeps this destination's rows: its registered
    /// [`Retention`](crate::registry::Retention), or `DELIVERY_RETENTION_SECS`.
    pub retention: chrono::Duration,
}

impl RuntimeSettings {
    /// Defaults for `destination`, metrics on `0.0.0.0:<metrics_port>`.
    pub fn defaults(amqp: AmqpSettings, database: DatabaseSettings, metrics_port: u16) -> Self {
        Self {
            amqp,
            database,
            metrics_addr: SocketAddr::from(([0, 0, 0, 0], metrics_port)),
            batch_size: 500,
            batch_max_wait: Duration::from_millis(200),
            prefetch: 500,
            concurrency: 2,
            max_attempts: 10,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(6 * 3600),
            lease: Duration::from_secs(60),
            pause_probe_max: Duration::from_secs(30),
            pause_after_failed_batches: 5,
            max_polls: 30,
            dry_run: false,
            retention: chrono::Duration::days(30),
        }
    }

    /// Reads the variables for `registration` (its default metrics port); refuses a
    /// destination that `LEADPIPE_DESTINATIONS` does not enable.
    pub fn from_env(registration: &Registration) -> Result<Self, ConfigError> {
        crate::registry::enabled_by_env(registration)?;
        let mut s = Self::defaults(
            AmqpSettings::from_env()?,
            DatabaseSettings::from_env(),
            registration.metrics_port,
        );
        s.metrics_addr = env::parse_or("METRICS_ADDR", s.metrics_addr, "a socket address")?;
        s.batch_size = env::parse_or("BATCH_SIZE", s.batch_size, "a number of events")?;
        s.batch_max_wait = millis("BATCH_MAX_WAIT_MS", s.batch_max_wait)?;
        s.prefetch = env::parse_or(
            "PREFETCH",
            u16::try_from(s.batch_size).unwrap_or(u16::MAX),
            "a number of messages (1-65535)",
        )?;
        s.concurrency = env::parse_or("CONCURRENCY", s.concurrency, "a number of channels")?;
        s.max_attempts = env::parse_or("MAX_ATTEMPTS", s.max_attempts, "a number of attempts")?;
        s.retry_base = millis("RETRY_BASE_MS", s.retry_base)?;
        s.retry_max = millis("RETRY_MAX_MS", s.retry_max)?;
        s.lease = Duration::from_secs(env::parse_or("LEASE_SECS", s.lease.as_secs(), "seconds")?);
        s.pause_probe_max = millis("PAUSE_PROBE_MAX_MS", s.pause_probe_max)?;
        s.pause_after_failed_batches = env::parse_or(
            "PAUSE_AFTER_FAILED_BATCHES",
            s.pause_after_failed_batches,
            "a number of batches",
        )?;
        s.max_polls = env::parse_or("MAX_POLLS", s.max_polls, "a number of polls")?;
        s.dry_run = env::flag("DRY_RUN", s.dry_run)?;
        s.retention = registration.retention.from_env()?;
        if let Ok(own) = registration.retention.own()
            && s.retention < own
        {
            tracing::warn!(
                destination = registration.name(),
                retention_secs = s.retention.num_seconds(),
                own_secs = own.num_seconds(),
                "DELIVERY_RETENTION_SECS is shorter than this destination's own retention: a copy \
                 of an event whose row was dropped inside its acceptance window would be sent again"
            );
        }
        for (key, bad) in [
            ("BATCH_SIZE", s.batch_size == 0),
            ("PREFETCH", s.prefetch == 0),
            ("CONCURRENCY", s.concurrency == 0),
            ("MAX_ATTEMPTS", s.max_attempts == 0),
            ("LEASE_SECS", s.lease.is_zero()),
            ("MAX_POLLS", s.max_polls == 0),
        ] {
            if bad {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        Ok(s)
    }
}
