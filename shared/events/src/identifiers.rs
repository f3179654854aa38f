//! Normalizers for the identifiers ingest accepts (SPEC §2, `contracts/normalization.md`).
//!
//! Each one takes a trimmed, non-empty value and returns the canonical form carried on the bus,
//! or `None` when the value is not valid. They are idempotent: feeding a canonical form back in
//! returns it unchanged (checked by property tests below).

use std::str::FromStr;

use chrono::NaiveDate;
use unicode_normalization::UnicodeNormalization;

use crate::model::MAX_PHONE_CHARS;

/// Longest email address accepted (RFC 5321 path limit), in characters.
pub const MAX_EMAIL_CHARS: usize = 254;

/// Trims leading and trailing Unicode whitespace (NBSP included) and applies NFC.
pub fn clean(raw: &str) -> String {
    let trimmed = raw.trim();
    // ASCII is always in NFC; skip the normalizer for the common case.
    if trimmed.is_ascii() {
        trimmed.to_owned()
    } else {
        trimmed.nfc().collect()
    }
}

/// Lower-cases and checks an email address: one `@`, a plausible local part and a domain of at
/// least two labels. Dots and `+tags` are kept (destination rules apply later).
pub fn normalize_email(raw: &str) -> Option<String> {
    let email = clean(raw).to_lowercase();
    if email.chars().count() > MAX_EMAIL_CHARS {
        return None;
    }
    let (local, domain) = email.split_once('@')?;
    if local.is_empty() || local.chars().count() > 64 || domain.contains('@') {
        return None;
    }
    let local_ok = !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.chars().count() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
        && labels.last().is_some_and(|tld| tld.chars().count() >= 2);
    (local_ok && domain_ok).then_some(email)
}

/// Parses a phone number with libphonenumber and formats it as E.164 (`+16505551234`).
///
/// `region` (ISO alpha-2) completes national numbers; without it only numbers written with an
/// international prefix parse. Extensions are dropped. The input is bounded to
/// [`MAX_PHONE_CHARS`] before it reaches the parser.
pub fn normalize_phone(raw: &str, region: Option<&str>) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() || raw.chars().count() > MAX_PHONE_CHARS {
        return None;
    }
    let region = region.and_then(|r| phonenumber::country::Id::from_str(r).ok());
    let number = phonenumber::parse(region, raw).ok()?;
    if !phonenumber::is_valid(&number) {
        return None;
    }
    Some(number.format().mode(phonenumber::Mode::E164).to_string())
}

/// Maps an ISO 3166-1 alpha-2 or alpha-3 code, or a common English country name, to the
/// upper-case alpha-2 code (`United States` → `US`).
pub fn normalize_country(raw: &str) -> Option<String> {
    // Decompose and keep ASCII letters/digits only, so `Côte d'Ivoire` matches `cotedivoire`.
    let compact: String = clean(raw)
        .to_lowercase()
        .nfd()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    if compact.is_empty() || compact.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    // Common spellings the ISO tables do not list.
    let compact = match compact.as_str() {
        "uk" => "gb",
        "theuk" => "gb",
        "america" => "us",
        other => other,
    };
    let country = if compact.len() == 2 {
        celes::Country::from_alpha2(compact).ok()?
    } else {
        celes::Country::from_str(compact).ok()?
    };
    Some(country.alpha2.to_ascii_uppercase())
}

/// Maps common spellings of gender to `f` or `m`; anything else is not a value the ad
/// destinations accept and is dropped (`None`) rather than rejected.
pub fn normalize_gender(raw: &str) -> Option<String> {
    match clean(raw).to_lowercase().as_str() {
        "f" | "female" | "w" | "woman" => Some("f".to_owned()),
        "m" | "male" | "man" => Some("m".to_owned()),
        _ => None,
    }
}

/// Checks a `YYYY-MM-DD` date of birth between 1900-01-01 and `today`.
pub fn normalize_date_of_birth(raw: &str, today: NaiveDate) -> Option<String> {
    let s = clean(raw);
    if s.len() != 10 {
        return None;
    }
    let date = NaiveDate::parse_from_str(&s, "%Y-%m-%d").ok()?;
    let earliest = NaiveDate::from_ymd_opt(1900, 1, 1)?;
    (date >= earliest && date <= today).then(|| date.format("%Y-%m-%d").to_string())
}

