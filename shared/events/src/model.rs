//! The canonical lead event, schema version 1 (SPEC §2), and the envelope it travels in.
//!
//! These types are the single description of the event: ingest deserializes into them, the
//! senders read them from the bus, and `GET /v1/schema` is generated from them. Every struct
//! denies unknown fields so a typo is rejected instead of silently dropped.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Version of the canonical event carried in every envelope.
pub const SCHEMA_VERSION: u32 = 1;

/// Longest accepted value of an ordinary string field, in characters.
pub const MAX_FIELD_CHARS: usize = 512;
/// Longest accepted URL, in characters.
pub const MAX_URL_CHARS: usize = 2048;
/// Longest accepted user agent, in characters.
pub const MAX_USER_AGENT_CHARS: usize = 1024;
/// Longest accepted transcript, in bytes (64 KiB).
pub const MAX_TRANSCRIPT_BYTES: usize = 64 * 1024;
/// Longest `contact.phone` accepted, in characters: room for a `tel:` URI with parameters or
/// an extension around the number.
pub const MAX_PHONE_INPUT_CHARS: usize = 128;
/// Longest phone text handed to the phone parser once the `tel:` wrapping, URI parameters and
/// extension are removed, in characters; bounded before parsing.
pub const MAX_PHONE_CHARS: usize = 40;
/// Most entries accepted in `external_ids`.
pub const MAX_EXTERNAL_IDS: usize = 20;
/// Most keys accepted in `custom` and in `context.qualification`.
pub const MAX_MAP_KEYS: usize = 100;

/// The canonical event names every installation understands (SPEC §2).
pub const BUILTIN_EVENT_NAMES: [&str; 9] = [
    "lead",
    "contact",
    "schedule",
    "sign_up",
    "start_trial",
    "mql",
    "sql",
    "won",
    "refund",
];

/// A lead or lifecycle event as posted by a chatbot or CRM, and, once normalized, as carried on
/// the bus. Optional string fields that are empty after trimming are dropped by normalization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "leadpipe canonical event v1")]
pub struct LeadEvent {
    /// Id of the posting source; must equal the authenticated `X-Leadpipe-Source`.
    #[schemars(required, length(min = 1, max = 128))]
    pub source: Option<String>,
    /// A built-in event name or a custom name declared in the mapping config.
    #[schemars(required, length(min = 1, max = 40))]
    pub event_name: Option<String>,
    /// Optional client-chosen id (1–128 printable ASCII), e.g. the pixel's `eventID`. Derived
    /// from the event's identity when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub event_id: Option<String>,
    /// When the event happened: RFC 3339 with an offset, at most 5 minutes in the future.
    /// Normalized to UTC (`…Z`).
    #[schemars(required)]
    pub occurred_at: Option<String>,
    /// The chatbot's or CRM's stable id of the lead.
    #[schemars(required, length(min = 1, max = 512))]
    pub lead_id: Option<String>,
    /// The account id, once the lead has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Order or deal id; required for `won` and `refund`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// Monetary value (≥ 0); required for `won` and `refund`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub value: Option<f64>,
    /// ISO 4217 currency code; required for `won` and `refund`; upper-cased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Refund details, for `refund`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund: Option<Refund>,
    /// Personal data of the lead. Never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<Contact>,
    /// Click ids, analytics ids and UTM parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<Attribution>,
    /// The end user's client, as seen by the chatbot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Client>,
    /// Consent signals; a missing signal is `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<Consent>,
    /// Stable ids (visitor id, account id); hashed before they leave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ids: Option<Vec<String>>,
    /// Conversation context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Context>,
    /// Scalars passed to the CRM field map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<BTreeMap<String, Scalar>>,
}

/// Refund details (SPEC §2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Refund {
    /// `full` or `partial`.
    #[schemars(required)]
    pub kind: Option<RefundKind>,
    /// Value left after a partial refund; required for `partial`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub remaining_value: Option<f64>,
}

/// Whether a refund returns the whole order value or a part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RefundKind {
    /// The whole order is refunded (a retraction downstream).
    Full,
    /// Part of the order is refunded (a restatement with `remaining_value`).
    Partial,
}

