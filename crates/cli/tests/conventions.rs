//! Command-line conventions of the real `tcache` binary on sled: progress only on a terminal,
//! shell completions and a man page, quiet broken pipes, `NO_COLOR`, and the library's
//! resolution controls (`--fix-only`, `--max-change`, `--max-change-ratio`, `warm --prune`).
//!
//! Terminal tests run `tcache` under a pseudo-terminal with util-linux `script`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// A template tree and a sled database in a temporary directory.
struct Tree {
    tmp: tempfile::TempDir,
    root: PathBuf,
    backend: String,
}

impl Tree {
    /// `n` templates named `t/0000.html`...
    fn new(n: usize) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("templates");
        std::fs::create_dir_all(root.join("t")).unwrap();
        let backend = format!("sled://{}", tmp.path().join("db").display());
        let tree = Tree { tmp, root, backend };
        for i in 0..n {
            tree.write(&format!("t/{i:04}.html"), &format!("<p>{i}</p>"));
        }
        tree
    }

    fn write(&self, name: &str, content: &str) {
        let path = self.root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.root.join(name)).unwrap();
    }

    fn dir(&self) -> &str {
        self.root.to_str().unwrap()
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TCACHE_BACKEND", self.backend.clone()),
            (
                "TCACHE_STATE_DIR",
                self.tmp.path().join("state").display().to_string(),
            ),
        ]
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tcache"));
        c.args(args)
            .envs(self.env())
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Exit code and the one JSON object on stdout of `tcache --json args...`.
    fn json(&self, args: &[&str]) -> (i32, Value) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(stdout.lines().count(), 1, "one JSON object: {stdout:?}");
        let v = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        (out.status.code().unwrap(), v)
    }

    fn warm(&self) {
        let out = self.run(&["warm", self.dir()]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
    }

    /// The check's JSON report (exit code ignored).
    fn check(&self) -> Value {
        self.json(&["check", self.dir()]).1
    }

    /// `tcache args...` under a pseudo-terminal (stdin, stdout and stderr are the terminal),
    /// with `extra_env` set: exit code and everything it showed.
    fn on_terminal(&self, extra_env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
        let mut line = String::new();
        for (k, v) in self
            .env()
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain(extra_env.iter().copied())
        {
            line.push_str(&format!("{k}={} ", quoted(v)));
        }
        line.push_str(&quoted(env!("CARGO_BIN_EXE_tcache")));
        for a in args {
            line.push(' ');
            line.push_str(&quoted(a));
        }
        let out = Command::new("script")
            .args(["-qfec", &format!("env {line}"), "/dev/null"])
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .env("TERM", "xterm-256color")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run `script` (util-linux; apt-get install util-linux): {e}")
            });
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

/// `s` quoted for `sh`.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn names(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} in {v}"))
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

/// Whether `text` holds an SGR (color or style) escape sequence: ESC `[` digits/`;` `m`.
fn has_sgr(text: &str) -> bool {
    text.match_indices("\x1b[").any(|(i, _)| {
        text[i + 2..]
            .chars()
            .find(|c| !(c.is_ascii_digit() || *c == ';'))
            == Some('m')
    })
}

const PHASES: [&str; 7] = [
    "scanning",
    "hashing",
    "checking",
    "verifying",
    "listing",
    "deleting",
    "writing",
];

fn no_phase_in(what: &str, text: &str) {
    for phase in PHASES {
        assert!(!text.contains(phase), "{what}: {phase:?} shown: {text:?}");
    }
}

// --- progress -------------------------------------------------------------------------------

#[test]
fn progress_names_each_phase_on_a_terminal() {
    let tree = Tree::new(300);
    let (code, shown) = tree.on_terminal(&[], &["warm", tree.dir(), "--rate", "1000"]);
    assert_eq!(code, 0, "{shown}");
    // New files are read and hashed while they are written: no hashing phase of their own.
    for phase in ["scanning", "writing"] {
        assert!(shown.contains(phase), "warm: no {phase:?} in {shown:?}");
    }
    assert!(
        shown.contains("warmed sled://"),
        "the report follows: {shown}"
    );
    // The bar counts against the phase's total.
    assert!(shown.contains("/300 ("), "{shown:?}");

    tree.remove("t/0000.html");
    tree.write("t/0001.html", "changed");
    let (code, shown) = tree.on_terminal(&[], &["check", tree.dir(), "--deep", "--fix"]);
    assert_eq!(code, 0, "{shown}");
    for phase in [
        "scanning",
        "hashing",
        "verifying",
        "listing",
        "deleting",
        "writing",
    ] {
        assert!(shown.contains(phase), "check: no {phase:?} in {shown:?}");
    }
    let (code, shown) = tree.on_terminal(&[], &["check", tree.dir()]);
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("checking"), "quick check: {shown:?}");
}

