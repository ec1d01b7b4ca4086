//! Every setting is range-checked when it is read: the real `tcache` binary with each
//! out-of-range URL parameter (against real redis-server and memcached processes, which would
//! accept the connection) and each out-of-range flag exits 2 at once, naming the setting and its
//! allowed range, without panicking and without spinning.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use template_cache_test_servers::{MemcachedServer, RedisServer};

/// How long a refused setting may take to be refused (a debug build, a loaded machine).
const FAST: Duration = Duration::from_secs(10);

/// Runs `tcache args...`, killing it after [`FAST`]; returns exit code (None if killed or
/// signalled), stdout and stderr.
fn run(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tcache"))
        .args(args)
        .env("TCACHE_STATE_DIR", dir.join("state"))
        .env_remove("TCACHE_BACKEND")
        .env_remove("TCACHE_BACKEND_PASSWORD")
        .env_remove("TCACHE_BACKEND_PASSWORD_FILE")
        .env_remove("RUST_LOG")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + FAST;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.and_then(|s| s.code()), out, err)
}

/// Asserts a fast exit 2 without a panic, with every one of `says` in the error.
fn assert_refused(dir: &Path, args: &[&str], says: &[&str]) {
    let started = Instant::now();
    let (code, out, err) = run(dir, args);
    let what = format!("tcache {}", args.join(" "));
    assert!(
        code.is_some(),
        "{what}: still running after {FAST:?} (spinning or hanging)\nstderr: {err}"
    );
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert_eq!(code, Some(2), "{what}\nstdout: {out}\nstderr: {err}");
    for s in says {
        assert!(
            err.contains(s),
            "{what}: the error does not say {s:?}: {err}"
        );
    }
    assert!(started.elapsed() < FAST, "{what}: slow");
}

fn templates(root: &Path) -> String {
    let dir = root.join("templates");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.html"), "<p>a</p>").unwrap();
    dir.to_str().unwrap().to_owned()
}

#[test]
fn url_parameters_out_of_range_are_refused_by_name() {
    let redis = RedisServer::start();
    let memcached = MemcachedServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = templates(tmp.path());
    let r = format!("redis://127.0.0.1:{}/0", redis.port());
    let m = format!("memcache://127.0.0.1:{}", memcached.port());
    let c = format!("redis+cluster://127.0.0.1:{}", redis.port());
    // The control: the servers take valid settings.
    for url in [
        format!("{r}?connect_timeout=1h&ttl=365d&reconnect_attempts=100"),
        format!("{m}?connect_timeout=1h&io_timeout=1ms&ttl=30d&batch_keys=100000"),
    ] {
        let (code, _, err) = run(tmp.path(), &["--backend", &url, "warm", &dir]);
        assert_eq!(code, Some(0), "{url}: {err}");
    }
    let cases: Vec<(String, &str, &str)> = vec![
        (r.clone(), "connect_timeout=100000000000s", "from 1ms to 1h"),
        (
            r.clone(),
            "connect_timeout=18446744073709551615s",
            "from 1ms to 1h",
        ),
        (r.clone(), "connect_timeout=0s", "from 1ms to 1h"),
        (
            r.clone(),
            "response_timeout=100000000000s",
            "from 1ms to 1h",
        ),
        (r.clone(), "response_timeout=61m", "from 1ms to 1h"),
        (r.clone(), "ttl=0s", "from 1s to 365d"),
        (r.clone(), "ttl=500ms", "from 1s to 365d"),
        (r.clone(), "ttl=100000000000s", "from 1s to 365d"),
        (r.clone(), "reconnect_attempts=0", "from 1 to 100"),
        (r.clone(), "reconnect_attempts=4294967295", "from 1 to 100"),
        (
            r.clone(),
            "reconnect_attempts=18446744073709551615",
            "from 1 to 100",
        ),
        (r.clone(), "batch_keys=0", "from 1 to 100000"),
        (
            r.clone(),
            "batch_keys=18446744073709551615",
            "from 1 to 100000",
        ),
        (r.clone(), "batch_bytes=0", "from 1 to 536870912"),
        (
            r.clone(),
            "batch_bytes=18446744073709551615",
            "from 1 to 536870912",
        ),
        (c.clone(), "connect_timeout=100000000000s", "from 1ms to 1h"),
        (
            c.clone(),
            "reconnect_attempts=18446744073709551615",
            "from 1 to 100",
        ),
        (m.clone(), "connect_timeout=100000000000s", "from 1ms to 1h"),
        (
            m.clone(),
            "connect_timeout=18446744073709551615s",
            "from 1ms to 1h",
        ),
        (
            m.clone(),
            "io_timeout=18446744073709551615s",
            "from 1ms to 1h",
        ),
        (m.clone(), "io_timeout=0s", "from 1ms to 1h"),
        (m.clone(), "ttl=0s", "from 1s to 30d"),
        (m.clone(), "ttl=31d", "from 1s to 30d"),
        (m.clone(), "ttl=100000000000s", "from 1s to 30d"),
        (m.clone(), "batch_keys=0", "from 1 to 100000"),
        (
            m.clone(),
            "batch_keys=18446744073709551615",
            "from 1 to 100000",
        ),
    ];
    for (base, param, range) in &cases {
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}{param}");
        let (name, value) = param.split_once('=').unwrap();
        let named = format!("{name}=\"{value}\"");
        for cmd in [&["list"][..], &["warm", &dir][..]] {
            let mut args = vec!["--backend", url.as_str()];
            args.extend_from_slice(cmd);
            assert_refused(tmp.path(), &args, &[&named, range]);
        }
        let args = ["--json", "--backend", url.as_str(), "list"];
        assert_refused(tmp.path(), &args, &[&named]);
    }
}

