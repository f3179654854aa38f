//! Ingest settings: the SPEC's variables, read once at start-up and checked.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use leadpipe_bus::Destination;
use leadpipe_config::mapping::MappingConfig;
use leadpipe_config::sources::{self, DEFAULT_SOURCES_PATH, Source};
use leadpipe_config::{AmqpSettings, ConfigError, env};
use leadpipe_registry::REGISTRY;

/// Default `INGEST_ADDR`.
pub const DEFAULT_ADDR: &str = "0.0.0.0:8080";
/// Default body limit, in bytes (256 KiB, SPEC §3).
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;
/// Most events in one batch request (SPEC §3).
pub const MAX_BATCH_EVENTS: usize = 500;
/// How far a signed timestamp may be from now, in seconds (SPEC §3).
pub const SIGNATURE_TOLERANCE_SECS: u64 = 300;
/// Default `INGEST_BODY_TIMEOUT_MS`.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `INGEST_MAX_IN_FLIGHT`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// Everything ingest needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `INGEST_ADDR`: where the API and `/metrics` listen.
    pub addr: SocketAddr,
    /// `AMQP_URL`, `LEADPIPE_NAMESPACE`.
    pub amqp: AmqpSettings,
    /// The sources of `LEADPIPE_SOURCES`, secrets resolved.
    pub sources: Vec<Source>,
    /// Custom event names declared in `LEADPIPE_CONFIG`.
    pub custom_events: HashSet<String>,
    /// `INGEST_MAX_BODY_BYTES`: larger bodies get `413`.
    pub max_body_bytes: usize,
    /// `INGEST_CONFIRM_TIMEOUT_MS`: how long a request waits for the broker's confirm before
    /// it gets `503`.
    pub confirm_timeout: Duration,
    /// `INGEST_PUBLISH_CHANNELS`: confirm-mode channels publishes are spread over.
    pub publish_channels: usize,
    /// `INGEST_BODY_TIMEOUT_MS`: a body that has not fully arrived by then gets `408`.
    pub body_timeout: Duration,
    /// `INGEST_MAX_IN_FLIGHT`: API requests in progress at once; past it, `503` with
    /// `Retry-After`.
    pub max_in_flight: usize,
    /// `LEADPIPE_DESTINATIONS`: the destinations whose queues ingest declares and so
    /// publishes to (default: every registered one).
    pub destinations: Vec<Destination>,
}

impl Settings {
    /// Reads and checks the environment and the files it names.
    pub fn from_env() -> Result<Self, ConfigError> {
        let addr = env::parse_or(
            "INGEST_ADDR",
            DEFAULT_ADDR.parse().expect("the default address parses"),
            "a socket address such as 0.0.0.0:8080",
        )?;
        let sources_path = PathBuf::from(env::string_or("LEADPIPE_SOURCES", DEFAULT_SOURCES_PATH));
        let sources = sources::load(&sources_path, |name| std::env::var(name).ok())?;
        let mapping = MappingConfig::from_env()?;
        // Every destination's mapping is checked here, so a bad key stops ingest at start-up
        // rather than a sender after events were accepted.
        REGISTRY.check_mapping(&mapping)?;
        let destinations = REGISTRY
            .enabled_from_env()?
            .iter()
            .map(|r| r.destination)
            .collect();
        let max_body_bytes = env::parse_or(
            "INGEST_MAX_BODY_BYTES",
            DEFAULT_MAX_BODY_BYTES,
            "a number of bytes",
        )?;
        if max_body_bytes < 1024 {
            return Err(ConfigError::invalid(
                "INGEST_MAX_BODY_BYTES",
                "must be at least 1024",
            ));
        }
        let confirm_ms: u64 = env::parse_or(
            "INGEST_CONFIRM_TIMEOUT_MS",
            5000,
            "a number of milliseconds",
        )?;
        if confirm_ms == 0 {
            return Err(ConfigError::invalid(
                "INGEST_CONFIRM_TIMEOUT_MS",
                "must be at least 1",
            ));
        }
        let publish_channels: usize =
            env::parse_or("INGEST_PUBLISH_CHANNELS", 1, "a number of channels")?;
        if !(1..=64).contains(&publish_channels) {
            return Err(ConfigError::invalid(
                "INGEST_PUBLISH_CHANNELS",
                "must be between 1 and 64",
            ));
        }
        let body_timeout_ms: u64 = env::parse_or(
            "INGEST_BODY_TIMEOUT_MS",
            DEFAULT_BODY_TIMEOUT.as_millis() as u64,
            "a number of milliseconds",
        )?;
        if body_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "INGEST_BODY_TIMEOUT_MS",
                "must be at least 1",
            ));
        }
        let max_in_flight: usize = env::parse_or(
            "INGEST_MAX_IN_FLIGHT",
            DEFAULT_MAX_IN_FLIGHT,
            "a number of requests",
        )?;
        if max_in_flight == 0 {
            return Err(ConfigError::invalid(
                "INGEST_MAX_IN_FLIGHT",
                "must be at least 1",
            ));
        }
        Ok(Self {
            addr,
            publish_channels,
            body_timeout: Duration::from_millis(body_timeout_ms),
            max_in_flight,
            destinations,
            amqp: AmqpSettings::from_env()?,
            sources,
            custom_events: mapping.custom_event_names().map(str::to_owned).collect(),
            max_body_bytes,
            confirm_timeout: Duration::from_millis(confirm_ms),
        })
    }
}
