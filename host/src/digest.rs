//! A component version's id: the sha256 of its source, in hex. Journals, the admin API and the
//! cluster store carry the full digest; logs and tables show its first 12 characters.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// How many characters of a digest logs and tables show.
pub const SHORT_LEN: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Digest(String);

impl Digest {
    /// The digest of a component's source bytes.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(hex::encode(sha2::Sha256::digest(bytes)))
    }

    /// A digest read back from a journal, the cluster store or an admin request.
    pub fn from_hex(hex: impl Into<String>) -> Digest {
        Digest(hex.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 characters, as logs and `mosaic status` show a version.
    pub fn short(&self) -> &str {
        short(&self.0)
    }
}

/// The first 12 characters of a digest given as text (all of it when shorter).
pub fn short(digest: &str) -> &str {
    match digest.char_indices().nth(SHORT_LEN) {
        Some((end, _)) => &digest[..end],
        None => digest,
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Digest {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Digest {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for Digest {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> String {
        digest.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_is_the_hex_sha256_and_shows_twelve_characters() {
        let digest = Digest::of(b"abc");
        assert_eq!(
            digest.as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(digest.short(), "ba7816bf8f01");
        assert_eq!(short("abc"), "abc");
        assert_eq!(serde_json::to_string(&digest).unwrap(), format!("\"{digest}\""));
    }
}
