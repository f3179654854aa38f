//! Per-destination normalization and hashing of identifiers (`contracts/normalization.md`).
//!
//! Ingest has already normalized the event (email lower-cased, phone E.164, country alpha-2,
//! gender `f`/`m`); these functions apply each destination's own rules on top and hash.
//! Destinations differ in ways that decide match quality (Meta hashes phones without `+`,
//! Google with it), so each destination has its own module.

use unicode_normalization::char::is_combining_mark;

use crate::event_id::sha256_hex;

/// Lower-cases, drops punctuation and symbols, and collapses whitespace runs to one space
/// (accents kept, NFC, combining marks without a precomposed form kept too). Shared by names
/// across destinations (N1–N4).
fn name_form(raw: &str) -> String {
    letters_and(raw, |c| c.is_alphanumeric())
}

/// NFC, lower-case, keeps the letters (and combining marks, so `ẹ́` keeps its acute) that
/// `keep` accepts plus single spaces between words; everything else goes.
fn letters_and(raw: &str, keep: impl Fn(char) -> bool) -> String {
    let cleaned: String = crate::identifiers::clean(raw)
        .to_lowercase()
        .chars()
        .filter(|&c| keep(c) || is_combining_mark(c) || c.is_whitespace())
        .collect();
    cleaned.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// E.164 with its `+` (`+16505551234`), the form Google Ads, Data Manager and GA4 hash;
/// `None` for anything else.
fn e164_form(e164: &str) -> Option<&str> {
    let digits = e164.strip_prefix('+')?;
    (digits.len() >= 7
        && digits.len() <= 15
        && !digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit()))
    .then_some(e164)
}

/// Splits an address at its last `@` and applies `local_rule` to the local part of gmail and
/// googlemail addresses only (the domain is kept as typed, vector E3).
fn gmail_rule(email: &str, local_rule: impl Fn(&str) -> String) -> Option<String> {
    let (local, domain) = email.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    if domain == "gmail.com" || domain == "googlemail.com" {
        let local = local_rule(local);
        (!local.is_empty()).then(|| format!("{local}@{domain}"))
    } else {
        Some(email.to_owned())
    }
}

/// Meta Conversions API `user_data` rules [M4].
pub mod meta {
    use super::{is_dash, letters_and, name_form, sha256_hex};

    /// `em`: trimmed, lower-cased; dots and `+tags` kept for every domain (E1–E4).
    pub fn email(normalized: &str) -> Option<String> {
        let v = normalized.trim().to_lowercase();
        (!v.is_empty()).then(|| sha256_hex(&v))
    }

    /// `ph`: E.164 digits with the country code and no `+` (P1–P8).
    pub fn phone(e164: &str) -> Option<String> {
        let digits: String = e164.chars().filter(char::is_ascii_digit).collect();
        let digits = digits.trim_start_matches('0');
        (digits.len() >= 7).then(|| sha256_hex(digits))
    }

    /// `fn` / `ln`: lower-case, no punctuation, accents kept (N1–N4, MD3–MD5).
    pub fn name(raw: &str) -> Option<String> {
        let v = name_form(raw);
        (!v.is_empty()).then(|| sha256_hex(&v))
    }

    /// `ct`: lower-case letters only, no spaces or punctuation (C1); accents kept.
    pub fn city(raw: &str) -> Option<String> {
        let v: String = letters_and(raw, char::is_alphabetic).replace(' ', "");
        (!v.is_empty()).then(|| sha256_hex(&v))
    }

    /// `st`: for the US, the two-letter code (a full state name is mapped, S1–S2); elsewhere
    /// lower-case without punctuation or spaces.
    pub fn state(raw: &str, country: Option<&str>) -> Option<String> {
        let compact: String = letters_and(raw, char::is_alphanumeric).replace(' ', "");
        if compact.is_empty() {
            return None;
        }
        let v = if country.is_none_or(|c| c.eq_ignore_ascii_case("US")) {
            super::us_state_code(&compact).unwrap_or(compact)
        } else {
            compact
        };
        Some(sha256_hex(&v))
    }

