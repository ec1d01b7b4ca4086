//! No password ever reaches the output: the real `tcache` binary with hostile passwords (every
//! URL delimiter, percent signs, a long one, unicode) through every failure path (malformed URL,
//! unknown scheme, unreachable server, wrong password on a real redis-server and a real Redis
//! Cluster, TLS with an untrusted certificate, Memcached refusing credentials), in text and
//! JSON, with debug logs. And passwords from the environment or a file, never on the command
//! line, work against a real password-protected redis-server without any encoding.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use template_cache_test_servers::{MemcachedServer, RedisCluster, RedisServer, redis_cli};

/// What the servers accept: none of the hostile passwords.
const RIGHT: &str = "the-right-one";

/// Passwords no URL delimiter can be trusted to end, and ones easy to mangle.
fn hostile() -> Vec<String> {
    let mut all: Vec<String> = ["p/ss", "p?ss", "p#ss", "p@ss", "p:ss", "%41", "pässwörd€✓"]
        .map(String::from)
        .to_vec();
    all.push(format!("L0ng/{}?#@:{}", "x".repeat(300), "%2F".repeat(20)));
    all
}

/// Every byte but the unreserved ones percent-encoded (what a URL would carry).
fn encoded(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn tcache(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tcache"));
    c.env("TCACHE_STATE_DIR", state)
        .env_remove("TCACHE_BACKEND")
        .env_remove("TCACHE_BACKEND_PASSWORD")
        .env_remove("TCACHE_BACKEND_PASSWORD_FILE")
        .env_remove("RUST_LOG");
    c
}

/// The flag sets every case runs with: text, JSON, debug logs, JSON with debug logs; `DIR` is
/// the template directory.
const VARIANTS: [&[&str]; 4] = [
    &["list"],
    &["--json", "list"],
    &["-vv", "warm", "DIR"],
    &["-vv", "--json", "check", "DIR"],
];

/// Asserts exit code 2, no panic, a JSON error object with `--json`, and no trace of `secret`
/// (as given or percent-encoded) on stdout or stderr.
fn assert_hidden(what: &str, out: &Output, secret: &str, json: bool) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for form in [secret.to_owned(), encoded(secret)] {
        assert!(
            !stdout.contains(&form) && !stderr.contains(&form),
            "{what}: the password shows as {form:?}\nstdout: {stdout}\nstderr: {stderr}"
        );
    }
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: exit code\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    if json {
        let v: serde_json::Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{what}: {e}: {stdout:?}"));
        assert!(v["error"].is_string(), "{what}: {v}");
    }
}

/// `url` with the password shown as `PW` (for failure messages).
fn url_shape(url: &str, pw: &str) -> String {
    url.replace(pw, "PW")
}

/// Runs every case (`urls` built from each password) in every variant, one thread per password.
fn run_all(state: &Path, dir: &Path, urls: &(dyn Fn(&str) -> Vec<String> + Sync)) {
    let dir = dir.to_str().unwrap();
    std::thread::scope(|s| {
        for pw in hostile() {
            s.spawn(move || {
                for url in urls(&pw) {
                    for variant in VARIANTS {
                        let json = variant.contains(&"--json");
                        let args = variant.iter().map(|a| if *a == "DIR" { dir } else { a });
                        let out = tcache(state)
                            .args(["--backend", &url])
                            .args(args)
                            .output()
                            .unwrap();
                        let what = format!(
                            "{variant:?} on {} with password {pw:?}",
                            url_shape(&url, &pw)
                        );
                        assert_hidden(&what, &out, &pw, json);
                    }
                    // From the environment instead of the URL.
                    let stripped = url.replacen(&format!(":{pw}@"), "@", 1);
                    if stripped != url && !stripped.starts_with("sled") {
                        let out = tcache(state)
                            .args(["--json", "-vv", "--backend", &stripped, "list"])
                            .env("TCACHE_BACKEND_PASSWORD", &pw)
                            .output()
                            .unwrap();
                        let what = format!(
                            "TCACHE_BACKEND_PASSWORD={pw:?} for {}",
                            url_shape(&url, &pw)
                        );
                        assert_hidden(&what, &out, &pw, true);
                    }
                }
            });
        }
    });
}

fn templates(root: &Path) -> std::path::PathBuf {
    let dir = root.join("templates");
    std::fs::create_dir_all(dir.join("emails")).unwrap();
    std::fs::write(dir.join("emails/welcome.html"), "<p>Welcome</p>").unwrap();
    dir
}

#[test]
fn hostile_passwords_never_show_when_a_url_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let dir = templates(tmp.path());
    let memcached = MemcachedServer::start();
    let (p, m) = (closed_port(), memcached.port());
    let sled_dir = tmp.path().join("not-a-dir");
    std::fs::write(&sled_dir, "a file").unwrap();
    let sled_dir = sled_dir.display().to_string();
    run_all(&state, &dir, &|pw| {
        vec![
            // Malformed.
            format!("redis//:{pw}@127.0.0.1:{p}"),
            format!("redis://:{pw}@"),
            format!("redis://:{pw}@127.0.0.1:{p}/notadb"),
            format!("redis+cluster://:{pw}@127.0.0.1:{p},127.0.0.1:{p}/x/y"),
            format!("redis://:{pw}@127.0.0.1:{p}?ttl=soon"),
            format!("rediss://:{pw}@127.0.0.1:{p}?tls_ca=/nowhere/ca.pem"),
            format!("moka://:{pw}@127.0.0.1"),
            // Unknown scheme.
            format!("ftp://:{pw}@127.0.0.1:{p}"),
            // Memcached takes no credentials.
            format!("memcache://:{pw}@127.0.0.1:{m}"),
            format!("memcache://user:{pw}@127.0.0.1:{m}"),
            // A sled directory that cannot be opened.
            format!("sled://{sled_dir}/:{pw}@x"),
        ]
    });
    // A backend URL given where a command was expected.
    for pw in hostile() {
        let out = tcache(&state)
            .args([&format!("redis://:{pw}@127.0.0.1:{p}"), "list"])
            .output()
            .unwrap();
        assert_hidden("a URL in place of the command", &out, &pw, false);
    }
}

