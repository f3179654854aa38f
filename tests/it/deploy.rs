//! `deploy/` stays true to the code: every metric the dashboard and alert rules use exists.

use std::collections::HashSet;

use serde::Deserialize;

use prometheus::core::Collector;

fn registered() -> HashSet<String> {
    let ingest = leadpipe_ingest::metrics::Metrics::new();
    let sender = leadpipe_consumer::metrics::Metrics::new("meta");
    let collectors: Vec<Box<dyn Collector>> = vec![
        Box::new(ingest.requests),
        Box::new(ingest.latency),
        Box::new(ingest.published),
        Box::new(ingest.rejected),
        Box::new(ingest.broker_ready),
        Box::new(sender.deliveries),
        Box::new(sender.request_seconds),
        Box::new(sender.retries),
        Box::new(sender.lag),
        Box::new(sender.depth),
        Box::new(sender.in_flight),
        Box::new(sender.paused),
        Box::new(sender.ready),
        Box::new(sender.pauses),
        Box::new(sender.lost_leases),
        Box::new(sender.publish_holds),
        Box::new(sender.dry_run),
        Box::new(sender.partitions_dropped),
        Box::new(sender.maintenance_failures),
    ];
    collectors
        .iter()
        .flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone()))
        .collect()
}

fn metric_names(text: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("leadpipe_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(base.to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn every_metric_in_the_dashboard_and_alert_rules_is_one_the_services_export() {
    let known = registered();
    for file in [
        "deploy/grafana/leadpipe.json",
        "deploy/prometheus/alerts.yml",
    ] {
        let text =
            std::fs::read_to_string(format!("{}/../{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let used = metric_names(&text);
        assert!(!used.is_empty(), "{file} uses no metric");
        let unknown: Vec<_> = used.difference(&known).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses unknown metrics {unknown:?}"
        );
    }
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn every_registered_destination_has_its_compose_service_and_kubernetes_manifest() {
    let compose = repo_file("docker-compose.yml");
    for r in leadpipe_registry::REGISTRY.all() {
        let (service, port) = (r.service, r.metrics_port);
        assert!(
            compose.contains(&format!("\n  {service}:\n"))
                && compose.contains(&format!("command: [\"{service}\"]"))
                && compose.contains(&format!("METRICS_ADDR: 0.0.0.0:{port}")),
            "docker-compose.yml has no {service} service on port {port}"
        );
        let manifest = repo_file(&format!("deploy/k8s/{service}.yaml"));
        for want in [
            format!("name: {service}"),
            format!("command: [\"{service}\"]"),
            format!("containerPort: {port}"),
            format!("value: \"0.0.0.0:{port}\""),
            format!("queueName: leadpipe.{}", r.name()),
        ] {
            assert!(
                manifest.contains(&want),
                "deploy/k8s/{service}.yaml: no {want}"
            );
        }
    }
}

/// Every document of every manifest under `deploy/k8s/`, with the file it came from.
fn manifests() -> Vec<(String, serde_yaml::Value)> {
    let dir = format!("{}/../deploy/k8s", env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
            assert!(
                value["apiVersion"].is_string() && value["kind"].is_string(),
                "{name}: a document without apiVersion/kind"
            );
            assert!(
                value["metadata"]["name"].is_string(),
                "{name}: no metadata.name"
            );
            out.push((name.clone(), value));
        }
    }
    out
}

/// The Secrets a pod spec reads, by name.
fn secrets_of(pod: &serde_yaml::Value) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for c in pod["containers"].as_sequence().into_iter().flatten() {
        for e in c["envFrom"].as_sequence().into_iter().flatten() {
            if let Some(n) = e["secretRef"]["name"].as_str() {
                out.insert(n.to_owned());
            }
        }
        for e in c["env"].as_sequence().into_iter().flatten() {
            if let Some(n) = e["valueFrom"]["secretKeyRef"]["name"].as_str() {
                out.insert(n.to_owned());
            }
        }
    }
    out
}

/// Checks a pod spec's hardening: non-root, read-only root, no capabilities, no privilege
/// escalation, requests and limits, a pinned image.
fn check_pod(what: &str, pod: &serde_yaml::Value) {
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
    assert_eq!(pod["automountServiceAccountToken"], false, "{what}");
    let containers = pod["containers"].as_sequence().expect("containers");
    for c in containers {
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
        let drop: Vec<&str> = sc["capabilities"]["drop"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(
            drop.contains(&"ALL"),
            "{what}: capabilities not all dropped"
        );
        for kind in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    !c["resources"][kind][resource].is_null(),
                    "{what}: no resources.{kind}.{resource}"
                );
            }
        }
        let image = c["image"].as_str().expect("image");
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty()
                && tag != "latest"
                && tag.split('.').count() == 3
                && tag.split('.').all(|p| p.parse::<u32>().is_ok()),
            "{what}: image {image} is not pinned to a version tag"
        );
    }
}

