//! `tcache serve`, the real binary, against real redis-server and memcached processes: file
//! events written as they land, orphans deleted after their grace, a symlinked root followed
//! across a deploy, scheduled checks inside their windows, signals, configuration reloads, and
//! polling when the tree is not watched.
//!
//! Everything is verified from other processes (`tcache get`, `tcache check`) and from the
//! service's own `-v` log, polled with deadlines: no test sleeps for a fixed time where it can
//! wait for a condition. Every spawned process is killed when its guard drops, so a failed
//! assertion leaves nothing behind. The two-process (fleet) and backend-outage tests are in
//! `serve_fleet.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Env;
use template_cache_test_servers::{MemcachedServer, RedisServer};

/// The orphan grace the tests run with.
const GRACE: Duration = Duration::from_secs(2);
/// How long the service may take to start, take the lease and warm a small tree.
const READY: Duration = Duration::from_secs(20);
/// Logged when SIGTERM or SIGINT arrives.
const STOPPING: &str = "stopping: finishing the batch in flight";
/// How long a single change may take to land (it takes well under a second on an idle
/// machine; the margin is for a loaded 2-core machine running other tests).
const LANDS: Duration = Duration::from_secs(8);

// ---------------------------------------------------------------------------------------------
// A `tcache serve` process and its log.

use common::served::Served;

// ---------------------------------------------------------------------------------------------
// The cache, seen from other processes.

/// `tcache serve DIR` with the test defaults (`-v`, no check jitter, a short backoff, a 2 s
/// orphan grace) and `extra`, with a state directory of its own.
fn serve_cmd(env: &Env, dir: &str, extra: &[&str]) -> Command {
    let mut args = vec![
        "-v",
        "serve",
        dir,
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
    cmd
}

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

/// Waits until the service holds the lease and its first full warm is done (a check of `dir`
/// from another process finds the cache consistent).
fn ready(env: &Env, serve: &mut Served, dir: &str) {
    serve.wait_for(
        "holding the namespace write lease: this service writes",
        READY,
    );
    eventually("the first warm", READY, &[serve], || {
        check(env, dir, &[]) == 0
    });
}

/// Writes `count` templates under `dir/` of `root`, 20 per subdirectory.
fn generate(root: &Path, dir: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let name = format!("{dir}/d{:03}/t{i:05}.html", i / 20);
            let path = root.join(&name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, format!("<p>{dir} template {i}</p>\n")).unwrap();
            name
        })
        .collect()
}

