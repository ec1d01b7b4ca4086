//! Index roots and shards (`TPLX`, `TPLS`) and hash-index field values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use template_cache_core::index::{hash, sharded};

fuzz_target!(|data: &[u8]| {
    // Every entry takes at least 43 bytes: nothing decodes beyond what the input holds.
    assert!(sharded::fuzz_decode(data) * 43 <= data.len());
    let _ = hash::decode_value(data);
});
