#![allow(clippy::unwrap_used, clippy::expect_used)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn context() -> AlertContext {
    AlertContext {
        namespace: "tcache".into(),
        backend: "redis://127.0.0.1:6379/0".into(),
        host: "test-host".into(),
    }
}

fn report(inconsistent: usize, files: usize) -> CheckReport {
    let mut r = CheckReport::default();
    r.files = files;
    r.entries = files;
    r.missing = (0..inconsistent).map(|i| format!("t{i}.html")).collect();
    r.consistent = inconsistent == 0;
    r
}

fn sent(a: &Alerter) -> Vec<(Status, Condition)> {
    a.sent
        .lock()
        .unwrap()
        .iter()
        .map(|b| (b.status, b.condition))
        .collect()
}

fn config() -> AlertConfig {
    AlertConfig {
        inconsistencies: Some(2),
        ..AlertConfig::default()
    }
}

#[tokio::test]
async fn a_condition_fires_once_until_it_clears_then_resolves_once() {
    let a = Alerter::new(config(), context()).unwrap();
    a.observe_check(&report(1, 10));
    assert!(sent(&a).is_empty(), "under the threshold");
    a.observe_check(&report(3, 10));
    a.observe_check(&report(5, 10));
    assert_eq!(sent(&a), [(Status::Firing, Condition::Inconsistencies)]);
    assert_eq!(a.firing(), [Condition::Inconsistencies]);
    a.observe_check(&report(0, 10));
    a.observe_check(&report(0, 10));
    assert_eq!(
        sent(&a),
        [
            (Status::Firing, Condition::Inconsistencies),
            (Status::Resolved, Condition::Inconsistencies)
        ]
    );
    assert!(a.firing().is_empty());
    // A ratio alone.
    let ratio = Alerter::new(
        AlertConfig {
            inconsistency_ratio: Some(0.5),
            ..AlertConfig::default()
        },
        context(),
    )
    .unwrap();
    ratio.observe_check(&report(4, 10));
    assert!(sent(&ratio).is_empty());
    ratio.observe_check(&report(5, 10));
    assert_eq!(sent(&ratio), [(Status::Firing, Condition::Inconsistencies)]);
}

#[tokio::test]
async fn bodies_carry_the_documented_fields() {
    let ctx = AlertContext::new("ns", "redis://:s3cret@cache.internal:6379/0");
    assert_eq!(ctx.backend, "redis://:***@cache.internal:6379/0");
    let a = Alerter::with_scrubber(config(), ctx, None, |t| t.replace("t1.html", "***")).unwrap();
    a.observe_check(&report(3, 10));
    let body = a.sent.lock().unwrap()[0].clone();
    let v = serde_json::to_value(&body).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "at",
            "backend",
            "condition",
            "details",
            "host",
            "namespace",
            "since",
            "status",
            "summary",
            "version",
        ]
    );
    assert_eq!(v["version"], 1);
    assert_eq!(v["status"], "firing");
    assert_eq!(v["condition"], "inconsistencies");
    assert_eq!(v["namespace"], "ns");
    assert_eq!(v["backend"], "redis://:***@cache.internal:6379/0");
    assert!(!v["host"].as_str().unwrap().is_empty());
    let at = v["at"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(at).is_ok(), "{at}");
    assert_eq!(v["details"]["total"], 3);
    assert_eq!(v["details"]["missing"], 3);
    assert_eq!(v["details"]["threshold"]["count"], 2);
    assert_eq!(
        v["details"]["examples"],
        json!(["t0.html", "***", "t2.html"]),
        "details are scrubbed"
    );
    assert!(
        body.summary.starts_with("check found 3 inconsistencies"),
        "{}",
        body.summary
    );
    let back: AlertBody = serde_json::from_value(v).unwrap();
    assert_eq!(back, body);
}