/// Upper-cases and checks an ISO 4217 currency code.
pub fn normalize_currency(raw: &str) -> Option<String> {
    let code = clean(raw).to_ascii_uppercase();
    ISO_4217.contains(&code.as_str()).then_some(code)
}

/// Active ISO 4217 alphabetic codes (including fund codes).
const ISO_4217: [&str; 171] = [
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR",
    "SDG", "SEK", "SGD", "SHP", "SLE", "SLL", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL",
    "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU",
    "UZS", "VED", "VES", "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XDR", "XOF", "XPF", "YER",
    "ZAR", "ZMW", "ZWG", "ZWL", "BOV", "CLF", "COU", "MXV", "USN", "UYI", "UYW", "CHE", "CHW",
    "XSU", "XUA",
];

/// Whether `s` is an absolute `http` or `https` URL with a host.
pub fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| {
        let host = r.split(['/', '?', '#']).next().unwrap_or_default();
        !host.is_empty() && !r.chars().any(char::is_whitespace)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn currency_table_has_no_duplicates() {
        let mut sorted = ISO_4217;
        sorted.sort_unstable();
        assert!(sorted.windows(2).all(|w| w[0] < w[1]), "duplicate code");
    }

    #[test]
    fn emails_are_trimmed_and_lowercased_with_dots_and_tags_kept() {
        // Vectors E1–E4 (ingest keeps the address as typed, lower-cased).
        assert_eq!(
            normalize_email("  John.Doe@Example.COM  ").as_deref(),
            Some("john.doe@example.com")
        );
        assert_eq!(
            normalize_email("Jane.Doe+promo@gmail.com").as_deref(),
            Some("jane.doe+promo@gmail.com")
        );
        assert_eq!(
            normalize_email("J.A.N.E@GoogleMail.com").as_deref(),
            Some("j.a.n.e@googlemail.com")
        );
        assert_eq!(
            normalize_email("jane.doe+promo@example.com").as_deref(),
            Some("jane.doe+promo@example.com")
        );
        assert_eq!(
            normalize_email("John_Smith@gmail.com").as_deref(),
            Some("john_smith@gmail.com")
        );
    }

    #[test]
    fn invalid_emails_are_refused() {
        for bad in [
            "",
            "plainaddress",
            "@example.com",
            "jane@",
            "jane@example",
            "jane@@example.com",
            "ja ne@example.com",
            ".jane@example.com",
            "jane.@example.com",
            "ja..ne@example.com",
            "jane@-example.com",
            "jane@example.c",
            "jane@exa mple.com",
        ] {
            assert_eq!(normalize_email(bad), None, "{bad:?} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(normalize_email(&long), None);
    }

    #[test]
    fn phones_are_e164_per_region_vectors_p1_to_p8() {
        let cases = [
            ("(650) 555-1234", "US", "+16505551234"),
            ("+44 20 7946 0958", "GB", "+442079460958"),
            ("0044 20 7946 0958", "GB", "+442079460958"),
            ("+1-650-555-1234 ext. 7", "US", "+16505551234"),
            ("020 7946 0958", "GB", "+442079460958"),
            ("011 44 20 7946 0958", "US", "+442079460958"),
            ("+39 06 1234 5678", "IT", "+390612345678"),
            ("+49 (0)30 123456", "DE", "+4930123456"),
            ("(650)555-1212", "US", "+16505551212"),
        ];
        for (raw, region, want) in cases {
            assert_eq!(
                normalize_phone(raw, Some(region)).as_deref(),
                Some(want),
                "{raw} [{region}]"
            );
        }
    }

    #[test]
    fn phones_never_match_the_naive_wrong_vectors_px1_to_px6() {
        let wrong = [
            "+165055512347",
            "+2079460958",
            "+00442079460958",
            "+6505551234",
            "+39612345678",
            "+49030123456",
        ];
        for (raw, region) in [
            ("+1-650-555-1234 ext. 7", "US"),
            ("020 7946 0958", "GB"),
            ("0044 20 7946 0958", "GB"),
            ("(650) 555-1234", "US"),
            ("+39 06 1234 5678", "IT"),
            ("+49 (0)30 123456", "DE"),
        ] {
            let got = normalize_phone(raw, Some(region)).unwrap();
            assert!(!wrong.contains(&got.as_str()), "{raw} gave {got}");
        }
    }

    #[test]
    fn national_numbers_without_a_region_and_garbage_are_refused() {
        assert_eq!(normalize_phone("(650) 555-1234", None), None);
        assert_eq!(normalize_phone("020 7946 0958", None), None);
        assert_eq!(normalize_phone("not a phone", Some("US")), None);
        assert_eq!(normalize_phone("123", Some("US")), None);
        assert_eq!(normalize_phone(&"9".repeat(41), Some("US")), None);
        // International numbers parse without a region.
        assert_eq!(
            normalize_phone("+44 20 7946 0958", None).as_deref(),
            Some("+442079460958")
        );
    }

    #[test]
    fn countries_map_from_codes_and_common_names_vectors_k1_to_k3() {
        for (raw, want) in [
            ("United States", "US"),
            ("US", "US"),
            (" us ", "US"),
            ("USA", "US"),
            ("United States of America", "US"),
            ("Germany", "DE"),
            ("DEU", "DE"),
            ("United Kingdom", "GB"),
            ("UK", "GB"),
            ("Great Britain", "GB"),
            ("south korea", "KR"),
            ("Côte d'Ivoire", "CI"),
            ("Italy", "IT"),
        ] {
            assert_eq!(normalize_country(raw).as_deref(), Some(want), "{raw}");
        }
        for bad in ["", "Atlantis", "XX", "840", "U"] {
            assert_eq!(normalize_country(bad), None, "{bad:?} accepted");
        }
    }

    #[test]
    fn gender_maps_to_f_or_m_and_drops_anything_else() {
        assert_eq!(normalize_gender("Female").as_deref(), Some("f"));
        assert_eq!(normalize_gender("Male").as_deref(), Some("m"));
        assert_eq!(normalize_gender(" F ").as_deref(), Some("f"));
        assert_eq!(normalize_gender("nonbinary"), None);
    }

    #[test]
    fn dates_of_birth_must_be_iso_and_plausible() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
        assert_eq!(
            normalize_date_of_birth("1990-02-03", today).as_deref(),
            Some("1990-02-03")
        );
        for bad in [
            "2/16/1997",
            "1990-2-3",
            "1990-02-30",
            "1899-12-31",
            "2027-01-01",
        ] {
            assert_eq!(normalize_date_of_birth(bad, today), None, "{bad}");
        }
    }

    #[test]
    fn currencies_are_upper_cased_iso_4217() {
        assert_eq!(normalize_currency("usd").as_deref(), Some("USD"));
        assert_eq!(normalize_currency(" EUR ").as_deref(), Some("EUR"));
        assert_eq!(normalize_currency("ABC"), None);
        assert_eq!(normalize_currency("US"), None);
    }

    #[test]
    fn urls_must_be_http_or_https_with_a_host() {
        assert!(is_http_url("https://example.com/a?b=c"));
        assert!(is_http_url("http://example.com"));
        assert!(!is_http_url("ftp://example.com"));
        assert!(!is_http_url("https://"));
        assert!(!is_http_url("javascript:alert(1)"));
    }

    proptest! {
        #[test]
        fn email_normalization_is_idempotent(s in "[A-Za-z0-9._+ -]{1,20}@[A-Za-z0-9-]{1,10}\\.[A-Za-z]{2,5}") {
            if let Some(once) = normalize_email(&s) {
                prop_assert_eq!(normalize_email(&once), Some(once.clone()));
            }
        }

        #[test]
        fn phone_normalization_is_idempotent(digits in "[0-9 ()+-]{7,20}", region in prop::sample::select(vec!["US", "GB", "DE", "IT", "FR"])) {
            if let Some(once) = normalize_phone(&digits, Some(region)) {
                prop_assert_eq!(normalize_phone(&once, Some(region)), Some(once.clone()));
            }
        }

        #[test]
        fn country_normalization_is_idempotent(name in prop::sample::select(vec!["United States", "germany", "FRA", "uk", "Japan", "brazil"])) {
            let once = normalize_country(name).unwrap();
            prop_assert_eq!(normalize_country(&once), Some(once.clone()));
        }
    }
}
