//! kill -9 at random moments: the real `tcache` binary against a real redis-server and a real
//! memcached, with a tree of 20,000 templates.
//!
//! Each loop starts `tcache warm` (or `tcache check --fix`) after changing some files, kills it
//! with SIGKILL after a random delay within the duration of an uninterrupted run of the same
//! size, and then asks a quick check whether the cache is consistent. A quick check trusts the
//! index for confirmed entries, so it may only say `consistent: true` if the cache really is:
//! the truth is what a deep check (which fetches and verifies every entry) finds. So every quick
//! check that says consistent is followed by a deep check that must agree, and every few runs a
//! deep check runs anyway: everything it finds wrong must be reported by the quick check too.
//! After the kills, one uninterrupted run must leave a cache that both checks find consistent.
//!
//! Deep checks are the slow part (about 1.7 s each for 20,000 entries in a debug build), so they
//! run only where they decide something; the suite takes about a minute on two cores.
//!
//! The random choices come from a seed printed at the start of each test; set
//! `TCACHE_KILL9_SEED` to repeat them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Env, names};
use serde_json::Value;
use template_cache_test_servers::{MemcachedServer, RedisServer};

/// Templates in the tree.
const TEMPLATES: usize = 20_000;
/// Kills of a live process each loop must reach.
const KILLS: usize = 10;
/// Runs each loop may start to reach [`KILLS`] (a run may finish before its kill is due).
const MAX_RUNS: usize = 30;
/// Every this many runs, a deep check verifies the quick check even when it found problems.
const DEEP_EVERY: usize = 10;
/// Files rewritten with new content before each run.
const REWRITES: usize = 3_000;
/// Files added before each run.
const ADDS: usize = 5;
/// Files deleted before each `check --fix` run (warm never deletes, so the warm loop does not).
const DELETES: usize = 20;

/// A small deterministic generator (splitmix64), seeded per test.
struct Rng(u64);

