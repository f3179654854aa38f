//! End-to-end tests against the real RabbitMQ and PostgreSQL. One module per area; each test
//! uses its own namespace and database, so they run in parallel.

mod cli;
mod console;
mod console_browser;
mod crm_writer;
mod crm_writer_binary;
mod database;
mod delivery_log;
mod deploy;
mod docs;
mod dry_run_binary;
mod faults;
mod ga4_sender;
mod ga4_sender_binary;
mod google_ads_sender;
mod google_ads_sender_binary;
mod hostile_clients;
mod ingest;
mod ingest_binary;
mod meta_sender;
mod meta_sender_binary;
mod native_webhooks;
mod never_double;
mod otlp_export;
mod pipeline;
mod replicas_binary;
mod runtime;
mod tiktok_sender;
mod topology;
