//! The versioned record stored as each template's cache value (see `docs/format.md`).

use bytes::{BufMut, Bytes, BytesMut};

use super::bytes::Reader;
use super::key::ContentHash;
use crate::error::{Error, ErrorKind, Result};

/// The first four bytes of every record.
pub const RECORD_MAGIC: &[u8; 4] = b"TPLC";
/// The record format version this crate writes and reads.
pub const RECORD_VERSION: u8 = 1;
/// Bytes in a record before the name: magic, version, flags, name length.
const PREFIX_LEN: usize = 4 + 1 + 1 + 2;
/// Bytes between the name and the content: hash, size, mtime, warmed-at.
const FIXED_LEN: usize = 32 + 8 + 8 + 8;

/// One template as stored in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The template's name: its path relative to the root, `/`-separated.
    pub name: String,
    /// SHA-256 of `content`.
    pub hash: ContentHash,
    /// The source file's modification time, in nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// When the record was written, in nanoseconds since the Unix epoch.
    pub warmed_ns: i64,
    /// The template's content.
    pub content: Bytes,
}

impl Record {
    /// A record for `content`, hashing it.
    pub fn new(name: impl Into<String>, content: Bytes, mtime_ns: i64, warmed_ns: i64) -> Self {
        Record {
            name: name.into(),
            hash: ContentHash::of(&content),
            mtime_ns,
            warmed_ns,
            content,
        }
    }

    /// The content size in bytes.
    pub fn size(&self) -> u64 {
        self.content.len() as u64
    }

    /// The length of the encoded record.
    pub fn encoded_len(&self) -> usize {
        PREFIX_LEN + self.name.len() + FIXED_LEN + self.content.len()
    }

    /// Encodes the record; fails only if the name is longer than 65,535 bytes.
    pub fn encode(&self) -> Result<Bytes> {
        let name_len = u16::try_from(self.name.len()).map_err(|_| {
            Error::new(
                ErrorKind::ConfigInvalid,
                format!(
                    "template name is longer than 65535 bytes: {:.60}...",
                    self.name
                ),
            )
        })?;
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        buf.put_slice(RECORD_MAGIC);
        buf.put_u8(RECORD_VERSION);
        buf.put_u8(0);
        buf.put_u16(name_len);
        buf.put_slice(self.name.as_bytes());
        buf.put_slice(&self.hash.0);
        buf.put_u64(self.size());
        buf.put_i64(self.mtime_ns);
        buf.put_i64(self.warmed_ns);
        buf.put_slice(&self.content);
        Ok(buf.freeze())
    }

    /// Decodes and verifies a record. Any malformed input, including content that does not
    /// match its hash, is an [`ErrorKind::Corrupt`] error; this never panics.
    pub fn decode(bytes: &Bytes) -> Result<Self> {
        let corrupt = |why: String| Err(Error::new(ErrorKind::Corrupt, why));
        let mut r = Reader { bytes, pos: 0 };
        if r.take(4) != Some(RECORD_MAGIC.as_slice()) {
            return corrupt("not a template record (bad magic)".into());
        }
        match r.u8() {
            Some(RECORD_VERSION) => {}
            Some(v) => return corrupt(format!("unsupported record version {v}")),
            None => return corrupt("record truncated".into()),
        }
        let (Some(_flags), Some(name_len)) = (r.u8(), r.u16()) else {
            return corrupt("record truncated".into());
        };
        let Some(name) = r.take(name_len as usize) else {
            return corrupt("record truncated in the name".into());
        };
        let Ok(name) = std::str::from_utf8(name) else {
            return corrupt("record name is not UTF-8".into());
        };
        let (Some(hash), Some(size), Some(mtime_ns), Some(warmed_ns)) =
            (r.take(32), r.u64(), r.i64(), r.i64())
        else {
            return corrupt(format!("record of {name:?} truncated in its header"));
        };
        let remaining = bytes.len() - r.pos;
        if size != remaining as u64 {
            return corrupt(format!(
                "record of {name:?} says {size} content bytes but holds {remaining}"
            ));
        }
        let mut hash_arr = [0u8; 32];
        hash_arr.copy_from_slice(hash);
        let record = Record {
            name: name.to_owned(),
            hash: ContentHash(hash_arr),
            mtime_ns,
            warmed_ns,
            content: bytes.slice(r.pos..),
        };
        if ContentHash::of(&record.content) != record.hash {
            return corrupt(format!(
                "record of {name:?}: content does not match its SHA-256"
            ));
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Record {
        Record::new(
            "mail/welcome.html",
            Bytes::from_static(b"<p>Hi {{ name }}</p>"),
            11,
            22,
        )
    }

    #[test]
    fn round_trip() {
        let r = sample();
        let enc = r.encode().unwrap();
        assert_eq!(enc.len(), r.encoded_len());
        assert_eq!(&enc[..4], b"TPLC");
        assert_eq!(Record::decode(&enc).unwrap(), r);
    }

    #[test]
    fn layout_matches_docs_format_md() {
        let r = Record::new("a", Bytes::from_static(b"xy"), 1, 2);
        let enc = r.encode().unwrap();
        assert_eq!(&enc[4..8], &[1, 0, 0, 1]);
        assert_eq!(enc[8], b'a');
        assert_eq!(&enc[9..41], &ContentHash::of(b"xy").0);
        assert_eq!(&enc[41..49], &2u64.to_be_bytes());
        assert_eq!(&enc[49..57], &1i64.to_be_bytes());
        assert_eq!(&enc[57..65], &2i64.to_be_bytes());
        assert_eq!(&enc[65..], b"xy");
    }

    #[test]
    fn tampered_content_is_corrupt() {
        let enc = sample().encode().unwrap();
        let mut v = enc.to_vec();
        let last = v.len() - 1;
        v[last] ^= 1;
        let err = Record::decode(&Bytes::from(v)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(err.message().contains("does not match"), "{err}");
    }

    #[test]
    fn garbage_is_corrupt() {
        for g in [&b""[..], b"garbage", b"TPLC", b"TPLC\x02\x00\x00\x00"] {
            let err = Record::decode(&Bytes::copy_from_slice(g)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupt);
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Record::decode(&Bytes::from(data));
        }

        #[test]
        fn decode_never_panics_on_mutated_records(
            name in "[a-z/]{1,40}",
            content in proptest::collection::vec(any::<u8>(), 0..256),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let rec = Record::new(name, Bytes::from(content), 5, 6);
            let mut v = rec.encode().unwrap().to_vec();
            for (i, b) in flips { let i = i.index(v.len()); v[i] ^= b; }
            let cut = cut.index(v.len() + 1);
            let _ = Record::decode(&Bytes::from(v[..cut].to_vec()));
        }

        #[test]
        fn round_trip_any(name in "\\PC{1,50}", content in proptest::collection::vec(any::<u8>(), 0..1024),
                          m in any::<i64>(), w in any::<i64>()) {
            let rec = Record::new(name, Bytes::from(content), m, w);
            prop_assert_eq!(Record::decode(&rec.encode().unwrap()).unwrap(), rec);
        }
    }
}
