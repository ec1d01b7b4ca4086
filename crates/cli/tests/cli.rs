//! The real `tcache` binary against real directories and a real sled database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{Env, names};

use serde_json::Value;

#[test]
fn full_life_cycle() {
    let env = Env::new();
    let (code, warm) = env.json(&["warm", env.dir()]);
    assert_eq!(code, 0, "{warm}");
    let files = warm["scanned"].as_u64().unwrap();
    assert!(files >= 40);
    assert_eq!(warm["written"].as_u64(), Some(files));
    for key in [
        "scanned",
        "written",
        "unchanged",
        "failed",
        "bytes_written",
        "duration_ms",
    ] {
        assert!(warm.get(key).is_some(), "warm JSON has {key}");
    }
    let (code, check) = env.json(&["check", env.dir()]);
    assert_eq!(
        (code, check["consistent"].as_bool()),
        (0, Some(true)),
        "{check}"
    );

    std::fs::write(env.root.join("pages/home.html"), "changed").unwrap();
    std::fs::remove_file(env.root.join("pages/about.html")).unwrap();
    std::fs::write(env.root.join("pages/new.html"), "new").unwrap();
    let (code, check) = env.json(&["check", env.dir()]);
    assert_eq!(code, 1, "{check}");
    assert_eq!(check["consistent"], Value::Bool(false));
    assert_eq!(names(&check, "missing"), ["pages/new.html"]);
    assert_eq!(names(&check, "outdated"), ["pages/home.html"]);
    assert_eq!(names(&check, "orphaned"), ["pages/about.html"]);
    assert!(names(&check, "corrupt").is_empty());
    for key in ["files", "entries", "errors", "duration_ms"] {
        assert!(check.get(key).is_some(), "check JSON has {key}");
    }
    // A dry run reports and changes nothing.
    let (code, dry) = env.json(&["check", env.dir(), "--fix", "--dry-run"]);
    assert_eq!(code, 1, "{dry}");
    assert_eq!(dry["fix"]["dry_run"], Value::Bool(true));
    assert_eq!(
        (dry["fix"]["added"].as_u64(), dry["fix"]["deleted"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        env.json(&["check", env.dir()]).0,
        1,
        "still inconsistent after a dry run"
    );

    let (code, fixed) = env.json(&["check", env.dir(), "--fix"]);
    assert_eq!(code, 0, "{fixed}");
    let fix = &fixed["fix"];
    assert_eq!(
        (
            fix["added"].as_u64(),
            fix["updated"].as_u64(),
            fix["repaired"].as_u64(),
            fix["deleted"].as_u64()
        ),
        (Some(1), Some(1), Some(0), Some(1))
    );
    assert_eq!(fix["refused"], Value::Null);
    let (code, check) = env.json(&["check", env.dir(), "--deep"]);
    assert_eq!(
        (code, check["consistent"].as_bool()),
        (0, Some(true)),
        "{check}"
    );

    let out = env.run(&["get", "pages/home.html"]);
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(0), &b"changed"[..])
    );
    let out = env.run(&["get", "pages/about.html"]);
    assert_eq!(out.status.code(), Some(1));
    let list = String::from_utf8(env.run(&["list"]).stdout).unwrap();
    assert!(
        list.lines().any(|l| l == "pages/new.html")
            && !list.lines().any(|l| l == "pages/about.html"),
        "{list}"
    );
}