#[test]
fn no_progress_off_a_terminal_or_with_json_or_quiet() {
    let tree = Tree::new(300);
    let out = tree.run(&["warm", tree.dir()]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    no_phase_in("stderr not a terminal", &err);
    assert!(!err.contains('\r') && !err.contains('\x1b'), "{err:?}");
    assert!(err.is_empty(), "nothing to say: {err:?}");

    tree.write("t/new.html", "new");
    let (code, shown) = tree.on_terminal(&[], &["--json", "warm", tree.dir()]);
    assert_eq!(code, 0, "{shown}");
    no_phase_in("--json", &shown);
    let v: Value = serde_json::from_str(shown.trim()).unwrap_or_else(|e| panic!("{e}: {shown:?}"));
    assert_eq!(v["written"], 1);

    tree.write("t/newer.html", "newer");
    let (code, shown) = tree.on_terminal(&[], &["-q", "warm", tree.dir()]);
    assert_eq!(code, 0, "{shown}");
    no_phase_in("-q", &shown);
    assert!(shown.contains("1 written"), "{shown:?}");

    let (code, shown) = tree.on_terminal(&[], &["-q", "check", tree.dir(), "--deep"]);
    assert_eq!(code, 0, "{shown}");
    no_phase_in("-q check", &shown);
}

// --- NO_COLOR ----------------------------------------------------------------------------------

#[test]
fn no_color_turns_off_colored_logs() {
    let tree = Tree::new(3);
    // The control: on a terminal, -v logs are colored.
    let (code, shown) = tree.on_terminal(&[], &["-v", "warm", tree.dir()]);
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("warm finished"), "{shown:?}");
    assert!(has_sgr(&shown), "colored logs on a terminal: {shown:?}");

    tree.write("t/x.html", "x");
    let (code, shown) = tree.on_terminal(&[("NO_COLOR", "1")], &["-v", "warm", tree.dir()]);
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("warm finished"), "{shown:?}");
    assert!(!has_sgr(&shown), "NO_COLOR=1: {shown:?}");
    // A usage error is not colored either.
    let (code, shown) = tree.on_terminal(&[("NO_COLOR", "1")], &["warm", "--bogus"]);
    assert_eq!(code, 2, "{shown}");
    assert!(!has_sgr(&shown), "NO_COLOR=1 usage error: {shown:?}");
    // An empty NO_COLOR is unset.
    let (_, shown) = tree.on_terminal(&[("NO_COLOR", "")], &["-v", "check", tree.dir()]);
    assert!(has_sgr(&shown), "NO_COLOR empty: {shown:?}");

    // Off a terminal, nothing is ever colored.
    let out = tree
        .cmd(&["-v", "check", tree.dir()])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("check finished"), "{err:?}");
    assert!(!err.contains("\x1b["), "{err:?}");
}

// --- broken pipes ------------------------------------------------------------------------------

/// Runs `tcache args...` with stdout read by a reader that closes it after one line; returns
/// the exit code and stderr.
fn read_one_line(tree: &Tree, args: &[&str]) -> (Option<i32>, String) {
    let mut child = tree
        .cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(!first.is_empty(), "tcache {args:?} printed nothing");
    // The reader is dropped: the pipe is closed with most of the output unread.
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_reader_closing_the_pipe_ends_output_quietly() {
    // Names long enough that every listing overflows a pipe's buffer (64 KiB).
    let tree = Tree::new(0);
    let dir = "d".repeat(120);
    for i in 0..800 {
        tree.write(&format!("{dir}/{dir}/{i:04}.html"), "x");
    }
    tree.write("big.html", &"0123456789abcde\n".repeat(60_000));
    // Every template is missing: the check lists 801 lines.
    let (code, err) = read_one_line(&tree, &["check", tree.dir()]);
    assert_eq!(code, Some(1), "the check's own exit code: {err}");
    assert!(
        !err.contains("Broken pipe") && !err.contains("panicked"),
        "{err}"
    );

    // A closed stderr drops logs and messages without a panic.
    for (args, expected) in [
        (&["-vv", "check", tree.dir()][..], 1),
        (&["get", "nope.html"], 1),
    ] {
        let mut child = tree
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stderr.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(expected),
            "tcache {args:?}: {out:?}"
        );
    }

    tree.warm();
    for args in [&["list"][..], &["get", "big.html"]] {
        let (code, err) = read_one_line(&tree, args);
        assert_eq!(code, Some(0), "tcache {args:?}: {err}");
        assert!(
            !err.contains("Broken pipe") && !err.contains("panicked") && err.is_empty(),
            "tcache {args:?}: {err}"
        );
    }
}

// --- completions and man ------------------------------------------------------------------

