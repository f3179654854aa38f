//! `leadpipe`: the operator CLI (SPEC §6).
//!
//! # Layout
//! - `migrate`: applies the database migrations (creating the database if needed) and
//!   makes the enabled destinations' delivery-log partitions.
//! - `maintain`: one round of delivery-log partition maintenance (made ahead, dropped past
//!   the retention), as the senders run it on a timer.
//! - `topology apply|delete|definitions`: declares, removes or exports the namespace's
//!   exchanges, queues and bindings.
//! - `send`: signs and posts a JSONL file of events to ingest, with progress.
//! - `dlq stats|list|replay`: inspects and replays dead-letter queues.
//! - `trace`: every destination's delivery of one event.

#![forbid(unsafe_code)]

mod console;
mod dlq;
mod maintain;
mod send;
mod trace;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use leadpipe_bus::Names;
use leadpipe_bus::topology;
use leadpipe_config::{AmqpSettings, DatabaseSettings};
use leadpipe_registry::REGISTRY;

#[derive(Parser)]
#[command(name = "leadpipe", version, about = "Operate a leadpipe installation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the database migrations to DATABASE_URL (creates the database if missing).
    Migrate,
    /// Make the delivery log's time partitions ahead and drop those past each destination's
    /// retention (the senders do it on a timer), then say what each destination's log holds.
    Maintain(maintain::MaintainArgs),
    /// Manage the RabbitMQ topology of LEADPIPE_NAMESPACE on AMQP_URL.
    Topology {
        #[command(subcommand)]
        action: TopologyAction,
    },
    /// Sign and post every line of a JSONL file to ingest.
    Send(send::SendArgs),
    /// Inspect and replay dead-letter queues.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// The enabled destinations (LEADPIPE_DESTINATIONS), one per line: name, service, metrics
    /// port, and the variables missing to send for real (`-` when none).
    Destinations,
    /// Serve the operator console on CONSOLE_ADDR (127.0.0.1:8090): the overview, find an
    /// event, dead letters and their replay. Needs CONSOLE_TOKEN unless bound to loopback.
    Console,
    /// Show every destination's delivery of one event (or of every event of a lead or order).
    #[command(group(clap::ArgGroup::new("lookup").required(true).args(["event_id", "lead_id", "order_id"])))]
    Trace {
        /// The event_id ingest returned.
        event_id: Option<String>,
        /// Every event of this lead (the client's lead_id), newest first.
        #[arg(long)]
        lead_id: Option<String>,
        /// Every event of this order (the client's order_id), newest first.
        #[arg(long)]
        order_id: Option<String>,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// Messages per destination and error code.
    Stats,
    /// The messages of one destination's DLQ: ids and error headers, never bodies.
    List {
        /// A registered destination (`leadpipe destinations` lists them).
        destination: String,
        /// Most messages to print.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Move messages back to the work queue (attempts reset, same event_id).
    Replay {
        /// A registered destination (`leadpipe destinations` lists them).
        destination: String,
        /// Only messages with this x-leadpipe-error-code.
        #[arg(long)]
        error_code: Option<String>,
        /// At most this many messages.
        #[arg(long)]
        limit: Option<usize>,
        /// Only messages dead-lettered since then: an RFC 3339 time or an age (90m, 6h, 2d).
        #[arg(long)]
        since: Option<String>,
        /// Show what would move, move nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum TopologyAction {
    /// Declare every exchange, queue and binding (idempotent).
    Apply,
    /// Print the topology as RabbitMQ definitions JSON (for `import_definitions`).
    Definitions,
    /// Delete every queue and exchange of the namespace, messages included.
    Delete {
        /// Required: this drops every message in the namespace's queues.
        #[arg(long)]
        yes: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    leadpipe_telemetry::init("leadpipe", "warn", leadpipe_telemetry::LogFormat::Pretty);
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("leadpipe: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Migrate => {
            let db = DatabaseSettings::from_env();
            let pool = leadpipe_db::connect(&db.url, 2).await?;
            leadpipe_db::migrate(&pool).await?;
            println!(
                "database migrated ({} migrations)",
                leadpipe_db::MIGRATOR.iter().count()
            );
            for r in leadpipe_registry::enabled()? {
                println!("{}", maintain::round(&pool, r).await?);
            }
        }
        Command::Topology { action } => {
            let amqp = AmqpSettings::from_env()?;
            let names = Names::new(amqp.namespace.clone());
            if let TopologyAction::Definitions = action {
                let plan = topology::plan(&names, &leadpipe_registry::enabled_topology()?);
                println!(
                    "{}",
                    serde_json::to_string_pretty(&topology::definitions(&plan))?
                );
                return Ok(ExitCode::SUCCESS);
            }
            let conn = leadpipe_bus::connect(&amqp.url, "leadpipe-cli").await?;
            let channel = conn.create_channel().await?;
            match action {
                TopologyAction::Apply => {
                    let settings = leadpipe_registry::enabled_topology()?;
                    topology::declare(&conn, &names, &settings)
                        .await
                        .context("declaring the topology")?;
                    println!(
                        "topology of namespace {:?} declared for {} (LEADPIPE_DESTINATIONS):",
                        names.namespace(),
                        settings
                            .destinations
                            .iter()
                            .map(|d| d.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    for q in names.all_queues(&settings.destinations) {
                        println!("  queue {q}");
                    }
                }
                TopologyAction::Delete { yes } => {
                    anyhow::ensure!(
                        yes,
                        "this deletes every queue of namespace {:?} and the messages in them; pass --yes",
                        names.namespace()
                    );
                    // Every registered destination's queues, enabled or not.
                    topology::delete(&channel, &names, &REGISTRY.destinations()).await?;
                    println!("topology of namespace {:?} deleted", names.namespace());
                }
                TopologyAction::Definitions => {}
            }
            let _ = conn.close(200, "done".into()).await;
        }
        Command::Destinations => {
            for r in leadpipe_registry::enabled()? {
                let missing = (r.missing_credentials)();
                println!(
                    "{} {} {} {}",
                    r.name(),
                    r.service,
                    r.metrics_port,
                    if missing.is_empty() {
                        "-".to_owned()
                    } else {
                        missing.join(",")
                    }
                );
            }
        }
        Command::Send(args) => return send::run(args).await,
        Command::Maintain(args) => return maintain::run(args).await,
        Command::Trace {
            event_id,
            lead_id,
            order_id,
        } => {
            let lookup = match (event_id, lead_id, order_id) {
                (Some(id), _, _) => trace::Lookup::EventId(id),
                (_, Some(id), _) => trace::Lookup::LeadId(id),
                (_, _, Some(id)) => trace::Lookup::OrderId(id),
                (None, None, None) => unreachable!("clap requires one of them"),
            };
            return trace::run(&lookup).await;
        }
        Command::Console => return console::run().await,
        Command::Dlq { action } => {
            return match action {
                DlqAction::Stats => dlq::stats().await,
                DlqAction::List { destination, limit } => {
                    dlq::list(dlq::destination(&destination)?, limit).await
                }
                DlqAction::Replay {
                    destination,
                    error_code,
                    limit,
                    since,
                    dry_run,
                } => {
                    let filter = dlq::ReplayFilter {
                        error_code: error_code.as_deref(),
                        since: since.as_deref().map(dlq::since).transpose()?,
                        limit,
                    };
                    dlq::replay(dlq::destination(&destination)?, filter, dry_run).await
                }
            };
        }
    }
    Ok(ExitCode::SUCCESS)
}