    /// `zp`: lower-case, no spaces, no dashes, every other character kept (`26738-274` →
    /// `26738274`, `M1 1AE` → `m11ae`). US: the first five digits (Z1) — for a US lead, or a
    /// lead of unknown country whose code has the US shape (`12345`, `12345-6789`).
    pub fn zip(raw: &str, country: Option<&str>) -> Option<String> {
        let v: String = crate::identifiers::clean(raw)
            .to_lowercase()
            .chars()
            .filter(|&c| !c.is_whitespace() && !is_dash(c))
            .collect();
        let digits = v.bytes().all(|b| b.is_ascii_digit());
        let us = match country {
            Some(c) => c.eq_ignore_ascii_case("US"),
            None => digits && (v.len() == 5 || v.len() == 9),
        };
        let v = if us
            && v.len() >= 5
            && v.is_char_boundary(5)
            && v[..5].bytes().all(|b| b.is_ascii_digit())
        {
            v[..5].to_owned()
        } else {
            v
        };
        (!v.is_empty()).then(|| sha256_hex(&v))
    }

    /// `country`: lower-case ISO alpha-2, hashed (K1–K3).
    pub fn country(alpha2: &str) -> Option<String> {
        let v = alpha2.trim().to_lowercase();
        (v.len() == 2).then(|| sha256_hex(&v))
    }

    /// `db`: `YYYYMMDD` (D1).
    pub fn date_of_birth(iso: &str) -> Option<String> {
        let v: String = iso.chars().filter(char::is_ascii_digit).collect();
        (v.len() == 8).then(|| sha256_hex(&v))
    }

    /// `ge`: `f` or `m` (G1–G2).
    pub fn gender(fm: &str) -> Option<String> {
        matches!(fm, "f" | "m").then(|| sha256_hex(fm))
    }

    /// `external_id`: SHA-256 of the exact string, no case folding (X1).
    pub fn external_id(raw: &str) -> Option<String> {
        (!raw.is_empty()).then(|| sha256_hex(raw))
    }
}

/// Whether `c` is a dash of any Unicode kind (`-`, `‐`, `–`, `—`, `−`, full-width `－`, …).
fn is_dash(c: char) -> bool {
    matches!(
        c,
        '-' | '\u{2010}'
            ..='\u{2015}' | '\u{2043}' | '\u{2212}' | '\u{FE58}' | '\u{FE63}' | '\u{FF0D}'
    )
}

/// Google Ads and Data Manager rules for user-provided data [A3, A13, A14, A22, A23].
pub mod google {
    use super::{e164_form, gmail_rule, name_form, sha256_hex};

    /// `hashedEmail` / `emailAddress`: whitespace removed anywhere, lower-cased; for gmail and
    /// googlemail only, dots and a `+suffix` removed from the local part (E1–E4).
    pub fn email(normalized: &str) -> Option<String> {
        let v: String = normalized
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_lowercase();
        let v = gmail_rule(&v, |local| {
            local.split('+').next().unwrap_or_default().replace('.', "")
        })?;
        Some(sha256_hex(&v))
    }

    /// `hashedPhoneNumber` / `phoneNumber`: E.164 **with** its `+` (P1–P8).
    pub fn phone(e164: &str) -> Option<String> {
        e164_form(e164).map(sha256_hex)
    }

    /// `hashedFirstName` / `givenName`, `hashedLastName` / `familyName`: lower-case, no
    /// punctuation, single internal spaces, accents kept (N1–N4).
    pub fn name(raw: &str) -> Option<String> {
        let v = name_form(raw);
        (!v.is_empty()).then(|| sha256_hex(&v))
    }
}

/// GA4 Measurement Protocol `user_data` rules [G4].
pub mod ga4 {
    use super::{e164_form, gmail_rule, letters_and, sha256_hex};

    /// `sha256_email_address`: trimmed, lower-cased; gmail/googlemail only: dots removed from
    /// the local part, `+tag` kept (E1–E4).
    pub fn email(normalized: &str) -> Option<String> {
        let v = normalized.trim().to_lowercase();
        let v = gmail_rule(&v, |local| local.replace('.', ""))?;
        Some(sha256_hex(&v))
    }

    /// `sha256_phone_number`: E.164 **with** its `+` (P1–P8).
    pub fn phone(e164: &str) -> Option<String> {
        e164_form(e164).map(sha256_hex)
    }

    /// `address[].sha256_first_name` / `sha256_last_name`: digits and symbols removed,
    /// lower-cased, trimmed; accents kept (N1–N4).
    pub fn name(raw: &str) -> Option<String> {
        let v = letters_and(raw, char::is_alphabetic);
        (!v.is_empty()).then(|| sha256_hex(&v))
    }

