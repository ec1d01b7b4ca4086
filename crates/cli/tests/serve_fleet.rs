//! `tcache serve` in a fleet and through backend outages: two real `tcache serve` processes on
//! one namespace of a real redis-server (one writes, the other stands by and takes over when
//! the writer is killed or stopped), and a service whose redis-server or memcached is killed
//! with -9 and restarted empty on the same port.
//!
//! As in `serve.rs` (the process under test is `common::served::Served`; the polling helpers
//! are repeated here: each integration test file is its own crate), everything is verified from other processes and from the
//! services' `-v` logs, with deadlines, and every spawned process is killed on drop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Env;
use template_cache_test_servers::{MemcachedServer, RedisServer};

/// How long a service may take to start, take the lease (or stand by) and warm a small tree.
const READY: Duration = Duration::from_secs(20);
/// How long a single change may take to land when nothing is in the way.
const LANDS: Duration = Duration::from_secs(8);
/// The log line of the writer.
const HOLDING: &str = "holding the namespace write lease: this service writes";
/// The log line of a service that found the lease held by another.
const STANDING_BY: &str = "standing by: another service writes this namespace";

// ---------------------------------------------------------------------------------------------
// A `tcache serve` process and its log.

use common::served::Served;

// ---------------------------------------------------------------------------------------------
// The cache, seen from other processes.

/// The content of `name` in the cache (`tcache get`), or `None` when it is not there.
fn get(env: &Env, name: &str) -> Option<Vec<u8>> {
    let out = env.run(&["get", name]);
    out.status.success().then_some(out.stdout)
}

/// The exit code of `tcache check DIR` (with `extra` options).
fn check(env: &Env, dir: &str, extra: &[&str]) -> i32 {
    let mut args = vec!["check", dir];
    args.extend_from_slice(extra);
    env.run(&args).status.code().unwrap()
}

/// Polls `ok` until it holds and returns how long that took; panics with `what` and the logs of
/// `logs` at the deadline.
fn eventually(
    what: &str,
    timeout: Duration,
    logs: &[&Served],
    mut ok: impl FnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        if ok() {
            return started.elapsed();
        }
        if started.elapsed() > timeout {
            let logs: Vec<String> = logs.iter().map(|s| s.log()).collect();
            panic!("{what}: not within {timeout:?}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `name` holds `content` in the cache; returns how long that took.
fn lands(env: &Env, serve: &Served, name: &str, content: &str) -> Duration {
    eventually(
        &format!("{name} holds {content:?}"),
        LANDS,
        &[serve],
        || get(env, name).as_deref() == Some(content.as_bytes()),
    )
}

/// Writes `count` templates under `dir/` of `root`, 20 per subdirectory.
fn generate(root: &Path, dir: &str, count: usize) {
    for i in 0..count {
        let path = root.join(format!("{dir}/d{:03}/t{i:05}.html", i / 20));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("<p>{dir} template {i}</p>\n")).unwrap();
    }
}

fn files_under(root: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            n += files_under(&e.path());
        } else {
            n += 1;
        }
    }
    n
}

/// Asserts that a quick and a deep check of the tree find the cache consistent, with one entry
/// per file.
fn assert_consistent(env: &Env, logs: &[&Served]) {
    let files = files_under(&env.root);
    for deep in [false, true] {
        let mut args = vec!["check", env.dir()];
        if deep {
            args.push("--deep");
        }
        let (code, v) = env.json(&args);
        let logs: Vec<String> = logs.iter().map(|s| s.log()).collect();
        assert_eq!(code, 0, "check {args:?}: {v}\n{}", logs.join("\n"));
        assert_eq!(v["entries"].as_u64(), Some(files), "{v}");
    }
}

// ---------------------------------------------------------------------------------------------
// Two services on one namespace.

/// A fleet member: `tcache serve` with a lease TTL of 3 s, its own host name and state
/// directory.
fn member(env: &Env, host: &str) -> Served {
    let mut cmd = env.cmd(&[
        "-v",
        "--lease-ttl",
        "3s",
        "serve",
        env.dir(),
        "--check-jitter",
        "0s",
        "--max-backoff",
        "1s",
        "--orphan-grace",
        "2s",
    ]);
    cmd.env("TCACHE_HOST", host).env(
        "TCACHE_STATE_DIR",
        env.tmp.path().join(format!("state-{host}")),
    );
    Served::spawn(host, cmd)
}

