//! The shared Postgres database: connecting (creating the database on first use), and the one
//! migrator for every service (`shared/db/migrations/`).
//!
//! # Layout
//! - [`connect`]: a pool to `DATABASE_URL`, creating the database when it does not exist.
//! - [`migrate`]: applies the embedded migrations; safe to run from every replica at once.
//! - [`DeliveryStatus`]: the statuses of the delivery log (SPEC §5).
//! - [`partitions`]: the delivery log's time partitions, created ahead and dropped past a
//!   destination's retention.

#![forbid(unsafe_code)]

pub mod partitions;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

/// What can go wrong with the database.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `DATABASE_URL` is not a Postgres URL.
    #[error("DATABASE_URL is not a valid postgres:// URL: {0}")]
    BadUrl(#[source] sqlx::Error),
    /// The server could not be reached or refused us.
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    /// A migration failed.
    #[error("migrating the database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The request cannot be done as asked (the reason says why).
    #[error("{0}")]
    Refused(String),
    /// Any other query failure.
    #[error(transparent)]
    Query(#[from] sqlx::Error),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The migrations of the shared database, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The delivery statuses of SPEC §5, as stored in `deliveries.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    /// Claimed by a worker whose request is under way (with a lease).
    InFlight,
    /// Taken by a destination that reports the event's outcome later; a poller resolves it.
    Accepted,
    /// The destination accepted it.
    Sent,
    /// Waiting in a delay queue for its next attempt.
    Retrying,
    /// In the destination's dead-letter queue.
    DeadLettered,
    /// Not sent: ad consent denied or unknown.
    BlockedConsent,
    /// Not sent: the mapping config sends nothing to this destination for this event.
    SkippedUnmapped,
    /// Not sent: older than the destination accepts.
    Expired,
    /// Built and recorded, not sent (`DRY_RUN`).
    DryRun,
}

impl DeliveryStatus {
    /// Every status.
    pub const ALL: [Self; 9] = [
        Self::InFlight,
        Self::Accepted,
        Self::Sent,
        Self::Retrying,
        Self::DeadLettered,
        Self::BlockedConsent,
        Self::SkippedUnmapped,
        Self::Expired,
        Self::DryRun,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InFlight => "in_flight",
            Self::Accepted => "accepted",
            Self::Sent => "sent",
            Self::Retrying => "retrying",
            Self::DeadLettered => "dead_lettered",
            Self::BlockedConsent => "blocked_consent",
            Self::SkippedUnmapped => "skipped_unmapped",
            Self::Expired => "expired",
            Self::DryRun => "dry_run",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether the event is done with for this destination: a redelivery is acked without a
    /// request (`accepted` included: the destination has it, only its verdict is pending).
    pub fn is_final(self) -> bool {
        !matches!(self, Self::InFlight | Self::Retrying)
    }
}

/// Connects to `url`, creating the database first when the server says it does not exist
/// (so the quick start needs no `createdb`). `max_connections` bounds the pool.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    let options = PgConnectOptions::from_str(url).map_err(Error::BadUrl)?;
    create_database_if_missing(&options).await?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .map_err(Error::Connect)
}

/// Applies every pending migration. Concurrent runs are serialized by sqlx's advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await?;
    tracing::info!(
        migrations = MIGRATOR.iter().count(),
        "database schema is up to date"
    );
    Ok(())
}

async fn create_database_if_missing(options: &PgConnectOptions) -> Result<()> {
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    match options.connect().await {
        Ok(conn) => {
            let _ = conn.close().await;
            Ok(())
        }
        // 3D000: invalid_catalog_name, "database does not exist".
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {
            let mut admin = options
                .clone()
                .database("postgres")
                .connect()
                .await
                .map_err(Error::Connect)?;
            let quoted = format!("\"{}\"", name.replace('"', "\"\""));
            // The name is quoted as an identifier above; CREATE DATABASE takes no parameters.
            match sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
                .execute(&mut admin)
                .await
            {
                Ok(_) => tracing::info!(database = %name, "created database"),
                // 42P04: duplicate_database, another process created it first.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
                Err(e) => return Err(Error::Connect(e)),
            }
            let _ = admin.close().await;
            Ok(())
        }
        Err(e) => Err(Error::Connect(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_only_in_flight_and_retrying_are_open() {
        for s in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::parse(s.as_str()), Some(s));
        }
        let open: Vec<_> = DeliveryStatus::ALL
            .into_iter()
            .filter(|s| !s.is_final())
            .collect();
        assert_eq!(open, [DeliveryStatus::InFlight, DeliveryStatus::Retrying]);
        assert!(DeliveryStatus::Accepted.is_final());
    }
}
