//! The canonical lead event (schema v1): types, validation, normalization and the derived
//! `event_id`. Ingest validates and normalizes once; every sender reads the normalized event.
//!
//! # Layout
//! - [`model`]: the event, its parts and the bus envelope; the JSON Schema is generated here.
//! - [`validate`]: one pass that collects every field error and normalizes the event.
//! - [`identifiers`]: email, phone (E.164 via libphonenumber), country, gender, date, currency.
//! - [`event_id`]: the derived id and the SHA-256 helper.
//! - [`hashing`]: each destination's normalization and hashing of identifiers.
//! - [`error`]: the field error type and its codes.

#![forbid(unsafe_code)]

pub mod error;
pub mod event_id;
pub mod hashing;
pub mod identifiers;
pub mod model;
pub mod validate;

pub use error::{FieldError, codes};
pub use event_id::{derive_event_id, sha256_hex};
pub use model::{Envelope, LeadEvent, SCHEMA_VERSION, json_schema};
pub use validate::{BodyError, ValidatedEvent, ValidationContext, validate_body, validate_event};

#[cfg(test)]
mod tests;
