//! Where a cache key lives in the store: the mapping between keys and object paths.
//!
//! Cache keys are 1 to 250 bytes of printable ASCII ([`template_cache_core::backend::validate_key`]),
//! such as `tpl:<64 hex>`, `tpl:index`, `tpl:index:<16 hex>:<shard>` and the lease key
//! `{tpl:index}:lease`. Object stores and file systems reject or mangle some of those bytes
//! (`/` separates path segments, `{`, `}`, `%` and `#` are percent-encoded by `object_store`,
//! `:` is forbidden in Windows file names, `*#123` names are `LocalFileSystem` temporaries, case
//! is folded on macOS and Windows). So every key is written in a small, safe alphabet:
//!
//! - **Escaping.** Lowercase letters, digits, `-` and `.` stand for themselves; every other byte
//!   (uppercase letters, `_`, `:`, `{`, …) is written `_` and two lowercase hex digits (`:` is
//!   `_3a`, `A` is `_41`, `_` is `_5f`). A `.` at the start or end of a segment is escaped too
//!   (`_2e`), so no segment is `.` or `..`, none is hidden, none ends in a dot (Windows).
//! - **Two levels.** A key is split at its first `:`. The text up to and including it, escaped,
//!   is a directory; the rest, escaped, is the object's name (`_` alone when the rest is empty):
//!   `tpl:3f…a9` is `<root>/tpl_3a/3f…a9`, `tpl:index:00…01:0` is
//!   `<root>/tpl_3a/index_3a00…01_3a0`, the lease key `{tpl:index}:lease` is
//!   `<root>/_7btpl_3a/index_7d_3alease`. A key without `:` is an object directly under the
//!   root; it never collides with a directory, whose names all end in `_3a`.
//!
//! The mapping is a bijection between keys and the paths it produces, and decoding is strict: a
//! path that encoding would not have produced (a file someone else put under the root, a
//! `.tcache-lock` file) is not a key and is ignored by [`CacheBackend::list_keys`].
//!
//! Listing a namespace (`tpl:`) lists one directory, so many caches can share a bucket.
//! Listing a prefix without `:` lists everything under the root and filters.
//!
//! Lengths: a 64-byte namespace of plain characters plus a template hash makes a 67-byte
//! directory and a 64-byte name, well inside S3's 1,024-byte keys and the 255-byte names of local
//! file systems. An arbitrary 250-byte key of escaped bytes can reach 750 bytes, which a local
//! file system refuses (an I/O error naming the path); object stores accept it.
//!
//! [`CacheBackend::list_keys`]: template_cache_core::CacheBackend::list_keys

use std::fmt::Write as _;

use object_store::path::Path;
use template_cache_core::backend::validate_key;

/// The name of the object holding the empty rest of a key that ends in its first `:`.
const EMPTY_REST: &str = "_";

/// The object path of cache key `key` under `root`.
pub fn path_of(root: &Path, key: &str) -> Path {
    match key.split_once(':') {
        Some((head, rest)) => {
            let dir = escape(&format!("{head}:"));
            let name = if rest.is_empty() {
                EMPTY_REST.to_owned()
            } else {
                escape(rest)
            };
            root.clone().join(dir.as_str()).join(name.as_str())
        }
        None => root.clone().join(escape(key).as_str()),
    }
}

/// The directory holding every key that starts with `prefix`, when the prefix names one (it
/// holds a `:`); `None` when only the whole root does.
pub fn dir_of(root: &Path, prefix: &str) -> Option<Path> {
    let (head, _) = prefix.split_once(':')?;
    Some(root.clone().join(escape(&format!("{head}:")).as_str()))
}

/// The cache key stored at `path` under `root`, or `None` if `path` is not one this mapping
/// produces (a foreign object, a lock file).
pub fn key_of(root: &Path, path: &Path) -> Option<String> {
    let parts: Vec<_> = path.prefix_match(root)?.collect();
    let key = match parts.as_slice() {
        [name] => {
            let key = unescape(name.as_ref())?;
            (!key.contains(':')).then_some(key)?
        }
        [dir, name] => {
            let head = unescape(dir.as_ref())?;
            // The directory is the key up to and including its first ':'.
            if head.find(':') != Some(head.len() - 1) {
                return None;
            }
            let rest = match name.as_ref() {
                EMPTY_REST => String::new(),
                other => unescape(other)?,
            };
            head + &rest
        }
        _ => return None,
    };
    validate_key(&key).ok()?;
    Some(key)
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
}

/// Escapes one path segment (see the module documentation).
fn escape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(bytes.len() + 8);
    for (i, &b) in bytes.iter().enumerate() {
        let edge_dot = b == b'.' && (i == 0 || i + 1 == bytes.len());
        if is_plain(b) && !edge_dot {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "_{b:02x}");
        }
    }
    out
}

