//! The run history (`tcache-history/1`): decoding never panics and keeps only whole records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use template_cache_core::history::History;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = History::decode(data) {
        // Every record decoded came from a line of the input.
        assert!(h.records.len() <= data.len());
    }
});