#[test]
fn the_kubernetes_manifests_keep_secrets_apart_and_every_pod_hardened() {
    let docs = manifests();
    let of_kind = |kind: &str| -> Vec<&serde_yaml::Value> {
        docs.iter()
            .filter(|(_, d)| d["kind"] == kind)
            .map(|(_, d)| d)
            .collect()
    };
    let deployments = of_kind("Deployment");
    let services: Vec<&str> = leadpipe_registry::REGISTRY
        .all()
        .iter()
        .map(|r| r.service)
        .chain(["ingest", "console"])
        .collect();
    assert_eq!(
        deployments.len(),
        services.len(),
        "one Deployment per service"
    );
    for d in &deployments {
        let name = d["metadata"]["name"].as_str().unwrap();
        assert!(services.contains(&name), "{name} is not a service");
        let pod = &d["spec"]["template"]["spec"];
        check_pod(name, pod);
        let component = &d["spec"]["selector"]["matchLabels"]["component"];
        // Its own Secret, and the infrastructure it needs: nothing of another service (the
        // console reads the delivery log and the queues, as a sender does).
        let want: std::collections::BTreeSet<String> = if name == "ingest" {
            vec!["leadpipe-ingest".to_owned(), "leadpipe-broker".to_owned()]
        } else {
            vec![
                format!("leadpipe-{name}"),
                "leadpipe-broker".to_owned(),
                "leadpipe-database".to_owned(),
            ]
        }
        .into_iter()
        .collect();
        assert_eq!(secrets_of(pod), want, "{name}: Secrets");
        // A PodDisruptionBudget and a NetworkPolicy select its pods.
        assert!(
            of_kind("PodDisruptionBudget")
                .iter()
                .any(|p| &p["spec"]["selector"]["matchLabels"]["component"] == component),
            "{name}: no PodDisruptionBudget"
        );
        let policy = of_kind("NetworkPolicy")
            .into_iter()
            .find(|p| &p["spec"]["podSelector"]["matchLabels"]["component"] == component)
            .unwrap_or_else(|| panic!("{name}: no NetworkPolicy"));
        let types: Vec<&str> = policy["spec"]["policyTypes"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(
            types.contains(&"Ingress") && types.contains(&"Egress"),
            "{name}"
        );
        // Ingress on one port only: the API for ingest and the console, the metrics for a
        // sender.
        let ports: Vec<i64> = policy["spec"]["ingress"]
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|rule| rule["ports"].as_sequence().cloned().unwrap_or_default())
            .filter_map(|p| p["port"].as_i64())
            .collect();
        let container_port = pod["containers"][0]["ports"][0]["containerPort"]
            .as_i64()
            .unwrap();
        assert_eq!(ports, [container_port], "{name}: ingress ports");
    }
    // The migration Job: the database only, hardened too.
    for job in of_kind("Job") {
        let pod = &job["spec"]["template"]["spec"];
        check_pod("migrate", pod);
        assert_eq!(
            secrets_of(pod),
            ["leadpipe-database".to_owned()].into_iter().collect(),
            "the migration Job's Secrets"
        );
    }
    assert!(
        !docs.iter().any(|(_, d)| serde_yaml::to_string(d)
            .unwrap()
            .contains("leadpipe-secrets")),
        "the shared leadpipe-secrets Secret is gone"
    );
}