/// The `entries` count of `tcache --json check DIR`, asserting it is consistent.
fn consistent_entries(env: &Env, dir: &str, deep: bool) -> u64 {
    let mut args = vec!["check", dir];
    if deep {
        args.push("--deep");
    }
    let (code, v) = env.json(&args);
    assert_eq!(code, 0, "check {args:?}: {v}");
    assert_eq!(v["consistent"].as_bool(), Some(true), "{v}");
    v["entries"].as_u64().unwrap()
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

// ---------------------------------------------------------------------------------------------
// File events on Redis and on Memcached.

/// Edits, additions (in a new subdirectory too), a rename, a deletion and a burst of 1,000
/// files, each verified from another process.
fn life_cycle(env: &Env, serve: &mut Served) {
    let dir = env.dir().to_owned();
    let started = Instant::now();
    ready(env, serve, &dir);
    eprintln!("ready after {:?}", started.elapsed());

    // An edit.
    std::fs::write(env.root.join("gen/d003/t00061.html"), "<p>edited</p>\n").unwrap();
    let took = lands(env, serve, "gen/d003/t00061.html", "<p>edited</p>\n");
    eprintln!("edit landed after {took:?}");

    // An addition in an existing directory, and one in a new subdirectory.
    std::fs::write(env.root.join("gen/d004/added.html"), "added\n").unwrap();
    let deep = env.root.join("fresh/deeper");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("new.html"), "in a new directory\n").unwrap();
    let took = lands(env, serve, "gen/d004/added.html", "added\n");
    eprintln!("addition landed after {took:?}");
    lands(env, serve, "fresh/deeper/new.html", "in a new directory\n");

    // A rename: the new name is readable soon, the old one is deleted after the grace.
    let renamed_at = Instant::now();
    std::fs::rename(
        env.root.join("gen/d001/t00030.html"),
        env.root.join("gen/d001/renamed.html"),
    )
    .unwrap();
    let took = lands(
        env,
        serve,
        "gen/d001/renamed.html",
        "<p>gen template 30</p>\n",
    );
    eprintln!("renamed file readable after {took:?}");

    // A deletion: the entry stays until the grace is over.
    let deleted_at = Instant::now();
    std::fs::remove_file(env.root.join("gen/d002/t00045.html")).unwrap();
    let right_away = get(env, "gen/d002/t00045.html");
    let asked_after = deleted_at.elapsed();
    assert_eq!(
        right_away.as_deref(),
        Some(&b"<p>gen template 45</p>\n"[..]),
        "a deleted file's entry is kept during its grace (asked {asked_after:?} after the \
         deletion)\n{}",
        serve.log()
    );

    // Both old entries go once their grace is over, and not before.
    let mut gone: [Option<Duration>; 2] = [None, None];
    let olds = [
        ("gen/d001/t00030.html", renamed_at),
        ("gen/d002/t00045.html", deleted_at),
    ];
    eventually(
        "the renamed and deleted files' entries deleted",
        GRACE + LANDS,
        &[serve],
        || {
            for (i, (name, at)) in olds.iter().enumerate() {
                if gone[i].is_none() && get(env, name).is_none() {
                    gone[i] = Some(at.elapsed());
                }
            }
            gone.iter().all(Option::is_some)
        },
    );
    for ((name, _), after) in olds.iter().zip(gone) {
        let after = after.unwrap();
        eprintln!("{name} deleted {after:?} after its file went");
        assert!(
            after >= GRACE,
            "{name} was deleted {after:?} after its file went, before its {GRACE:?} grace\n{}",
            serve.log()
        );
    }
    assert_eq!(check(env, &dir, &[]), 0, "{}", serve.log());
    assert!(get(env, "gen/d001/renamed.html").is_some());

    // A burst of 1,000 files in new directories.
    let burst_at = Instant::now();
    let burst = generate(&env.root, "burst", 1000);
    let wrote = burst_at.elapsed();
    let took = eventually(
        "the 1,000-file burst warmed",
        Duration::from_secs(20),
        &[serve],
        || check(env, &dir, &[]) == 0,
    );
    eprintln!("1,000 files written in {wrote:?}, all in the cache after {took:?}");
    for name in [&burst[0], &burst[499], &burst[999]] {
        assert!(get(env, name).is_some(), "{name}\n{}", serve.log());
    }
    let files = files_under(&env.root);
    assert_eq!(consistent_entries(env, &dir, false), files);
    assert_eq!(consistent_entries(env, &dir, true), files);
    assert!(
        took < Duration::from_secs(10),
        "the burst took {took:?} to land\n{}",
        serve.log()
    );
}

#[test]
fn file_events_land_in_redis() {
    let server = RedisServer::start();
    let env = Env::with_backend(&server.url());
    generate(&env.root, "gen", 200);
    let mut serve = Served::spawn("serve", serve_cmd(&env, env.dir(), &[]));
    life_cycle(&env, &mut serve);
}

#[test]
fn file_events_land_in_memcached() {
    let server = MemcachedServer::start();
    let env = Env::with_backend(&format!("memcache://{}", server.addr()));
    generate(&env.root, "gen", 200);
    let mut serve = Served::spawn("serve", serve_cmd(&env, env.dir(), &[]));
    life_cycle(&env, &mut serve);
}

// ---------------------------------------------------------------------------------------------
// A deploy that swaps a symlink.

