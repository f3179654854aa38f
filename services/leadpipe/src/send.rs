//! `leadpipe send <file.jsonl> --source <id>`: signs each line and posts it to ingest, with
//! progress on stderr and a summary by status; the load generator for benchmarks.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use secrecy::ExposeSecret;

use leadpipe_config::env;
use leadpipe_config::sources::{self, DEFAULT_SOURCES_PATH};

/// Arguments of `send`.
#[derive(clap::Args)]
pub(crate) struct SendArgs {
    /// A file with one canonical event (JSON object) per line, or one JSON document.
    file: PathBuf,
    /// The source id to sign as; its secret comes from the variable the sources file names.
    #[arg(long)]
    source: String,
    /// Ingest's base URL [default: from INGEST_ADDR, the address ingest listens on, else
    /// http://127.0.0.1:8080].
    #[arg(long, env = "INGEST_URL")]
    url: Option<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Send each line this many times (load generation).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Set each event's `occurred_at` to now (a sample file stays inside the destinations'
    /// age windows; the derived event_id changes with it).
    #[arg(long)]
    now: bool,
    /// Post to the source's native webhook (`/v1/sources/<source>/webhook`): the file holds
    /// the platform's own payloads, mapped by the source's field map.
    #[arg(long)]
    webhook: bool,
}

/// Where ingest listens, as a URL to post to: `INGEST_ADDR` with an unspecified host
/// (`0.0.0.0`, `[::]`) read as this machine, else the SPEC default port on this machine.
pub(crate) fn default_ingest_url(ingest_addr: Option<&str>) -> String {
    match ingest_addr.map(str::trim).filter(|a| !a.is_empty()) {
        Some(addr) => {
            let addr = addr
                .replacen("0.0.0.0:", "127.0.0.1:", 1)
                .replacen("[::]:", "[::1]:", 1);
            format!("http://{addr}")
        }
        None => "http://127.0.0.1:8080".to_owned(),
    }
}

pub(crate) async fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    let base_url = args
        .url
        .clone()
        .unwrap_or_else(|| default_ingest_url(std::env::var("INGEST_ADDR").ok().as_deref()));
    let sources_path = env::string_or("LEADPIPE_SOURCES", DEFAULT_SOURCES_PATH);
    let sources = sources::load(sources_path.as_ref(), |n| std::env::var(n).ok())?;
    let source = sources
        .into_iter()
        .find(|s| s.id == args.source)
        .with_context(|| format!("--source {:?} is not in {sources_path}", args.source))?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    if args.now && args.webhook {
        anyhow::bail!(
            "--now rewrites the canonical occurred_at; a native payload keeps its own timestamp (drop --now or --webhook)"
        );
    }
    // One (pretty-printed) JSON document, or JSON lines.
    let mut lines: Vec<(usize, String)> = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(doc @ serde_json::Value::Object(_)) => vec![(1, doc.to_string())],
        _ => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (i + 1, l.to_owned()))
            .collect(),
    };
    for (n, line) in &mut lines {
        let mut value = serde_json::from_str::<serde_json::Value>(line)
            .with_context(|| format!("{} line {n} is not JSON", args.file.display()))?;
        if args.now
            && let Some(obj) = value.as_object_mut()
        {
            obj.insert("occurred_at".into(), chrono::Utc::now().to_rfc3339().into());
            *line = value.to_string();
        }
    }
    let total = (lines.len() * args.repeat) as u64;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let endpoint = if args.webhook {
        format!(
            "{}/v1/sources/{}/webhook",
            base_url.trim_end_matches('/'),
            source.id
        )
    } else {
        format!("{}/v1/events", base_url.trim_end_matches('/'))
    };
    let done = Arc::new(AtomicU64::new(0));
    let posted = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let d = done.load(Ordering::Relaxed);
                let rate = d as f64 / started.elapsed().as_secs_f64().max(0.001);
                eprint!("\r  {d}/{total} tried ({rate:.0}/s)   ");
            }
        })
    };
    let secret = source.secret.expose_secret().as_bytes().to_vec();
    let jobs = (0..args.repeat).flat_map(|_| lines.iter());
    let failures: Vec<String> = futures::stream::iter(jobs)
        .map(|(n, line)| {
            let (client, endpoint, secret, source_id) = (&client, &endpoint, &secret, &source.id);
            let (done, posted, accepted) = (done.clone(), posted.clone(), accepted.clone());
            async move {
                let ts = chrono::Utc::now().timestamp();
                let sig = leadpipe_ingest::auth::sign(secret, ts, line.as_bytes());
                let result = client
                    .post(endpoint)
                    .header("content-type", "application/json")
                    .header("x-leadpipe-source", source_id)
                    .header("x-leadpipe-timestamp", ts.to_string())
                    .header("x-leadpipe-signature", sig)
                    .body(line.clone())
                    .send()
                    .await;
                done.fetch_add(1, Ordering::Relaxed);
                if result.is_ok() {
                    posted.fetch_add(1, Ordering::Relaxed);
                }
                match result {
                    Ok(r) if r.status().as_u16() == 202 => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                    Ok(r) => {
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        Some(format!("line {n}: {status} {body}"))
                    }
                    Err(e) => Some(format!(
                        "line {n}: not posted: {} {endpoint}",
                        if e.is_connect() {
                            "could not connect to"
                        } else if e.is_timeout() {
                            "timed out waiting for"
                        } else {
                            "request failed to"
                        }
                    )),
                }
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .filter_map(|r| async move { r })
        .collect()
        .await;
    progress.abort();
    let elapsed = started.elapsed().as_secs_f64();
    let ok = accepted.load(Ordering::Relaxed);
    let answered = posted.load(Ordering::Relaxed);
    eprintln!(
        "\r  {answered}/{total} posted in {elapsed:.1}s ({:.0}/s): {ok} accepted, {} failed",
        answered as f64 / elapsed.max(0.001),
        failures.len()
    );
    for f in failures.iter().take(10) {
        eprintln!("  {f}");
    }
    if failures.len() > 10 {
        eprintln!("  … and {} more", failures.len() - 10);
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_url_follows_the_address_ingest_listens_on() {
        assert_eq!(default_ingest_url(None), "http://127.0.0.1:8080");
        assert_eq!(
            default_ingest_url(Some("0.0.0.0:9090")),
            "http://127.0.0.1:9090"
        );
        assert_eq!(
            default_ingest_url(Some("127.0.0.1:8181")),
            "http://127.0.0.1:8181"
        );
        assert_eq!(default_ingest_url(Some("[::]:8080")), "http://[::1]:8080");
    }
}