#[tokio::test]
async fn runs_refusals_and_leases() {
    let a = Alerter::new(AlertConfig::default(), context()).unwrap();
    a.observe_warm(&Err(Error::new(ErrorKind::Conflict, "busy")));
    assert!(sent(&a).is_empty(), "a busy namespace is not a failure");
    a.observe_warm(&Err(Error::new(
        ErrorKind::Unavailable,
        "connection refused",
    )));
    a.observe_warm(&Err(Error::new(
        ErrorKind::Unavailable,
        "connection refused",
    )));
    let mut failed = WarmReport::default();
    failed.failed.push(template_cache_core::Failure::new(
        "big.html".into(),
        &Error::new(ErrorKind::ValueTooLarge, "too big"),
        1,
    ));
    a.observe_warm(&Ok(failed));
    a.observe_warm(&Ok(WarmReport::default()));
    a.observe_refusal(&Error::new(
        ErrorKind::Refused,
        "would delete 90% of entries",
    ));
    a.observe_resolve(&Err(Error::new(ErrorKind::Refused, "again")));
    a.observe_resolve(&Ok(ResolveReport::default()));
    a.observe_check_failed(&Error::new(ErrorKind::Unexpected, "boom"));
    a.observe_check(&report(0, 1));
    a.observe_lease(false);
    a.observe_lease(true);
    a.observe_lease_released();
    a.observe_lease(true);
    a.observe_lease(false);
    a.observe_lease(false);
    a.observe_lease(true);
    use Condition::*;
    use Status::*;
    assert_eq!(
        sent(&a),
        [
            (Firing, WarmFailed),
            (Resolved, WarmFailed),
            (Firing, TemplatesFailed),
            (Resolved, TemplatesFailed),
            (Firing, ThresholdRefused),
            (Resolved, ThresholdRefused),
            (Firing, CheckFailed),
            (Resolved, CheckFailed),
            (Firing, LeaseLost),
            (Resolved, LeaseLost),
        ]
    );
    let bodies = a.sent.lock().unwrap().clone();
    assert_eq!(bodies[0].details["error_kind"], "unavailable");
    assert_eq!(bodies[2].details["templates"][0]["name"], "big.html");
    assert_eq!(bodies[4].details["reason"], "would delete 90% of entries");
    assert!(
        bodies[5].summary.starts_with("resolved after"),
        "{}",
        bodies[5].summary
    );
}

#[tokio::test]
async fn time_based_conditions_fire_after_their_duration() {
    let a = Alerter::new(
        AlertConfig {
            backend_down: Some(Duration::from_secs(60)),
            no_warm: Some(Duration::from_secs(120)),
            ..AlertConfig::default()
        },
        context(),
    )
    .unwrap();
    let t0 = SystemTime::now();
    a.observe_backend(false);
    a.tick_at(t0 + Duration::from_secs(30));
    assert!(sent(&a).is_empty());
    a.tick_at(t0 + Duration::from_secs(61));
    a.tick_at(t0 + Duration::from_secs(62));
    assert_eq!(sent(&a), [(Status::Firing, Condition::BackendUnreachable)]);
    a.observe_backend(true);
    a.tick_at(t0 + Duration::from_secs(121));
    a.observe_warm(&Ok(WarmReport::default()));
    a.tick_at(t0 + Duration::from_secs(60));
    assert_eq!(
        sent(&a),
        [
            (Status::Firing, Condition::BackendUnreachable),
            (Status::Resolved, Condition::BackendUnreachable),
            (Status::Firing, Condition::NoSuccessfulWarm),
            (Status::Resolved, Condition::NoSuccessfulWarm),
        ]
    );
    let cancelled = WarmReport {
        cancelled: true,
        ..WarmReport::default()
    };
    a.observe_warm(&Ok(cancelled));
    a.tick_at(SystemTime::now() + Duration::from_secs(121));
    assert_eq!(
        a.firing(),
        [Condition::NoSuccessfulWarm],
        "a cancelled run is no success"
    );
}