#[test]
fn a_swapped_symlink_root_is_followed() {
    let server = RedisServer::start();
    let env = Env::with_backend(&server.url());
    let deploy = env.tmp.path().join("deploy");
    let (r1, r2) = (deploy.join("releases/1"), deploy.join("releases/2"));
    for r in [&r1, &r2] {
        generate(r, "gen", 50);
        std::fs::write(r.join("keep.html"), "kept\n").unwrap();
    }
    std::fs::write(r1.join("change.html"), "release 1\n").unwrap();
    std::fs::write(r1.join("gen/d000/t00003.html"), "release 1 too\n").unwrap();
    std::fs::write(r1.join("remove.html"), "removed in release 2\n").unwrap();
    std::fs::write(r2.join("change.html"), "release 2\n").unwrap();
    std::fs::write(r2.join("add.html"), "added in release 2\n").unwrap();
    let current = deploy.join("current");
    std::os::unix::fs::symlink("releases/1", &current).unwrap();
    let dir = current.to_str().unwrap().to_owned();

    let mut serve = Served::spawn("serve", serve_cmd(&env, &dir, &[]));
    ready(&env, &mut serve, &dir);
    assert_eq!(
        get(&env, "change.html").as_deref(),
        Some(&b"release 1\n"[..])
    );

    // Swap as deploy tools do: a new link renamed over the old one.
    let mark = serve.mark();
    let tmp = deploy.join("current.tmp");
    std::os::unix::fs::symlink("releases/2", &tmp).unwrap();
    let swapped_at = Instant::now();
    std::fs::rename(&tmp, &current).unwrap();
    serve.wait_for_from(mark, "template root moved", LANDS);
    lands(&env, &serve, "change.html", "release 2\n");
    lands(
        &env,
        &serve,
        "gen/d000/t00003.html",
        "<p>gen template 3</p>\n",
    );
    lands(&env, &serve, "add.html", "added in release 2\n");
    assert_eq!(get(&env, "keep.html").as_deref(), Some(&b"kept\n"[..]));
    assert!(
        get(&env, "remove.html").is_some(),
        "a file gone in the new release is kept during its grace\n{}",
        serve.log()
    );
    let gone = eventually(
        "remove.html deleted after the grace",
        GRACE + LANDS,
        &[&serve],
        || get(&env, "remove.html").is_none(),
    );
    let after = swapped_at.elapsed();
    eprintln!("remove.html gone {after:?} after the swap (polled {gone:?})");
    assert!(after >= GRACE, "deleted before its grace: {after:?}");
    assert_eq!(consistent_entries(&env, &dir, false), files_under(&r2));
    assert_eq!(consistent_entries(&env, &dir, true), files_under(&r2));
}

// ---------------------------------------------------------------------------------------------
// Scheduled checks inside and outside their windows.

/// Minutes since midnight UTC, now.
fn utc_minute() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    i64::try_from(secs % 86_400 / 60).unwrap()
}

