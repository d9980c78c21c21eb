//! Identifiers in UUID form (8-4-4-4-12 hex): random version-4 ids for new objects, and
//! deterministic ones derived from content.

/// `bytes` as a UUID string.
pub fn uuid_text(bytes: [u8; 16]) -> String {
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A random version-4 UUID.
pub fn random_uuid() -> String {
    let mut bytes = rand::random::<[u8; 16]>();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    uuid_text(bytes)
}

/// A UUID-shaped id that is always the same for the same text.
pub fn derived_uuid(text: &str) -> String {
    uuid_text(xxhash_rust::xxh3::xxh3_128(text.as_bytes()).to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_have_the_standard_shape() {
        let random = random_uuid();
        assert_eq!(random.len(), 36);
        assert_eq!(&random[14..15], "4", "version 4");
        assert_ne!(random, random_uuid());
        assert_eq!(derived_uuid("a"), derived_uuid("a"));
        assert_ne!(derived_uuid("a"), derived_uuid("b"));
    }
}
