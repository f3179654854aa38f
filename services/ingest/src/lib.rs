//! The ingest service (SPEC §3): signed webhooks in, confirmed messages on RabbitMQ out.
//!
//! `202` is only ever answered after the broker confirmed the message on durable quorum
//! queues; when it cannot confirm in time the answer is `503` with `Retry-After`, and the
//! client's retry carries the same derived `event_id`.
//!
//! # Layout
//! - [`cfg`]: settings from the environment and the sources/mapping files.
//! - [`auth`]: HMAC signature and timestamp checks.
//! - [`routes`]: the handlers, in the order a request meets them.
//! - [`error`]: error bodies and status codes.
//! - [`state`]: what handlers share (sources, rate limiters, publisher, metrics).
//! - [`metrics`]: the ingest metric families.
//! - [`webhook`]: native platform payloads → canonical events, by each source's field map.

#![forbid(unsafe_code)]

pub mod auth;
pub mod cfg;
pub mod error;
pub mod metrics;
pub mod routes;
pub mod state;
pub mod webhook;

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use leadpipe_bus::topology::TopologySettings;
use leadpipe_bus::{Names, Publisher, PublisherSettings};

pub use cfg::Settings;
pub use state::AppState;

/// A built ingest service: the listener is bound and the publisher is connecting.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    max_in_flight: usize,
}

impl Application {
    /// Binds `settings.addr` (port 0 picks a free port) and starts the publisher, which keeps
    /// (re)connecting to the broker until `shutdown` is cancelled.
    pub async fn build(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.addr)
            .await
            .with_context(|| format!("cannot listen on INGEST_ADDR {}", settings.addr))?;
        let names: Vec<&str> = settings.destinations.iter().map(|d| d.as_str()).collect();
        tracing::info!(
            destinations = %names.join(","),
            "publishing to the enabled destinations (LEADPIPE_DESTINATIONS)"
        );
        let mut publisher_settings = PublisherSettings::new(
            settings.amqp.url.clone(),
            "ingest",
            TopologySettings::for_destinations(settings.destinations.iter().copied())
                .with_quorum_group_size(settings.amqp.quorum_group_size),
        );
        publisher_settings.confirm_timeout = settings.confirm_timeout;
        publisher_settings.channels = settings.publish_channels;
        let publisher = Publisher::start(
            publisher_settings,
            Names::new(settings.amqp.namespace.clone()),
            shutdown,
        );
        let state = AppState::new(
            settings.sources,
            settings.custom_events,
            settings.max_body_bytes,
            settings.body_timeout,
            publisher,
        );
        Ok(Self {
            listener,
            state,
            max_in_flight: settings.max_in_flight,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The shared state (tests read the publisher's readiness and the metrics).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` is cancelled, then finishes the requests in progress (each one
    /// waits for its confirm, so nothing accepted is cut off).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        use axum::serve::ListenerExt;
        tracing::info!(addr = %self.local_addr(), "ingest listening");
        // No Nagle delay on responses: a 202 is a few dozen bytes and waits on nothing else.
        let listener = self.listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        axum::serve(listener, router(self.state, self.max_in_flight))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .context("the HTTP server failed")
    }
}

/// The routes of SPEC §3. The posting routes share one limit of `max_in_flight` requests in
/// progress (`INGEST_MAX_IN_FLIGHT`): past it a request is shed at once with `503` and
/// `Retry-After`, never queued; health, readiness, metrics and the schema are not limited.
pub fn router(state: AppState, max_in_flight: usize) -> Router {
    let limit = tower::ServiceBuilder::new()
        .layer(axum::error_handling::HandleErrorLayer::new(
            |_: tower::BoxError| async { error::ApiError::Overloaded },
        ))
        .load_shed()
        // One semaphore for every route (a per-route limit would allow three times as many).
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            max_in_flight,
        ));
    let posts = Router::new()
        .route("/v1/events", post(routes::post_event))
        .route("/v1/events/batch", post(routes::post_batch))
        .route("/v1/sources/{id}/webhook", post(routes::post_webhook))
        .layer(limit);
    posts
        .route("/v1/schema", get(routes::schema))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .with_state(state)
}
