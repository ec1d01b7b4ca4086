//! An unreadable directory never empties the cache: the real `tcache` binary, run as an
//! unprivileged user (root reads every directory whatever its mode), against a sled database.
//!
//! A scan that cannot read `secret/` does not know what is under it, so nothing there may be
//! taken as deleted: `check --fix` reports `secret` as an error (exit 1) and deletes only the
//! real orphans elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const PUBLIC: usize = 12;
const SECRET: usize = 6;
const SECRET_DEEP: usize = 3;

/// Runs `tcache` as `nobody` (through `setpriv`) when the test runs as root, directly otherwise.
struct Tcache {
    bin: PathBuf,
    as_nobody: bool,
    backend: String,
    state: PathBuf,
}

impl Tcache {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = if self.as_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
                .arg(&self.bin);
            c
        } else {
            Command::new(&self.bin)
        };
        c.args(args)
            .env("TCACHE_BACKEND", &self.backend)
            .env("TCACHE_STATE_DIR", &self.state)
            .env_remove("RUST_LOG");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs with `--json`; the exit code and the one JSON object printed.
    fn json(&self, args: &[&str]) -> (i32, Value) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        let stdout = String::from_utf8(out.stdout).unwrap();
        let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "{e}: {stdout:?} (stderr: {})",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap(), v)
    }
}

/// Whether this process runs as root: a file it creates is owned by uid 0.
fn running_as_root(dir: &Path) -> bool {
    let probe = dir.join(".owner-probe");
    std::fs::write(&probe, "").unwrap();
    let root = std::fs::metadata(&probe).unwrap().uid() == 0;
    std::fs::remove_file(&probe).unwrap();
    root
}

fn sh(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(status.success(), "{program} {args:?}: {status}");
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Makes a directory readable again when dropped, so the temporary tree can be removed even
/// after a failed assertion.
struct Readable(PathBuf);

impl Drop for Readable {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
    }
}

fn names(v: &Value, key: &str) -> Vec<String> {
    common::names(v, key)
}

fn error_names(v: &Value) -> Vec<String> {
    v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

/// The test's tool set: as root it needs `setpriv` (util-linux) and a `tcache` that `nobody`
/// may execute (copied next to the tree if the build directory is closed to others).
fn tcache_for(tmp: &Path) -> Tcache {
    let as_nobody = running_as_root(tmp);
    let mut bin = PathBuf::from(env!("CARGO_BIN_EXE_tcache"));
    let backend = format!("sled://{}", tmp.join("db").display());
    let state = tmp.join("state");
    if as_nobody {
        let found = Command::new("setpriv").arg("--version").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "`setpriv` was not found on PATH. This test runs tcache as the unprivileged user \
             `nobody` when it runs as root: install it (Debian/Ubuntu: `apt-get install \
             util-linux`), or run the tests as a normal user."
        );
        // Everything the unprivileged process touches belongs to it; the temporary directory
        // is created mode 0700.
        chmod(tmp, 0o755);
        sh("chown", &["-R", "nobody:nogroup", tmp.to_str().unwrap()]);
        let probe = Tcache {
            bin: bin.clone(),
            as_nobody,
            backend: backend.clone(),
            state: state.clone(),
        };
        if !probe.run(&["--version"]).status.success() {
            let copy = tmp.join("tcache");
            std::fs::copy(&bin, &copy).unwrap();
            chmod(&copy, 0o755);
            bin = copy;
        }
    }
    Tcache {
        bin,
        as_nobody,
        backend,
        state,
    }
}

