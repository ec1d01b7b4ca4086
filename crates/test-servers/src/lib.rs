#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
// A test harness: failing loudly with the reason is its job.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn require(binary: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(binary))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{binary}` was not found on PATH. These tests run against a real server: install it \
             (Debian/Ubuntu: `apt-get install {package}`), or run ./scripts/test, which installs it."
        )
    })
}

/// A loopback port that was free a moment ago, optionally with `port + 10000` free too (Redis
/// Cluster's bus port).
fn free_port(with_bus: bool) -> u16 {
    for _ in 0..200 {
        let port = if with_bus {
            fastrand::u16(20_000..40_000)
        } else {
            fastrand::u16(20_000..60_000)
        };
        let ok = TcpListener::bind(("127.0.0.1", port)).is_ok()
            && (!with_bus || TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok());
        if ok {
            return port;
        }
    }
    panic!("no free loopback port found");
}

/// Sends `request` and reads until `expect` appears in the reply or the deadline passes.
fn ask(port: u16, request: &[u8], expect: &str, deadline: Instant) -> Result<String, String> {
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(mut s) =
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
        {
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            if s.write_all(request).is_ok() {
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = String::new();
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    got.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if got.contains(expect) {
                        return Ok(got);
                    }
                }
                last = got;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(last)
}

/// Calls `spawn` until it succeeds (the old process' port may take a moment to free up).
fn respawn(what: &str, mut spawn: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match spawn() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what} did not restart: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A `redis-server` process on 127.0.0.1.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
    tls: bool,
}