/// Reverses [`escape`]; `None` unless `segment` is exactly what `escape` produces for some text.
fn unescape(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = segment.get(i + 1..i + 3)?;
            if !hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else if is_plain(bytes[i]) {
            out.push(bytes[i]);
            i += 1;
        } else {
            return None;
        }
    }
    let text = String::from_utf8(out).ok()?;
    // Canonical form only: `_61` is not another spelling of `a`.
    (escape(&text) == segment).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> Path {
        Path::from("caches/prod")
    }

    #[test]
    fn keys_template_cache_writes_have_readable_paths() {
        let hash = "3f".repeat(32);
        let cases = [
            (format!("tpl:{hash}"), format!("caches/prod/tpl_3a/{hash}")),
            (
                "tpl:index".to_owned(),
                "caches/prod/tpl_3a/index".to_owned(),
            ),
            (
                "tpl:index:0000000000000001:7".to_owned(),
                "caches/prod/tpl_3a/index_3a0000000000000001_3a7".to_owned(),
            ),
            (
                "{tpl:index}:lease".to_owned(),
                "caches/prod/_7btpl_3a/index_7d_3alease".to_owned(),
            ),
            (
                "My_Site.v2:index".to_owned(),
                "caches/prod/_4dy_5f_53ite.v2_3a/index".to_owned(),
            ),
        ];
        for (key, path) in cases {
            assert_eq!(path_of(&root(), &key).as_ref(), path, "{key}");
            assert_eq!(key_of(&root(), &Path::from(path.as_str())), Some(key));
        }
    }

    #[test]
    fn every_printable_byte_round_trips_in_the_safe_alphabet() {
        let printable: String = (0x21u8..0x7f).map(char::from).collect();
        let mut keys = vec![
            printable.clone(),
            format!("ns:{printable}"),
            format!("{printable}:x"),
            "ns:".to_owned(),
            ":".to_owned(),
            ":x".to_owned(),
            ".".to_owned(),
            "..".to_owned(),
            "ns:.".to_owned(),
            "ns:..".to_owned(),
            "a.:b.".to_owned(),
            "x#123".to_owned(),
            "ns:x#123".to_owned(),
            "k".repeat(250),
        ];
        keys.extend((0x21u8..0x7f).map(|b| char::from(b).to_string()));
        keys.extend((0x21u8..0x7f).map(|b| format!("ns:{}", char::from(b))));
        for key in keys {
            let path = path_of(&root(), &key);
            for part in path.prefix_match(&root()).expect("under the root") {
                let s = part.as_ref();
                assert!(
                    s.bytes().all(|b| is_plain(b) || b == b'_'),
                    "{key:?} -> {s:?}"
                );
                assert!(!s.starts_with('.') && !s.ends_with('.'), "{key:?} -> {s:?}");
            }
            // What object_store stores is exactly what we built: nothing percent-encoded.
            assert!(!path.as_ref().contains('%'), "{key:?} -> {path}");
            assert_eq!(key_of(&root(), &path), Some(key.clone()), "{path}");
        }
    }

    #[test]
    fn directories_and_root_objects_never_collide() {
        // A colon-less key is an object under the root; a namespace is a directory there.
        let file = path_of(&root(), "tpl");
        let dir = dir_of(&root(), "tpl:").expect("a namespace prefix");
        assert_ne!(file, dir);
        assert!(!file.prefix_matches(&dir));
        assert!(path_of(&root(), "tpl:x").prefix_matches(&dir));
        // Case is never significant on disk.
        assert_ne!(path_of(&root(), "Tpl:x"), path_of(&root(), "tpl:x"));
        assert_eq!(
            path_of(&root(), "Tpl:x").as_ref().to_ascii_lowercase(),
            path_of(&root(), "Tpl:x").as_ref()
        );
    }

    #[test]
    fn foreign_paths_are_not_keys() {
        for p in [
            "caches/prod/README.txt",
            "caches/prod/.tcache-lock",
            "caches/prod/tpl_3a/_61",
            "caches/prod/tpl_3a/UPPER",
            "caches/prod/tpl/x",
            "caches/prod/a_3ab_3a/x",
            "caches/prod/tpl_3a/x/y",
            "caches/prod/tpl_3a/_zz",
            "caches/prod/tpl_3a/_4",
            "caches/prod/tpl_3a/x.",
            "caches/prod/_3a",
            "caches/other/tpl_3a/x",
            "caches/prod",
        ] {
            assert_eq!(key_of(&root(), &Path::from(p)), None, "{p}");
        }
        // A root object that decodes to a key holding ':' would shadow a directory: refused.
        assert_eq!(key_of(&root(), &Path::from("caches/prod/a_3ab")), None);
    }

    #[test]
    fn an_empty_root_is_the_store_root() {
        let key = "tpl:index";
        let path = path_of(&Path::default(), key);
        assert_eq!(path.as_ref(), "tpl_3a/index");
        assert_eq!(key_of(&Path::default(), &path).as_deref(), Some(key));
    }
}