    /// `address[].sha256_street`: symbols removed, lower-cased, trimmed.
    pub fn street(raw: &str) -> Option<String> {
        let v = letters_and(raw, char::is_alphanumeric);
        (!v.is_empty()).then(|| sha256_hex(&v))
    }

    /// `address[].city` and `address[].region`, plain: digits and symbols removed, lower-cased,
    /// trimmed, spaces kept (C1: `new york`).
    pub fn place(raw: &str) -> Option<String> {
        let v = letters_and(raw, char::is_alphabetic);
        (!v.is_empty()).then_some(v)
    }

    /// `address[].postal_code`, plain: `.` and `~` removed, trimmed (Z1: `94025-1234` kept).
    pub fn postal_code(raw: &str) -> Option<String> {
        let v: String = raw.chars().filter(|c| !matches!(c, '.' | '~')).collect();
        let v = v.trim();
        (!v.is_empty()).then(|| v.to_owned())
    }

    /// `address[].country`, plain: the upper-case ISO alpha-2 code (K1–K3).
    pub fn country(alpha2: &str) -> Option<String> {
        let v = alpha2.trim().to_ascii_uppercase();
        (v.len() == 2 && v.bytes().all(|b| b.is_ascii_alphabetic())).then_some(v)
    }
}

/// US state and territory names to their two-letter codes (lower-case, letters only).
fn us_state_code(compact: &str) -> Option<String> {
    const STATES: [(&str, &str); 56] = [
        ("alabama", "al"),
        ("alaska", "ak"),
        ("arizona", "az"),
        ("arkansas", "ar"),
        ("california", "ca"),
        ("colorado", "co"),
        ("connecticut", "ct"),
        ("delaware", "de"),
        ("districtofcolumbia", "dc"),
        ("florida", "fl"),
        ("georgia", "ga"),
        ("hawaii", "hi"),
        ("idaho", "id"),
        ("illinois", "il"),
        ("indiana", "in"),
        ("iowa", "ia"),
        ("kansas", "ks"),
        ("kentucky", "ky"),
        ("louisiana", "la"),
        ("maine", "me"),
        ("maryland", "md"),
        ("massachusetts", "ma"),
        ("michigan", "mi"),
        ("minnesota", "mn"),
        ("mississippi", "ms"),
        ("missouri", "mo"),
        ("montana", "mt"),
        ("nebraska", "ne"),
        ("nevada", "nv"),
        ("newhampshire", "nh"),
        ("newjersey", "nj"),
        ("newmexico", "nm"),
        ("newyork", "ny"),
        ("northcarolina", "nc"),
        ("northdakota", "nd"),
        ("ohio", "oh"),
        ("oklahoma", "ok"),
        ("oregon", "or"),
        ("pennsylvania", "pa"),
        ("rhodeisland", "ri"),
        ("southcarolina", "sc"),
        ("southdakota", "sd"),
        ("tennessee", "tn"),
        ("texas", "tx"),
        ("utah", "ut"),
        ("vermont", "vt"),
        ("virginia", "va"),
        ("washington", "wa"),
        ("westvirginia", "wv"),
        ("wisconsin", "wi"),
        ("wyoming", "wy"),
        ("puertorico", "pr"),
        ("guam", "gu"),
        ("americansamoa", "as"),
        ("virginislands", "vi"),
        ("northernmarianaislands", "mp"),
    ];
    STATES
        .iter()
        .find(|(name, code)| *name == compact || *code == compact)
        .map(|(_, code)| (*code).to_owned())
}

#[cfg(test)]
mod tests {
    use super::{ga4, google, meta};
    use crate::identifiers::normalize_phone;
    use crate::sha256_hex;