/// Starts two members and waits until one writes (its first warm done) and the other stands
/// by; returns them as (holder, standby).
fn fleet(env: &Env) -> (Served, Served) {
    let (a, b) = (member(env, "host-a"), member(env, "host-b"));
    let role = |s: &Served| {
        if s.count(HOLDING) > 0 {
            Some(true)
        } else if s.count(STANDING_BY) > 0 {
            Some(false)
        } else {
            None
        }
    };
    eventually("both services found their role", READY, &[&a, &b], || {
        role(&a).is_some() && role(&b).is_some()
    });
    let (holder, standby) = match (role(&a), role(&b)) {
        (Some(true), Some(false)) => (a, b),
        (Some(false), Some(true)) => (b, a),
        _ => panic!(
            "exactly one service must write and the other stand by\n{}\n{}",
            a.log(),
            b.log()
        ),
    };
    eventually("the first warm", READY, &[&holder, &standby], || {
        check(env, env.dir(), &[]) == 0
    });
    assert_eq!(standby.count(HOLDING), 0, "{}", standby.log());
    assert_eq!(holder.count(STANDING_BY), 0, "{}", holder.log());
    (holder, standby)
}

fn fleet_env() -> (RedisServer, Env) {
    let server = RedisServer::start();
    let env = Env::with_backend(&server.url());
    generate(&env.root, "gen", 200);
    (server, env)
}

#[test]
fn a_standby_takes_over_from_a_holder_killed_with_sigkill() {
    let (_server, env) = fleet_env();
    let (mut holder, mut standby) = fleet(&env);
    // The standby keeps standing by while the holder renews the lease (TTL 3 s).
    std::fs::write(
        env.root.join("gen/d000/t00007.html"),
        "written by the holder\n",
    )
    .unwrap();
    lands(
        &env,
        &holder,
        "gen/d000/t00007.html",
        "written by the holder\n",
    );
    assert_eq!(standby.count(HOLDING), 0, "{}", standby.log());

    let mark = standby.mark();
    holder.kill9();
    let killed = Instant::now();
    std::fs::write(
        env.root.join("gen/d000/t00007.html"),
        "written after the kill\n",
    )
    .unwrap();
    std::fs::write(
        env.root.join("gen/after-kill.html"),
        "added after the kill\n",
    )
    .unwrap();
    // Another host's holder: the standby waits for the record to expire (3 s), then writes.
    let limit = Duration::from_secs(3 + 7);
    eventually(
        "the standby wrote the edit",
        limit,
        &[&holder, &standby],
        || get(&env, "gen/d000/t00007.html").as_deref() == Some(&b"written after the kill\n"[..]),
    );
    let took = killed.elapsed();
    eprintln!("the edit landed {took:?} after the holder was killed");
    assert!(took < limit, "{took:?}");
    standby.wait_for_from(mark, HOLDING, Duration::ZERO);
    lands(
        &env,
        &standby,
        "gen/after-kill.html",
        "added after the kill\n",
    );
    assert_consistent(&env, &[&holder, &standby]);
}

#[test]
fn a_standby_takes_over_at_once_from_a_holder_stopped_with_sigterm() {
    let (_server, env) = fleet_env();
    let (mut holder, mut standby) = fleet(&env);
    let mark = standby.mark();
    holder.signal("TERM");
    let status = holder.wait_exit(Duration::from_secs(5));
    let exited = Instant::now();
    assert_eq!(status.code(), Some(0), "{}", holder.log());
    assert!(holder.count("write lease released") > 0, "{}", holder.log());
    // (`stopped` itself is not always logged: see `sigterm_always_logs_stopped` in serve.rs.)
    assert!(
        holder.count("stopping: finishing the batch in flight") > 0,
        "{}",
        holder.log()
    );
    // The lease was released: no need to wait for its TTL (3 s) to run out.
    standby.wait_for_from(mark, HOLDING, Duration::from_secs(10));
    let took = exited.elapsed();
    eprintln!("the standby took over {took:?} after the holder exited");
    assert!(
        took < Duration::from_secs(3),
        "the standby took {took:?} to take a released lease\n{}",
        standby.log()
    );
    std::fs::write(
        env.root.join("gen/d001/t00021.html"),
        "after the handover\n",
    )
    .unwrap();
    lands(
        &env,
        &standby,
        "gen/d001/t00021.html",
        "after the handover\n",
    );
    assert_consistent(&env, &[&holder, &standby]);
}

// ---------------------------------------------------------------------------------------------
// Backend outages.

/// A backend whose server can be killed and restarted, empty, on the same port.
trait Restartable {
    fn url(&self) -> String;
    fn stop(&mut self);
    fn restart(&mut self);
}

impl Restartable for RedisServer {
    fn url(&self) -> String {
        RedisServer::url(self)
    }
    fn stop(&mut self) {
        RedisServer::stop(self);
    }
    fn restart(&mut self) {
        RedisServer::restart(self);
    }
}

