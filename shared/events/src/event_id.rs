//! The derived `event_id` (SPEC §2): stable across client retries, never random.

use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256 of `source|event_name|lead_id|occurred_at|order_id`, where
/// `occurred_at` is the normalized UTC RFC 3339 form and an absent `order_id` is empty.
pub fn derive_event_id(
    source: &str,
    event_name: &str,
    lead_id: &str,
    occurred_at_utc: &str,
    order_id: &str,
) -> String {
    sha256_hex(&format!(
        "{source}|{event_name}|{lead_id}|{occurred_at_utc}|{order_id}"
    ))
}

/// Lowercase hex SHA-256 of the UTF-8 bytes of `s`.
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_id_is_the_sha256_of_the_pipe_joined_identity() {
        // Arrange
        let expected = sha256_hex("site-widget|lead|L-1|2026-11-21T10:00:00Z|");
        // Act
        let id = derive_event_id("site-widget", "lead", "L-1", "2026-11-21T10:00:00Z", "");
        // Assert
        assert_eq!(id, expected);
        assert_eq!(id.len(), 64);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }

    #[test]
    fn sha256_hex_matches_the_published_vectors() {
        assert_eq!(
            sha256_hex("john.doe@example.com"),
            "836f82db99121b3481011f16b49dfa5fbc714a0d1b1b9f784a1ebbbf5b39577f"
        );
        assert_eq!(
            sha256_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