    #[test]
    fn meta_hashes_match_the_normalization_vectors() {
        // (function output, expected digest) for E1–E4, N1–N4, C1, S1–S2, Z1–Z2, K1, D1, G1–G2, X1, MD1–MD5.
        let cases = [
            (
                meta::email("john.doe@example.com"),
                "836f82db99121b3481011f16b49dfa5fbc714a0d1b1b9f784a1ebbbf5b39577f",
            ),
            (
                meta::email("jane.doe+promo@gmail.com"),
                "5f0d1df1fc49e30424381b57b1d4c73e067772a4267dde043a19b026935602c8",
            ),
            (
                meta::email("j.a.n.e@googlemail.com"),
                "71441b6ad830149397c2677e4d4eb9b5d6795a7832631ab2ae37fcb119da15d9",
            ),
            (
                meta::email("jane.doe+promo@example.com"),
                "c3374bcfe3572e09f37602e0e179782352c5e117a4a3767824abbaa21bbdef8b",
            ),
            (
                meta::email("john_smith@gmail.com"),
                "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f",
            ),
            (
                meta::name("  José "),
                "d994e1d001886fe5b45b1267bd1fa2b752ac50742579bd3dad7b2a2aa0ed6866",
            ),
            (
                meta::name("O'Brien"),
                "b4cb6cb33fe4b865868de825023a1e2790dc12ac01ecc8d7c5afe8254071c8ba",
            ),
            (
                meta::name("Mary Ann"),
                "343b97011010c3549fe7fcd6c226ed9431ea37b0b77ed78f6300a0098925faf1",
            ),
            (
                meta::name("Núñez-García"),
                "3126b9666b63a1d93199596906584384b1392ceb0c3851ffb0b0b4bba652cf03",
            ),
            (
                meta::name("Mary"),
                "6915771be1c5aa0c886870b6951b03d7eafc121fea0e80a5ea83beb7c449f4ec",
            ),
            (
                meta::name("Valéry"),
                "08e1996b5dd49e62a4b4c010d44e4345592a863bb9f8e3976219bac29417149c",
            ),
            (
                meta::name("정"),
                "8fa8cd9c440be61d0151429310034083132b35975c4bea67fdd74158eb51db14",
            ),
            (
                meta::city("New York"),
                "350c754ba4d38897693aa077ef43072a859d23f613443133fecbbd90a3512ca5",
            ),
            (
                meta::state("California", Some("US")),
                "6959097001d10501ac7d54c0bdb8db61420f658f2922cc26e46d536119a31126",
            ),
            (
                meta::state("CA", Some("US")),
                "6959097001d10501ac7d54c0bdb8db61420f658f2922cc26e46d536119a31126",
            ),
            (
                meta::zip("94025-1234", Some("US")),
                "b9a9cf3cd3723a2e91b7c23ecf68456e872b6e5d86e5cab7f3d45a7302da32c7",
            ),
            (
                meta::zip("M1 1AE", Some("GB")),
                "1dc694c2070e697769fb959b50671d76cafd430d8ca191fbdd0affcaea344ac5",
            ),
            (
                meta::country("US"),
                "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621",
            ),
            (
                meta::date_of_birth("1990-02-03"),
                "de8dbdfc21186d2b8035ddbb9d51db9ac4b4919c79a6cda2350e852b7a2eb915",
            ),
            (
                meta::date_of_birth("1997-02-16"),
                "01acdbf6ec7b4f478a225f1a246e5d6767eeab1a7ffa17f025265b5b94f40f0c",
            ),
            (
                meta::gender("f"),
                "252f10c83610ebca1a059c0bae8255eba2f95be4d1d7bcfa89d7248a82d9f111",
            ),
            (
                meta::gender("m"),
                "62c66a7a5dd70c3146618063c344e531e6d4b59e379808443ce962b3abd63c5a",
            ),
            (
                meta::external_id("CRM-000123"),
                "c4b4d9756afd66a87d001d43868ac50831a88c9ba46845fd10edb7debd865de0",
            ),
        ];
        for (i, (got, want)) in cases.iter().enumerate() {
            assert_eq!(got.as_deref(), Some(*want), "case {i}");
        }
    }

    #[test]
    fn meta_phone_hashes_are_digits_with_country_code_vectors_p1_to_p8() {
        let cases = [
            (
                "(650) 555-1234",
                "US",
                "6069d14bf122fdfd931dc7beb58e5dfbba395b1faf05bdcd42d12358d63d8599",
            ),
            (
                "+44 20 7946 0958",
                "GB",
                "35e206e5dec4c89b9e8b71b8c32724a5bb518483ac5a20c6617d738375b3b823",
            ),
            (
                "0044 20 7946 0958",
                "GB",
                "35e206e5dec4c89b9e8b71b8c32724a5bb518483ac5a20c6617d738375b3b823",
            ),
            (
                "+1-650-555-1234 ext. 7",
                "US",
                "6069d14bf122fdfd931dc7beb58e5dfbba395b1faf05bdcd42d12358d63d8599",
            ),
            (
                "020 7946 0958",
                "GB",
                "35e206e5dec4c89b9e8b71b8c32724a5bb518483ac5a20c6617d738375b3b823",
            ),
            (
                "011 44 20 7946 0958",
                "US",
                "35e206e5dec4c89b9e8b71b8c32724a5bb518483ac5a20c6617d738375b3b823",
            ),
            (
                "+39 06 1234 5678",
                "IT",
                "472e1123cd4e2f66f1df06bd488dc6135dab8f80cbfcc4af144d042c005f0fb2",
            ),
            (
                "+49 (0)30 123456",
                "DE",
                "ac75546db905289f50bd750fd5648fec0719074ce391521b2372abeae9110668",
            ),
            (
                "(650)555-1212",
                "US",
                "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176",
            ),
        ];
        for (raw, region, want) in cases {
            let e164 = normalize_phone(raw, Some(region)).unwrap();
            assert_eq!(meta::phone(&e164).as_deref(), Some(want), "{raw}");
        }
    }