impl Restartable for MemcachedServer {
    fn url(&self) -> String {
        format!("memcache://{}", self.addr())
    }
    fn stop(&mut self) {
        MemcachedServer::stop(self);
    }
    fn restart(&mut self) {
        MemcachedServer::restart(self);
    }
}

fn serve(env: &Env, extra: &[&str]) -> Served {
    let mut args = vec![
        "-v",
        "serve",
        env.dir(),
        "--check-jitter",
        "0s",
        "--max-backoff",
        "1s",
        "--orphan-grace",
        "2s",
    ];
    args.extend_from_slice(extra);
    let mut cmd = env.cmd(&args);
    cmd.env("TCACHE_STATE_DIR", env.tmp.path().join("serve-state"));
    Served::spawn("serve", cmd)
}

/// The server is killed (-9); a file is edited and one added while it is down; it restarts
/// empty on the same port (once the service has seen the outage if `noticed`, else at once):
/// the service rewrites everything by itself.
fn edits_during_an_outage(server: &mut impl Restartable, noticed: bool) {
    let env = Env::with_backend(&server.url());
    generate(&env.root, "gen", 200);
    let mut serve = serve(&env, &[]);
    serve.wait_for(HOLDING, READY);
    eventually("the first warm", READY, &[&serve], || {
        check(&env, env.dir(), &[]) == 0
    });

    let mark = serve.mark();
    server.stop();
    std::fs::write(env.root.join("gen/d002/t00050.html"), "edited while down\n").unwrap();
    std::fs::write(
        env.root.join("gen/added-while-down.html"),
        "added while down\n",
    )
    .unwrap();
    if noticed {
        // The ignored tests below restart the server before the service sees the outage.
        let down = Instant::now();
        serve.wait_for_from(mark, "service work failed", Duration::from_secs(15));
        eprintln!("the service saw the outage after {:?}", down.elapsed());
    }
    server.restart();
    let restarted = Instant::now();
    let took = eventually(
        "the cache rewritten after the restart",
        Duration::from_secs(15),
        &[&serve],
        || check(&env, env.dir(), &[]) == 0,
    );
    eprintln!("consistent again {took:?} after the restart");
    if noticed {
        // The service logs its recovery when its run ends, which may be just after the check
        // above already sees the rewritten cache.
        serve.wait_for_from(mark, "the backend answers again", Duration::from_secs(5));
    }
    for (name, content) in [
        ("gen/d002/t00050.html", "edited while down\n"),
        ("gen/added-while-down.html", "added while down\n"),
        ("gen/d009/t00199.html", "<p>gen template 199</p>\n"),
        ("gen/d000/t00000.html", "<p>gen template 0</p>\n"),
    ] {
        assert_eq!(
            get(&env, name).as_deref(),
            Some(content.as_bytes()),
            "{name}\n{}",
            serve.log()
        );
    }
    assert!(get(&env, "pages/home.html").is_some(), "{}", serve.log());
    assert_consistent(&env, &[&serve]);
    assert!(restarted.elapsed() < Duration::from_secs(20));
}

#[test]
fn redis_restarted_empty_is_warmed_again() {
    edits_during_an_outage(&mut RedisServer::start(), true);
}

#[test]
fn memcached_restarted_empty_is_warmed_again() {
    edits_during_an_outage(&mut MemcachedServer::start(), true);
}

/// The server is killed and restarted empty while the service has nothing to write: the
/// service must notice (its lease renewal sees the record vanish) and warm everything again.
fn restart_while_idle(server: &mut impl Restartable) {
    let env = Env::with_backend(&server.url());
    generate(&env.root, "gen", 50);
    let mut serve = serve(&env, &[]);
    serve.wait_for(HOLDING, READY);
    eventually("the first warm", READY, &[&serve], || {
        check(&env, env.dir(), &[]) == 0
    });
    // The quick check scheduled at start is over: nothing more is due for an hour, as in
    // production.
    let scheduled = serve.wait_for("scheduled check", READY);
    serve.wait_for_from(scheduled, "check finished", READY);
    server.restart();
    eventually(
        "the cache rewritten after a restart while idle",
        Duration::from_secs(20),
        &[&serve],
        || check(&env, env.dir(), &[]) == 0,
    );
    assert_consistent(&env, &[&serve]);
}

#[test]
fn redis_restarted_while_idle_is_warmed_again() {
    restart_while_idle(&mut RedisServer::start());
}

#[test]
fn memcached_restarted_while_idle_is_warmed_again() {
    restart_while_idle(&mut MemcachedServer::start());
}

#[test]
fn redis_restarted_at_once_is_warmed_again() {
    edits_during_an_outage(&mut RedisServer::start(), false);
}

#[test]
fn memcached_restarted_at_once_is_warmed_again() {
    edits_during_an_outage(&mut MemcachedServer::start(), false);
}
