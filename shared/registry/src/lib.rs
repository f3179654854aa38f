//! The registry: every destination leadpipe delivers to. A destination is one crate under
//! `services/` that exports a [`Registration`](leadpipe_consumer::Registration); adding one is
//! its folder and one line in the list below (plus its dependency and `fakes` lines in this
//! crate's `Cargo.toml`).
//!
//! ingest, the CLI and the test support read destinations from [`REGISTRY`]; none of them
//! names one.

#![forbid(unsafe_code)]

use leadpipe_bus::topology::TopologySettings;
use leadpipe_config::ConfigError;
pub use leadpipe_consumer::registry::{DESTINATIONS_VARIABLE, Registration, Registry};

/// Declares [`REGISTRY`] and, with the `fakes` feature, [`fakes::start`] from one list of
/// destination crates.
macro_rules! destinations {
    ($($krate:ident),* $(,)?) => {
        /// Every registered destination, in queue order.
        pub static REGISTRY: Registry = Registry::new(&[$(&$krate::REGISTRATION),*]);

        /// The destinations' fakes (feature `fakes`), for tests and benchmarks.
        #[cfg(feature = "fakes")]
        pub mod fakes {
            use std::sync::Arc;

            use leadpipe_consumer::testing::FakeDestination;

            /// Starts one fake per registered destination, in queue order.
            pub async fn start() -> Vec<Arc<dyn FakeDestination>> {
                vec![$($krate::fake::start().await),*]
            }
        }
    };
}

// One line per destination.
destinations! {
    leadpipe_meta_sender,
    leadpipe_ga4_sender,
    leadpipe_google_ads_sender,
    leadpipe_crm_writer,
    leadpipe_tiktok_sender,
}

/// The destinations `LEADPIPE_DESTINATIONS` enables (all registered ones when unset).
pub fn enabled() -> Result<Vec<&'static Registration>, ConfigError> {
    REGISTRY.enabled_from_env()
}

/// The topology of the enabled destinations, with the quorum group size of `AMQP_URL` /
/// `AMQP_QUORUM_GROUP_SIZE`.
pub fn enabled_topology() -> Result<TopologySettings, ConfigError> {
    let amqp = leadpipe_config::AmqpSettings::from_env()?;
    Ok(
        TopologySettings::for_destinations(enabled()?.iter().map(|r| r.destination))
            .with_quorum_group_size(amqp.quorum_group_size),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use leadpipe_bus::{Destination, Names, topology};
    use leadpipe_config::mapping::{MappingConfig, SHIPPED_DEFAULTS};

    use super::*;

    #[test]
    fn names_services_and_ports_are_well_formed_and_unique() {
        let mut names = HashSet::new();
        let mut ports = HashSet::new();
        let mut services = HashSet::new();
        for r in REGISTRY.all() {
            assert!(Destination::is_valid_name(r.name()), "{}", r.name());
            assert!(names.insert(r.name()), "{} registered twice", r.name());
            for a in r.aliases {
                assert!(names.insert(a), "alias {a} is taken");
            }
            assert!(
                ports.insert(r.metrics_port),
                "port {} taken",
                r.metrics_port
            );
            assert!(services.insert(r.service), "service {} taken", r.service);
            assert_eq!(REGISTRY.parse(r.name()).map(|p| p.name()), Some(r.name()));
        }
    }

    #[test]
    fn every_ad_destination_keeps_its_rows_past_the_window_of_each_of_its_events() {
        use leadpipe_consumer::registry::{RETENTION_MARGIN, Retention};
        let plain = serde_json::json!({"schema_version": 1, "event_id": "e", "ingested_at": "2026-12-07T00:00:00Z",
            "event": {"source": "s", "event_name": "won", "occurred_at": "2026-12-07T00:00:00Z"}});
        let mut retraction = plain.clone();
        retraction["event"]["event_name"] = "refund".into();
        retraction["event"]["refund"] = serde_json::json!({"kind": "full"});
        for r in REGISTRY.all() {
            for body in [&plain, &retraction] {
                let env: leadpipe_events::Envelope = serde_json::from_value(body.clone()).unwrap();
                match (r.retention, (r.acceptance_window)(&env)) {
                    (Retention::AcceptanceWindow(kept), Some(window)) => {
                        assert!(kept >= window, "{}: {kept} < {window}", r.name());
                        assert!(r.retention.own().unwrap() == kept + RETENTION_MARGIN);
                    }
                    (Retention::Days { .. }, None) => {}
                    (retention, window) => {
                        panic!(
                            "{}: retention {retention:?} with window {window:?}",
                            r.name()
                        )
                    }
                }
            }
        }
    }

    #[test]
    fn the_shipped_mapping_reads_into_every_destination() {
        let cfg = MappingConfig::parse(SHIPPED_DEFAULTS).unwrap();
        REGISTRY.check_mapping(&cfg).unwrap();
        let err = REGISTRY
            .check_mapping(&MappingConfig::parse("[events.lead.metta]\n").unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("events.lead.metta:"), "{err}");
        assert!(err.contains(&REGISTRY.names()), "{err}");
    }

    #[test]
    fn the_shipped_broker_definitions_match_the_code() {
        let shipped: serde_json::Value =
            serde_json::from_str(include_str!("../../../deploy/rabbitmq/definitions.json"))
                .expect("valid JSON");
        let all = TopologySettings::for_destinations(REGISTRY.destinations());
        let generated = topology::definitions(&topology::plan(&Names::new("leadpipe"), &all));
        assert_eq!(
            shipped, generated,
            "regenerate with: leadpipe topology definitions > deploy/rabbitmq/definitions.json"
        );
        let shipped: serde_json::Value = serde_json::from_str(include_str!(
            "../../../deploy/rabbitmq/definitions-cluster.json"
        ))
        .expect("valid JSON");
        let generated = topology::definitions(&topology::plan(
            &Names::new("leadpipe"),
            &all.with_quorum_group_size(3),
        ));
        assert_eq!(
            shipped, generated,
            "regenerate with: AMQP_QUORUM_GROUP_SIZE=3 leadpipe topology definitions > deploy/rabbitmq/definitions-cluster.json"
        );
    }
}