    #[test]
    fn nothing_empty_is_ever_hashed() {
        assert_eq!(meta::email(" "), None);
        assert_eq!(meta::name("''"), None);
        assert_eq!(meta::city("123"), None);
        assert_eq!(meta::gender("x"), None);
        assert_eq!(meta::country("usa"), None);
    }

    #[test]
    fn google_and_ga4_emails_follow_their_gmail_rules_vectors_e1_to_e4() {
        let cases = [
            // (normalized input, Google Ads digest, GA4 digest)
            (
                "john.doe@example.com",
                "836f82db99121b3481011f16b49dfa5fbc714a0d1b1b9f784a1ebbbf5b39577f",
                "836f82db99121b3481011f16b49dfa5fbc714a0d1b1b9f784a1ebbbf5b39577f",
            ),
            (
                "jane.doe+promo@gmail.com",
                "d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69",
                "3a627126a4392d8cec5f5d4eaa26639d3cfe852ebf1f1b49c3ffa61667798637",
            ),
            (
                "j.a.n.e@googlemail.com",
                "fae868fcb95956d818cd68d2b23f8bbd93bfcaa5eccc5b8c7b7b4b97bf3b61cb",
                "fae868fcb95956d818cd68d2b23f8bbd93bfcaa5eccc5b8c7b7b4b97bf3b61cb",
            ),
            (
                "jane.doe+promo@example.com",
                "c3374bcfe3572e09f37602e0e179782352c5e117a4a3767824abbaa21bbdef8b",
                "c3374bcfe3572e09f37602e0e179782352c5e117a4a3767824abbaa21bbdef8b",
            ),
        ];
        for (email, google_want, ga4_want) in cases {
            assert_eq!(
                google::email(email).as_deref(),
                Some(google_want),
                "{email}"
            );
            assert_eq!(ga4::email(email).as_deref(), Some(ga4_want), "{email}");
        }
        // Google removes intermediate whitespace too (A22).
        assert_eq!(
            google::email(" jane. doe@gmail.com"),
            google::email("janedoe@gmail.com")
        );
        assert_eq!(google::email("+tag@gmail.com"), None);
    }

    #[test]
    fn the_three_phone_forms_differ_only_by_the_plus_for_every_spelling() {
        for (raw, region, e164) in crate::identifiers::tests::PHONE_SPELLINGS {
            // Arrange
            let parsed = normalize_phone(raw, *region).unwrap();
            // Act + Assert: Meta without `+`, Google Ads and GA4 with it (F1).
            assert_eq!(
                meta::phone(&parsed),
                Some(sha256_hex(&e164[1..])),
                "Meta {raw:?}"
            );
            assert_eq!(
                google::phone(&parsed),
                Some(sha256_hex(e164)),
                "Google {raw:?}"
            );
            assert_eq!(ga4::phone(&parsed), Some(sha256_hex(e164)), "GA4 {raw:?}");
            assert_ne!(meta::phone(&parsed), google::phone(&parsed));
        }
        assert_eq!(google::phone("16505551234"), None);
        assert_eq!(ga4::phone("+0044"), None);
    }