#[tokio::test]
async fn the_state_file_dedups_across_processes_and_merges() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/alerts.json");
    let first = Alerter::with_state_file(config(), context(), &path).unwrap();
    first.observe_check(&report(3, 10));
    assert!(first.flush(Duration::from_secs(5)).await);
    drop(first);
    let second = Alerter::with_state_file(config(), context(), &path).unwrap();
    second.observe_check(&report(3, 10));
    assert!(sent(&second).is_empty(), "still firing from the first run");
    // Another command sharing the file changes another condition meanwhile.
    let other = Alerter::with_state_file(config(), context(), &path).unwrap();
    other.observe_warm(&Err(Error::new(ErrorKind::Unexpected, "boom")));
    assert!(other.flush(Duration::from_secs(5)).await);
    second.observe_check(&report(0, 10));
    assert!(second.flush(Duration::from_secs(5)).await);
    assert_eq!(
        sent(&second),
        [(Status::Resolved, Condition::Inconsistencies)]
    );
    let third = Alerter::with_state_file(config(), context(), &path).unwrap();
    assert_eq!(
        third.firing(),
        [Condition::WarmFailed],
        "the merge kept the other's condition"
    );
    std::fs::write(&path, "not json").unwrap();
    let damaged = Alerter::with_state_file(config(), context(), &path).unwrap();
    assert!(damaged.firing().is_empty());
}

#[test]
fn configurations_deserialize_and_validate() {
    let c: AlertConfig = serde_json::from_value(json!({
        "webhooks": ["https://hooks.example/T0K3N"],
        "webhook_timeout": "2s",
        "backend_down": "5m",
        "inconsistency_ratio": 0.1,
    }))
    .unwrap();
    assert_eq!(c.webhook_timeout, Duration::from_secs(2));
    assert_eq!(c.backend_down, Some(Duration::from_secs(300)));
    assert_eq!(c.webhook_attempts, AlertConfig::DEFAULT_WEBHOOK_ATTEMPTS);
    assert!(c.log && c.is_configured());
    c.validate().unwrap();
    assert!(!AlertConfig::default().is_configured());
    let unknown = serde_json::from_value::<AlertConfig>(json!({ "webhok": [] }));
    assert!(unknown.unwrap_err().to_string().contains("webhok"));
    let bad = serde_json::from_value::<AlertConfig>(json!({ "no_warm": "soon" }));
    assert!(
        bad.unwrap_err()
            .to_string()
            .contains("\"soon\" is not a duration")
    );
    for (bad, want) in [
        (
            AlertConfig {
                webhooks: vec!["ftp://x/secret".into()],
                ..AlertConfig::default()
            },
            "alerts.webhooks holds \"ftp://x\"",
        ),
        (
            AlertConfig {
                webhook_timeout: Duration::from_millis(10),
                ..AlertConfig::default()
            },
            "alerts.webhook_timeout is 10ms",
        ),
        (
            AlertConfig {
                webhook_attempts: 0,
                ..AlertConfig::default()
            },
            "alerts.webhook_attempts is 0",
        ),
        (
            AlertConfig {
                inconsistency_ratio: Some(1.5),
                ..AlertConfig::default()
            },
            "alerts.inconsistency_ratio is 1.5",
        ),
        (
            AlertConfig {
                command: Some(" ".into()),
                ..AlertConfig::default()
            },
            "alerts.command is empty",
        ),
    ] {
        let e = bad.validate().unwrap_err();
        assert!(e.message().contains(want), "{e}");
    }
}

#[tokio::test]
async fn the_command_gets_the_json_on_stdin_and_is_killed_when_it_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alert.json");
    let cmd = format!(
        "cat > '{}'; echo \"$TCACHE_ALERT_STATUS $TCACHE_ALERT_CONDITION\" > '{}.env'",
        out.display(),
        out.display()
    );
    let a = Alerter::new(
        AlertConfig {
            command: Some(cmd),
            ..config()
        },
        context(),
    )
    .unwrap();
    a.observe_check(&report(2, 2));
    assert!(a.flush(Duration::from_secs(10)).await);
    let body: AlertBody = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(
        (body.status, body.condition),
        (Status::Firing, Condition::Inconsistencies)
    );
    let env = std::fs::read_to_string(dir.path().join("alert.json.env")).unwrap();
    assert_eq!(env.trim(), "firing inconsistencies");

    let hanging = Alerter::new(
        AlertConfig {
            command: Some("sleep 30".into()),
            command_timeout: Duration::from_millis(200),
            ..config()
        },
        context(),
    )
    .unwrap();
    let started = std::time::Instant::now();
    hanging.observe_check(&report(2, 2));
    assert!(hanging.flush(Duration::from_secs(10)).await);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let body = hanging.sent.lock().unwrap()[0].clone();
    let failed = run_command(
        "echo nope >&2; exit 3",
        &body,
        b"{}",
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(failed.contains("3") && failed.contains("nope"), "{failed}");
}

