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
    /// `AMQP_URL` names no node.
    #[error("AMQP_URL names no RabbitMQ node")]
    NoNodes,
    /// A node did not accept the connection in time.
    #[error("cannot connect to RabbitMQ: no answer within {0:?}")]
    ConnectTimeout(std::time::Duration),
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
    /// The broker took the connection but did not finish setting it up (declarations,
    /// channels) in time: a node of a cluster that lost a peer can leave a declaration of a
    /// quorum queue waiting. The connection is dropped and made again.
    #[error("RabbitMQ did not set up the connection (declarations, channels) within {0:?}")]
    SetupTimeout(std::time::Duration),
    /// Any other AMQP failure.
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How long one node may take to accept a connection before the next one is tried (a node
/// whose machine is gone answers nothing; a stopped one refuses at once).
pub const NODE_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The nodes of `AMQP_URL`: one URL, or a comma-separated list of a cluster's nodes.
pub fn node_urls(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// The node a process tries first on its next connection: the one after the node its last
/// connection was to, so that a reconnect after losing a node tries the others first (and
/// a process's connections spread over the nodes).
static NEXT_NODE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Opens a connection named after the service (visible in the broker's connection list) to
/// one of the nodes of `url` (see [`node_urls`]), trying each in turn, each for at most
/// [`NODE_CONNECT_TIMEOUT`].
pub async fn connect(url: &str, connection_name: &str) -> Result<Connection> {
    use std::sync::atomic::Ordering;
    let nodes = node_urls(url);
    if nodes.is_empty() {
        return Err(Error::NoNodes);
    }
    let first = NEXT_NODE.load(Ordering::Relaxed) % nodes.len();
    let mut last = None;
    for i in 0..nodes.len() {
        let at = (first + i) % nodes.len();
        let props = ConnectionProperties::default().with_connection_name(connection_name.into());
        match tokio::time::timeout(NODE_CONNECT_TIMEOUT, Connection::connect(nodes[at], props))
            .await
        {
            Ok(Ok(conn)) => {
                NEXT_NODE.store(at + 1, Ordering::Relaxed);
                if nodes.len() > 1 {
                    tracing::debug!(
                        node = at + 1,
                        nodes = nodes.len(),
                        connection_name,
                        "connected to RabbitMQ"
                    );
                }
                return Ok(conn);
            }
            Ok(Err(e)) => last = Some(Error::Connect(e)),
            Err(_) => last = Some(Error::ConnectTimeout(NODE_CONNECT_TIMEOUT)),
        }
    }
    NEXT_NODE.store(first + 1, Ordering::Relaxed);
    Err(last.expect("at least one node was tried"))
}
