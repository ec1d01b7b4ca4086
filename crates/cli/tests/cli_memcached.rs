//! The real `tcache` binary against two real memcached servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Env, names};
use template_cache_test_servers::MemcachedServer;

#[test]
fn full_life_cycle_on_two_memcached_servers() {
    let (a, b) = (MemcachedServer::start(), MemcachedServer::start());
    let env = Env::with_backend(&format!("memcache://{},{}", a.addr(), b.addr()));
    let (code, warm) = env.json(&["warm", env.dir()]);
    assert_eq!(code, 0, "{warm}");
    assert_eq!(env.json(&["check", env.dir(), "--deep"]).0, 0);

    std::fs::write(env.root.join("pages/home.html"), "changed").unwrap();
    std::fs::remove_file(env.root.join("pages/about.html")).unwrap();
    std::fs::write(env.root.join("pages/new.html"), "new").unwrap();
    let key = template_cache::Namespace::default().key_for("emails/welcome.html");
    for server in [&a, &b] {
        // Whichever server holds it, corrupt it (the other ignores an unknown key).
        server.raw(
            format!("set {key} 0 0 7\r\ngarbage\r\n").as_bytes(),
            "STORED",
        );
    }
    let (code, deep) = env.json(&["check", env.dir(), "--deep"]);
    assert_eq!(code, 1, "{deep}");
    assert_eq!(names(&deep, "missing"), ["pages/new.html"]);
    assert_eq!(names(&deep, "outdated"), ["pages/home.html"]);
    assert_eq!(
        names(&deep, "orphaned"),
        ["pages/about.html"],
        "found through the index"
    );
    assert_eq!(names(&deep, "corrupt"), ["emails/welcome.html"]);
    let (code, fixed) = env.json(&["check", env.dir(), "--deep", "--fix"]);
    assert_eq!(code, 0, "{fixed}");
    assert_eq!(env.json(&["check", env.dir(), "--deep"]).0, 0);
    let out = env.run(&["get", "pages/new.html"]);
    assert_eq!(out.stdout, b"new");
}