/// What the test webhook server does with each request, in order (the last one repeats).
#[derive(Clone, Copy, Debug)]
enum Answer {
    Status(u16),
    /// Reads the request and never answers.
    Hang,
}

/// A tiny HTTP server: records request bodies, answers as scripted.
async fn webhook_server(script: Vec<Answer>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/hook/s3cr3t-token",
        listener.local_addr().unwrap()
    );
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&bodies);
    let n = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let i = n.fetch_add(1, Ordering::SeqCst);
            let answer = script[i.min(script.len() - 1)];
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let body = read_request(&mut s).await;
                seen.lock().unwrap().push(body);
                match answer {
                    Answer::Status(code) => {
                        let head = format!(
                            "HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        );
                        let _ = s.write_all(head.as_bytes()).await;
                    }
                    Answer::Hang => tokio::time::sleep(Duration::from_secs(60)).await,
                }
            });
        }
    });
    (url, bodies)
}

async fn read_request(s: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                return body.to_owned();
            }
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn hook_config(url: &str, attempts: u32) -> AlertConfig {
    AlertConfig {
        webhooks: vec![url.to_owned()],
        webhook_attempts: attempts,
        webhook_timeout: Duration::from_millis(500),
        ..config()
    }
}

#[tokio::test]
async fn webhooks_are_retried_on_5xx_and_timeouts() {
    let (url, bodies) =
        webhook_server(vec![Answer::Status(500), Answer::Hang, Answer::Status(204)]).await;
    let a = Alerter::new(hook_config(&url, 3), context()).unwrap();
    a.observe_check(&report(2, 2));
    assert!(a.flush(Duration::from_secs(20)).await);
    let got = bodies.lock().unwrap().clone();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.iter().all(|b| b == &got[0]), "the same body every time");
    let body: AlertBody = serde_json::from_str(&got[0]).unwrap();
    assert_eq!(body.condition, Condition::Inconsistencies);
    a.observe_check(&report(0, 2));
    assert!(a.flush(Duration::from_secs(20)).await);
    let got = bodies.lock().unwrap().clone();
    let last: AlertBody = serde_json::from_str(&got[3]).unwrap();
    assert_eq!(last.status, Status::Resolved);
}

#[tokio::test]
async fn webhooks_give_up_after_their_attempts_and_at_once_on_4xx() {
    let (url, bodies) = webhook_server(vec![Answer::Status(503)]).await;
    let a = Alerter::new(hook_config(&url, 2), context()).unwrap();
    a.observe_check(&report(2, 2));
    assert!(a.flush(Duration::from_secs(20)).await);
    assert_eq!(bodies.lock().unwrap().len(), 2);
    let (url, bodies) = webhook_server(vec![Answer::Status(404)]).await;
    let a = Alerter::new(hook_config(&url, 3), context()).unwrap();
    a.observe_check(&report(2, 2));
    assert!(a.flush(Duration::from_secs(20)).await);
    assert_eq!(bodies.lock().unwrap().len(), 1);
    let e = post_webhook(&url, b"{}", Duration::from_secs(1), 3)
        .await
        .unwrap_err();
    assert!(e.contains("HTTP 404") && e.contains("not retried"), "{e}");
    assert_eq!(
        endpoint_of(&url),
        format!("http://{}", url.split('/').nth(2).unwrap())
    );
    assert!(
        !endpoint_of("https://u:p@h.example/x?t=1").contains('p'.to_string().repeat(2).as_str())
    );
    assert_eq!(
        endpoint_of("https://u:p@h.example/x?t=1"),
        "https://h.example"
    );
}
