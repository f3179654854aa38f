//! Field-level validation errors: what a client gets back, all at once, in a `422`.

use serde::Serialize;

/// One problem with one field of a posted event. Messages never echo the field's value, so an
/// error can be logged or stored without carrying personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Dotted path of the field (`contact.email`, `external_ids[2]`); empty for the whole body.
    pub field: String,
    /// Machine-readable code (`invalid_email`, `unknown_field`, `required`, …).
    pub code: &'static str,
    /// What is wrong, for a person.
    pub message: String,
}

impl FieldError {
    /// Builds an error for `field` with `code` and `message`.
    pub fn new(field: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            code,
            message: message.into(),
        }
    }
}

/// The error codes a client can receive, so tests and docs name them from one place.
pub mod codes {
    /// A field the schema does not know.
    pub const UNKNOWN_FIELD: &str = "unknown_field";
    /// A value of the wrong JSON type or an unknown enum value.
    pub const INVALID_TYPE: &str = "invalid_type";
    /// A required field is missing or empty.
    pub const REQUIRED: &str = "required";
    /// A string longer than its bound.
    pub const TOO_LONG: &str = "too_long";
    /// An array with more entries than allowed.
    pub const TOO_MANY: &str = "too_many";
    /// `source` differs from the authenticated source.
    pub const SOURCE_MISMATCH: &str = "source_mismatch";
    /// An event name that is neither built in nor declared.
    pub const UNKNOWN_EVENT_NAME: &str = "unknown_event_name";
    /// An `event_id` that is not 1–128 printable ASCII characters.
    pub const INVALID_EVENT_ID: &str = "invalid_event_id";
    /// A timestamp that is not RFC 3339 with an offset.
    pub const INVALID_TIMESTAMP: &str = "invalid_timestamp";
    /// `occurred_at` more than 5 minutes in the future.
    pub const IN_FUTURE: &str = "in_future";
    /// A negative or non-finite amount.
    pub const INVALID_VALUE: &str = "invalid_value";
    /// A currency that is not an ISO 4217 code.
    pub const INVALID_CURRENCY: &str = "invalid_currency";
    /// An email address that cannot be delivered to.
    pub const INVALID_EMAIL: &str = "invalid_email";
    /// A phone number that cannot be parsed to a valid E.164 number.
    pub const INVALID_PHONE: &str = "invalid_phone";
    /// A country that is neither an ISO 3166-1 code nor a known English name.
    pub const INVALID_COUNTRY: &str = "invalid_country";
    /// A date that is not `YYYY-MM-DD` or not plausible.
    pub const INVALID_DATE: &str = "invalid_date";
    /// A URL that is not `http` or `https`.
    pub const INVALID_URL: &str = "invalid_url";
    /// An IP address that is neither IPv4 nor IPv6.
    pub const INVALID_IP_ADDRESS: &str = "invalid_ip_address";
    /// A `lead` with neither email nor phone.
    pub const MISSING_IDENTIFIER: &str = "missing_identifier";
    /// A field that does not apply to this event name.
    pub const NOT_ALLOWED: &str = "not_allowed";
}
