//! Normalizers for the identifiers ingest accepts (SPEC §2, `contracts/normalization.md`).
//!
//! Each one takes a trimmed, non-empty value and returns the canonical form carried on the bus,
//! or `None` when the value is not valid. They are idempotent: feeding a canonical form back in
//! returns it unchanged (checked by property tests below).

use std::str::FromStr;

use chrono::NaiveDate;
use unicode_normalization::UnicodeNormalization;

use crate::model::{MAX_PHONE_CHARS, MAX_PHONE_INPUT_CHARS};

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
/// international prefix parse. The text is first brought to ASCII separators and stripped of
/// its extension and `tel:` wrapping ([`phone_text`]). The input is bounded to
/// [`MAX_PHONE_INPUT_CHARS`], and what reaches the parser to [`MAX_PHONE_CHARS`].
pub fn normalize_phone(raw: &str, region: Option<&str>) -> Option<String> {
    if raw.chars().count() > MAX_PHONE_INPUT_CHARS {
        return None;
    }
    let text = phone_text(raw);
    if text.is_empty() || text.chars().count() > MAX_PHONE_CHARS {
        return None;
    }
    let region = region.and_then(|r| phonenumber::country::Id::from_str(r).ok());
    let number = phonenumber::parse(region, &text).ok()?;
    if !phonenumber::is_valid(&number) {
        return None;
    }
    Some(number.format().mode(phonenumber::Mode::E164).to_string())
}

