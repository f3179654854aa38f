//! What the benchmarks share: the broker's own ceiling (a bare confirmed publisher),
//! percentiles, and the memory of a process.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};

use leadpipe_bus::Names;

/// The broker's ceiling: confirmed, mandatory, persistent publishes of `body` to `names`'
/// events exchange (routing key `lead.bench`, so it fans out as a lead does), `in_flight`
/// outstanding at a time, for `run`; messages per second after `warmup`.
pub async fn bare_publisher(
    names: &Names,
    body: &[u8],
    in_flight: usize,
    run: Duration,
    warmup: Duration,
) -> f64 {
    let conn = leadpipe_bus::connect(&crate::amqp_url(), "bench-bare")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let exchange = names.events_exchange();
    let sent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..in_flight {
        let (channel, exchange, body, sent) = (
            channel.clone(),
            exchange.clone(),
            body.to_vec(),
            sent.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0usize;
            while started.elapsed() < run {
                let confirm = channel
                    .basic_publish(
                        exchange.as_str().into(),
                        "lead.bench".into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &body,
                        BasicProperties::default()
                            .with_delivery_mode(2)
                            .with_content_type("application/json".into())
                            .with_message_id(format!("bare-{w}-{i}").into()),
                    )
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                assert!(confirm.is_ack());
                if started.elapsed() > warmup {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let _ = conn.close(200, "done".into()).await;
    sent.load(Ordering::Relaxed) as f64 / (run - warmup).as_secs_f64()
}

/// The `p` quantile (0..=1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A `/proc/<pid>/status` field in MiB (`VmRSS` now, `VmHWM` the peak); NaN when gone.
pub fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// The path of a release binary; panics with how to build it otherwise.
pub fn release_bin(name: &str) -> std::path::PathBuf {
    let path = crate::bin_path(name);
    assert!(
        path.to_string_lossy().contains("/release/"),
        "run the benchmark with `make bench` (release build)"
    );
    path
}

/// CPU seconds (user + system) a process has used so far; 0 when gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the stat line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Pids of processes whose command name is `comm` (e.g. `beam.smp`, `postgres`).
pub fn pids_named(comm: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}
