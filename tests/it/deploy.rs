//! `deploy/` stays true to the code: every metric the dashboard and alert rules use exists.

use std::collections::HashSet;

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