#[test]
fn hostile_passwords_never_show_when_a_server_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let dir = templates(tmp.path());
    let redis = RedisServer::start_with(&["--requirepass", RIGHT]);
    let tls = RedisServer::start_tls();
    let cluster = RedisCluster::start(3);
    for node in cluster.nodes() {
        redis_cli(node.port(), &["CONFIG", "SET", "requirepass", RIGHT]);
    }
    let seeds = cluster
        .nodes()
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port()))
        .collect::<Vec<_>>()
        .join(",");
    let (closed, closed2) = (closed_port(), closed_port());
    let ca = tls.tls_ca().unwrap();
    // The server's own certificate is no certificate authority.
    let not_a_ca = ca.with_file_name("server.crt").display().to_string();
    let (r, t) = (redis.port(), tls.port());
    run_all(&state, &dir, &|pw| {
        vec![
            // Unreachable.
            format!("redis://:{pw}@127.0.0.1:{closed}/0"),
            format!("redis+cluster://:{pw}@127.0.0.1:{closed},127.0.0.1:{closed2}"),
            // Wrong password.
            format!("redis://:{pw}@127.0.0.1:{r}/0"),
            format!("redis://default:{pw}@127.0.0.1:{r}"),
            format!("redis+cluster://:{pw}@{seeds}"),
            // TLS: an untrusted certificate.
            format!("rediss://:{pw}@127.0.0.1:{t}"),
            format!("rediss://:{pw}@127.0.0.1:{t}?tls_ca={not_a_ca}"),
        ]
    });
}

/// A password-protected redis-server whose password holds every delimiter.
const TRICKY: &str = "p@ss/w?rd#%41:xé€";

#[test]
fn passwords_from_the_environment_or_a_file_need_no_encoding() {
    let redis = RedisServer::start_with(&["--requirepass", TRICKY]);
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let dir = templates(tmp.path());
    let dir = dir.to_str().unwrap();
    let port = redis.port();
    let check = |what: &str, out: Output, code: i32| {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(code), "{what}: {all}");
        for form in [TRICKY.to_owned(), encoded(TRICKY)] {
            assert!(!all.contains(&form), "{what}: password shows: {all}");
        }
        all
    };

    // The environment variable.
    let url = format!("redis://127.0.0.1:{port}/0");
    let out = tcache(&state)
        .args(["-vv", "--backend", &url, "warm", dir])
        .env("TCACHE_BACKEND_PASSWORD", TRICKY)
        .output()
        .unwrap();
    check("TCACHE_BACKEND_PASSWORD", out, 0);

    // A file (trailing newline stripped) replaces the URL's password and keeps its user.
    let file = tmp.path().join("password");
    std::fs::write(&file, format!("{TRICKY}\n")).unwrap();
    let wrong = format!("redis://default:wrong@127.0.0.1:{port}/0");
    let out = tcache(&state)
        .args([
            "-vv",
            "--json",
            "--backend",
            &wrong,
            "--backend-password-file",
        ])
        .arg(&file)
        .args(["check", dir])
        .output()
        .unwrap();
    let all = check("--backend-password-file", out, 0);
    assert!(all.contains("\"consistent\":true"), "{all}");

    // Its environment variable, with a Windows line ending.
    std::fs::write(&file, format!("{TRICKY}\r\n")).unwrap();
    let out = tcache(&state)
        .args(["--backend", &url, "get", "emails/welcome.html"])
        .env("TCACHE_BACKEND_PASSWORD_FILE", &file)
        .output()
        .unwrap();
    let all = check("TCACHE_BACKEND_PASSWORD_FILE", out, 0);
    assert!(all.contains("Welcome"), "{all}");

    // Without it, the server refuses.
    let out = tcache(&state)
        .args(["--backend", &url, "list"])
        .output()
        .unwrap();
    check("no password", out, 2);

    // Both at once, an empty file, a missing file, a backend without passwords: exit 2.
    let empty = tmp.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let missing = tmp.path().join("missing");
    let started = Instant::now();
    for (what, backend, file, env, says) in [
        ("both", url.as_str(), Some(&file), true, "use one"),
        ("empty", url.as_str(), Some(&empty), false, "is empty"),
        ("missing", url.as_str(), Some(&missing), false, "missing"),
        ("sled", "sled://x", None, true, "takes none"),
        (
            "memcache",
            "memcache://127.0.0.1:1",
            None,
            true,
            "takes none",
        ),
    ] {
        let mut c = tcache(&state);
        c.current_dir(tmp.path())
            .args(["--backend", backend, "list"]);
        if let Some(f) = file {
            c.arg("--backend-password-file").arg(f);
        }
        if env {
            c.env("TCACHE_BACKEND_PASSWORD", TRICKY);
        }
        let all = check(what, c.output().unwrap(), 2);
        assert!(all.contains(says), "{what}: {all}");
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!tmp.path().join("x").exists(), "sled opened nothing");
}
