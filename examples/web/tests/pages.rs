//! End to end: a real redis-server, the example templates warmed with the library's `Warmer`,
//! the built binary serving them on a free loopback port, pages fetched over HTTP, a template
//! edited and warmed again, and the new page served within the staleness bound.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use template_cache::redis::RedisBackend;
use template_cache::{CacheBackend, EngineConfig, Namespace, SourceConfig, Warmer};
use template_cache_test_servers::RedisServer;

/// The app's refresh interval in this test: its staleness bound (plus one refresh pass).
const REFRESH: Duration = Duration::from_millis(300);

/// Kills the app when the test ends, whatever happens.
struct App {
    child: Child,
    base: String,
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_app(redis_url: &str) -> App {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tcache-web-example"))
        .args(["--backend", redis_url, "--namespace", "web"])
        .args(["--listen", "127.0.0.1:0", "--refresh", "300ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the example binary");
    let stdout = child.stdout.take().unwrap();
    let mut app = App {
        child,
        base: String::new(),
    };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from the app: {line:?}"));
    app.base = addr.to_owned();
    app
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn warm(rt: &tokio::runtime::Runtime, backend: &Arc<dyn CacheBackend>, root: &Path) -> usize {
    let mut config = EngineConfig::new(SourceConfig::new(root));
    config.namespace = Namespace::new("web").unwrap();
    let report = rt
        .block_on(Warmer::new(backend.clone(), config).unwrap().run_once())
        .unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    report.written
}

fn get(agent: &ureq::Agent, url: &str) -> (u16, String) {
    let mut response = agent.get(url).call().unwrap();
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

#[test]
fn serves_pages_from_the_cache_and_follows_a_rewarmed_template() {
    let server = RedisServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let backend: Arc<dyn CacheBackend> = Arc::new(
        rt.block_on(RedisBackend::connect(&server.url()))
            .expect("connect to redis-server"),
    );
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"),
        dir.path(),
    );
    assert_eq!(warm(&rt, &backend, dir.path()), 4);

    let app = start_app(&server.url());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();

    let (status, home) = get(&agent, &format!("{}/", app.base));
    assert_eq!(status, 200, "{home}");
    assert!(home.contains("<h1>Welcome</h1>"), "{home}");
    assert!(
        home.contains("<a href=\"/about\">About</a>"),
        "the layout's nav: {home}"
    );
    assert!(
        home.contains("rendered for &#x2f;."),
        "auto-escaped context: {home}"
    );
    let (status, about) = get(&agent, &format!("{}/about", app.base));
    assert_eq!(status, 200, "{about}");
    assert!(about.contains("<h1>About</h1>"), "{about}");
    assert!(
        about.contains("<title>About · template-cache example</title>"),
        "{about}"
    );
    assert_eq!(get(&agent, &format!("{}/nope", app.base)).0, 404);
    assert_eq!(get(&agent, &format!("{}/..%2Fbase", app.base)).0, 404);

    // Edit the page and the layout, warm again: the app serves the new versions within the
    // refresh interval plus one refresh pass, without a restart.
    let about_path = dir.path().join("pages/about.html");
    let edited = std::fs::read_to_string(&about_path)
        .unwrap()
        .replace("<h1>About</h1>", "<h1>About us, edited</h1>");
    std::fs::write(&about_path, edited).unwrap();
    let base_path = dir.path().join("base.html");
    let edited = std::fs::read_to_string(&base_path)
        .unwrap()
        .replace("rendered from the template cache", "layout v2");
    std::fs::write(&base_path, edited).unwrap();
    assert_eq!(warm(&rt, &backend, dir.path()), 2);
    let warmed = Instant::now();
    let bound = REFRESH + Duration::from_secs(3); // one pass is a few reads; slack for a busy CI
    loop {
        let (status, about) = get(&agent, &format!("{}/about", app.base));
        assert_eq!(status, 200, "{about}");
        if about.contains("<h1>About us, edited</h1>") && about.contains("layout v2") {
            break;
        }
        assert!(
            warmed.elapsed() < bound,
            "old page still served {:?} after the warm: {about}",
            warmed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, home) = get(&agent, &format!("{}/", app.base));
    assert!(home.contains("layout v2"), "{home}");
    assert_eq!(get(&agent, &format!("{}/healthz", app.base)).1, "ok");
    drop(app);
}
