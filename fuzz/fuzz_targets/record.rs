//! Template records (`TPLC`): any bytes decode to a record or a `Corrupt` error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use template_cache_core::{Bytes, Record};

fuzz_target!(|data: &[u8]| {
    if let Ok(rec) = Record::decode(&Bytes::copy_from_slice(data)) {
        assert!(rec.content.len() <= data.len());
    }
});