    #[test]
    fn google_and_ga4_phone_digests_match_vectors_p1_and_p2() {
        let p1 = "a2996076d3ad4af5dc818b908b3d8e354f26ededf7df0e0aa6ac354143805ee0";
        let p2 = "f0bf0228144d9fe2bdf1da2d8ca698f17bf1410ee688b075c27062e47b6f0b6d";
        let p1_e164 = normalize_phone("(650) 555-1234", Some("US")).unwrap();
        let p2_e164 = normalize_phone("0044 20 7946 0958", Some("GB")).unwrap();
        assert_eq!(google::phone(&p1_e164).as_deref(), Some(p1));
        assert_eq!(ga4::phone(&p1_e164).as_deref(), Some(p1));
        assert_eq!(google::phone(&p2_e164).as_deref(), Some(p2));
        assert_eq!(ga4::phone(&p2_e164).as_deref(), Some(p2));
    }

    #[test]
    fn names_keep_accents_and_combining_marks_and_lose_punctuation() {
        // N1–N4 for every destination.
        for (raw, want) in [
            ("  José ", "josé"),
            ("O'Brien", "obrien"),
            ("Mary Ann", "mary ann"),
            ("Núñez-García", "núñezgarcía"),
        ] {
            let digest = Some(sha256_hex(want));
            assert_eq!(meta::name(raw), digest, "Meta {raw}");
            assert_eq!(google::name(raw), digest, "Google {raw}");
            assert_eq!(ga4::name(raw), digest, "GA4 {raw}");
        }
        // Combining marks with no precomposed form stay: `ẹ́` is U+1EB9 + U+0301 after NFC.
        for (raw, want) in [
            ("Ìfẹ́olúwa", "ìfẹ́olúwa"),
            ("Ọlọ́runfẹ́mi", "ọlọ́runfẹ́mi"),
            // Decomposed input composes first (NFC), then keeps what has no precomposed form.
            ("A\u{0300}di\u{0301}o\u{0323}\u{0301}", "àdíọ́"),
            ("Nguyễn Thị Minh Khai", "nguyễn thị minh khai"),
            ("Đặng-Trần", "đặngtrần"),
            ("Zoë d'Arc.", "zoë darc"),
        ] {
            let digest = Some(sha256_hex(want));
            assert_eq!(meta::name(raw), digest, "Meta {raw}");
            assert_eq!(google::name(raw), digest, "Google {raw}");
            assert_eq!(ga4::name(raw), digest, "GA4 {raw}");
        }
        assert!(
            "ìfẹ́olúwa".contains('\u{0301}'),
            "the vector itself keeps its combining acute"
        );
        // GA4 also removes digits from names.
        assert_eq!(ga4::name("Ann 2"), Some(sha256_hex("ann")));
    }

    #[test]
    fn meta_postal_codes_lose_only_spaces_and_dashes_outside_the_us() {
        for (raw, country, want) in [
            ("26738-274", Some("BR"), "26738274"),
            ("26738-274", None, "26738274"),
            ("332-5485", Some("JP"), "3325485"),
            ("332-5485", None, "3325485"),
            ("332\u{2010}5485", None, "3325485"),
            ("100\u{A0}0001", Some("JP"), "1000001"),
            ("M1 1AE", Some("GB"), "m11ae"),
            ("SW1A 2AA", Some("GB"), "sw1a2aa"),
            ("H3Z 2Y7", Some("CA"), "h3z2y7"),
            ("1010", Some("AT"), "1010"),
            ("75008", Some("FR"), "75008"),
            ("D02 X285", Some("IE"), "d02x285"),
            ("94025-1234", Some("US"), "94025"),
            ("94025-1234", None, "94025"),
            ("940251234", Some("US"), "94025"),
            ("94025", None, "94025"),
        ] {
            assert_eq!(
                meta::zip(raw, country),
                Some(sha256_hex(want)),
                "{raw} [{country:?}]"
            );
        }
        assert_eq!(meta::zip(" - ", Some("BR")), None);
    }

    #[test]
    fn ga4_plain_address_fields_follow_g4() {
        assert_eq!(ga4::place("New York").as_deref(), Some("new york"));
        assert_eq!(ga4::place("California").as_deref(), Some("california"));
        assert_eq!(ga4::place("São Paulo 2").as_deref(), Some("são paulo"));
        assert_eq!(
            ga4::postal_code("94025-1234").as_deref(),
            Some("94025-1234")
        );
        assert_eq!(ga4::postal_code(" M1 1AE ").as_deref(), Some("M1 1AE"));
        assert_eq!(ga4::postal_code("1.0~1").as_deref(), Some("101"));
        assert_eq!(ga4::country("us").as_deref(), Some("US"));
        assert_eq!(ga4::country("USA"), None);
    }
}
