//! Observability of the real `tcache` binary: the metrics endpoint of a running warmer scraped
//! over HTTP and parsed as Prometheus text, webhook alerts of repeated checks, the
//! node_exporter textfile of one-shot commands, JSON logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Env;
use serde_json::Value;
use template_cache_test_servers::RedisServer;

/// Kills the child process when dropped (a failing assertion must not leave it running).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `url`: status and body; `None` when nothing answers.
fn get(url: &str) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut resp = agent.get(url).call().ok()?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().ok()?;
    Some((status, body))
}

/// Polls `probe` every 100 ms until it returns `Some`, for at most `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn parse(text: &str) -> prometheus_parse::Scrape {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).unwrap()
}

/// The value of the counter or gauge `name` with `labels`, if present.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .find_map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

/// The observation count of histogram `name` with `labels` (its `+Inf` bucket), if present.
fn observations(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .find_map(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map(|b| b.count),
            _ => None,
        })
        .unwrap_or(0.0)
}

fn template_count(root: &Path) -> usize {
    walk(root)
}

fn walk(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn a_running_warmer_serves_metrics_health_and_readiness() {
    let mut server = RedisServer::start();
    let env = Env::with_backend(&server.url());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(env.tmp.path().join("warm.out")).unwrap();
    let err = std::fs::File::create(env.tmp.path().join("warm.err")).unwrap();
    let _warmer = Running(
        env.cmd(&[
            "warm",
            env.dir(),
            "--interval",
            "1s",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(log)
        .stderr(err)
        .spawn()
        .unwrap(),
    );
    let stderr = || std::fs::read_to_string(env.tmp.path().join("warm.err")).unwrap_or_default();
    let (code, body) = wait_for("/healthz", Duration::from_secs(30), || {
        get(&format!("{base}/healthz"))
    });
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let ready = wait_for("ready", Duration::from_secs(30), || {
        get(&format!("{base}/readyz")).filter(|(code, _)| *code == 200)
    });
    let ready: Value = serde_json::from_str(&ready.1).unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["role"], "warmer");

    let files = template_count(&env.root) as f64;
    let scrape = |what: &str| {
        let (code, text) = get(&format!("{base}/metrics")).unwrap_or_else(|| panic!("{what}"));
        assert_eq!(code, 200, "{text}");
        parse(&text)
    };
    let first = scrape("first scrape");
    assert_eq!(
        value(&first, "tcache_templates_written_total", &[]),
        Some(files),
        "{}",
        stderr()
    );
    assert!(observations(&first, "tcache_run_duration_seconds", &[("kind", "warm")]) >= 1.0);
    assert!(
        observations(
            &first,
            "tcache_backend_op_duration_seconds",
            &[("op", "set")]
        ) >= 1.0
    );
    let last = value(
        &first,
        "tcache_last_success_timestamp_seconds",
        &[("kind", "warm")],
    )
    .unwrap();
    assert!(last > 1.6e9, "{last}");
    assert!(
        first.docs["tcache_templates_written_total"].contains("Templates written"),
        "every metric has its HELP text"
    );

    for i in 0..3 {
        std::fs::write(env.root.join(format!("added-{i}.html")), format!("new {i}")).unwrap();
    }
    wait_for("the new templates written", Duration::from_secs(30), || {
        let now = scrape("scrape after adding");
        (value(&now, "tcache_templates_written_total", &[]) == Some(files + 3.0)).then_some(())
    });

    server.stop();
    let (code, body) = wait_for("not ready", Duration::from_secs(60), || {
        get(&format!("{base}/readyz")).filter(|(code, _)| *code == 503)
    });
    assert_eq!(code, 503);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["ready"], false);
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("backend unreachable"),
        "{body}"
    );
    assert_eq!(body["role"], "warmer");
    let failed = scrape("scrape after the backend went away");
    assert!(value(&failed, "tcache_runs_failed_total", &[("kind", "warm")]).unwrap() >= 1.0);
    let backend_errors: f64 = failed
        .samples
        .iter()
        .filter(|s| s.metric == "tcache_backend_errors_total")
        .filter_map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => Some(v),
            _ => None,
        })
        .sum();
    assert!(backend_errors >= 1.0, "{backend_errors}");
}

#[test]
fn the_metrics_address_needs_an_interval_and_a_free_port() {
    let env = Env::new();
    let out = env.run(&["warm", env.dir(), "--metrics-addr", "127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--interval"), "{err}");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = env.run(&[
        "warm",
        env.dir(),
        "--interval",
        "1s",
        "--metrics-addr",
        &addr,
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--metrics-addr") && err.contains(&format!("cannot listen on {addr}")),
        "{err}"
    );
    let out = env.run(&["check", env.dir(), "--alert-inconsistencies", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--alert-inconsistencies"));
}

/// A webhook receiver: records every request body, answers 200.
fn webhook_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&got);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut len = 0;
            let mut first = String::new();
            reader.read_line(&mut first).unwrap();
            assert!(first.starts_with("POST /alerts "), "{first}");
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            seen.lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap());
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, got)
}