#[test]
fn flags_out_of_range_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = templates(tmp.path());
    let db = format!("sled://{}", tmp.path().join("db").display());
    let warm = |flags: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["--backend".into(), db.clone(), "warm".into(), dir.clone()];
        v.extend(flags.iter().map(|s| s.to_string()));
        v
    };
    let check = |flags: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["--backend".into(), db.clone(), "check".into(), dir.clone()];
        v.extend(flags.iter().map(|s| s.to_string()));
        v
    };
    let cases: Vec<(Vec<String>, &str, &str)> = vec![
        (warm(&["--interval", "0s"]), "--interval", "from 1s to 30d"),
        (
            warm(&["--interval", "999ms"]),
            "--interval",
            "from 1s to 30d",
        ),
        (warm(&["--interval", "31d"]), "--interval", "from 1s to 30d"),
        (
            warm(&["--interval", "100000000000s"]),
            "--interval",
            "from 1s to 30d",
        ),
        (
            warm(&["--concurrency", "0"]),
            "--concurrency",
            "from 1 to 1024",
        ),
        (
            warm(&["--concurrency", "18446744073709551616"]),
            "--concurrency",
            "from 1 to 1024",
        ),
        (
            warm(&["--batch-size", "0"]),
            "--batch-size",
            "from 1 to 100000",
        ),
        (
            warm(&["--batch-size", "100001"]),
            "--batch-size",
            "from 1 to 100000",
        ),
        (warm(&["--rate", "0"]), "--rate", "greater than 0"),
        (warm(&["--rate", "-5"]), "--rate", "greater than 0"),
        (warm(&["--rate", "NaN"]), "--rate", "greater than 0"),
        (warm(&["--rate", "inf"]), "--rate", "greater than 0"),
        (warm(&["--rate", "1e999"]), "--rate", "greater than 0"),
        (warm(&["--byte-rate", "0"]), "--byte-rate", "greater than 0"),
        (
            warm(&["--byte-rate", "NaN"]),
            "--byte-rate",
            "greater than 0",
        ),
        (check(&["--rate", "-1"]), "--rate", "greater than 0"),
        (
            warm(&["--max-attempts", "0"]),
            "--max-attempts",
            "from 1 to 100",
        ),
        (
            warm(&["--max-attempts", "4294967296"]),
            "--max-attempts",
            "from 1 to 100",
        ),
        (
            warm(&["--max-template-size", "0"]),
            "--max-template-size",
            "from 1 to 1073741824",
        ),
        (
            warm(&["--max-template-size", "18446744073709551615"]),
            "--max-template-size",
            "from 1 to 1073741824",
        ),
        (
            check(&["--max-template-size", "18446744073709551615"]),
            "--max-template-size",
            "from 1 to 1073741824",
        ),
        (
            check(&["--fix", "--max-delete", "-1"]),
            "--max-delete",
            "from 0 to 1000000000",
        ),
        (
            check(&["--fix", "--max-delete", "18446744073709551616"]),
            "--max-delete",
            "from 0 to 1000000000",
        ),
        (
            check(&["--fix", "--max-delete-ratio", "1.5"]),
            "--max-delete-ratio",
            "from 0 to 1",
        ),
        (
            check(&["--fix", "--max-delete-ratio", "-0.1"]),
            "--max-delete-ratio",
            "from 0 to 1",
        ),
        (
            check(&["--fix", "--max-delete-ratio", "NaN"]),
            "--max-delete-ratio",
            "from 0 to 1",
        ),
        (
            check(&["--fix", "--max-delete-ratio", "inf"]),
            "--max-delete-ratio",
            "from 0 to 1",
        ),
        (warm(&["--lease-ttl", "2s"]), "--lease-ttl", "from 3s to 5m"),
        (
            check(&["--lease-ttl", "301s"]),
            "--lease-ttl",
            "from 3s to 5m",
        ),
        (
            warm(&["--lease-ttl", "100000000000s"]),
            "--lease-ttl",
            "from 3s to 5m",
        ),
        (
            warm(&["--wait-lease", "0s"]),
            "--wait-lease",
            "from 1s to 1d",
        ),
        (
            warm(&["--wait-lease", "100000000000s"]),
            "--wait-lease",
            "from 1s to 1d",
        ),
        (
            check(&["--fix", "--wait-lease", "2d"]),
            "--wait-lease",
            "from 1s to 1d",
        ),
        (
            check(&["--concurrency", "0"]),
            "--concurrency",
            "from 1 to 1024",
        ),
        (
            check(&["--batch-size", "0"]),
            "--batch-size",
            "from 1 to 100000",
        ),
    ];
    for (args, flag, range) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_refused(tmp.path(), &args, &[flag, range]);
        let mut json = vec!["--json"];
        json.extend_from_slice(&args);
        assert_refused(tmp.path(), &json, &[flag, range]);
    }
    // The bounds themselves are accepted.
    for flags in [
        &[
            "--concurrency",
            "1024",
            "--batch-size",
            "100000",
            "--max-attempts",
            "100",
        ][..],
        &[
            "--rate",
            "1e9",
            "--byte-rate",
            "1e9",
            "--max-template-size",
            "1073741824",
        ][..],
    ] {
        let args = warm(flags);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, err) = run(tmp.path(), &args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
    }
    let args = check(&["--fix", "--max-delete", "0", "--max-delete-ratio", "0"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = run(tmp.path(), &args);
    assert_eq!(code, Some(0), "{args:?}: {err}");
}