/// Contact details. Normalized at ingest (email lower-cased, phone E.164, country alpha-2,
/// gender `f`/`m`); hashed by each sender for its own destination.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    /// Email address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Phone number, any common notation; normalized to E.164.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Given name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// Family name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    /// City.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// State or region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Postal code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    /// Country: ISO 3166-1 alpha-2 or alpha-3 code, or a common English name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// Date of birth, `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_of_birth: Option<String>,
    /// Gender; `female`/`f` and `male`/`m` are kept (as `f`/`m`), anything else is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    /// Company name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
    /// Job title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_title: Option<String>,
}

/// Attribution identifiers (SPEC §2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Attribution {
    /// Meta browser id (`_fbp` cookie).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fbp: Option<String>,
    /// Meta click id cookie (`_fbc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fbc: Option<String>,
    /// Meta click id from the landing URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fbclid: Option<String>,
    /// Google click id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gclid: Option<String>,
    /// Google app-to-web click id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gbraid: Option<String>,
    /// Google web-to-app click id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wbraid: Option<String>,
    /// TikTok click id from the landing URL (`ttclid`, byte-exact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttclid: Option<String>,
    /// TikTok Pixel's first-party cookie (`_ttp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttp: Option<String>,
    /// GA4 client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ga_client_id: Option<String>,
    /// GA4 session id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ga_session_id: Option<String>,
    /// UTM source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_source: Option<String>,
    /// UTM medium.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_medium: Option<String>,
    /// UTM campaign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_campaign: Option<String>,
    /// UTM content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_content: Option<String>,
    /// UTM term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_term: Option<String>,
    /// Ad id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_id: Option<String>,
    /// Ad set id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adset_id: Option<String>,
    /// Campaign id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    /// Landing page URL (`http`/`https`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landing_page_url: Option<String>,
    /// Referrer URL (`http`/`https`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrer_url: Option<String>,
}

/// The end user's client.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Client {
    /// IPv4 or IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// Browser user agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// One consent signal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConsentState {
    /// The user agreed.
    Granted,
    /// The user refused.
    Denied,
    /// Not asked or not known; the default.
    #[default]
    Unknown,
}

/// Consent signals (SPEC §2); a missing signal is `unknown`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    /// Consent to send user data to ad platforms.
    #[serde(default)]
    pub ad_user_data: ConsentState,
    /// Consent to ad personalization.
    #[serde(default)]
    pub ad_personalization: ConsentState,
    /// Consent to analytics.
    #[serde(default)]
    pub analytics: ConsentState,
    /// Legal basis, free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis: Option<String>,
    /// When consent was captured, RFC 3339; normalized to UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured_at: Option<String>,
}

/// Conversation context.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// The conversation transcript, at most 64 KiB. Never logged, never sent to ad platforms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript: Option<String>,
    /// The page the chat started on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_page_url: Option<String>,
    /// Which chatbot handled the conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chatbot: Option<String>,
    /// CRM lifecycle stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_stage: Option<String>,
    /// Qualification answers, as scalars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qualification: Option<BTreeMap<String, Scalar>>,
}

/// A JSON scalar: string, number, boolean or null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Scalar {
    /// A boolean.
    Bool(bool),
    /// A number.
    Number(f64),
    /// A string.
    String(String),
    /// Null.
    Null,
}

/// What travels on the bus (SPEC §4): the normalized event with its id and ingest time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The event's id: the client's, or derived (SPEC §2).
    pub event_id: String,
    /// When ingest accepted the event, RFC 3339 UTC.
    pub ingested_at: String,
    /// The normalized event.
    pub event: LeadEvent,
}

impl LeadEvent {
    /// The event name, or `""` before validation.
    pub fn name(&self) -> &str {
        self.event_name.as_deref().unwrap_or_default()
    }

    /// The source id, or `""` before validation.
    pub fn source_id(&self) -> &str {
        self.source.as_deref().unwrap_or_default()
    }

    /// `occurred_at` as a UTC time (`None` before validation or when unparseable).
    pub fn occurred_at_utc(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.occurred_at
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    }

    /// The consent signal for sending user data to ad platforms (`unknown` when absent).
    pub fn ad_user_data_consent(&self) -> ConsentState {
        self.consent
            .as_ref()
            .map(|c| c.ad_user_data)
            .unwrap_or_default()
    }
}

/// The JSON Schema of [`LeadEvent`], generated from the types above.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(LeadEvent);
    serde_json::to_value(schema).expect("a generated schema is valid JSON")
}
