//! The memory design, guarded: `tcache` warms and deep-checks a tree whose content is several
//! times a set memory cap, against a real redis-server, and its peak RSS stays under the cap.
//! Content is read, written, fetched and verified in bounded windows and dropped as it goes;
//! nothing proportional to the content is ever held.
//!
//! One test per binary: the peak is the kernel's maximum over every waited-for child of this
//! process, so no other `tcache` run may share it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Env;
use nix::sys::resource::{UsageWho, getrusage};
use template_cache_test_servers::RedisServer;

/// Templates in the tree, and bytes in each: 320 MiB of content in all.
const FILES: usize = 1_280;
const FILE_BYTES: usize = 256 * 1024;
/// The cap on every command's peak RSS.
const CAP_BYTES: u64 = 96 * 1024 * 1024;

/// The largest peak RSS of the children waited for so far, in bytes (Linux reports KiB).
fn children_peak_rss() -> u64 {
    getrusage(UsageWho::RUSAGE_CHILDREN).unwrap().max_rss() as u64 * 1024
}

#[test]
fn warm_and_deep_check_of_a_tree_over_the_memory_cap_stay_under_it() {
    let server = RedisServer::start();
    let env = Env::with_backend(&server.url());
    let mut total = 0;
    for i in 0..FILES {
        let dir = env.root.join(format!("big/{:02}", i % 16));
        std::fs::create_dir_all(&dir).unwrap();
        // Distinct content per file: nothing can be shared or deduplicated.
        let line = format!("<p>template {i} line</p>\n");
        let content = line.repeat(FILE_BYTES / line.len() + 1);
        std::fs::write(dir.join(format!("t{i}.html")), &content[..FILE_BYTES]).unwrap();
        total += FILE_BYTES as u64;
    }
    assert!(total > 3 * CAP_BYTES, "the tree must dwarf the cap");

    let (code, warm) = env.json(&["warm", env.dir()]);
    assert_eq!(code, 0, "{warm}");
    assert!(warm["bytes_written"].as_u64().unwrap() > total, "{warm}");
    let after_warm = children_peak_rss();
    assert!(
        after_warm < CAP_BYTES,
        "cold warm of {total} bytes peaked at {after_warm} bytes, over the cap of {CAP_BYTES}"
    );

    // A fresh state: the deep check reads every file again as well as every entry.
    std::fs::remove_dir_all(&env.state).unwrap();
    let (code, deep) = env.json(&["check", "--deep", env.dir()]);
    assert_eq!(code, 0, "{deep}");
    assert_eq!(deep["consistent"], true, "{deep}");
    let after_check = children_peak_rss();
    eprintln!("peak RSS: cold warm {after_warm} bytes, with the deep check {after_check} bytes");
    assert!(
        after_check < CAP_BYTES,
        "deep check of {total} bytes peaked at {after_check} bytes, over the cap of {CAP_BYTES}"
    );
}
