//! One writer per namespace, enforced: real `tcache` processes racing on one namespace of a real
//! redis-server and a real memcached. Every writer logs when it takes and releases the lease
//! (`-v`), so the tests check from those logs that writing intervals never overlap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use template_cache_test_servers::{MemcachedServer, RedisServer};

/// A namespace on one backend, with template trees to race on.
struct Race {
    backend: String,
    ns: String,
    tmp: tempfile::TempDir,
}

impl Race {
    fn new(backend: String) -> Self {
        Race {
            backend,
            ns: format!("race{:08x}", fastrand_u32()),
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    /// A tree `name` of `count` templates under `name/`, and the same files in the union tree.
    fn tree(&self, name: &str, count: usize) -> String {
        for root in [self.tmp.path().join(name), self.tmp.path().join("union")] {
            for i in 0..count {
                let p = root.join(name).join(format!("t{i:05}.html"));
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, format!("<p>{name} {i}</p>")).unwrap();
            }
        }
        self.dir(name)
    }

    fn dir(&self, name: &str) -> String {
        self.tmp.path().join(name).to_str().unwrap().to_owned()
    }

    fn cmd(&self, host: &str, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tcache"));
        c.args(["--namespace", &self.ns])
            .args(args)
            .env("TCACHE_BACKEND", &self.backend)
            .env("TCACHE_HOST", host)
            .env(
                "TCACHE_STATE_DIR",
                self.tmp.path().join(format!("state-{host}")),
            )
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn spawn(&self, host: &str, args: &[&str]) -> Child {
        self.cmd(host, args).spawn().unwrap()
    }

    fn run(&self, host: &str, args: &[&str]) -> Output {
        self.cmd(host, args).output().unwrap()
    }

    /// A quick and a deep check of the union tree: consistent, with `entries` entries.
    fn assert_consistent(&self, entries: u64) {
        for mode in [&[][..], &["--deep"][..]] {
            let mut args = vec!["--json", "check"];
            let union = self.dir("union");
            args.push(&union);
            args.extend_from_slice(mode);
            let out = self.run("checker", &args);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(out.status.code(), Some(0), "{mode:?}: {v}");
            assert_eq!(v["entries"].as_u64(), Some(entries), "{mode:?}: {v}");
        }
    }
}

fn fastrand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `[acquired, released]` intervals of the write lease in a process's `-v` log, as the log's
/// RFC 3339 timestamps (comparable as text: same clock, same format).
fn lease_intervals(log: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut open: Option<String> = None;
    for line in log.lines() {
        let stamp = line.split_whitespace().next().unwrap_or("").to_owned();
        if line.contains("write lease acquired") {
            open = Some(stamp);
        } else if line.contains("write lease released") {
            let start = open.take().expect("released without acquiring");
            out.push((start, stamp));
        }
    }
    assert!(open.is_none(), "a lease was never released: {log}");
    out
}

/// Spawns `args` and returns once its log says it holds the write lease (its stderr is drained
/// in the background from then on), so that what follows races a real holder, however slow the
/// machine.
fn spawn_holder(race: &Race, host: &str, args: &[&str]) -> Child {
    use std::io::BufRead;
    let mut child = race.spawn(host, args);
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("write lease acquired") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the holder took the write lease");
    child
}

fn assert_no_overlap(logs: &[String]) {
    let mut all: Vec<(String, String)> = logs.iter().flat_map(|l| lease_intervals(l)).collect();
    assert!(!all.is_empty(), "nobody took the lease: {logs:?}");
    all.sort();
    for pair in all.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "two writers held the namespace at once: {pair:?}"
        );
    }
}

/// Three warmers started together, each adding its own 3,000 templates to one namespace, leave
/// every template indexed; their writes never overlap.
fn three_warmers(backend: String) {
    let race = Race::new(backend);
    let trees: Vec<String> = ["a", "b", "c"].iter().map(|t| race.tree(t, 3000)).collect();
    let children: Vec<Child> = trees
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            race.spawn(
                &format!("host{i}"),
                &["-v", "warm", dir, "--wait-lease", "120s"],
            )
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for out in &outs {
        assert_eq!(out.status.code(), Some(0), "{}", text(out));
    }
    assert_no_overlap(&outs.iter().map(text).collect::<Vec<_>>());
    race.assert_consistent(9000);
}

