//! The real `tcache` binary against real redis-server processes and a Redis Cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Env, names};
use template_cache_test_servers::{RedisCluster, RedisServer, redis_cli};

fn key_of(name: &str) -> String {
    template_cache::Namespace::default().key_for(name)
}

#[test]
fn full_life_cycle_on_redis_with_a_password() {
    let server = RedisServer::start_with(&["--requirepass", "pa55word"]);
    let env = Env::with_backend(&format!("redis://:pa55word@127.0.0.1:{}/0", server.port()));
    let (code, warm) = env.json(&["warm", env.dir()]);
    assert_eq!(code, 0, "{warm}");
    let files = warm["written"].as_u64().unwrap();
    assert_eq!(env.json(&["check", env.dir()]).0, 0);

    std::fs::write(env.root.join("pages/home.html"), "changed").unwrap();
    std::fs::remove_file(env.root.join("pages/about.html")).unwrap();
    std::fs::write(env.root.join("pages/new.html"), "new").unwrap();
    let auth = ["-a", "pa55word", "--no-auth-warning"];
    let mut args = auth.to_vec();
    let corrupt_key = key_of("emails/welcome.html");
    args.extend(["SET", corrupt_key.as_str(), "garbage"]);
    server.cli(&args);

    let (code, quick) = env.json(&["check", env.dir()]);
    assert_eq!(code, 1, "{quick}");
    assert_eq!(names(&quick, "missing"), ["pages/new.html"]);
    assert_eq!(names(&quick, "outdated"), ["pages/home.html"]);
    assert_eq!(names(&quick, "orphaned"), ["pages/about.html"]);
    let (code, deep) = env.json(&["check", env.dir(), "--deep"]);
    assert_eq!(code, 1);
    assert_eq!(names(&deep, "corrupt"), ["emails/welcome.html"]);
    let (code, fixed) = env.json(&["check", env.dir(), "--deep", "--fix"]);
    assert_eq!(code, 0, "{fixed}");
    assert_eq!(fixed["fix"]["repaired"].as_u64(), Some(1));
    let (code, deep) = env.json(&["check", env.dir(), "--deep"]);
    assert_eq!((code, deep["entries"].as_u64()), (0, Some(files)), "{deep}");

    let out = env.run(&["get", "emails/welcome.html"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Welcome"));
    // The password never shows, even at debug level.
    let out = env.cmd(&["-vv", "check", env.dir()]).output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("redis://:***@127.0.0.1"), "{all}");
    assert!(!all.contains("pa55word"), "{all}");
    let wrong = Env::with_backend(&format!("redis://:nope@127.0.0.1:{}/0", server.port()));
    let out = wrong.run(&["list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn warm_and_check_on_a_cluster() {
    let cluster = RedisCluster::start(3);
    let env = Env::with_backend(&cluster.url());
    assert_eq!(env.json(&["warm", env.dir()]).0, 0);
    std::fs::remove_file(env.root.join("pages/about.html")).unwrap();
    let stray = key_of("left-over.html");
    redis_cli(cluster.nodes()[1].port(), &["-c", "SET", &stray, "junk"]);
    let (code, deep) = env.json(&["check", env.dir(), "--deep"]);
    assert_eq!(code, 1);
    assert_eq!(names(&deep, "orphaned"), ["pages/about.html"]);
    assert_eq!(
        names(&deep, "corrupt"),
        std::slice::from_ref(&stray),
        "an undecodable stray key is reported by key"
    );
    assert_eq!(env.json(&["check", env.dir(), "--deep", "--fix"]).0, 0);
    assert_eq!(env.json(&["check", env.dir(), "--deep"]).0, 0);
}

#[test]
fn warm_and_check_over_tls() {
    let server = RedisServer::start_tls();
    let env = Env::with_backend(&server.url());
    assert_eq!(env.json(&["warm", env.dir()]).0, 0);
    let (code, v) = env.json(&["check", env.dir(), "--deep"]);
    assert_eq!((code, v["consistent"].as_bool()), (0, Some(true)), "{v}");
}
