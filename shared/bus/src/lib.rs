//! The RabbitMQ bus (SPEC §4): every name, the topology, and the confirmed publisher.
//!
//! # Layout
//! - [`names`]: exchange and queue names under `LEADPIPE_NAMESPACE`, and the destinations.
//! - [`topology`]: idempotent declaration of exchanges, queues and bindings.
//! - [`publisher`]: a publisher that survives broker restarts, with confirms and `mandatory`.
//! - [`headers`]: the AMQP header names leadpipe reads and writes.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod headers;
pub mod names;
pub mod publisher;
pub mod topology;

pub use names::{Destination, Names};
pub use publisher::{OutgoingMessage, PublishError, Publisher, PublisherSettings};

use lapin::{Connection, ConnectionProperties};

/// Errors of the bus that are not about one publish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker could not be reached, or refused the credentials.
    #[error("cannot connect to RabbitMQ: {0}")]
    Connect(#[source] lapin::Error),
    /// A declaration was refused; for an existing queue with other arguments, the broker's
    /// reply names the argument.
    #[error("declaring {what} failed: {source}")]
    Declare {
        /// The exchange, queue or binding.
        what: String,
        /// The broker's reply.
        #[source]
        source: lapin::Error,
    },
    /// Any other AMQP failure.
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Opens a connection named after the service (visible in the broker's connection list).
pub async fn connect(url: &str, connection_name: &str) -> Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(connection_name.into());
    Connection::connect(url, props)
        .await
        .map_err(Error::Connect)
}