/// A warm and a `check --fix` racing on one namespace take turns and end consistent.
fn warm_and_fix(backend: String) {
    let race = Race::new(backend);
    let dir = race.tree("a", 2000);
    assert_eq!(race.run("h1", &["warm", &dir]).status.code(), Some(0));
    // Drift for both: changed and new files.
    for i in 0..300 {
        let p = Path::new(&dir).join(format!("a/t{i:05}.html"));
        std::fs::write(&p, format!("changed {i}")).unwrap();
        std::fs::copy(&p, race.tmp.path().join(format!("union/a/t{i:05}.html"))).unwrap();
    }
    let warm = race.spawn("h1", &["-v", "warm", &dir, "--wait-lease", "120s"]);
    let fix = race.spawn(
        "h2",
        &["-v", "check", &dir, "--fix", "--wait-lease", "120s"],
    );
    let (warm, fix) = (
        warm.wait_with_output().unwrap(),
        fix.wait_with_output().unwrap(),
    );
    assert_eq!(warm.status.code(), Some(0), "{}", text(&warm));
    // The check ran before or after the warm: it found drift and fixed it (0), or none (0).
    assert_eq!(fix.status.code(), Some(0), "{}", text(&fix));
    assert_no_overlap(&[text(&warm), text(&fix)]);
    race.assert_consistent(2000);
}

/// Without `--wait-lease` a second writer exits at once with "namespace busy" (exit 4), while
/// read-only commands go on; a holder killed with -9 frees the namespace at once for a process
/// on the same host, and within the lease TTL for one on another host.
fn busy_and_takeover(backend: String) {
    let race = Race::new(backend);
    let a = race.tree("a", 3000);
    let b = race.tree("b", 50);
    // A slow holder: 3,000 templates at 300 per second.
    let slow = ["-v", "--lease-ttl", "3s", "warm", &a, "--rate", "300"];
    let mut holder = spawn_holder(&race, "host-a", &slow);
    let busy = race.run("host-b", &["warm", &b]);
    assert_eq!(busy.status.code(), Some(4), "{}", text(&busy));
    assert!(text(&busy).contains("busy"), "{}", text(&busy));
    let read = race.run("host-b", &["check", &a]);
    assert_ne!(
        read.status.code(),
        Some(4),
        "reads need no lease: {}",
        text(&read)
    );

    // Killed on another host: the contender waits for the record to expire (TTL 3 s).
    holder.kill().unwrap();
    holder.wait().unwrap();
    let started = Instant::now();
    let out = race.run("host-b", &["warm", &b, "--wait-lease", "30s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(3 + 5),
        "took over after {waited:?}"
    );

    // Killed on this host: a restart takes over at once.
    let mut holder = spawn_holder(&race, "host-a", &slow);
    holder.kill().unwrap();
    holder.wait().unwrap();
    let started = Instant::now();
    let out = race.run("host-a", &["warm", &a]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "same-host takeover waited {:?}",
        started.elapsed()
    );
    race.assert_consistent(3050);
}

fn redis_url(server: &RedisServer) -> String {
    format!("redis://127.0.0.1:{}/0", server.port())
}

fn memcached_url(server: &MemcachedServer) -> String {
    format!("memcache://{}", server.addr())
}

#[test]
fn three_warmers_on_redis() {
    let s = RedisServer::start();
    three_warmers(redis_url(&s));
}

#[test]
fn three_warmers_on_memcached() {
    let s = MemcachedServer::start();
    three_warmers(memcached_url(&s));
}

#[test]
fn warm_and_fix_on_redis() {
    let s = RedisServer::start();
    warm_and_fix(redis_url(&s));
}

#[test]
fn warm_and_fix_on_memcached() {
    let s = MemcachedServer::start();
    warm_and_fix(memcached_url(&s));
}

#[test]
fn busy_and_takeover_on_redis() {
    let s = RedisServer::start();
    busy_and_takeover(redis_url(&s));
}

#[test]
fn busy_and_takeover_on_memcached() {
    let s = MemcachedServer::start();
    busy_and_takeover(memcached_url(&s));
}