/// `HH:MM` of a minute of the day (wrapped into 0..1440).
fn hhmm(minute: i64) -> String {
    let m = minute.rem_euclid(1440);
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// A daily window from `from` to `to` minutes from now, UTC (it may wrap past midnight).
fn window(from: i64, to: i64) -> String {
    let now = utc_minute();
    format!("{}-{}", hhmm(now + from), hhmm(now + to))
}

fn serve_with_window(window: &str) -> (RedisServer, Env, Served) {
    let server = RedisServer::start();
    let env = Env::with_backend(&server.url());
    let cmd = serve_cmd(
        &env,
        env.dir(),
        &[
            "--check-every",
            "1s",
            "--check-windows",
            window,
            "--time-zone",
            "UTC",
        ],
    );
    let serve = Served::spawn("serve", cmd);
    (server, env, serve)
}

#[test]
fn scheduled_checks_run_inside_their_window() {
    let w = window(-2, 3);
    let (_server, env, mut serve) = serve_with_window(&w);
    ready(&env, &mut serve, env.dir());
    serve.wait_for("scheduled check", Duration::from_secs(5));
    // Every second while inside the window: a few more within a few seconds.
    let first = serve.find_from(0, "scheduled check").unwrap();
    eventually(
        &format!("three more scheduled checks in window {w}"),
        Duration::from_secs(8),
        &[&serve],
        || serve.count_from(first + 1, "scheduled check") >= 3,
    );
}

#[test]
fn scheduled_checks_wait_for_their_window() {
    let w = window(6 * 60, 6 * 60 + 5);
    let (_server, env, mut serve) = serve_with_window(&w);
    ready(&env, &mut serve, env.dir());
    let quiet_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < quiet_until {
        assert_eq!(
            serve.count("scheduled check"),
            0,
            "a scheduled check ran outside window {w}\n{}",
            serve.log()
        );
        assert!(serve.exited().is_none(), "{}", serve.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(serve.count("scheduled check"), 0, "{}", serve.log());
}

// ---------------------------------------------------------------------------------------------
// Signals and configuration.

#[test]
fn sigterm_stops_and_releases_the_lease() {
    let server = RedisServer::start();
    let env = Env::with_backend(&server.url());
    let mut serve = Served::spawn("serve", serve_cmd(&env, env.dir(), &[]));
    ready(&env, &mut serve, env.dir());
    let sent = Instant::now();
    serve.signal("TERM");
    let status = serve.wait_exit(Duration::from_secs(5));
    eprintln!("exited {:?} after SIGTERM", sent.elapsed());
    assert_eq!(status.code(), Some(0), "{}", serve.log());
    // `stopped` itself is logged only sometimes: see the ignored test below.
    assert!(serve.count(STOPPING) > 0, "{}", serve.log());
    assert!(serve.count("write lease released") > 0, "{}", serve.log());
    // The namespace is free at once: a warm without --wait-lease is not busy (exit 4).
    std::fs::write(env.root.join("after-stop.html"), "after\n").unwrap();
    let started = Instant::now();
    let out = env.run(&["warm", env.dir()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        get(&env, "after-stop.html").as_deref(),
        Some(&b"after\n"[..])
    );
}

#[test]
fn sigterm_always_logs_stopped() {
    let server = RedisServer::start();
    let env = Env::with_backend(&server.url());
    // The race is lost about half the time: ten stops show it almost surely.
    for round in 0..10 {
        let mut serve = Served::spawn(&format!("serve #{round}"), serve_cmd(&env, env.dir(), &[]));
        ready(&env, &mut serve, env.dir());
        serve.signal("TERM");
        let status = serve.wait_exit(Duration::from_secs(5));
        assert_eq!(status.code(), Some(0), "{}", serve.log());
        assert!(
            serve.count("stopped") > 0,
            "round {round}: exit 0 without `stopped`\n{}",
            serve.log()
        );
    }
}

#[test]
fn sighup_reloads_a_valid_configuration_and_refuses_an_invalid_one() {
    let server = RedisServer::start();
    let env = Env::with_backend(&server.url());
    let config = env.tmp.path().join("tcache.toml");
    let valid = |debounce: &str| {
        format!(
            "[serve]\ndebounce = \"{debounce}\"\ncheck-jitter = \"0s\"\norphan-grace = \"2s\"\n\
             max-backoff = \"1s\"\n"
        )
    };
    std::fs::write(&config, valid("100ms")).unwrap();
    let mut cmd = env.cmd(&[
        "-v",
        "--config",
        config.to_str().unwrap(),
        "serve",
        env.dir(),
    ]);
    cmd.env("TCACHE_STATE_DIR", env.tmp.path().join("serve-state"));
    let mut serve = Served::spawn("serve", cmd);
    ready(&env, &mut serve, env.dir());

    // An unknown key: refused, and the running configuration keeps writing edits.
    std::fs::write(
        &config,
        format!("{}no-such-option = true\n", valid("100ms")),
    )
    .unwrap();
    let mark = serve.mark();
    serve.signal("HUP");
    let refused = serve.wait_for_from(mark, "reload refused", LANDS);
    let line = serve.lines.lock().unwrap()[refused].clone();
    assert!(line.contains("serve.no-such-option"), "{line}");
    std::fs::write(env.root.join("pages/home.html"), "after a refused reload\n").unwrap();
    lands(&env, &serve, "pages/home.html", "after a refused reload\n");
    assert_eq!(serve.count_from(mark, "configuration reloaded"), 0);
    assert!(serve.exited().is_none(), "{}", serve.log());

    // A valid change: reloaded, and edits still land.
    std::fs::write(&config, valid("30ms")).unwrap();
    let mark = serve.mark();
    serve.signal("HUP");
    serve.wait_for_from(mark, "configuration reloaded", LANDS);
    std::fs::write(env.root.join("pages/home.html"), "after a reload\n").unwrap();
    std::fs::write(env.root.join("reloaded.html"), "new after a reload\n").unwrap();
    lands(&env, &serve, "pages/home.html", "after a reload\n");
    lands(&env, &serve, "reloaded.html", "new after a reload\n");
    assert_eq!(check(&env, env.dir(), &[]), 0, "{}", serve.log());
    assert!(serve.exited().is_none(), "{}", serve.log());

    // And it still stops cleanly.
    serve.signal("TERM");
    assert_eq!(
        serve.wait_exit(Duration::from_secs(5)).code(),
        Some(0),
        "{}",
        serve.log()
    );
}

#[test]
fn an_invalid_config_file_exits_2_naming_the_key() {
    refused_configs(&[
        ("[serve]\ncolour = \"blue\"\n", "key serve.colour:"),
        ("colour = \"blue\"\n", "key colour:"),
        ("[serve]\ndebounce = \"0s\"\n", "key serve.debounce:"),
        ("[serve]\ndebounce = \"5 parsecs\"\n", "key serve.debounce:"),
        (
            "[serve]\nresolve-missing = \"sometimes\"\n",
            "key serve.resolve-missing:",
        ),
    ]);
}

#[test]
fn an_invalid_key_of_a_nested_table_is_named_as_written() {
    refused_configs(&[
        (
            "[serve.resolve]\nmissing = \"sometimes\"\n",
            "key serve.resolve.missing:",
        ),
        (
            "[serve.resolve]\nnothing = \"auto\"\n",
            "key serve.resolve.nothing:",
        ),
    ]);
}

/// `tcache serve --config FILE DIR` exits 2 for each `(file text, expected part of the error)`,
/// naming the file and the key.
fn refused_configs(cases: &[(&str, &str)]) {
    // A sled backend: nothing is ever opened when the configuration is refused.
    let env = Env::new();
    for (i, (text, want)) in cases.iter().enumerate() {
        let file = env.tmp.path().join(format!("bad{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let cmd = env.cmd(&["--config", file.to_str().unwrap(), "serve", env.dir()]);
        let mut p = Served::spawn(&format!("serve with {text:?}"), cmd);
        let status = p.wait_exit(Duration::from_secs(10));
        let log = p.log();
        assert_eq!(status.code(), Some(2), "{text:?}\n{log}");
        assert!(
            log.contains(want),
            "{text:?}: the error names {want}\n{log}"
        );
        assert!(
            log.contains(file.to_str().unwrap()),
            "{text:?}: the error names the file\n{log}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Polling instead of watching.

#[test]
fn without_watching_an_edit_lands_at_the_next_poll() {
    let server = RedisServer::start();
    let env = Env::with_backend(&server.url());
    let extra = ["--no-watch", "--poll-interval", "1s"];
    let mut serve = Served::spawn("serve", serve_cmd(&env, env.dir(), &extra));
    ready(&env, &mut serve, env.dir());
    assert!(serve.count("file watching is off") > 0, "{}", serve.log());
    for round in 0..2 {
        let content = format!("polled edit {round}\n");
        std::fs::write(env.root.join("pages/home.html"), &content).unwrap();
        let took = lands(&env, &serve, "pages/home.html", &content);
        eprintln!("edit {round} landed after {took:?}");
        assert!(
            took < Duration::from_secs(4),
            "an edit took {took:?} with a 1 s poll interval\n{}",
            serve.log()
        );
    }
    std::fs::write(env.root.join("polled.html"), "added\n").unwrap();
    lands(&env, &serve, "polled.html", "added\n");
    assert_eq!(check(&env, env.dir(), &[]), 0, "{}", serve.log());
}