#[test]
fn the_kubernetes_console_reaches_every_senders_readyz_by_its_service() {
    let docs = manifests();
    let named = |kind: &str, name: &str| {
        docs.iter()
            .map(|(_, d)| d)
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let console = &named("Deployment", "console")["spec"]["template"]["spec"]["containers"][0];
    let template = console["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "CONSOLE_SENDER_URL")
        .and_then(|e| e["value"].as_str())
        .expect("the console's CONSOLE_SENDER_URL");
    for r in leadpipe_registry::REGISTRY.all() {
        // The URL the console builds for it names a Service on its metrics port...
        let url = template
            .replace("{service}", r.service)
            .replace("{port}", &r.metrics_port.to_string());
        assert_eq!(url, format!("http://{}:{}", r.service, r.metrics_port));
        let service = named("Service", r.service);
        assert_eq!(
            service["spec"]["selector"]["component"], r.service,
            "{}: the Service selects its pods",
            r.service
        );
        assert_eq!(
            service["spec"]["ports"][0]["port"].as_i64(),
            Some(i64::from(r.metrics_port)),
            "{}",
            r.service
        );
        // ... and its NetworkPolicy lets the console in.
        let policy = named("NetworkPolicy", r.service);
        let from_console = policy["spec"]["ingress"]
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|rule| rule["from"].as_sequence().cloned().unwrap_or_default())
            .any(|peer| peer["podSelector"]["matchLabels"]["component"] == "console");
        assert!(from_console, "{}: the console may not read it", r.service);
    }
}

#[test]
fn docker_compose_gives_each_service_only_its_own_secrets() {
    let mut compose: serde_yaml::Value =
        serde_yaml::from_str(&repo_file("docker-compose.yml")).unwrap();
    compose.apply_merge().unwrap();
    let services = compose["services"].as_mapping().unwrap();
    let env_of = |name: &str| -> std::collections::BTreeSet<String> {
        let mut env = services[name]["environment"].clone();
        env.apply_merge().unwrap();
        env.as_mapping()
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let shared: std::collections::BTreeSet<String> = [
        "LEADPIPE_NAMESPACE",
        "LEADPIPE_SOURCES",
        "LEADPIPE_CONFIG",
        "RUST_LOG",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "AMQP_URL",
        "DATABASE_URL",
        "METRICS_ADDR",
        "DRY_RUN",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let ingest = env_of("ingest");
    assert!(
        !ingest.contains("DATABASE_URL"),
        "ingest writes no delivery log"
    );
    let migrate = env_of("migrate");
    assert!(!migrate.contains("AMQP_URL"), "migrate needs no broker");
    let senders: Vec<&str> = leadpipe_registry::REGISTRY
        .all()
        .iter()
        .map(|r| r.service)
        .collect();
    for s in &senders {
        let own: std::collections::BTreeSet<String> =
            env_of(s).difference(&shared).cloned().collect();
        assert!(!own.is_empty(), "{s}: no variables of its own");
        for other in senders.iter().filter(|o| *o != s).chain(&["ingest"]) {
            let theirs = env_of(other);
            let leaked: Vec<&String> = own.intersection(&theirs).collect();
            assert!(leaked.is_empty(), "{other} also gets {s}'s {leaked:?}");
        }
    }
}

#[tokio::test]
async fn no_service_settings_print_a_secret_in_debug() {
    let p = leadpipe_tests::Pipeline::new().await;
    let opts = leadpipe_tests::SenderOptions {
        amqp_url: Some("amqp://leadpipe:hunter2-amqp@127.0.0.1:5672/%2f".into()),
        database_url: Some("postgres://postgres:hunter2-db@127.0.0.1:5432/x".into()),
        ..leadpipe_tests::SenderOptions::default()
    };
    let printed = [
        format!("{:?}", p.meta_settings(&opts)),
        format!("{:?}", p.ga4_settings(&opts)),
        format!("{:?}", p.google_settings(&opts)),
        format!("{:?}", p.crm_settings(&opts)),
    ];
    let secrets = [
        "hunter2-amqp",
        "hunter2-db",
        leadpipe_tests::META_TOKEN,
        leadpipe_tests::GA4_SECRET,
        "client-secret",
        leadpipe_tests::fake_google::REFRESH_TOKEN,
        leadpipe_tests::fake_crm::WEBHOOK_SECRET,
        leadpipe_tests::fake_crm::HUBSPOT_TOKEN,
    ];
    for text in &printed {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
    // Ingest's settings: the broker URL and the sources' secrets.
    let ingest = leadpipe_ingest::Settings {
        destinations: leadpipe_registry::REGISTRY.destinations(),
        addr: "127.0.0.1:0".parse().unwrap(),
        amqp: leadpipe_config::AmqpSettings {
            url: "amqp://leadpipe:hunter2-amqp@127.0.0.1:5672/%2f".into(),
            namespace: "x".into(),
            quorum_group_size: 1,
        },
        sources: vec![leadpipe_config::sources::Source {
            id: "site-widget".into(),
            secret: secrecy::SecretString::from("hunter2-source"),
            default_region: None,
            rate_limit_per_second: 10,
            webhook: None,
        }],
        custom_events: Default::default(),
        max_body_bytes: 1024,
        confirm_timeout: std::time::Duration::from_secs(1),
        publish_channels: 1,
        body_timeout: std::time::Duration::from_secs(1),
        max_in_flight: 1,
    };
    let text = format!("{ingest:?}");
    assert!(
        !text.contains("hunter2-amqp") && !text.contains("hunter2-source"),
        "{text}"
    );
    p.cleanup().await;
}