#[test]
fn completions_for_every_shell() {
    let tree = Tree::new(0);
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = tree.run(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.len() > 500, "{shell}: {script}");
        for known in ["warm", "check", "fix-only", "prune"] {
            assert!(script.contains(known), "{shell}: no {known:?} in {script}");
        }
        assert!(out.stderr.is_empty(), "{shell}");
    }
    let out = tree.run(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    // No backend is opened: a bad backend URL does not matter.
    let out = tree
        .cmd(&["completions", "bash"])
        .env("TCACHE_BACKEND", "nope://")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn man_pages_are_roff() {
    let tree = Tree::new(0);
    let out = tree.run(&["man"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.starts_with(".ie") || page.contains("\n.TH "), "{page}");
    assert!(page.contains(".TH tcache"), "{page}");
    for known in ["warm", "check", "completions"] {
        assert!(page.contains(known), "{known}: {page}");
    }
    let out = tree.run(&["man", "warm"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH tcache-warm 1"), "{page}");
    assert!(page.contains("prune"), "{page}");
    let out = tree.run(&["man", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

// --- check --fix-only ----------------------------------------------------------------------

#[test]
fn fix_only_resolves_the_chosen_kinds() {
    let tree = Tree::new(8);
    tree.warm();
    tree.remove("t/0000.html"); // orphaned
    tree.write("t/0001.html", "changed"); // outdated
    tree.write("t/new.html", "new"); // missing
    let (code, v) = tree.json(&["check", tree.dir(), "--fix", "--fix-only", "missing"]);
    assert_eq!(code, 1, "outdated and orphaned are left: {v}");
    let fix = &v["fix"];
    assert_eq!(
        (&fix["added"], &fix["updated"], &fix["deleted"]),
        (&Value::from(1), &Value::from(0), &Value::from(0)),
        "{v}"
    );
    let v = tree.check();
    assert!(names(&v, "missing").is_empty(), "{v}");
    assert_eq!(names(&v, "outdated"), ["t/0001.html"]);
    assert_eq!(names(&v, "orphaned"), ["t/0000.html"]);

    let (code, v) = tree.json(&["check", tree.dir(), "--fix", "--fix-only", "outdated"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["fix"]["updated"], 1, "{v}");
    assert_eq!(names(&tree.check(), "orphaned"), ["t/0000.html"]);

    // Text output, and a comma-separated list.
    let out = tree.run(&[
        "check",
        tree.dir(),
        "--fix",
        "--fix-only",
        "missing,corrupt,orphaned",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("1 deleted"), "{text}");
    assert_eq!(tree.check()["consistent"], true);

    // --keep-orphans is --fix-only without orphaned; together they are a usage error.
    let out = tree.run(&[
        "check",
        tree.dir(),
        "--fix",
        "--keep-orphans",
        "--fix-only",
        "missing",
    ]);
    assert_eq!(out.status.code(), Some(2));
    for bad in [
        &["check", tree.dir(), "--fix", "--fix-only", "stale"][..],
        &["check", tree.dir(), "--fix-only", "missing"],
    ] {
        let out = tree.run(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--fix"),
            "{bad:?}"
        );
    }
}

// --- check --max-change, --max-change-ratio ----------------------------------------------------

#[test]
fn max_change_refuses_with_exit_3_and_changes_nothing() {
    let tree = Tree::new(8);
    tree.warm();
    for i in 0..3 {
        tree.write(&format!("t/{i:04}.html"), "changed");
    }
    for (flags, says) in [
        (&["--max-change", "2"][..], "max_change"),
        (&["--max-change-ratio", "0.25"], "max_change_ratio"),
        (&["--max-change", "0"], "max_change"),
    ] {
        let mut args = vec!["check", tree.dir(), "--fix"];
        args.extend_from_slice(flags);
        let (code, v) = tree.json(&args);
        assert_eq!(code, 3, "{flags:?}: {v}");
        let refused = v["fix"]["refused"].as_str().unwrap_or_default();
        assert!(refused.contains(says), "{flags:?}: {v}");
        assert_eq!(names(&tree.check(), "outdated").len(), 3, "nothing changed");
    }
    let out = tree.run(&["check", tree.dir(), "--fix", "--max-change", "2"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("fix refused, nothing was changed"),
        "{out:?}"
    );
    let (code, v) = tree.json(&[
        "check",
        tree.dir(),
        "--fix",
        "--max-change",
        "3",
        "--max-change-ratio",
        "0.5",
    ]);
    assert_eq!((code, &v["fix"]["updated"]), (0, &Value::from(3)), "{v}");

    for (flags, flag, range) in [
        (
            &["--fix", "--max-change", "-1"][..],
            "--max-change",
            "from 0 to 1000000000",
        ),
        (
            &["--fix", "--max-change", "1000000001"],
            "--max-change",
            "from 0 to 1000000000",
        ),
        (
            &["--fix", "--max-change-ratio", "1.5"],
            "--max-change-ratio",
            "from 0 to 1",
        ),
        (
            &["--fix", "--max-change-ratio", "NaN"],
            "--max-change-ratio",
            "from 0 to 1",
        ),
        (&["--max-change", "3"], "--fix", ""),
        (&["--max-change-ratio", "0.5"], "--fix", ""),
    ] {
        let mut args = vec!["check", tree.dir()];
        args.extend_from_slice(flags);
        let out = tree.run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(
            err.contains(flag) && err.contains(range),
            "{flags:?}: {err}"
        );
    }
}

// --- warm --prune -----------------------------------------------------------------------------

#[test]
fn warm_prune_deletes_orphans_behind_the_thresholds() {
    let tree = Tree::new(8);
    tree.warm();
    tree.remove("t/0000.html");
    tree.write("t/new.html", "new");
    let (code, v) = tree.json(&["warm", tree.dir(), "--prune"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["written"], 1, "{v}");
    assert_eq!(v["prune"]["deleted"], 1, "{v}");
    assert!(v["prune"]["refused"].is_null(), "{v}");
    assert_eq!(tree.check()["consistent"], true);

    // 4 of 8 entries: over the default ratio of 0.25.
    for i in 1..5 {
        tree.remove(&format!("t/{i:04}.html"));
    }
    let (code, v) = tree.json(&["warm", tree.dir(), "--prune"]);
    assert_eq!(code, 3, "{v}");
    assert!(
        v["prune"]["refused"]
            .as_str()
            .unwrap_or_default()
            .contains("max_delete_ratio"),
        "{v}"
    );
    assert_eq!(names(&tree.check(), "orphaned").len(), 4, "nothing deleted");
    let (code, v) = tree.json(&[
        "warm",
        tree.dir(),
        "--prune",
        "--max-delete-ratio",
        "1",
        "--max-delete",
        "3",
    ]);
    assert_eq!(code, 3, "{v}");
    assert!(
        v["prune"]["refused"]
            .as_str()
            .unwrap_or_default()
            .contains("max_delete"),
        "{v}"
    );
    assert_eq!(names(&tree.check(), "orphaned").len(), 4, "nothing deleted");
    let out = tree.run(&["warm", tree.dir(), "--prune"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("prune refused, nothing was deleted"),
        "{text}"
    );

    let out = tree.run(&["warm", tree.dir(), "--prune", "--max-delete-ratio", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("pruned: 4 orphaned entries deleted"),
        "{text}"
    );
    assert_eq!(tree.check()["consistent"], true);

    // An empty (or unmounted) directory never empties the cache.
    let empty = tree.tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (code, v) = tree.json(&[
        "warm",
        empty.to_str().unwrap(),
        "--prune",
        "--max-delete-ratio",
        "1",
    ]);
    assert_eq!(code, 3, "{v}");
    assert!(
        v["prune"]["refused"]
            .as_str()
            .unwrap_or_default()
            .contains("no templates"),
        "{v}"
    );
    assert_eq!(tree.check()["consistent"], true, "nothing deleted");

    // Without --prune, orphans stay.
    tree.remove("t/0005.html");
    let (code, v) = tree.json(&["warm", tree.dir()]);
    assert_eq!(code, 0, "{v}");
    assert!(v.get("prune").is_none(), "{v}");
    assert_eq!(names(&tree.check(), "orphaned"), ["t/0005.html"]);

    for (flags, says) in [
        (
            &["--prune", "--max-delete", "-1"][..],
            "from 0 to 1000000000",
        ),
        (&["--prune", "--max-delete-ratio", "2"], "from 0 to 1"),
        (&["--max-delete", "3"], "--prune"),
        (&["--max-delete-ratio", "0.5"], "--prune"),
    ] {
        let mut args = vec!["warm", tree.dir()];
        args.extend_from_slice(flags);
        let out = tree.run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(says), "{flags:?}: {err}");
    }
}

#[cfg(unix)]
#[test]
fn periodic_warm_prunes_every_run() {
    let tree = Tree::new(8);
    tree.warm();
    tree.remove("t/0000.html");
    let mut child = tree
        .cmd(&["--json", "warm", tree.dir(), "--prune", "--interval", "1s"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["prune"]["deleted"], 1, "{first}");
    tree.remove("t/0001.html");
    let second: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(second["prune"]["deleted"], 1, "{second}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The run in flight, if any, finishes and reports (without pruning once interrupted).
    for line in lines {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        assert!(v["scanned"].is_u64(), "{v}");
    }
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(tree.check()["consistent"], true);
}
