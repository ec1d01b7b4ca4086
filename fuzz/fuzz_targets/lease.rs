//! Namespace write lease records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use template_cache_core::engine::lease::LeaseRecord;

fuzz_target!(|data: &[u8]| {
    if let Some(rec) = LeaseRecord::decode(data) {
        assert_eq!(LeaseRecord::decode(&rec.encode()), Some(rec));
    }
});
