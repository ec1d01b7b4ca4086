//! A spawned `tcache serve` process and its log, for the serve tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A spawned `tcache` process (killed on drop) whose stderr lines are collected as they come.
pub struct Served {
    name: String,
    child: Child,
    /// Every stderr line read so far.
    pub lines: Arc<Mutex<Vec<String>>>,
    /// The thread reading stderr: it ends at end of file, once the process has exited.
    reader: Option<std::thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Served {
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Served {
            name: name.to_owned(),
            child,
            lines,
            reader: Some(reader),
            status: None,
        }
    }

    /// How many lines were logged so far: a mark for [`Self::wait_for_from`].
    pub fn mark(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    pub fn log(&self) -> String {
        format!(
            "--- log of {} ---\n{}\n--- end of log of {} ---",
            self.name,
            self.lines.lock().unwrap().join("\n"),
            self.name
        )
    }

    /// Lines from `from` on that contain `pattern`.
    pub fn count_from(&self, from: usize, pattern: &str) -> usize {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .skip(from)
            .filter(|l| l.contains(pattern))
            .count()
    }

    pub fn count(&self, pattern: &str) -> usize {
        self.count_from(0, pattern)
    }

    /// The index of the first line from `from` on that contains `pattern`.
    pub fn find_from(&self, from: usize, pattern: &str) -> Option<usize> {
        let lines = self.lines.lock().unwrap();
        (from..lines.len()).find(|&i| lines[i].contains(pattern))
    }

    /// Whether the process has exited (its status is kept); once it has, every line it logged
    /// has been collected.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        if self.status.is_some() {
            self.drain();
        }
        self.status
    }

    /// Waits for the reader thread to collect the last lines of an exited process.
    pub fn drain(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
    }

    /// Waits until a line from `from` on contains `pattern`; returns its index. Panics with the
    /// log at the deadline, or at once if the process exited without logging it.
    pub fn wait_for_from(&mut self, from: usize, pattern: &str, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.find_from(from, pattern) {
                return i;
            }
            if let Some(status) = self.exited() {
                if let Some(i) = self.find_from(from, pattern) {
                    return i;
                }
                panic!(
                    "{} exited ({status}) without logging {pattern:?}\n{}",
                    self.name,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not log {pattern:?} within {timeout:?}\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> usize {
        self.wait_for_from(0, pattern, timeout)
    }

    /// Sends `signal` (`TERM`, `HUP`, ...) with kill(1).
    pub fn signal(&self, signal: &str) {
        let out = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kill -s {signal}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.status = Some(self.child.wait().unwrap());
        self.drain();
    }

    /// Waits for the process to exit; panics with the log at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