#[test]
fn keep_orphans_and_text_output() {
    let env = Env::new();
    assert_eq!(env.run(&["warm", env.dir()]).status.code(), Some(0));
    std::fs::remove_file(env.root.join("pages/about.html")).unwrap();
    let out = env.run(&["check", env.dir()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("orphaned  pages/about.html"), "{text}");
    let (code, v) = env.json(&["check", env.dir(), "--fix", "--keep-orphans"]);
    assert_eq!(code, 1, "orphans remain: {v}");
    assert_eq!(v["fix"]["deleted"].as_u64(), Some(0));
    assert_eq!(
        names(&env.json(&["check", env.dir()]).1, "orphaned"),
        ["pages/about.html"]
    );
}

#[test]
fn empty_or_missing_directories_never_delete() {
    let env = Env::new();
    assert_eq!(env.run(&["warm", env.dir()]).status.code(), Some(0));
    let empty = env.tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (code, v) = env.json(&[
        "check",
        empty.to_str().unwrap(),
        "--fix",
        "--max-delete-ratio",
        "1",
    ]);
    assert_eq!(code, 3, "{v}");
    assert!(
        v["fix"]["refused"]
            .as_str()
            .unwrap()
            .contains("no templates"),
        "{v}"
    );
    let missing = env.tmp.path().join("not-mounted");
    let out = env.run(&["check", missing.to_str().unwrap(), "--fix"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    let (code, v) = env.json(&["check", env.dir()]);
    assert_eq!(
        (code, v["consistent"].as_bool()),
        (0, Some(true)),
        "nothing was deleted: {v}"
    );
}

#[test]
fn thresholds_refuse_with_exit_3() {
    let env = Env::new();
    assert_eq!(env.run(&["warm", env.dir()]).status.code(), Some(0));
    std::fs::remove_dir_all(env.root.join("emails")).unwrap();
    let (code, v) = env.json(&["check", env.dir(), "--fix"]);
    assert_eq!(code, 3, "{v}");
    assert!(
        v["fix"]["refused"]
            .as_str()
            .unwrap()
            .contains("max_delete_ratio")
    );
    let (code, v) = env.json(&[
        "check",
        env.dir(),
        "--fix",
        "--max-delete-ratio",
        "1",
        "--max-delete",
        "3",
    ]);
    assert_eq!(code, 3, "{v}");
    let orphans = names(&env.json(&["check", env.dir()]).1, "orphaned").len();
    assert!(orphans > 3, "nothing was deleted");
    let (code, v) = env.json(&["check", env.dir(), "--fix", "--max-delete-ratio", "1"]);
    assert_eq!(
        (code, v["fix"]["deleted"].as_u64()),
        (0, Some(orphans as u64)),
        "{v}"
    );
}

#[tokio::test]
async fn deep_check_finds_and_fixes_corruption() {
    use std::sync::Arc;
    use template_cache::sled::SledBackend;
    use template_cache::{Bytes, Cache, Namespace};
    let env = Env::new();
    assert_eq!(env.run(&["warm", env.dir()]).status.code(), Some(0));
    {
        let db = Cache::new(Arc::new(SledBackend::open(&env.db).unwrap()));
        let key = Namespace::default().key_for("emails/welcome.html");
        db.set(&key, Bytes::from_static(b"garbage")).await.unwrap();
        db.flush().await.unwrap();
    }
    assert_eq!(
        env.json(&["check", env.dir()]).0,
        0,
        "a quick check trusts the index"
    );
    let (code, v) = env.json(&["check", env.dir(), "--deep"]);
    assert_eq!(
        (code, names(&v, "corrupt")),
        (1, vec!["emails/welcome.html".to_owned()]),
        "{v}"
    );
    let out = env.run(&["get", "emails/welcome.html"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt"));
    let (code, v) = env.json(&["check", env.dir(), "--deep", "--fix"]);
    assert_eq!((code, v["fix"]["repaired"].as_u64()), (0, Some(1)), "{v}");
    assert_eq!(env.json(&["check", env.dir(), "--deep"]).0, 0);
}

#[test]
fn bad_backend_urls_exit_2_without_leaking_passwords() {
    let env = Env::new();
    for (url, says) in [
        ("nonsense", "backend URL"),
        ("ftp://user:s3cret@host/x", "unknown scheme"),
        ("redis://user:s3cret@127.0.0.1:1/0", "connecting"),
        ("redis://user:s3cret@127.0.0.1:1/0?ttl=soon", "ttl"),
        ("memcache://user:s3cret@127.0.0.1:1", "authentication"),
        ("memcache://127.0.0.1:1", "unavailable"),
    ] {
        let out = env
            .cmd(&["--backend", url, "warm", env.dir()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{url}");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(all.contains(says), "{url}: {all}");
        assert!(!all.contains("s3cret"), "password printed: {all}");
    }
    let out = env.run(&["--namespace", "bad ns", "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("namespace"));
    let out = env.run(&["warm"]);
    assert_eq!(out.status.code(), Some(2), "usage error");
}

#[cfg(unix)]
#[test]
fn interval_mode_stops_cleanly_on_sigterm() {
    let env = Env::new();
    let child = env
        .cmd(&["--json", "warm", env.dir(), "--interval", "1s"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let reports: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(reports.len() >= 2, "{reports:?}");
    assert!(reports[0]["written"].as_u64().unwrap() > 0);
    assert_eq!(reports.last().unwrap()["written"].as_u64(), Some(0));
    assert_eq!(env.json(&["check", env.dir()]).0, 0);
}
