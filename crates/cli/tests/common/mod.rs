//! Shared helpers: run the real `tcache` binary against a copy of the sample templates.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod served;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub struct Env {
    pub backend: String,
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub db: PathBuf,
    pub state: PathBuf,
}

impl Env {
    /// A fresh copy of the sample templates and a fresh sled database.
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let backend = format!("sled://{}", tmp.path().join("db").display());
        Self::in_dir(tmp, backend)
    }

    /// A fresh copy of the sample templates against `backend`.
    pub fn with_backend(backend: &str) -> Self {
        Self::in_dir(tempfile::tempdir().unwrap(), backend.to_owned())
    }

    fn in_dir(tmp: tempfile::TempDir, backend: String) -> Self {
        let root = tmp.path().join("templates");
        copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/templates"),
            &root,
        );
        Env {
            backend,
            db: tmp.path().join("db"),
            state: tmp.path().join("state"),
            root,
            tmp,
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tcache"));
        c.args(args)
            .env("TCACHE_BACKEND", &self.backend)
            .env("TCACHE_STATE_DIR", &self.state)
            .env_remove("RUST_LOG");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    pub fn json(&self, args: &[&str]) -> (i32, Value) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            stdout.lines().count(),
            1,
            "exactly one JSON object on stdout: {stdout:?}"
        );
        let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        (out.status.code().unwrap(), v)
    }

    pub fn dir(&self) -> &str {
        self.root.to_str().unwrap()
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

pub fn names(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}
