//! Redis-specific behaviour against real servers: authentication, outages, raw corruption.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use template_cache_core::{
    Cache, CacheBackend, CheckMode, Checker, EngineConfig, ErrorKind, Namespace, ResolvePolicy,
    SourceConfig, Warmer,
};
use template_cache_redis::RedisBackend;
use template_cache_test_servers::{RedisCluster, RedisServer};

fn tree(count: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    template_cache_testkit::sample_tree(dir.path(), count);
    dir
}

#[tokio::test]
async fn wrong_password_is_a_clear_permanent_error_and_acl_users_work() {
    let server = RedisServer::start_with(&["--requirepass", "right-pw"]);
    let port = server.port();
    let err = RedisBackend::connect(&format!("redis://:wrong-pw@127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(!err.is_temporary());
    assert!(!err.to_report_string().contains("wrong-pw"), "{err}");
    let err = RedisBackend::connect(&format!("redis://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::PermissionDenied,
        "no password: {err}"
    );

    let b = RedisBackend::connect(&format!("redis://:right-pw@127.0.0.1:{port}/0"))
        .await
        .unwrap();
    assert!(!b.describe().contains("right-pw"));
    assert!(!format!("{b:?}").contains("right-pw"));
    server.cli(&[
        "-a",
        "right-pw",
        "--no-auth-warning",
        "ACL",
        "SETUSER",
        "app",
        "on",
        ">app-pw",
        "~*",
        "+@all",
    ]);
    let app = RedisBackend::connect(&format!("redis://app:app-pw@127.0.0.1:{port}"))
        .await
        .unwrap();
    Cache::new(Arc::new(app))
        .set("k", "v".into())
        .await
        .unwrap();
    let b = Cache::new(Arc::new(b));
    assert_eq!(b.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
}

#[tokio::test]
async fn unreachable_server_is_temporary_and_quick() {
    let server = RedisServer::start();
    let url = server.url();
    drop(server);
    let start = std::time::Instant::now();
    let err = RedisBackend::connect(&url).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_temporary());
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn a_server_restart_in_the_middle_of_a_warm_is_survived_and_the_next_run_converges() {
    let mut server = RedisServer::start();
    let url = format!(
        "{}?response_timeout=1s&connect_timeout=300ms&reconnect_attempts=1",
        server.url()
    );
    let backend: Arc<dyn CacheBackend> = Arc::new(RedisBackend::connect(&url).await.unwrap());
    // The restarted server is empty (persistence off): the next runs must rewrite everything.
    template_cache_testkit::scenario_outage_during_warm(backend, move || {
        std::thread::sleep(Duration::from_millis(600));
        server.stop();
        std::thread::sleep(Duration::from_millis(700));
        server.restart();
        server
    })
    .await;
}

#[tokio::test]
async fn raw_corruption_is_found_by_deep_checks_and_repaired_on_a_cluster() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap();
    let backend: Arc<dyn CacheBackend> =
        Arc::new(RedisBackend::connect(&cluster.url()).await.unwrap());
    let dir = tree(200);
    let mut cfg = EngineConfig::new(SourceConfig::new(dir.path()));
    cfg.namespace = Namespace::new("raw").unwrap();
    let r = Warmer::new(Arc::clone(&backend), cfg.clone())
        .unwrap()
        .run_once()
        .await
        .unwrap();
    assert_eq!(r.written, 200);
    // Entries are spread over every primary.
    for node in cluster.nodes() {
        let n: usize = node.cli(&["DBSIZE"]).trim().parse().unwrap();
        assert!(n > 10, "node {} holds {n} keys", node.port());
    }
    let key = cfg.namespace.key_for("emails/t002.html");
    template_cache_test_servers::redis_cli(
        cluster.nodes()[0].port(),
        &["-c", "SET", &key, "garbage"],
    );
    let orphan_key = cfg.namespace.key_for("stray.html");
    let stray = template_cache_core::Record::new("stray.html", "x".into(), 0, 0)
        .encode()
        .unwrap();
    Cache::new(Arc::clone(&backend))
        .set(&orphan_key, stray)
        .await
        .unwrap();

    let checker = Checker::new(Arc::clone(&backend), cfg).unwrap();
    let deep = checker.check(CheckMode::Deep).await.unwrap();
    assert_eq!(deep.corrupt, ["emails/t002.html"]);
    assert_eq!(
        deep.orphaned,
        ["stray.html"],
        "found by SCAN on every primary"
    );
    let fix = checker
        .resolve(&deep, &ResolvePolicy::default())
        .await
        .unwrap();
    assert_eq!((fix.repaired, fix.deleted), (1, 1));
    assert!(checker.check(CheckMode::Deep).await.unwrap().consistent);
}

#[tokio::test]
async fn ttl_expires_entries_and_warms_restore_them() {
    let server = RedisServer::start();
    let backend: Arc<dyn CacheBackend> = Arc::new(
        RedisBackend::connect(&format!("{}?ttl=1s", server.url()))
            .await
            .unwrap(),
    );
    let dir = tree(5);
    let mut cfg = EngineConfig::new(SourceConfig::new(dir.path()));
    cfg.namespace = Namespace::new("ttl").unwrap();
    let warmer = Warmer::new(Arc::clone(&backend), cfg.clone()).unwrap();
    warmer.run_once().await.unwrap();
    let ttl: i64 = server
        .cli(&["PTTL", &cfg.namespace.key_for("pages/t000.html")])
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 0 && ttl <= 1000, "{ttl}");
    let index_ttl: i64 = server
        .cli(&["PTTL", &cfg.namespace.index_root_key()])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(index_ttl, -1, "the index never expires");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let check = Checker::new(Arc::clone(&backend), cfg)
        .unwrap()
        .check(CheckMode::Quick)
        .await
        .unwrap();
    assert_eq!(check.missing.len(), 5);
    assert_eq!(warmer.run_once().await.unwrap().written, 5);
}

#[tokio::test]
async fn tls_verifies_the_server_certificate() {
    let server = tokio::task::spawn_blocking(RedisServer::start_tls)
        .await
        .unwrap();
    let ok = RedisBackend::connect(&server.url()).await.unwrap();
    assert!(ok.describe().starts_with("rediss://"));
    let ok = Cache::new(Arc::new(ok));
    ok.set("k", "v".into()).await.unwrap();
    assert_eq!(ok.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    // Without our test authority the system roots do not trust the server: a permanent error.
    let err = RedisBackend::connect(&format!("rediss://127.0.0.1:{}", server.port()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(!err.is_temporary());
    // Plain text to a TLS port fails, and a missing CA file is named.
    assert!(
        RedisBackend::connect(&format!("redis://127.0.0.1:{}", server.port()))
            .await
            .is_err()
    );
    let err = RedisBackend::connect(&format!(
        "rediss://127.0.0.1:{}?tls_ca=/no/such/ca.pem",
        server.port()
    ))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("/no/such/ca.pem"), "{err}");
}

/// The number after `prefix` (up to a comma or the line's end) in `INFO section`.
fn info_number(server: &RedisServer, section: &str, prefix: &str) -> Option<u64> {
    let info = server.cli(&["INFO", section]);
    info.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.split(',').next()?.trim().parse().ok())
}

/// Commands the server processed, from `INFO stats`.
fn commands_processed(server: &RedisServer) -> u64 {
    info_number(server, "stats", "total_commands_processed:")
        .expect("total_commands_processed in INFO stats")
}

#[tokio::test]
async fn ten_thousand_templates_take_a_few_dozen_commands_not_ten_thousand() {
    let server = RedisServer::start();
    let backend: Arc<dyn CacheBackend> =
        Arc::new(RedisBackend::connect(&server.url()).await.unwrap());
    let dir = tree(10_000);
    let mut cfg = EngineConfig::new(SourceConfig::new(dir.path()));
    cfg.namespace = Namespace::new("batching").unwrap();
    let warmer = Warmer::new(Arc::clone(&backend), cfg.clone()).unwrap();
    let before = commands_processed(&server);
    assert_eq!(warmer.run_once().await.unwrap().written, 10_000);
    let cold = commands_processed(&server) - before;
    // 40 MSETs of 256, the index marked and confirmed in fenced scripts of 2,048 fields (Redis
    // counts the lease GET and the HSETs each script runs), the lease, a few reads.
    assert!(
        cold < 160,
        "a cold warm of 10,000 templates sent {cold} commands"
    );
    let before = commands_processed(&server);
    assert_eq!(warmer.run_once().await.unwrap().written, 0);
    let rescan = commands_processed(&server) - before;
    // One HSCAN page per 10,000 fields, one EXISTS per 1,000 keys.
    assert!(rescan < 30, "a no-change rescan sent {rescan} commands");
    let before = commands_processed(&server);
    assert!(
        Checker::new(backend, cfg)
            .unwrap()
            .check(CheckMode::Deep)
            .await
            .unwrap()
            .consistent
    );
    let deep = commands_processed(&server) - before;
    assert!(deep < 120, "a deep check sent {deep} commands");
}

/// `EXISTS` commands the server processed, from `INFO commandstats`.
fn exists_calls(server: &RedisServer) -> u64 {
    // No line until the first EXISTS.
    info_number(server, "commandstats", "cmdstat_exists:calls=").unwrap_or(0)
}

#[tokio::test]
async fn a_rescan_checks_existence_only_when_the_server_may_have_dropped_entries() {
    let server = RedisServer::start();
    let backend: Arc<dyn CacheBackend> =
        Arc::new(RedisBackend::connect(&server.url()).await.unwrap());
    let dir = tree(50);
    let state = tempfile::tempdir().unwrap();
    let mut source = SourceConfig::new(dir.path());
    source.state_path = Some(state.path().join("fingerprints"));
    let warmer = Warmer::new(backend, EngineConfig::new(source)).unwrap();
    assert_eq!(warmer.run_once().await.unwrap().written, 50);

    // Nothing dropped since the cold warm: no entry is asked for.
    let before = exists_calls(&server);
    let r = warmer.run_once().await.unwrap();
    assert_eq!((r.written, r.unchanged), (0, 50), "{r:?}");
    assert_eq!(exists_calls(&server), before, "existence check not skipped");

    // An entry vanishes and the server says it dropped something (a key expired): the next
    // rescan checks existence and restores the entry.
    let name = "pages/t000.html";
    server.cli(&["DEL", &Namespace::default().key_for(name)]);
    server.cli(&["SET", "unrelated", "x", "PX", "1"]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    server.cli(&["GET", "unrelated"]); // expires it now, whatever the active cycle did
    let before = exists_calls(&server);
    let r = warmer.run_once().await.unwrap();
    assert!(exists_calls(&server) > before, "a changed stamp must check");
    assert_eq!((r.written, r.unchanged), (1, 49), "{r:?}");

    // Verified again: the shortcut is back.
    let before = exists_calls(&server);
    assert_eq!(warmer.run_once().await.unwrap().written, 0);
    assert_eq!(exists_calls(&server), before);
}