impl RedisServer {
    /// Starts a standalone server with persistence off.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (e.g. `["--requirepass", "pw"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_inner(extra, false, false)
    }

    /// Starts a server that accepts only TLS, with a certificate for 127.0.0.1 signed by a
    /// throw-away certificate authority ([`Self::tls_ca`]); made with the `openssl` command.
    pub fn start_tls() -> Self {
        Self::start_inner(&[], false, true)
    }

    fn start_inner(extra: &[&str], cluster: bool, tls: bool) -> Self {
        require("redis-server", "redis-server");
        let mut dir = tempfile::tempdir().expect("temporary directory for redis-server");
        if tls {
            make_certificates(dir.path());
        }
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port(cluster);
            let port_arg = if tls { "--tls-port" } else { "--port" };
            let mut args: Vec<String> = [
                port_arg,
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(["--dir".into(), dir.path().display().to_string()]);
            args.extend([
                "--logfile".into(),
                dir.path().join("redis.log").display().to_string(),
            ]);
            if cluster {
                args.extend(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                    ]
                    .map(String::from),
                );
            }
            if tls {
                let p = |f: &str| dir.path().join(f).display().to_string();
                args.extend([
                    "--port".into(),
                    "0".into(),
                    "--tls-auth-clients".into(),
                    "no".into(),
                ]);
                args.extend([
                    "--tls-cert-file".into(),
                    p("server.crt"),
                    "--tls-key-file".into(),
                    p("server.key"),
                ]);
                args.extend(["--tls-ca-cert-file".into(), p("ca.crt")]);
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            let mut server = RedisServer {
                child: None,
                port,
                dir,
                args,
                tls,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => {
                    last_err = e;
                    dir = server.take_dir();
                }
            }
        }
        panic!("redis-server did not start: {last_err}");
    }

    fn take_dir(mut self) -> tempfile::TempDir {
        kill(&mut self.child);
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        self.child = Some(child);
        let password = self
            .args
            .iter()
            .position(|a| a == "--requirepass")
            .map(|i| self.args[i + 1].clone());
        let request = match &password {
            Some(pw) => format!("AUTH {pw}\r\nPING\r\n"),
            None => "PING\r\n".to_owned(),
        };
        let ready = if self.tls {
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                let out = self.cli_output(&["PING"]);
                if out.contains("PONG") {
                    break Ok(out);
                }
                if Instant::now() > deadline {
                    break Err(out);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        } else {
            ask(
                self.port,
                request.as_bytes(),
                "+PONG",
                Instant::now() + START_TIMEOUT,
            )
        };
        match ready {
            Ok(_) => Ok(()),
            Err(got) => {
                let log =
                    std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
                kill(&mut self.child);
                Err(format!(
                    "no PONG on port {} (got {got:?}); log:\n{log}",
                    self.port
                ))
            }
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`, or for a TLS server
    /// `rediss://127.0.0.1:PORT?tls_ca=<its certificate authority>`.
    pub fn url(&self) -> String {
        match self.tls_ca() {
            Some(ca) => format!("rediss://127.0.0.1:{}?tls_ca={}", self.port, ca.display()),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The PEM certificate authority a TLS server's certificate is signed by.
    pub fn tls_ca(&self) -> Option<PathBuf> {
        self.tls.then(|| self.dir.path().join("ca.crt"))
    }

    /// Its working directory (logs, cluster config).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server (its data is lost: persistence is off).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        respawn("redis-server", || self.spawn());
    }

    /// Runs `redis-cli` against this server with `args` and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        match self.tls_ca() {
            Some(ca) => {
                let ca = ca.display().to_string();
                let mut all = vec!["--tls", "--cacert", ca.as_str()];
                all.extend_from_slice(args);
                redis_cli(self.port, &all)
            }
            None => redis_cli(self.port, args),
        }
    }

    fn cli_output(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(ca) = self.tls_ca() {
            cmd.arg("--tls").arg("--cacert").arg(ca);
        }
        match cmd.args(args).output() {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => e.to_string(),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// Writes `ca.crt`, `server.crt` and `server.key` (EC P-256, for IP 127.0.0.1) into `dir`.
fn make_certificates(dir: &Path) {
    require("openssl", "openssl");
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write ext.cnf");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=tcache test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ];
    ca.extend(ec);
    run(&ca);
    let mut csr = vec![
        "req",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ];
    csr.extend(ec);
    run(&csr);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.crt",
    ]);
}

/// Runs `redis-cli -p PORT args...`, panicking with its stderr if it fails.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    require("redis-cli", "redis-tools");
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Redis Cluster of primaries (no replicas) on 127.0.0.1, assembled with
/// `redis-cli --cluster create`.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `primaries` nodes (at least 3) and waits until the cluster state is ok everywhere.
    pub fn start(primaries: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..primaries.max(3))
            .map(|_| RedisServer::start_inner(&[], true, false))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        redis_cli(nodes[0].port, &args);
        let deadline = Instant::now() + START_TIMEOUT;
        for n in &nodes {
            if let Err(got) = ask(n.port, b"CLUSTER INFO\r\n", "cluster_state:ok", deadline) {
                panic!("cluster did not become ok on port {}: {got}", n.port);
            }
        }
        RedisCluster { nodes }
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...`.
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", addrs.join(","))
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }
}

/// A `memcached` process on 127.0.0.1.
#[derive(Debug)]
pub struct MemcachedServer {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
}

impl MemcachedServer {
    /// Starts a server with 64 MiB of memory.
    pub fn start() -> Self {
        Self::start_with(&["-m", "64"])
    }

    /// Starts a server with extra `memcached` arguments (e.g. `["-m", "2"]` for a tiny cache).
    pub fn start_with(extra: &[&str]) -> Self {
        require("memcached", "memcached");
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port(false);
            let mut args: Vec<String> = [
                "-l",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "0",
                "-u",
                "root",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra.iter().map(|s| s.to_string()));
            let mut server = MemcachedServer {
                child: None,
                port,
                args,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("memcached did not start: {last_err}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("memcached")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run memcached: {e}"))?;
        self.child = Some(child);
        match ask(
            self.port,
            b"version\r\n",
            "VERSION",
            Instant::now() + START_TIMEOUT,
        ) {
            Ok(_) => Ok(()),
            Err(got) => {
                kill(&mut self.child);
                Err(format!("no VERSION on port {} (got {got:?})", self.port))
            }
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data is lost).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        respawn("memcached", || self.spawn());
    }

    /// Sends raw protocol text and returns the reply once it contains `expect`.
    pub fn raw(&self, request: &[u8], expect: &str) -> String {
        ask(
            self.port,
            request,
            expect,
            Instant::now() + Duration::from_secs(5),
        )
        .unwrap_or_else(|got| panic!("memcached did not answer {expect:?}: {got:?}"))
    }
}

impl Drop for MemcachedServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_starts_answers_restarts_and_stops() {
        let mut r = RedisServer::start();
        assert_eq!(r.cli(&["SET", "k", "v"]).trim(), "OK");
        r.restart();
        assert_eq!(r.cli(&["GET", "k"]).trim(), "", "persistence is off");
        let port = r.port();
        drop(r);
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "stopped on drop"
        );
    }

    #[test]
    fn memcached_starts_and_answers() {
        let m = MemcachedServer::start();
        assert!(m.raw(b"set k 0 0 1\r\nv\r\n", "STORED").contains("STORED"));
    }
}
