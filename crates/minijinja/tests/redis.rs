//! The loader against a real redis-server: renders from the cache, refuses corrupt entries,
//! picks up re-warmed templates within the staleness bound, resolves extends and includes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use template_cache_core::{
    Bytes, Cache, CacheBackend, EngineConfig, ErrorKind, Namespace, Origin, SourceConfig, Warmer,
};
use template_cache_minijinja::minijinja::{Environment, context};
use template_cache_minijinja::{CacheLoader, CachedEnvironment, LoaderConfig};
use template_cache_redis::RedisBackend;
use template_cache_test_servers::RedisServer;

const REFRESH: Duration = Duration::from_millis(200);

fn write(root: &Path, name: &str, content: &str) {
    let p = root.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// A layout, a page that extends it and includes a partial, and a page of its own.
fn site(root: &Path) {
    write(
        root,
        "base.html",
        "<title>{% block title %}site{% endblock %}</title>\
         <nav>{% include \"partials/nav.html\" %}</nav>\
         <main>{% block body %}{% endblock %}</main>",
    );
    write(root, "partials/nav.html", "nav v1");
    write(
        root,
        "pages/home.html",
        "{% extends \"base.html\" %}{% block title %}home{% endblock %}\
         {% block body %}hello {{ user }}{% endblock %}",
    );
    write(root, "plain.txt", "plain {{ n }}");
}

struct Setup {
    _server: RedisServer,
    backend: Arc<dyn CacheBackend>,
    dir: tempfile::TempDir,
    namespace: Namespace,
}

impl Setup {
    async fn start() -> Self {
        let server = RedisServer::start();
        let backend: Arc<dyn CacheBackend> = Arc::new(
            RedisBackend::connect(&server.url())
                .await
                .expect("connect to redis-server"),
        );
        let dir = tempfile::tempdir().unwrap();
        site(dir.path());
        let setup = Setup {
            _server: server,
            backend,
            dir,
            namespace: Namespace::new("mj").unwrap(),
        };
        let report = setup.warm().await;
        assert_eq!(report, 4);
        setup
    }

    /// Warms the tree; the number of templates written.
    async fn warm(&self) -> usize {
        let mut config = EngineConfig::new(SourceConfig::new(self.dir.path()));
        config.namespace = self.namespace.clone();
        let report = Warmer::new(self.backend.clone(), config)
            .unwrap()
            .run_once()
            .await
            .unwrap();
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        report.written
    }

    fn config(&self) -> LoaderConfig {
        let mut config = LoaderConfig::new(self.namespace.clone());
        config.refresh_interval = REFRESH;
        config
    }

    fn loader(&self) -> CacheLoader {
        CacheLoader::new(self.backend.clone(), self.config()).unwrap()
    }

    async fn corrupt(&self, name: &str) {
        Cache::new(self.backend.clone())
            .set(
                &self.namespace.key_for(name),
                Bytes::from_static(b"not a record"),
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renders_from_the_cache_through_extends_and_include() {
    let s = Setup::start().await;
    let loader = s.loader();
    let env = CachedEnvironment::new(loader.clone(), Environment::new());
    // Nothing preloaded: the render reads the page, its layout and the partial asynchronously.
    let html = env
        .render("pages/home.html", context! { user => "ada" })
        .await
        .unwrap();
    assert_eq!(
        html,
        "<title>home</title><nav>nav v1</nav><main>hello ada</main>"
    );
    assert_eq!(
        loader.loaded_names(),
        ["base.html", "pages/home.html", "partials/nav.html"]
    );
    let held = loader.loaded("base.html").unwrap();
    assert_eq!(held.origin, Origin::Cache);
    assert_eq!(
        env.render("plain.txt", context! { n => 3 }).await.unwrap(),
        "plain 3"
    );
    // A name that is not a template is minijinja's "template not found".
    let e = env.render("nope.html", context! {}).await.unwrap_err();
    assert_eq!(
        e.kind(),
        template_cache_minijinja::minijinja::ErrorKind::TemplateNotFound
    );
    // `ignore missing` still ignores a missing template read through the cache.
    let mut base = Environment::new();
    base.add_template("opt.html", "[{% include \"gone.html\" ignore missing %}]")
        .unwrap();
    let env = CachedEnvironment::new(loader, base);
    assert_eq!(env.render("opt.html", context! {}).await.unwrap(), "[]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_lookups_wait_for_the_read_outside_current_thread_runtimes() {
    let s = Setup::start().await;
    let loader = s.loader();
    let mut env = Environment::new();
    loader.install(&mut env);
    let env = Arc::new(env);
    // On a multi-thread worker (block_in_place).
    let html = env
        .get_template("pages/home.html")
        .unwrap()
        .render(context! { user => "bob" })
        .unwrap();
    assert!(
        html.contains("hello bob") && html.contains("nav v1"),
        "{html}"
    );
    // On the blocking pool, with a template not held yet.
    let env2 = env.clone();
    let out = tokio::task::spawn_blocking(move || {
        env2.get_template("plain.txt")
            .unwrap()
            .render(context! { n => 1 })
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out, "plain 1");

    // A current-thread runtime cannot wait: a clear error, no deadlock.
    let (backend, config) = (s.backend.clone(), s.config());
    let msg = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let loader = CacheLoader::new(backend, config).unwrap();
            let mut env = Environment::new();
            loader.install(&mut env);
            let Err(e) = env.get_template("plain.txt") else {
                panic!("a current-thread runtime cannot wait for a read")
            };
            // ...while the async render works on the same runtime.
            let env = CachedEnvironment::new(loader, Environment::new());
            let out = env.render("plain.txt", context! { n => 2 }).await.unwrap();
            assert_eq!(out, "plain 2");
            e.to_string()
        })
    })
    .join()
    .unwrap();
    assert!(msg.contains("current-thread"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_entry_is_refused_or_served_from_the_file_with_read_through() {
    let s = Setup::start().await;
    s.corrupt("partials/nav.html").await;

    let env = CachedEnvironment::new(s.loader(), Environment::new());
    let e = env
        .render("pages/home.html", context! { user => "x" })
        .await
        .unwrap_err();
    let source = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<template_cache_core::Error>())
        .expect("the template-cache error is the source");
    assert_eq!(source.kind(), ErrorKind::Corrupt, "{e:#}");
    assert!(e.to_string().contains("partials/nav.html"), "{e}");
    assert!(env.loader().loaded("partials/nav.html").is_none());

    // With read-through the file is served, and the cache is left as it is (readers never write).
    let mut config = s.config();
    config.read_through = Some(SourceConfig::new(s.dir.path()));
    let loader = CacheLoader::new(s.backend.clone(), config).unwrap();
    let env = CachedEnvironment::new(loader.clone(), Environment::new());
    let html = env
        .render("pages/home.html", context! { user => "x" })
        .await
        .unwrap();
    assert!(html.contains("nav v1"), "{html}");
    assert_eq!(
        loader.loaded("partials/nav.html").unwrap().origin,
        Origin::File
    );
    assert_eq!(loader.loaded("base.html").unwrap().origin, Origin::Cache);
    let raw = Cache::new(s.backend.clone())
        .get(&s.namespace.key_for("partials/nav.html"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&raw[..], b"not a record");

    // A held template whose entry becomes corrupt keeps its last verified version.
    let loader = s.loader();
    let env = CachedEnvironment::new(loader.clone(), Environment::new());
    assert_eq!(
        env.render("plain.txt", context! { n => 1 }).await.unwrap(),
        "plain 1"
    );
    s.corrupt("plain.txt").await;
    let report = loader.refresh().await;
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.failed[0].1.kind(), ErrorKind::Corrupt);
    assert!(report.changed.is_empty());
    assert_eq!(
        env.render("plain.txt", context! { n => 1 }).await.unwrap(),
        "plain 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewarmed_template_is_picked_up_within_the_staleness_bound() {
    let s = Setup::start().await;
    let loader = s.loader();
    let report = loader.preload_index().await.unwrap();
    assert_eq!(report.loaded, 4, "{report:?}");
    let _refresher = loader.spawn_refresher();
    let env = CachedEnvironment::new(loader.clone(), Environment::new());
    let ctx = || context! { user => "ada" };
    assert!(
        env.render("pages/home.html", ctx())
            .await
            .unwrap()
            .contains("nav v1")
    );
    let generation = loader.generation();
    let changes = loader.subscribe();
    // An application's own environment, with the loader installed: minijinja's auto-reload
    // asks the loader whether each compiled template is still the version it holds.
    let mut own = Environment::new();
    loader.install(&mut own);
    let own_render = |own: &Environment<'static>| {
        own.get_template("pages/home.html")
            .unwrap()
            .render(ctx())
            .unwrap()
    };
    assert!(own_render(&own).contains("nav v1"));

    // Change the partial (included by the layout) and the page, and warm again.
    write(s.dir.path(), "partials/nav.html", "nav version 2");
    write(
        s.dir.path(),
        "pages/home.html",
        "{% extends \"base.html\" %}{% block body %}bye {{ user }}{% endblock %}",
    );
    assert_eq!(s.warm().await, 2);
    let warmed = Instant::now();
    // The bound: one refresh interval plus one pass (a few reads here); generous slack for a
    // loaded machine.
    let bound = REFRESH + Duration::from_secs(2);
    loop {
        let html = env.render("pages/home.html", ctx()).await.unwrap();
        if html == "<title>site</title><nav>nav version 2</nav><main>bye ada</main>" {
            break;
        }
        assert!(
            warmed.elapsed() < bound,
            "still the old version after {:?}: {html}",
            warmed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let picked_up = warmed.elapsed();
    assert!(loader.generation() > generation);
    assert!(changes.has_changed().unwrap());
    assert_eq!(
        own_render(&own),
        "<title>site</title><nav>nav version 2</nav><main>bye ada</main>",
        "the own environment reloads without being rebuilt"
    );
    println!("new version served {picked_up:?} after the warm (refresh interval {REFRESH:?})");

    // A template gone from the cache is no longer served once a pass has run.
    std::fs::remove_file(s.dir.path().join("plain.txt")).unwrap();
    Cache::new(s.backend.clone())
        .delete(&s.namespace.key_for("plain.txt"))
        .await
        .unwrap();
    let report = loader.refresh().await;
    assert_eq!(report.removed, ["plain.txt"], "{report:?}");
    assert!(env.render("plain.txt", context! { n => 1 }).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresher_stops_with_its_guard_or_with_the_loader() {
    let s = Setup::start().await;
    let loader = s.loader();
    let refresher = loader.spawn_refresher();
    assert!(refresher.is_running());
    drop(loader);
    let deadline = Instant::now() + Duration::from_secs(5);
    while refresher.is_running() {
        assert!(Instant::now() < deadline, "refresher outlived its loader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Settings are range-checked.
    let mut config = s.config();
    config.refresh_interval = Duration::from_millis(10);
    let e = CacheLoader::new(s.backend.clone(), config).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
    assert!(e.to_string().contains("refresh_interval"), "{e}");
}
