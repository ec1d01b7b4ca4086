//! Template names, namespaces, content hashes and the cache keys derived from them.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};

/// The SHA-256 of a template's content (or of anything else the format hashes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// Hashes `bytes` with SHA-256.
    pub fn of(bytes: &[u8]) -> Self {
        ContentHash(Sha256::digest(bytes).into())
    }

    /// Lowercase hexadecimal, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hexadecimal characters.
    pub fn from_hex(s: &str) -> Result<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| {
            Error::new(
                ErrorKind::ConfigInvalid,
                format!("invalid SHA-256 hex {s:?}: {e}"),
            )
        })?;
        Ok(ContentHash(out))
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", self.to_hex())
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl serde::Serialize for ContentHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

/// A validated namespace: the prefix of every key template-cache writes.
///
/// 1 to 64 bytes of ASCII letters, digits, `_`, `-` and `.`, so that keys stay valid on every
/// backend (Memcached allows no spaces or control characters and at most 250 bytes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Namespace(String);

/// Whether `name` is a valid namespace (without allocating).
fn is_namespace(name: &str) -> bool {
    let valid = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
    !name.is_empty() && name.len() <= 64 && name.bytes().all(valid)
}

/// The namespace used when none is configured.
pub const DEFAULT_NAMESPACE: &str = "tpl";

impl Namespace {
    /// Validates `name` as a namespace.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        if !is_namespace(&name) {
            return Err(Error::new(
                ErrorKind::ConfigInvalid,
                format!(
                    "namespace {name:?} is invalid: use 1 to 64 ASCII letters, digits, '_', '-' or '.'"
                ),
            ));
        }
        Ok(Namespace(name))
    }

    /// The namespace as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The cache key of template `name`: `<namespace>:<hex SHA-256 of the name>`.
    pub fn key_for(&self, name: &str) -> String {
        // Built in place: one key per template per run, so no formatting machinery.
        let mut hex = [0u8; 64];
        let digest = ContentHash::of(name.as_bytes()).0;
        // Both are 32 bytes in, 64 out: encoding cannot fail.
        let _ = hex::encode_to_slice(digest, &mut hex);
        let mut key = String::with_capacity(self.0.len() + 1 + hex.len());
        key.push_str(&self.0);
        key.push(':');
        key.extend(hex.iter().map(|&b| char::from(b)));
        key
    }

    /// The prefix shared by every key of this namespace, `<namespace>:`.
    pub fn prefix(&self) -> String {
        format!("{}:", self.0)
    }

    /// Whether `key` is a template key of this namespace (not an index key).
    pub fn is_template_key(&self, key: &str) -> bool {
        self.name_hash_of_key(key).is_some()
    }

    /// The name hash a template key of this namespace carries (see [`Self::key_for`]), or
    /// `None` when `key` is not one.
    pub fn name_hash_of_key(&self, key: &str) -> Option<ContentHash> {
        let hex = key.strip_prefix(self.0.as_str())?.strip_prefix(':')?;
        let valid = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        valid.then(|| ContentHash::from_hex(hex).ok()).flatten()
    }

    /// The key of the index root record, `<namespace>:index`.
    pub fn index_root_key(&self) -> String {
        format!("{}:index", self.0)
    }

    /// The key of the namespace's write lease, `{<namespace>:index}:lease`: its hash tag puts it
    /// in the Redis Cluster slot of the index, so that index updates can check it atomically.
    pub fn lease_key(&self) -> String {
        format!("{{{}:index}}:lease", self.0)
    }

    /// The key of the namespace's run history, `{<namespace>:index}:history` (see
    /// `crate::history`): like the lease key, never a template key, so checks and listings
    /// ignore it.
    pub fn history_key(&self) -> String {
        format!("{{{}:index}}:history", self.0)
    }

    /// The key of one index shard, `<namespace>:index:<generation>:<shard>`.
    pub fn index_shard_key(&self, generation: u64, shard: u32) -> String {
        format!("{}:index:{generation:016x}:{shard}", self.0)
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace(DEFAULT_NAMESPACE.to_owned())
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `key` has the shape of a template entry key of any namespace,
/// `<namespace>:<64 lowercase hex>` (index keys do not).
pub fn is_entry_key(key: &str) -> bool {
    key.split_once(':').is_some_and(|(ns, h)| {
        is_namespace(ns)
            && h.len() == 64
            && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Checks that `name` is a valid template name: non-empty, at most 65,535 bytes, relative,
/// `/`-separated, with no empty, `.` or `..` component.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::new(
            ErrorKind::ConfigInvalid,
            format!("template name {name:?} is invalid: {why}"),
        ))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > u16::MAX as usize {
        return bad("it is longer than 65535 bytes");
    }
    if name.starts_with('/') || name.contains('\\') {
        return bad("it must be a relative, '/'-separated path");
    }
    if name
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return bad("it has an empty, '.' or '..' component");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_namespace_and_hex_sha256_of_the_name() {
        let ns = Namespace::default();
        let key = ns.key_for("emails/welcome.html");
        assert_eq!(key.len(), 4 + 64);
        assert!(key.starts_with("tpl:"));
        assert!(ns.is_template_key(&key));
        assert_eq!(
            ns.name_hash_of_key(&key),
            Some(ContentHash::of(b"emails/welcome.html"))
        );
        assert_eq!(ns.name_hash_of_key(&key.replace("tpl:", "TPL:")), None);
        assert!(!ns.is_template_key(&ns.index_root_key()));
        assert!(!ns.is_template_key(&ns.index_shard_key(7, 0)));
        assert!(!Namespace::new("other").unwrap().is_template_key(&key));
        assert!(is_entry_key(&key));
        assert!(!is_entry_key(&ns.index_root_key()));
        assert!(!is_entry_key(&ns.index_shard_key(7, 0)));
        assert_eq!(ns.lease_key(), "{tpl:index}:lease");
        assert!(!is_entry_key(&ns.lease_key()) && !ns.is_template_key(&ns.lease_key()));
        assert_eq!(ns.history_key(), "{tpl:index}:history");
        assert!(!is_entry_key(&ns.history_key()) && !ns.is_template_key(&ns.history_key()));
        assert!(
            !ns.history_key().starts_with(&ns.prefix()),
            "not listed with the templates"
        );
        crate::backend::validate_key(&ns.history_key()).unwrap();
        // Known vector: SHA-256("a") .
        assert_eq!(
            ns.key_for("a"),
            "tpl:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
        );
    }

    #[test]
    fn namespaces_are_validated() {
        assert!(Namespace::new("tpl-prod.v2").is_ok());
        for bad in ["", "has space", "a:b", &"x".repeat(65), "é"] {
            let err = Namespace::new(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ConfigInvalid, "{bad}");
        }
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("a/b.html").is_ok());
        for bad in ["", "/abs", "a//b", "a/../b", "./a", "a\\b"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hex_round_trip() {
        let h = ContentHash::of(b"hello");
        assert_eq!(ContentHash::from_hex(&h.to_hex()).unwrap(), h);
        assert!(ContentHash::from_hex("zz").is_err());
    }
}