#[test]
fn repeated_checks_alert_once_then_resolve_once() {
    let env = Env::new();
    assert_eq!(env.run(&["warm", env.dir()]).status.code(), Some(0));
    let (url, got) = webhook_receiver();
    let check = |extra: &[&str]| {
        let mut args = vec![
            "check",
            env.dir(),
            "--alert-webhook",
            url.as_str(),
            "--alert-inconsistencies",
            "2",
        ];
        args.extend_from_slice(extra);
        let out = env.run(&args);
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let statuses = || -> Vec<(String, String)> {
        got.lock()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["status"].as_str().unwrap().to_owned(),
                    v["condition"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    // One inconsistency: under the threshold.
    std::fs::write(env.root.join("one.html"), "1").unwrap();
    assert_eq!(check(&[]).0, 1);
    assert!(statuses().is_empty());
    std::fs::write(env.root.join("two.html"), "2").unwrap();
    std::fs::write(env.root.join("three.html"), "3").unwrap();
    let (code, stderr) = check(&[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("alert firing: check found 3 inconsistencies"),
        "{stderr}"
    );
    let firing = [("firing".to_owned(), "inconsistencies".to_owned())];
    assert_eq!(statuses(), firing);
    let body = got.lock().unwrap()[0].clone();
    assert_eq!(body["version"], 1);
    assert_eq!(body["namespace"], template_cache::DEFAULT_NAMESPACE);
    assert_eq!(body["details"]["missing"], 3);
    assert_eq!(body["details"]["threshold"]["count"], 2);
    assert!(body["backend"].as_str().unwrap().contains("sled"), "{body}");
    for field in ["summary", "host", "at", "since"] {
        assert!(!body[field].as_str().unwrap().is_empty(), "{field}");
    }
    // Still inconsistent: no second alert, from a check or from the check of --fix.
    assert_eq!(check(&[]).0, 1);
    assert_eq!(statuses(), firing);
    assert_eq!(check(&["--fix"]).0, 0);
    assert_eq!(statuses(), firing);
    // A clean check resolves it, once.
    assert_eq!(check(&[]).0, 0);
    assert_eq!(check(&[]).0, 0);
    assert_eq!(
        statuses(),
        [
            ("firing".to_owned(), "inconsistencies".to_owned()),
            ("resolved".to_owned(), "inconsistencies".to_owned())
        ]
    );
}

#[test]
fn a_check_that_cannot_reach_its_backend_alerts_once() {
    let env = Env::with_backend(&format!("redis://127.0.0.1:{}/0", free_port()));
    let (url, got) = webhook_receiver();
    for _ in 0..2 {
        let out = env.run(&["check", env.dir(), "--alert-webhook", &url]);
        assert_eq!(out.status.code(), Some(2));
    }
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["status"], "firing");
    assert_eq!(got[0]["condition"], "check_failed");
    assert_eq!(got[0]["details"]["error_kind"], "unavailable");

    // A warm whose tree is missing fails before it runs: alerted too.
    let env = Env::new();
    let (url, got) = webhook_receiver();
    let out = env.run(&["warm", "/does/not/exist", "--alert-webhook", &url]);
    assert_eq!(out.status.code(), Some(2));
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["condition"], "warm_failed");
}

#[test]
fn one_shot_commands_write_a_textfile_for_node_exporter() {
    let env = Env::new();
    let dir = env.tmp.path().join("textfiles");
    std::fs::create_dir(&dir).unwrap();
    let prom = dir.join("tcache.prom");
    let prom_arg = prom.to_str().unwrap();
    let out = env.run(&["--metrics-file", prom_arg, "warm", env.dir()]);
    assert_eq!(out.status.code(), Some(0));
    let warm = parse(&std::fs::read_to_string(&prom).unwrap());
    let files = template_count(&env.root) as f64;
    assert_eq!(
        value(&warm, "tcache_templates_written_total", &[]),
        Some(files)
    );
    assert!(
        observations(
            &warm,
            "tcache_backend_op_duration_seconds",
            &[("op", "set")]
        ) >= 1.0
    );
    assert!(
        value(
            &warm,
            "tcache_last_success_timestamp_seconds",
            &[("kind", "warm")]
        )
        .is_some()
    );

    std::fs::write(env.root.join("new-1.html"), "1").unwrap();
    std::fs::write(env.root.join("new-2.html"), "2").unwrap();
    let out = env.run(&["check", env.dir(), "--metrics-file", prom_arg]);
    assert_eq!(out.status.code(), Some(1));
    let check = parse(&std::fs::read_to_string(&prom).unwrap());
    assert_eq!(
        value(&check, "tcache_inconsistencies", &[("kind", "missing")]),
        Some(2.0)
    );
    assert_eq!(
        value(&check, "tcache_inconsistencies", &[("kind", "orphaned")]),
        Some(0.0)
    );
    assert!(observations(&check, "tcache_run_duration_seconds", &[("kind", "check")]) >= 1.0);

    // A failed run writes its file too.
    let out = env.run(&["check", "/does/not/exist", "--metrics-file", prom_arg]);
    assert_eq!(out.status.code(), Some(2));
    assert!(prom.exists());
    parse(&std::fs::read_to_string(&prom).unwrap());
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["tcache.prom"], "no temporary file is left behind");
    let out = env.run(&["list", "--metrics-file", "/does/not/exist/x.prom"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--metrics-file"));
}

#[test]
fn json_logs_are_one_object_per_line_without_secrets() {
    let server = RedisServer::start_with(&["--requirepass", "pa55word"]);
    let env = Env::with_backend(&format!("redis://:pa55word@127.0.0.1:{}/0", server.port()));
    let out = env.run(&["-vv", "--log-format", "json", "warm", env.dir()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.len() > 2, "{stderr}");
    for l in &lines {
        assert!(l["timestamp"].is_string() && l["level"].is_string(), "{l}");
        assert!(l["fields"].is_object(), "{l}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "warm finished"),
        "{stderr}"
    );
    assert!(!stderr.contains("pa55word"), "{stderr}");
    assert!(stderr.contains(":***@127.0.0.1"), "{stderr}");
    let human = env.run(&["-v", "warm", env.dir()]);
    let text = String::from_utf8_lossy(&human.stderr);
    assert!(
        text.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_err()),
        "{text}"
    );
}

#[test]
fn a_running_service_serves_metrics_and_alerts_once_then_resolves() {
    let server = RedisServer::start();
    let env = Env::with_backend(&server.url());
    let (url, got) = webhook_receiver();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let err = std::fs::File::create(env.tmp.path().join("serve.err")).unwrap();
    let addr = format!("127.0.0.1:{port}");
    let _serve = Running(
        env.cmd(&[
            "-v",
            "serve",
            env.dir(),
            "--metrics-addr",
            &addr,
            "--alert-webhook",
            &url,
            "--alert-inconsistencies",
            "1",
            "--check-every",
            "1s",
            "--check-jitter",
            "0s",
        ])
        .stderr(err)
        .spawn()
        .unwrap(),
    );
    let ready = wait_for("/readyz 200", Duration::from_secs(20), || {
        get(&format!("{base}/readyz")).filter(|(s, _)| *s == 200)
    });
    assert!(ready.1.contains("holder"), "{}", ready.1);
    assert_eq!(get(&format!("{base}/healthz")).map(|r| r.0), Some(200));
    let scrape = || parse(&get(&format!("{base}/metrics")).unwrap().1);
    let first = scrape();
    assert_eq!(value(&first, "tcache_lease_held", &[]), Some(1.0));
    let written = value(&first, "tcache_templates_written_total", &[]).unwrap_or(0.0);
    assert!(written >= template_count(&env.root) as f64, "{written}");

    // An edit moves the counters and the change-to-cache histogram.
    std::fs::write(env.root.join("added-by-test.html"), "new\n").unwrap();
    wait_for("the edit in the metrics", Duration::from_secs(10), || {
        let s = scrape();
        (value(&s, "tcache_templates_written_total", &[]).unwrap_or(0.0) > written
            && observations(&s, "tcache_change_to_cache_seconds", &[]) >= 1.0)
            .then_some(())
    });

    // An entry lost from the cache: the next scheduled check finds it missing (one alert),
    // resolves it, and the check after that is clean (one "resolved").
    let key = template_cache::Namespace::new(template_cache::DEFAULT_NAMESPACE)
        .unwrap()
        .key_for("added-by-test.html");
    server.cli(&["DEL", &key]);
    let statuses = || -> Vec<(String, String)> {
        got.lock()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["status"].as_str().unwrap().to_owned(),
                    v["condition"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let expected = [
        ("firing".to_owned(), "inconsistencies".to_owned()),
        ("resolved".to_owned(), "inconsistencies".to_owned()),
    ];
    wait_for(
        "a firing then a resolved alert",
        Duration::from_secs(20),
        || (statuses() == expected).then_some(()),
    );
    let body = got.lock().unwrap()[0].clone();
    assert_eq!(body["details"]["missing"], 1, "{body}");
    // No second alert while later checks stay clean.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(statuses(), expected);
    let last = scrape();
    assert_eq!(
        value(&last, "tcache_inconsistencies", &[("kind", "missing")]),
        Some(0.0)
    );
    assert!(observations(&last, "tcache_run_duration_seconds", &[("kind", "check")]) >= 2.0);
    assert!(observations(&last, "tcache_run_duration_seconds", &[("kind", "resolve")]) >= 1.0);
    assert_eq!(
        env.run(&["get", "added-by-test.html"]).stdout,
        b"new\n".to_vec()
    );
}