impl Rng {
    fn new(test: &str) -> Self {
        let seed = std::env::var("TCACHE_KILL9_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u128(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_nanos(),
                );
                h.finish()
            });
        eprintln!("{test}: seed {seed} (TCACHE_KILL9_SEED={seed} repeats this run's choices)");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 if `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// The template tree: `TEMPLATES` numbered files in 100 directories, plus files added later.
struct Tree {
    root: PathBuf,
    /// Which numbered files exist.
    present: Vec<bool>,
    /// Bumped by every change, so that rewritten content always differs.
    version: usize,
}

impl Tree {
    fn create(root: PathBuf) -> Self {
        let mut tree = Tree {
            root,
            present: vec![false; TEMPLATES],
            version: 0,
        };
        for i in 0..TEMPLATES {
            tree.write(i);
        }
        tree
    }

    fn name(i: usize) -> String {
        format!("d{:03}/t{i:05}.html", i / 200)
    }

    fn write(&mut self, i: usize) {
        let path = self.root.join(Self::name(i));
        if !self.present[i] {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        }
        // Sizes vary with the version, so some rewrites change the size and some do not.
        let pad = "x".repeat(self.version % 7 * 10);
        let content = format!("<p>template {i}, version {}</p>{pad}\n", self.version);
        std::fs::write(path, content).unwrap();
        self.present[i] = true;
    }

    /// Rewrites `rewrites` random files (re-creating deleted ones), adds `adds` new files and
    /// deletes `deletes` random files.
    fn change(&mut self, rng: &mut Rng, rewrites: usize, adds: usize, deletes: usize) {
        self.version += 1;
        for _ in 0..rewrites {
            let i = rng.below(TEMPLATES as u64) as usize;
            self.write(i);
        }
        for k in 0..adds {
            let path = self.root.join(format!("added/v{}-{k}.html", self.version));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, format!("added in version {}\n", self.version)).unwrap();
        }
        for _ in 0..deletes {
            let i = rng.below(TEMPLATES as u64) as usize;
            if self.present[i] {
                std::fs::remove_file(self.root.join(Self::name(i))).unwrap();
                self.present[i] = false;
            }
        }
    }

    fn dir(&self) -> &str {
        self.root.to_str().unwrap()
    }
}

/// A directory for the tree: in memory (`/dev/shm`) where there is one, because creating 20,000
/// files costs seconds on some disk filesystems (7 s on this machine's ext4) and nothing on tmpfs;
/// the engines see the same files either way.
fn tree_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new()
            .prefix("tcache-kill9-")
            .tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

/// One backend, one namespace, one tree.
struct Harness {
    env: Env,
    /// Holds the tree (removed on drop).
    _tree_dir: tempfile::TempDir,
    ns: &'static str,
    tree: Tree,
    rng: Rng,
    /// Quick checks after a kill that said consistent (each confirmed by a deep check).
    consistent_quick: usize,
    /// Deep checks run to verify quick checks.
    deep_checks: usize,
    /// When the test started.
    started: Instant,
}

/// What a check reported as wrong, by kind and name (`missing:a.html`).
fn wrong(v: &Value) -> BTreeSet<String> {
    ["missing", "outdated", "orphaned", "corrupt"]
        .iter()
        .flat_map(|kind| {
            names(v, kind)
                .into_iter()
                .map(move |n| format!("{kind}:{n}"))
        })
        .collect()
}

fn summary(v: &Value) -> String {
    let count = |k: &str| v[k].as_array().map_or(0, Vec::len);
    format!(
        "consistent {}, {} missing, {} outdated, {} orphaned, {} corrupt, {} errors",
        v["consistent"],
        count("missing"),
        count("outdated"),
        count("orphaned"),
        count("corrupt"),
        count("errors"),
    )
}

impl Harness {
    fn new(backend: &str, ns: &'static str) -> Self {
        let started = Instant::now();
        let env = Env::with_backend(backend);
        let tree_dir = tree_dir();
        let tree = Tree::create(tree_dir.path().join("tree"));
        eprintln!("{ns}: {TEMPLATES} files written in {:?}", started.elapsed());
        Harness {
            env,
            _tree_dir: tree_dir,
            ns,
            tree,
            rng: Rng::new(ns),
            consistent_quick: 0,
            deep_checks: 0,
            started,
        }
    }

    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec!["--namespace", self.ns];
        all.extend_from_slice(args);
        all
    }

    /// Runs `tcache ARGS DIR` to completion; its exit code.
    fn run(&self, args: &[&str]) -> i32 {
        let mut all = self.args(args);
        all.push(self.tree.dir());
        let out = self.env.run(&all);
        if !out.status.success() {
            eprintln!(
                "tcache {all:?}: {}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out.status.code().unwrap()
    }

    /// `tcache --json check [--deep] DIR`: exit code and report.
    fn check(&self, deep: bool) -> (i32, Value) {
        let mut args = self.args(&["check", self.tree.dir()]);
        if deep {
            args.push("--deep");
        }
        self.env.json(&args)
    }

    /// A quick check after a kill: it must describe the cache. If it says consistent, a deep
    /// check must agree. With `always_deep` (every few runs: deep checks are the slow part), the
    /// deep check runs anyway, and everything it finds wrong must be known to the quick check as
    /// wrong (by the same or another kind). Returns whether the quick check said consistent.
    fn verify(&mut self, what: &str, always_deep: bool) -> bool {
        let (code, quick) = self.check(false);
        assert!(
            code == 0 || code == 1,
            "{what}: the quick check could not run ({code}): {quick}"
        );
        let consistent = quick["consistent"].as_bool().unwrap();
        assert_eq!(consistent, code == 0, "{what}: {quick}");
        assert!(
            quick["errors"].as_array().unwrap().is_empty(),
            "{what}: a killed run left something a check cannot read: {}",
            quick["errors"]
        );
        if !(consistent || always_deep) {
            return false;
        }
        self.deep_checks += 1;
        let (deep_code, deep) = self.check(true);
        assert!(
            deep_code == 0 || deep_code == 1,
            "{what}: the deep check could not run ({deep_code}): {deep}"
        );
        assert!(
            deep["errors"].as_array().unwrap().is_empty(),
            "{what}: a killed run left something a deep check cannot read: {}",
            deep["errors"]
        );
        let truth = wrong(&deep);
        if consistent {
            self.consistent_quick += 1;
            assert!(
                truth.is_empty(),
                "{what}: the quick check said consistent, but a deep check found {} ({:?}...)",
                summary(&deep),
                truth.iter().take(10).collect::<Vec<_>>()
            );
        }
        let strip = |s: &String| s.split_once(':').unwrap().1.to_owned();
        let seen: BTreeSet<String> = wrong(&quick).iter().map(strip).collect();
        let unseen: Vec<&String> = truth.iter().filter(|t| !seen.contains(&strip(t))).collect();
        assert!(
            unseen.is_empty(),
            "{what}: the deep check found {} that the quick check ({}) did not: {:?}",
            unseen.len(),
            summary(&quick),
            unseen.iter().take(10).collect::<Vec<_>>()
        );
        consistent
    }

    /// Kills `tcache ARGS DIR` at random moments until [`KILLS`] live processes were killed,
    /// changing the tree before each run, and verifies the cache after each.
    fn kill_loop(&mut self, args: &[&str], deletes: usize) {
        let label = args.join(" ");
        // An uninterrupted run of the same size sets the range of the delays.
        self.tree.change(&mut self.rng, REWRITES, ADDS, deletes);
        let started = Instant::now();
        assert_eq!(self.run(args), 0, "uninterrupted {label}");
        let full = started.elapsed();
        let (code, quick) = self.check(false);
        assert_eq!(code, 0, "after an uninterrupted {label}: {quick}");
        eprintln!("{}: an uninterrupted `{label}` took {full:?}", self.ns);

        // Runs vary (the machine's load, what the last kill left): a run that finished before
        // its kill was due narrows the range, so that kills keep landing mid-run.
        let mut range = full;
        let (mut kills, mut finished) = (0, 0);
        for run in 0..MAX_RUNS {
            if kills >= KILLS {
                break;
            }
            self.tree.change(&mut self.rng, REWRITES, ADDS, deletes);
            let delay = Duration::from_micros(self.rng.below(range.as_micros() as u64));
            let mut all = self.args(args);
            all.push(self.tree.dir());
            let mut child = self
                .env
                .cmd(&all)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(delay);
            let what = match child.try_wait().unwrap() {
                Some(status) => {
                    assert!(
                        status.success(),
                        "run {run} of `{label}` finished by itself with {status}"
                    );
                    finished += 1;
                    range = range.mul_f64(0.85);
                    format!("run {run} of `{label}` (finished with {status} before {delay:?})")
                }
                None => {
                    child.kill().unwrap(); // SIGKILL
                    child.wait().unwrap();
                    kills += 1;
                    format!("run {run} of `{label}` (killed after {delay:?})")
                }
            };
            let consistent = self.verify(&what, run % DEEP_EVERY == 0);
            eprintln!(
                "{}: {what}: consistent {consistent} ({:?} since the start)",
                self.ns,
                self.started.elapsed()
            );
        }
        assert!(
            kills >= KILLS,
            "only {kills} of {MAX_RUNS} runs of `{label}` were still running when killed \
             ({finished} finished first)"
        );
    }

    /// One uninterrupted run of each of `args` leaves a cache both checks find consistent.
    fn converges(&mut self, runs: &[&[&str]]) {
        for args in runs {
            assert_eq!(self.run(args), 0, "{args:?}");
        }
        for deep in [false, true] {
            let (code, v) = self.check(deep);
            assert_eq!(
                (code, v["consistent"].as_bool()),
                (0, Some(true)),
                "deep {deep}: {v}"
            );
            assert_eq!(v["files"], v["entries"], "{v}");
        }
    }

    fn populate(&self) {
        let started = Instant::now();
        assert_eq!(self.run(&["warm"]), 0, "first warm");
        eprintln!(
            "{}: the first warm of {TEMPLATES} templates took {:?}",
            self.ns,
            started.elapsed()
        );
    }
}

fn kill_warm(backend: &str, ns: &'static str) {
    let started = Instant::now();
    let mut h = Harness::new(backend, ns);
    h.populate();
    h.kill_loop(&["warm"], 0);
    h.converges(&[&["warm"]]);
    eprintln!(
        "{ns}: done in {:?} ({} quick checks said consistent, {} deep checks)",
        started.elapsed(),
        h.consistent_quick,
        h.deep_checks
    );
}

fn kill_fix(backend: &str, ns: &'static str) {
    let started = Instant::now();
    let mut h = Harness::new(backend, ns);
    h.populate();
    let fix: &[&str] = &["check", "--fix", "--max-delete-ratio", "1"];
    h.kill_loop(fix, DELETES);
    // A killed resolution may leave orphans (a warm never deletes): one uninterrupted
    // resolution removes them, then a warm finds nothing left to do.
    h.converges(&[fix, &["warm"]]);
    eprintln!(
        "{ns}: done in {:?} ({} quick checks said consistent, {} deep checks)",
        started.elapsed(),
        h.consistent_quick,
        h.deep_checks
    );
}

fn redis_url(server: &RedisServer) -> String {
    format!("redis://127.0.0.1:{}/0", server.port())
}

#[test]
fn kill9_during_warm_on_redis() {
    let server = RedisServer::start();
    kill_warm(&redis_url(&server), "k9-warm-redis");
}

#[test]
fn kill9_during_fix_on_redis() {
    let server = RedisServer::start();
    kill_fix(&redis_url(&server), "k9-fix-redis");
}

#[test]
fn kill9_during_warm_on_memcached() {
    let server = MemcachedServer::start();
    kill_warm(
        &format!("memcache://{}", server.addr()),
        "k9-warm-memcached",
    );
}

#[test]
fn kill9_during_fix_on_memcached() {
    let server = MemcachedServer::start();
    kill_fix(&format!("memcache://{}", server.addr()), "k9-fix-memcached");
}
