//! `tcache history` against real redis-server and memcached processes: runs of several
//! processes and hosts are all read back, newest first, by another process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Output;

use common::Env;
use serde_json::Value;
use template_cache_test_servers::{MemcachedServer, RedisServer};

/// Runs `tcache --json ARGS` as `host`: exit code and the JSON on stdout.
fn json_as(env: &Env, host: &str, args: &[&str]) -> (i32, Value) {
    let out = run_as(env, host, &[&["--json"], args].concat());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one line of JSON: {stdout:?}");
    let v = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    (out.status.code().unwrap(), v)
}

fn run_as(env: &Env, host: &str, args: &[&str]) -> Output {
    env.cmd(args).env("TCACHE_HOST", host).output().unwrap()
}

fn history(env: &Env, args: &[&str]) -> Vec<Value> {
    let (code, v) = json_as(env, "reader", &[&["history"], args].concat());
    assert_eq!(code, 0, "{v}");
    v.as_array().unwrap().clone()
}

fn field<'a>(runs: &'a [Value], key: &str) -> Vec<&'a str> {
    runs.iter().map(|r| r[key].as_str().unwrap()).collect()
}

/// Warms, checks and fixes from two hosts, then reads the history from a third process.
fn runs_are_all_in_the_history(env: &Env) {
    let dir = env.dir();
    let (code, warm) = json_as(env, "host-a", &["warm", dir]);
    assert_eq!(code, 0, "{warm}");
    let (code, clean) = json_as(env, "host-b", &["check", dir]);
    assert_eq!(code, 0, "{clean}");
    std::fs::write(env.root.join("pages/home.html"), "changed").unwrap();
    std::fs::remove_file(env.root.join("pages/about.html")).unwrap();
    let (code, found) = json_as(env, "host-b", &["check", dir]);
    assert_eq!(code, 1, "{found}");
    let (code, fixed) = json_as(env, "host-a", &["check", dir, "--fix"]);
    assert_eq!(code, 0, "{fixed}");
    std::fs::remove_file(env.root.join("pages/contact.html")).unwrap();
    let (code, refused) = json_as(env, "host-a", &["check", dir, "--fix", "--max-delete", "0"]);
    assert_eq!(code, 3, "{refused}");

    let runs = history(env, &[]);
    assert_eq!(
        field(&runs, "kind"),
        [
            "resolve", "check", "resolve", "check", "check", "check", "warm"
        ],
        "{runs:#?}"
    );
    assert_eq!(
        field(&runs, "host"),
        [
            "host-a", "host-a", "host-a", "host-a", "host-b", "host-b", "host-a"
        ]
    );
    let started = field(&runs, "started_at");
    assert!(
        started.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {started:?}"
    );
    for r in &runs {
        let at = r["started_at"].as_str().unwrap();
        assert!(
            at.len() == 24 && at.ends_with('Z') && at.as_bytes()[10] == b'T',
            "{at}"
        );
        assert!(r["duration_seconds"].as_f64().unwrap() >= 0.0, "{r}");
        assert!(r["pid"].as_u64().unwrap() > 0, "{r}");
    }
    // The counts are those of each command's own --json report.
    let warm_run = &runs[6];
    for key in [
        "scanned",
        "written",
        "unchanged",
        "bytes_written",
        "files_hashed",
        "evicted",
    ] {
        assert_eq!(warm_run[key], warm[key], "{key}: {warm_run}");
    }
    assert_eq!(warm_run["failed"], 0);
    assert_eq!(
        (warm_run["ok"].as_bool(), &warm_run["error"]),
        (Some(true), &Value::Null)
    );
    for (run, report) in [(&runs[5], &clean), (&runs[4], &found), (&runs[3], &fixed)] {
        for key in ["mode", "consistent", "files", "entries"] {
            assert_eq!(run[key], report[key], "{key}: {run}");
        }
        for key in ["missing", "outdated", "orphaned", "corrupt", "errors"] {
            assert_eq!(
                run[key].as_u64(),
                Some(report[key].as_array().unwrap().len() as u64)
            );
        }
    }
    assert_eq!(
        (runs[4]["outdated"].as_u64(), runs[4]["orphaned"].as_u64()),
        (Some(1), Some(1))
    );
    let fix = &runs[2];
    for key in ["dry_run", "added", "updated", "repaired", "deleted"] {
        assert_eq!(fix[key], fixed["fix"][key], "{key}: {fix}");
    }
    assert_eq!(
        (fix["updated"].as_u64(), fix["deleted"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(fix["refused"], false);
    let no = &runs[0];
    assert_eq!(
        (no["refused"].as_bool(), no["ok"].as_bool()),
        (Some(true), Some(false)),
        "{no}"
    );
    assert!(no["error"].as_str().unwrap().contains("delete"), "{no}");

    // Filters.
    let checks = history(env, &["--kind", "check"]);
    assert_eq!(field(&checks, "kind"), ["check"; 4]);
    assert_eq!(history(env, &["--since", "1h"]).len(), 7);
    let newest = history(env, &["--limit", "2"]);
    assert_eq!(newest, runs[..2]);

    // The human view: the table and the trends.
    let out = run_as(env, "reader", &["history"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.starts_with("run history of namespace tpl on "),
        "{text}"
    );
    assert!(text.contains("7 runs kept since "), "{text}");
    for part in [
        "refused: ",
        "host-b",
        "quick: ",
        "fixed: 0 added, 1 updated, 0 repaired, 1 deleted, 0 failed",
        "\ntrends\n",
        "RUNS/DAY",
        "p95",
        "INCONSISTENT",
    ] {
        assert!(text.contains(part), "{part:?} in\n{text}");
    }
}

/// Readers append concurrently: none of their records is lost.
fn concurrent_checks_are_all_recorded(env: &Env) {
    let before = history(env, &[]).len();
    let children: Vec<_> = (0..4)
        .map(|i| {
            env.cmd(&["--json", "check", env.dir()])
                .env("TCACHE_HOST", format!("parallel-{i}"))
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        c.wait().unwrap();
    }
    let runs = history(env, &[]);
    assert_eq!(runs.len(), before + 4, "{runs:#?}");
    let mut hosts: Vec<&str> = field(&runs[..4], "host");
    hosts.sort_unstable();
    assert_eq!(
        hosts,
        ["parallel-0", "parallel-1", "parallel-2", "parallel-3"]
    );
}

#[test]
fn history_on_redis() {
    let server = RedisServer::start();
    let env = Env::with_backend(&server.url());
    let out = run_as(&env, "reader", &["history"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing recorded yet"),
        "{out:?}"
    );
    runs_are_all_in_the_history(&env);
    concurrent_checks_are_all_recorded(&env);

    // A lost history is reported as such.
    server.cli(&["DEL", "{tpl:index}:history"]);
    let out = run_as(&env, "reader", &["history"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(text.contains("the history was lost"), "{text}");
    let out = run_as(&env, "reader", &["--json", "history"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[]\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was lost"),
        "{out:?}"
    );
    // The next run starts a new one.
    assert_eq!(
        json_as(&env, "host-a", &["check", env.dir()]).0,
        1,
        "an orphan is left"
    );
    assert_eq!(history(&env, &[]).len(), 1);
}

#[test]
fn history_on_two_memcached_servers() {
    let (a, b) = (MemcachedServer::start(), MemcachedServer::start());
    let env = Env::with_backend(&format!("memcache://{},{}", a.addr(), b.addr()));
    runs_are_all_in_the_history(&env);
    concurrent_checks_are_all_recorded(&env);
}

#[test]
fn history_flags_are_range_checked() {
    let env = Env::new();
    for bad in [
        &["history", "--since", "1s"][..],
        &["history", "--since", "soon"],
        &["history", "--kind", "prune"],
        &["history", "--limit", "0"],
    ] {
        let out = env.run(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
    // An empty sled store: no history, an empty array.
    let out = env.run(&["--json", "history"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[]\n");
}