/// The part of a phone number libphonenumber should see, in ASCII separators.
///
/// Chatbots pass on what people type or paste: NBSP, thin and ideographic spaces, tabs, Unicode
/// dashes and full-width digits inside the number, RFC 3966 `tel:` URIs with `;ext=` and other
/// parameters, and extensions written `ext.`, `ext`, `extension`, `x` or `#`. Every Unicode
/// space becomes a space and every dash a `-`; the `tel:` scheme, the URI parameters and a
/// trailing extension are removed (the extension is never part of the identifier,
/// `normalization.md` §2 step 6).
pub fn phone_text(raw: &str) -> String {
    let mut s = String::with_capacity(raw.len());
    for c in raw.chars() {
        let mapped = match c {
            // Zero-width and formatting characters that paste along with numbers.
            '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}' => continue,
            c if c.is_whitespace() => ' ',
            '\u{2010}'..='\u{2015}'
            | '\u{2043}'
            | '\u{2212}'
            | '\u{30FC}'
            | '\u{FE58}'
            | '\u{FE63}'
            | '\u{FF0D}'
            | '\u{FF70}' => '-',
            '\u{FF0B}' => '+',
            '\u{FF08}' => '(',
            '\u{FF09}' => ')',
            '\u{FF0E}' => '.',
            '\u{FF0F}' => '/',
            '\u{FF03}' => '#',
            '\u{FF1B}' => ';',
            '\u{FF1D}' => '=',
            '\u{FF10}'..='\u{FF19}' => char::from(b'0' + (c as u32 - 0xFF10) as u8),
            c => c,
        };
        s.push(mapped);
    }
    let mut text = s.trim();
    // `get`, not slicing: the first four bytes may end inside a multi-byte character.
    if text
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("tel:"))
    {
        text = text[4..].trim_start();
    }
    // RFC 3966 parameters (`;ext=`, `;isub=`, `;phone-context=`) follow the number.
    if let Some(at) = text.find(';') {
        text = &text[..at];
    }
    // Runs of spaces, dashes and dots become one space: they carry no meaning to the parser,
    // and the parser refuses some of them inside a country code (`+4-4 20…`, `+3.3 1…`).
    // Parentheses stay, since they mark the trunk prefix (`+49 (0)30…`).
    let mut out = String::with_capacity(text.len());
    for c in strip_extension(text.trim()).chars() {
        if matches!(c, ' ' | '-' | '.') {
            if !out.ends_with(' ') {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
    }
    out.trim().to_owned()
}

/// Cuts a trailing extension: a marker (`ext`, `ext.`, `extn`, `extension`, `x`, `#`, with
/// an optional `:` or `=`) followed by its digits, at the end of the text.
fn strip_extension(text: &str) -> &str {
    let digits_from = text.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits_from == text.len() {
        return text;
    }
    let before = text[..digits_from].trim_end();
    let before = before
        .strip_suffix([':', '='])
        .map_or(before, str::trim_end);
    let lower = before.to_ascii_lowercase();
    for marker in ["extension", "extn.", "extn", "ext.", "ext", "x.", "x", "#"] {
        if lower.ends_with(marker) {
            let number = before[..before.len() - marker.len()].trim_end();
            // A marker glued to letters (`fax`) is not an extension.
            let glued = number.ends_with(|c: char| c.is_ascii_alphabetic());
            if !number.is_empty() && !glued {
                return number;
            }
        }
    }
    text
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
pub(crate) mod tests {
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
        assert_eq!(
            normalize_phone(&format!("+1 201 555 0123;{}", "x".repeat(120)), Some("US")),
            None
        );
        // International numbers parse without a region.
        assert_eq!(
            normalize_phone("+44 20 7946 0958", None).as_deref(),
            Some("+442079460958")
        );
    }

    /// (raw, default region, E.164) for every spelling chatbots send that libphonenumber
    /// accepts: Unicode separators inside the number, extensions in each spelling, `tel:`
    /// URIs, and the international prefixes of several regions (`normalization.md` §2).
    pub(crate) const PHONE_SPELLINGS: &[(&str, Option<&str>, &str)] = &[
        // Unicode spaces and dashes inside the number.
        ("+1\u{A0}201-555-0123", None, "+12015550123"),
        ("+1\u{2009}201\u{2009}555\u{2009}0123", None, "+12015550123"),
        (
            "+1\u{202F}(201)\u{202F}555\u{2011}0123",
            None,
            "+12015550123",
        ),
        ("+81\u{3000}3\u{3000}1234\u{3000}5678", None, "+81312345678"),
        ("+44\t20\t7946\t0958", None, "+442079460958"),
        ("201\u{2013}555\u{2013}0123", Some("US"), "+12015550123"),
        ("201\u{2212}555\u{2212}0123", Some("US"), "+12015550123"),
        (
            "\u{FF0B}\u{FF11} \u{FF12}\u{FF10}\u{FF11} \u{FF15}\u{FF15}\u{FF15} \u{FF10}\u{FF11}\u{FF12}\u{FF13}",
            None,
            "+12015550123",
        ),
        (
            "\u{200B}+55\u{A0}11\u{A0}98765\u{2010}4321\u{FEFF}",
            None,
            "+5511987654321",
        ),
        ("(11) 98765\u{2011}4321", Some("BR"), "+5511987654321"),
        // Extensions, in every spelling; never appended to the digits.
        ("+1 201-555-0123 ext. 44", None, "+12015550123"),
        ("+1 201-555-0123 ext 44", None, "+12015550123"),
        ("+1 201-555-0123 ext44", None, "+12015550123"),
        ("+1 201-555-0123 EXT: 44", None, "+12015550123"),
        ("+1 201-555-0123 extension 44", None, "+12015550123"),
        ("+1 201-555-0123 x44", None, "+12015550123"),
        ("+1 201-555-0123 x 44", None, "+12015550123"),
        ("+1 201-555-0123 X.44", None, "+12015550123"),
        ("+1 201-555-0123 #44", None, "+12015550123"),
        ("+1 201-555-0123;ext=44", None, "+12015550123"),
        (
            "+1\u{A0}201\u{A0}555\u{A0}0123\u{A0}ext.\u{A0}44",
            None,
            "+12015550123",
        ),
        ("(201) 555-0123 x7", Some("US"), "+12015550123"),
        // RFC 3966 `tel:` URIs, with and without parameters.
        ("tel:+1-201-555-0123", None, "+12015550123"),
        ("TEL:+1-201-555-0123;ext=44", None, "+12015550123"),
        (
            "tel:+44-20-7946-0958;phone-context=example.com",
            None,
            "+442079460958",
        ),
        // International prefixes of the lead's region.
        ("00 44 20 7946 0958", Some("DE"), "+442079460958"),
        ("011 44 20 7946 0958", Some("CA"), "+442079460958"),
        ("010 44 20 7946 0958", Some("JP"), "+442079460958"),
        ("0011 44 20 7946 0958", Some("AU"), "+442079460958"),
        (
            "0011\u{A0}1\u{A0}201\u{A0}555\u{A0}0123",
            Some("AU"),
            "+12015550123",
        ),
    ];

    #[test]
    fn every_spelling_of_separator_extension_prefix_and_tel_uri_parses_to_e164() {
        for (raw, region, want) in PHONE_SPELLINGS {
            assert_eq!(
                normalize_phone(raw, *region).as_deref(),
                Some(*want),
                "{raw:?} [{region:?}]"
            );
        }
    }

    #[test]
    fn phone_text_keeps_the_number_and_drops_only_the_extension() {
        assert_eq!(phone_text("tel:+1-201-555-0123;ext=44"), "+1 201 555 0123");
        assert_eq!(phone_text("+1 201 555 0123 ext. 44"), "+1 201 555 0123");
        assert_eq!(phone_text("+1\u{A0}201\u{2013}555"), "+1 201 555");
        assert_eq!(phone_text("+4-4 . 20\u{3000}7946"), "+4 4 20 7946");
        assert_eq!(phone_text("+49 (0)30 123456"), "+49 (0)30 123456");
        // Digits at the end that are not behind a marker are part of the number.
        assert_eq!(phone_text("+1 201 555 0123"), "+1 201 555 0123");
        // A word ending in x is not an extension marker.
        assert_eq!(phone_text("fax 44"), "fax 44");
        assert_eq!(normalize_phone("x44", Some("US")), None);
        assert_eq!(normalize_phone("tel:", Some("US")), None);
        assert_eq!(normalize_phone("\u{A0}\u{3000}", Some("US")), None);
        // Found by fuzzing: a multi-byte character across the first four bytes.
        assert_eq!(normalize_phone("Aשׁ", Some("US")), None);
        assert_eq!(normalize_phone("telé", Some("US")), None);
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
        fn e164_with_arbitrary_unicode_separators_parses_to_the_same_e164(
            e164 in prop::sample::select(vec![
                "+12015550123", "+442079460958", "+4930123456", "+390612345678",
                "+81312345678", "+5511987654321", "+33123456789", "+61212345678",
                "+2348031234567", "+84912345678", "+919876543210", "+16505551234",
            ]),
            seps in prop::collection::vec(
                prop::sample::select(vec![
                    "", "", " ", "\u{A0}", "\u{2009}", "\u{202F}", "\u{3000}", "\t",
                    "-", "\u{2010}", "\u{2011}", "\u{2013}", "\u{2014}", "\u{2212}",
                    "\u{FF0D}", ".", "\u{200B}", " - ",
                ]),
                16,
            ),
        ) {
            // Arrange: a separator (maybe none) after the `+` and after every digit.
            let mut rendered = String::from("+");
            for (i, digit) in e164[1..].chars().enumerate() {
                rendered.push_str(seps[i % seps.len()]);
                rendered.push(digit);
            }
            // Act + Assert
            let parsed = normalize_phone(&rendered, None);
            prop_assert_eq!(parsed.as_deref(), Some(e164), "{:?}", rendered);
        }

        #[test]
        fn country_normalization_is_idempotent(name in prop::sample::select(vec!["United States", "germany", "FRA", "uk", "Japan", "brazil"])) {
            let once = normalize_country(name).unwrap();
            prop_assert_eq!(normalize_country(&once), Some(once.clone()));
        }
    }
}
