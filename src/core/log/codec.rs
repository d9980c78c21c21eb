//! The value encodings every stored value is built from: a version byte, then either bincode
//! (records) or a fixed hand-written layout (hot, small numbers), and the error that names a
//! value that does not decode. What each kind of row stores is [`super::values`].

use serde::{Serialize, de::DeserializeOwned};

/// Version byte of every value written by this build.
pub const VALUE_VERSION: u8 = 1;

/// A value that could not be decoded: a corrupt row or one written by an unknown version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode {what}: {reason}")]
pub struct CodecError {
    pub what: &'static str,
    pub reason: String,
}

/// Largest value bincode may decode. A corrupt length prefix must be refused, not allocated:
/// without a limit a damaged row claiming 2^61 bytes aborts the process.
const DECODE_LIMIT: usize = 256 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

fn encode_versioned<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![VALUE_VERSION];
    // Encoding our own plain data types into a Vec cannot fail.
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .expect("bincode encodes plain data");
    out
}

fn decode_versioned<T: DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, CodecError> {
    let body = versioned_body(bytes, what)?;
    let (value, used) =
        bincode::serde::decode_from_slice(body, config()).map_err(|e| CodecError {
            what,
            reason: e.to_string(),
        })?;
    if used != body.len() {
        return Err(CodecError {
            what,
            reason: format!("{} trailing bytes", body.len() - used),
        });
    }
    Ok(value)
}

/// The bytes after the version byte, if the version is one this build reads.
pub fn versioned_body<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a [u8], CodecError> {
    match bytes.split_first() {
        Some((&VALUE_VERSION, body)) => Ok(body),
        Some((version, _)) => Err(CodecError {
            what,
            reason: format!("unknown value version {version}"),
        }),
        None => Err(CodecError {
            what,
            reason: "empty value".into(),
        }),
    }
}

/// The `N` bytes at `at` of a fixed-width body whose length was checked (zeros past its end,
/// which a checked body never reaches).
pub fn field<const N: usize>(body: &[u8], at: usize) -> [u8; N] {
    body.get(at..at.saturating_add(N))
        .and_then(|bytes| bytes.try_into().ok())
        .unwrap_or([0; N])
}

/// The body of a versioned fixed-width value, checked for its length.
pub fn fixed_body<const N: usize>(bytes: &[u8], what: &'static str) -> Result<[u8; N], CodecError> {
    let body = versioned_body(bytes, what)?;
    body.try_into().map_err(|_| CodecError {
        what,
        reason: format!("{} bytes, expected {N}", body.len()),
    })
}

pub fn encode_u64(value: u64) -> [u8; 9] {
    let mut out = [0u8; 9];
    out[0] = VALUE_VERSION;
    out[1..].copy_from_slice(&value.to_be_bytes());
    out
}

pub fn decode_u64(bytes: &[u8], what: &'static str) -> Result<u64, CodecError> {
    fixed_body(bytes, what).map(u64::from_be_bytes)
}

pub fn encode_i64(value: i64) -> [u8; 9] {
    let mut out = [0u8; 9];
    out[0] = VALUE_VERSION;
    out[1..].copy_from_slice(&value.to_be_bytes());
    out
}

pub fn decode_i64(bytes: &[u8], what: &'static str) -> Result<i64, CodecError> {
    fixed_body(bytes, what).map(i64::from_be_bytes)
}

pub fn encode_i128(value: i128) -> [u8; 17] {
    let mut out = [0u8; 17];
    out[0] = VALUE_VERSION;
    out[1..].copy_from_slice(&value.to_be_bytes());
    out
}

pub fn decode_i128(bytes: &[u8], what: &'static str) -> Result<i128, CodecError> {
    fixed_body(bytes, what).map(i128::from_be_bytes)
}

/// A stored record (tokens, the billing projection's storage structs in
/// `tally::projection::billing`): the version byte, then bincode.
pub fn encode_record<T: Serialize>(value: &T) -> Vec<u8> {
    encode_versioned(value)
}

pub fn decode_record<T: DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, CodecError> {
    decode_versioned(bytes, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_versions_are_refused() {
        let mut bytes = encode_u64(5).to_vec();
        bytes[0] = 9;
        assert!(
            decode_u64(&bytes, "checkpoint")
                .unwrap_err()
                .reason
                .contains("version 9")
        );
    }
}
