//! The runtime's public error: why a sender could not start or stopped.

use std::net::SocketAddr;

/// Why [`Sender::build`](crate::Sender::build) or
/// [`Sender::run_until_stopped`](crate::Sender::run_until_stopped) failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// PostgreSQL could not be reached with `DATABASE_URL` (or the URL is not one).
    #[error("connecting to DATABASE_URL: {0}")]
    Database(#[source] leadpipe_db::Error),
    /// The migrations could not be applied.
    #[error("{0}")]
    Migrate(#[source] leadpipe_db::Error),
    /// `METRICS_ADDR` could not be bound (taken, or not this host's).
    #[error("cannot listen on METRICS_ADDR {addr}: {source}")]
    MetricsAddr {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding it failed.
        #[source]
        source: std::io::Error,
    },
}