fn write(root: &Path, name: &str, content: &str) {
    let p = root.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

#[test]
fn an_unreadable_directory_never_empties_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("templates");
    let mut secret_names = Vec::new();
    for i in 0..PUBLIC {
        write(
            &root,
            &format!("public/p{i:02}.html"),
            &format!("public {i}"),
        );
    }
    for i in 0..SECRET {
        let name = format!("secret/s{i:02}.html");
        write(&root, &name, &format!("secret {i}"));
        secret_names.push(name);
    }
    for i in 0..SECRET_DEEP {
        let name = format!("secret/deeper/d{i:02}.html");
        write(&root, &name, &format!("deeper {i}"));
        secret_names.push(name);
    }
    let tcache = tcache_for(tmp.path());
    let dir = root.to_str().unwrap();
    let total = PUBLIC + SECRET + SECRET_DEEP;

    let (code, warm) = tcache.json(&["warm", dir]);
    assert_eq!(code, 0, "{warm}");
    assert_eq!(warm["written"].as_u64(), Some(total as u64), "{warm}");

    // `secret/` becomes unreadable; one public file is really deleted.
    let secret = root.join("secret");
    let _readable = Readable(secret.clone());
    chmod(&secret, 0o000);
    std::fs::remove_file(root.join("public/p03.html")).unwrap();

    // Quick check with --fix (human output): the unreadable directory is an error, the deleted
    // file an orphan, and the run exits 1 because not everything could be checked. The ratio
    // bound is lifted so that nothing but the unknown-prefix rule protects `secret/`.
    let out = tcache.run(&["check", dir, "--fix", "--max-delete-ratio", "1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let error_line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("error"))
        .unwrap_or_else(|| panic!("no error line: {stdout}"));
    assert!(error_line.contains("secret"), "{stdout}");
    assert!(error_line.contains("ermission denied"), "{stdout}");
    assert!(stdout.contains("orphaned  public/p03.html"), "{stdout}");
    assert!(!stdout.contains("orphaned  secret"), "{stdout}");
    assert!(stdout.contains("1 deleted"), "{stdout}");

    // Deep, with --fix: lists every key of the namespace; still nothing under `secret/` is an
    // orphan, and nothing is left to delete.
    let (code, deep) = tcache.json(&["check", dir, "--deep", "--fix", "--max-delete-ratio", "1"]);
    assert_eq!(code, 1, "{deep}");
    assert_eq!(error_names(&deep), ["secret"], "{deep}");
    assert!(names(&deep, "orphaned").is_empty(), "{deep}");
    assert!(names(&deep, "corrupt").is_empty(), "{deep}");
    assert_eq!(deep["fix"]["deleted"].as_u64(), Some(0), "{deep}");

    // A plain check (JSON): not consistent, because `secret` could not be read.
    let (code, quick) = tcache.json(&["check", dir]);
    assert_eq!(code, 1, "{quick}");
    assert_eq!(quick["consistent"].as_bool(), Some(false), "{quick}");
    assert_eq!(error_names(&quick), ["secret"], "{quick}");
    let message = quick["errors"][0]["error"].as_str().unwrap();
    assert!(message.contains("ermission denied"), "{quick}");
    for kind in ["orphaned", "missing", "outdated", "corrupt"] {
        assert!(names(&quick, kind).is_empty(), "{kind}: {quick}");
    }

    // Readable again: every entry under `secret/` is still in the index and the cache, with the
    // file's content, and only the deleted file's entry is gone.
    chmod(&secret, 0o755);
    let (code, list) = tcache.json(&["list"]);
    assert_eq!(code, 0, "{list}");
    let listed = names(&list, "templates");
    for name in &secret_names {
        assert!(listed.contains(name), "{name} left the index: {list}");
        let out = tcache.run(&["get", name]);
        assert_eq!(out.status.code(), Some(0), "{name}: {out:?}");
        assert_eq!(
            out.stdout,
            std::fs::read(root.join(name)).unwrap(),
            "{name} holds its file's content"
        );
    }
    assert!(!listed.contains(&"public/p03.html".to_owned()), "{list}");
    assert_eq!(listed.len(), total - 1, "{list}");
    let out = tcache.run(&["get", "public/p03.html"]);
    assert_eq!(out.status.code(), Some(1), "the real orphan was deleted");
    let (code, deep) = tcache.json(&["check", dir, "--deep"]);
    assert_eq!(
        (code, deep["consistent"].as_bool()),
        (0, Some(true)),
        "{deep}"
    );
}
