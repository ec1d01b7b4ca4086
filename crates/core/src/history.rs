//! The run history: a bounded log of what every warm, check and resolution did, kept in the
//! cache namespace itself so that every host and every later command sees it.
//!
//! The history lives under one key per namespace, [`Namespace::history_key`]
//! (`{<namespace>:index}:history`), as ASCII text (`docs/format.md`, "Run history"):
//!
//! ```text
//! tcache-history/1 since=2026-11-02T09:00:00.000Z appended=3
//! kind=warm started_at=2026-11-02T09:00:00.000Z duration_ms=120 host=web-1 pid=41 ok=1 scanned=12 …
//! kind=check started_at=2026-11-02T09:05:00.000Z duration_ms=40 host=web-2 pid=77 ok=1 mode=quick …
//! ```
//!
//! - **Bounded:** at most [`HistoryLimits::max_records`] records (default 500) and
//!   [`HistoryLimits::max_bytes`] bytes (default 256 KiB, and never more than the backend's
//!   value limit); appending drops the oldest records.
//! - **Concurrent appends lose nothing:** every append is a compare-and-swap on the whole value
//!   ([`Cache::put_if_absent`] when absent, [`Cache::swap_if_equal`] otherwise), retried after
//!   a short random pause when another writer got there first.
//! - **Never fails a run:** the engines append through a recorder that logs a failed or slow
//!   append (over [`APPEND_TIMEOUT`]) at warn level and carries on.
//! - **Loss is visible:** the header says when this history was started (`since`) and how many
//!   records were ever appended to it (`appended`); a reader that finds no history although the
//!   namespace has an index knows it was lost ([`Loaded::Missing`]).
//! - **Untrusted input:** decoding is bounded, never panics, and skips lines it cannot read.
//!   Appending keeps the stored lines as they are, so a writer never drops fields it does not
//!   know.
//!
//! The atomic operations expire the key after [`TTL`] (30 days, the longest Memcached honours)
//! where the backend expires keys; every append renews it, so only a namespace without any run
//! for 30 days loses its history.
//!
//! A check that only reads appends too: the history is the one thing a reader writes, and it
//! never touches templates, the index or the lease.

use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::backend::Cache;
use crate::engine::report::{CheckMode, CheckReport, ResolveReport, WarmReport};
use crate::error::{Error, ErrorKind, Result};
use crate::format::key::Namespace;

/// The first word of a stored history: its format and version.
pub const MAGIC: &str = "tcache-history/1";

/// The first word of a history of any version.
const MAGIC_PREFIX: &str = "tcache-history/";

/// How long the stored history lives without an append, where the backend expires keys.
pub const TTL: Duration = Duration::from_secs(30 * 86_400);

/// The longest an engine waits for its history append before giving up on it (with a warning).
pub const APPEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Compare-and-swap attempts of one append before it gives up.
const MAX_ATTEMPTS: u32 = 24;

/// The longest record line written or read; longer lines are skipped.
pub const MAX_LINE_BYTES: usize = 4096;

/// The longest error text kept in a record, in bytes (longer ones are cut).
const MAX_ERROR_BYTES: usize = 512;

/// The longest host name kept in a record, in bytes.
const MAX_HOST_BYTES: usize = 255;

/// The most fields a record line may have.
const MAX_FIELDS: usize = 64;

/// The most lines a decoder looks at; the rest of a larger value is ignored.
const MAX_DECODED_LINES: usize = 100_000;

/// The largest milliseconds value a [`Timestamp`] holds: 9999-12-31T23:59:59.999Z.
const MAX_MILLIS: u64 = 253_402_300_799_999;

/// What kind of run a record describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    /// A warming run ([`crate::Warmer::run_once_until`]).
    Warm,
    /// A consistency check ([`crate::Checker::check`]).
    Check,
    /// A resolution ([`crate::Checker::resolve`]), including refused ones.
    Resolve,
}

impl RunKind {
    /// Every kind, in this order.
    pub const ALL: [RunKind; 3] = [RunKind::Warm, RunKind::Check, RunKind::Resolve];

    /// The kind's name: `warm`, `check` or `resolve`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Warm => "warm",
            RunKind::Check => "check",
            RunKind::Resolve => "resolve",
        }
    }

    /// The kind named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        RunKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for RunKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A point in time, in milliseconds since the Unix epoch (UTC), from 1970 to the end of 9999.
/// Displayed and serialized as RFC 3339, `2026-11-02T09:00:00.000Z`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// Now, by this host's clock.
    pub fn now() -> Self {
        Self::from_millis(u64::try_from(crate::time::now_ns() / 1_000_000).unwrap_or(0))
    }

    /// `ms` milliseconds after the Unix epoch (clamped to the end of 9999).
    pub fn from_millis(ms: u64) -> Self {
        Timestamp(ms.min(MAX_MILLIS))
    }

    /// Milliseconds since the Unix epoch.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// Parses RFC 3339 in UTC as this type displays it: `YYYY-MM-DDTHH:MM:SS[.fraction]Z`
    /// (the fraction cut to milliseconds). `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        let num = |r: std::ops::Range<usize>| -> Option<u64> {
            let d = b.get(r)?;
            d.iter()
                .all(u8::is_ascii_digit)
                .then(|| d.iter().fold(0u64, |n, &c| n * 10 + u64::from(c - b'0')))
        };
        let sep = |i: usize, c: u8| b.get(i) == Some(&c);
        if !(sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':') && sep(16, b':')) {
            return None;
        }
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
        let mut ms = 0;
        let rest = b.get(19..)?;
        let rest = match rest.split_first() {
            Some((b'.', frac)) => {
                let digits = frac.iter().take_while(|c| c.is_ascii_digit()).count();
                if digits == 0 || digits > 9 {
                    return None;
                }
                for (i, c) in frac[..digits.min(3)].iter().enumerate() {
                    ms += u64::from(c - b'0') * [100, 10, 1][i];
                }
                &frac[digits..]
            }
            _ => rest,
        };
        if rest != b"Z" || year < 1970 || hour > 23 || min > 59 || sec > 59 {
            return None;
        }
        let (month, day) = (u32::try_from(month).ok()?, u32::try_from(day).ok()?);
        if !(1..=12).contains(&month) || day == 0 {
            return None;
        }
        let days = days_from_civil(year, month, day);
        // A day past the end of its month comes back as another date.
        if civil_from_days(days) != (year, month, day) {
            return None;
        }
        let secs = days * 86_400 + hour * 3600 + min * 60 + sec;
        Some(Self::from_millis(secs * 1000 + ms))
    }

    /// The UTC date, `YYYY-MM-DD`.
    pub fn date(self) -> String {
        let (y, m, d) = civil_from_days(self.0 / 86_400_000);
        format!("{y:04}-{m:02}-{d:02}")
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, mo, d) = civil_from_days(self.0 / 86_400_000);
        let in_day = self.0 % 86_400_000;
        let (h, mi, s, ms) = (
            in_day / 3_600_000,
            in_day / 60_000 % 60,
            in_day / 1000 % 60,
            in_day % 1000,
        );
        write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm, for dates from
/// 1970 on).
fn days_from_civil(year: u64, month: u32, day: u32) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let (era, yoe) = (y / 400, y % 400);
    let mp = u64::from(if month > 2 { month - 3 } else { month + 9 });
    let doy = (153 * mp + 2) / 5 + u64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

/// The date of `days` since 1970-01-01: (year, month, day).
fn civil_from_days(days: u64) -> (u64, u32, u32) {
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The counts of a warm, named as in its `--json` report (lists are counted).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WarmCounts {
    /// Templates found in the tree.
    pub scanned: u64,
    /// Templates written.
    pub written: u64,
    /// Templates already current.
    pub unchanged: u64,
    /// Templates that failed.
    pub failed: u64,
    /// Encoded bytes written.
    pub bytes_written: u64,
    /// Files read and hashed.
    pub files_hashed: u64,
    /// Entries the server evicted while the run wrote.
    pub evicted: u64,
    /// The run was cancelled before every batch was started.
    pub cancelled: bool,
}

/// The counts of a check, named as in its `--json` report (lists are counted).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CheckCounts {
    /// The mode the check ran in.
    pub mode: CheckMode,
    /// Nothing was missing, outdated, orphaned or corrupt, and there were no errors.
    pub consistent: bool,
    /// Template files in the tree.
    pub files: u64,
    /// Entries known in the cache.
    pub entries: u64,
    /// Templates with a file but no entry.
    pub missing: u64,
    /// Entries holding other content than their file.
    pub outdated: u64,
    /// Entries whose file is gone.
    pub orphaned: u64,
    /// Entries that do not decode or verify.
    pub corrupt: u64,
    /// Items that could not be checked.
    pub errors: u64,
}

impl CheckCounts {
    /// Inconsistencies of every kind found.
    pub fn inconsistencies(&self) -> u64 {
        self.missing + self.outdated + self.orphaned + self.corrupt
    }
}

/// The counts of a resolution, named as in the `fix` object of `check --fix --json` (lists are
/// counted; `refused` is whether it was refused, the reason is the record's `error`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ResolveCounts {
    /// Nothing was changed; the counts say what would have been.
    pub dry_run: bool,
    /// Missing templates written.
    pub added: u64,
    /// Outdated templates rewritten.
    pub updated: u64,
    /// Corrupt entries rewritten or deleted.
    pub repaired: u64,
    /// Orphaned entries deleted.
    pub deleted: u64,
    /// Items that failed.
    pub failed: u64,
    /// A safety threshold refused the resolution; nothing was changed.
    pub refused: bool,
}

impl ResolveCounts {
    /// Inconsistencies resolved (none in a dry run).
    pub fn resolved(&self) -> u64 {
        if self.dry_run {
            0
        } else {
            self.added + self.updated + self.repaired + self.deleted
        }
    }
}

/// The counts of a run, by kind (serialized flat into the record).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum RunCounts {
    /// A warm's counts.
    Warm(WarmCounts),
    /// A check's counts.
    Check(CheckCounts),
    /// A resolution's counts.
    Resolve(ResolveCounts),
}

impl RunCounts {
    /// The kind of run these counts belong to.
    pub fn kind(&self) -> RunKind {
        match self {
            RunCounts::Warm(_) => RunKind::Warm,
            RunCounts::Check(_) => RunKind::Check,
            RunCounts::Resolve(_) => RunKind::Resolve,
        }
    }
}

/// One run in the history. Its JSON form (`tcache --json history`) is flat: `kind`, `host`,
/// `pid`, `started_at` (RFC 3339), `duration_seconds`, `ok`, `error`, then the counts of its
/// kind.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RunRecord {
    /// What ran; always `counts.kind()`.
    pub kind: RunKind,
    /// The host it ran on: `TCACHE_HOST` if set, else the kernel's host name (as the write
    /// lease names hosts).
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// When it started (the host's clock).
    pub started_at: Timestamp,
    /// How long it took (stored to the millisecond).
    #[serde(rename = "duration_seconds", serialize_with = "as_seconds")]
    pub duration: Duration,
    /// The run completed and produced its report. `false` when it failed as a whole or was
    /// refused; [`Self::error`] says why. Per-template failures are in the counts.
    pub ok: bool,
    /// Why the run failed, when it did.
    pub error: Option<String>,
    /// What it counted.
    #[serde(flatten)]
    pub counts: RunCounts,
}

fn as_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Appends `key=value` fields to a record line, escaping values.
struct Line(String);

impl Line {
    fn text(&mut self, key: &str, value: &str) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        self.0.push_str(key);
        self.0.push('=');
        escape_into(&mut self.0, value);
    }
    fn num(&mut self, key: &str, value: impl fmt::Display) {
        self.text(key, &value.to_string());
    }
    fn flag(&mut self, key: &str, value: bool) {
        self.text(key, if value { "1" } else { "0" });
    }
}

/// Every byte that is not printable ASCII, and `%`, as `%XX`.
fn escape_into(out: &mut String, value: &str) {
    for &b in value.as_bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Undoes [`escape_into`]; `None` on a malformed escape. Invalid UTF-8 is replaced.
fn unescape(value: &str) -> Option<String> {
    if !value.contains('%') {
        return Some(value.to_owned());
    }
    let b = value.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl RunRecord {
    /// A record of a run of this process on this host.
    fn of_this_process(started: Started, counts: RunCounts, error: Option<&Error>) -> Self {
        RunRecord {
            kind: counts.kind(),
            host: crate::host::name(),
            pid: std::process::id(),
            started_at: started.at,
            duration: started.clock.elapsed(),
            ok: error.is_none(),
            error: error.map(Error::to_report_string),
            counts,
        }
    }

    /// The stored line (without its newline): space-separated `key=value` fields, values
    /// escaped (`%XX` for `%`, spaces and every byte that is not printable ASCII). The host is
    /// cut to 255 bytes and the error to 512 bytes, so that a line stays under
    /// [`MAX_LINE_BYTES`].
    pub fn encode_line(&self) -> String {
        let mut l = Line(String::with_capacity(256));
        l.text("kind", self.counts.kind().as_str());
        l.text("started_at", &self.started_at.to_string());
        l.num(
            "duration_ms",
            u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
        );
        l.text("host", cut(&self.host, MAX_HOST_BYTES));
        l.num("pid", self.pid);
        l.flag("ok", self.ok);
        match &self.counts {
            RunCounts::Warm(c) => {
                l.num("scanned", c.scanned);
                l.num("written", c.written);
                l.num("unchanged", c.unchanged);
                l.num("failed", c.failed);
                l.num("bytes_written", c.bytes_written);
                l.num("files_hashed", c.files_hashed);
                l.num("evicted", c.evicted);
                l.flag("cancelled", c.cancelled);
            }
            RunCounts::Check(c) => {
                l.text(
                    "mode",
                    match c.mode {
                        CheckMode::Quick => "quick",
                        CheckMode::Deep => "deep",
                    },
                );
                l.flag("consistent", c.consistent);
                l.num("files", c.files);
                l.num("entries", c.entries);
                l.num("missing", c.missing);
                l.num("outdated", c.outdated);
                l.num("orphaned", c.orphaned);
                l.num("corrupt", c.corrupt);
                l.num("errors", c.errors);
            }
            RunCounts::Resolve(c) => {
                l.flag("dry_run", c.dry_run);
                l.num("added", c.added);
                l.num("updated", c.updated);
                l.num("repaired", c.repaired);
                l.num("deleted", c.deleted);
                l.num("failed", c.failed);
                l.flag("refused", c.refused);
            }
        }
        if let Some(e) = &self.error {
            l.text("error", cut(e, MAX_ERROR_BYTES));
        }
        l.0
    }

    /// Parses a stored line; `None` if it is not one. Unknown fields are ignored and missing
    /// counts are 0 (so that other versions' lines still read); `kind` and `started_at` are
    /// required, and a malformed value rejects the line.
    pub fn decode_line(line: &str) -> Option<Self> {
        if line.len() > MAX_LINE_BYTES {
            return None;
        }
        let mut fields = Vec::new();
        for word in line.split(' ') {
            if fields.len() == MAX_FIELDS {
                return None;
            }
            fields.push(word.split_once('=')?);
        }
        let get = |key: &str| fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let num = |key: &str| -> Option<u64> { get(key).map_or(Some(0), |v| v.parse().ok()) };
        let flag = |key: &str| -> Option<bool> {
            match get(key) {
                None | Some("0") => Some(false),
                Some("1") => Some(true),
                Some(_) => None,
            }
        };
        let kind = RunKind::parse(get("kind")?)?;
        let counts = match kind {
            RunKind::Warm => RunCounts::Warm(WarmCounts {
                scanned: num("scanned")?,
                written: num("written")?,
                unchanged: num("unchanged")?,
                failed: num("failed")?,
                bytes_written: num("bytes_written")?,
                files_hashed: num("files_hashed")?,
                evicted: num("evicted")?,
                cancelled: flag("cancelled")?,
            }),
            RunKind::Check => RunCounts::Check(CheckCounts {
                mode: match get("mode") {
                    None | Some("quick") => CheckMode::Quick,
                    Some("deep") => CheckMode::Deep,
                    Some(_) => return None,
                },
                consistent: flag("consistent")?,
                files: num("files")?,
                entries: num("entries")?,
                missing: num("missing")?,
                outdated: num("outdated")?,
                orphaned: num("orphaned")?,
                corrupt: num("corrupt")?,
                errors: num("errors")?,
            }),
            RunKind::Resolve => RunCounts::Resolve(ResolveCounts {
                dry_run: flag("dry_run")?,
                added: num("added")?,
                updated: num("updated")?,
                repaired: num("repaired")?,
                deleted: num("deleted")?,
                failed: num("failed")?,
                refused: flag("refused")?,
            }),
        };
        let error = match get("error") {
            Some(v) => Some(unescape(v)?),
            None => None,
        };
        Some(RunRecord {
            kind,
            host: unescape(get("host").unwrap_or("unknown"))?,
            pid: u32::try_from(num("pid")?).ok()?,
            started_at: Timestamp::parse(get("started_at")?)?,
            duration: Duration::from_millis(num("duration_ms")?),
            ok: flag("ok")?,
            error,
            counts,
        })
    }
}

/// A decoded history.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// When this history was started: the first append that found none stored. Runs before
    /// it are not in it (none were recorded, or that history was lost).
    pub since: Option<Timestamp>,
    /// Records ever appended to it since then.
    pub appended: u64,
    /// The records, oldest first.
    pub records: Vec<RunRecord>,
    /// Lines that could not be read (damaged, or from an incompatible version), skipped.
    pub skipped: usize,
}

impl History {
    /// Decodes a stored history (untrusted bytes: bounded, never panics). Fails with
    /// [`ErrorKind::Corrupt`] when the value is not a history, and with
    /// [`ErrorKind::Unsupported`] when it is one of another format version.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let (header, body) = split_header(bytes)?;
        let mut out = History {
            since: header.since,
            appended: header.appended.unwrap_or(0),
            ..History::default()
        };
        for line in body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .take(MAX_DECODED_LINES)
        {
            match std::str::from_utf8(line)
                .ok()
                .and_then(RunRecord::decode_line)
            {
                Some(r) => out.records.push(r),
                None => out.skipped += 1,
            }
        }
        let present = (out.records.len() + out.skipped) as u64;
        out.appended = out.appended.max(present);
        Ok(out)
    }

    /// The stored form: the header line, then one line per record, oldest first.
    pub fn encode(&self) -> Bytes {
        let mut out = header_line(self.since.unwrap_or_default(), self.appended);
        for r in &self.records {
            out.push('\n');
            out.push_str(&r.encode_line());
        }
        out.push('\n');
        Bytes::from(out)
    }

    /// Records appended but no longer kept: dropped to keep the history bounded.
    pub fn dropped(&self) -> u64 {
        self.appended
            .saturating_sub((self.records.len() + self.skipped) as u64)
    }
}

/// A stored history's first line.
#[derive(Debug, Default)]
struct Header {
    since: Option<Timestamp>,
    appended: Option<u64>,
}

fn header_line(since: Timestamp, appended: u64) -> String {
    format!("{MAGIC} since={since} appended={appended}")
}

/// Splits a stored value into its header and its record lines.
fn split_header(bytes: &[u8]) -> Result<(Header, &[u8])> {
    let end = bytes
        .iter()
        .take(MAX_LINE_BYTES)
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len().min(MAX_LINE_BYTES));
    let (first, body) = (&bytes[..end], bytes.get(end + 1..).unwrap_or_default());
    let not_history = || {
        Error::new(
            ErrorKind::Corrupt,
            "the stored run history is not one (damaged or overwritten)",
        )
    };
    let first = std::str::from_utf8(first).map_err(|_| not_history())?;
    let mut words = first.split(' ');
    let magic = words.next().unwrap_or_default();
    if magic != MAGIC {
        if magic.starts_with(MAGIC_PREFIX) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "the stored run history is in format {:?}, this version reads {MAGIC:?}",
                    cut(magic, 40)
                ),
            ));
        }
        return Err(not_history());
    }
    let mut header = Header::default();
    for word in words {
        match word.split_once('=') {
            Some(("since", v)) => header.since = Timestamp::parse(v),
            Some(("appended", v)) => header.appended = v.parse().ok(),
            _ => {}
        }
    }
    Ok((header, body))
}

/// The bounds of a stored history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    /// The most records kept (default 500; at least 1).
    pub max_records: usize,
    /// The most bytes stored (default 256 KiB, well under Memcached's 1 MiB items; the
    /// backend's own value limit applies if it is lower).
    pub max_bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            max_records: 500,
            max_bytes: 256 * 1024,
        }
    }
}

/// The value to store: `current` with `line` appended and the oldest lines dropped to fit
/// `limits`, or a new history (starting `now`) when nothing (or something that is not a
/// history) is stored.
/// Stored lines are kept as they are (a writer never drops fields it does not know); blank
/// lines, overlong lines and lines that are not records are dropped.
fn appended(
    current: Option<&[u8]>,
    line: &str,
    now: Timestamp,
    limits: &HistoryLimits,
) -> Result<Bytes> {
    let (header, body) = match current.map(split_header) {
        None => (None, &[][..]),
        Some(Ok((h, body))) => (Some(h), body),
        Some(Err(e)) if e.kind() == ErrorKind::Corrupt => {
            tracing::warn!("replacing a damaged run history: {}", e.message());
            (None, &[][..])
        }
        // Another format version: leave it to the version that wrote it.
        Some(Err(e)) => return Err(e),
    };
    let since = header.as_ref().and_then(|h| h.since).unwrap_or(now);
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut present = 0u64;
    let max_records = limits.max_records.max(1);
    let head_len = header_line(since, u64::MAX).len() + 1;
    let mut size = head_len + line.len() + 1;
    if size > limits.max_bytes {
        return Err(Error::new(
            ErrorKind::ValueTooLarge,
            format!(
                "a run history record of {} bytes does not fit the limit of {} bytes",
                line.len(),
                limits.max_bytes
            ),
        ));
    }
    // Newest first, until a bound is reached.
    for l in body.rsplit(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        if present as usize >= MAX_DECODED_LINES {
            break;
        }
        present += 1;
        let is_record = l.len() <= MAX_LINE_BYTES
            && l.starts_with(b"kind=")
            && l.iter().all(|&b| b.is_ascii_graphic() || b == b' ');
        if !is_record {
            continue;
        }
        if lines.len() + 1 >= max_records || size + l.len() + 1 > limits.max_bytes {
            break;
        }
        size += l.len() + 1;
        lines.push(l);
    }
    let total = header
        .as_ref()
        .and_then(|h| h.appended)
        .unwrap_or(0)
        .max(present)
        .saturating_add(1);
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(header_line(since, total).as_bytes());
    out.push(b'\n');
    for l in lines.iter().rev() {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out.extend_from_slice(line.as_bytes());
    out.push(b'\n');
    Ok(Bytes::from(out))
}

/// Appends `record` to the history of `namespace`, dropping the oldest records beyond
/// `limits` (and beyond the backend's value limit). Concurrent appends (other processes or
/// hosts) are never lost: each is a compare-and-swap, retried a few times after a short random
/// pause; after that it fails with [`ErrorKind::Conflict`].
pub async fn append(
    cache: &Cache,
    namespace: &Namespace,
    record: &RunRecord,
    limits: &HistoryLimits,
) -> Result<()> {
    let key = namespace.history_key();
    let line = record.encode_line();
    let limits = HistoryLimits {
        max_bytes: limits
            .max_bytes
            .min(cache.capabilities().max_value_bytes.unwrap_or(usize::MAX)),
        ..*limits
    };
    for attempt in 1..=MAX_ATTEMPTS {
        let current = cache.get(&key).await?;
        // A new history starts with this run: `since` is when it started.
        let since = record.started_at.min(Timestamp::now());
        let new = appended(current.as_deref(), &line, since, &limits)?;
        let done = match &current {
            None => {
                let done = cache.put_if_absent(&key, new, TTL).await?;
                if done {
                    tracing::info!(%namespace, "run history started (none was stored)");
                }
                done
            }
            Some(current) => cache.swap_if_equal(&key, current, Some(new), TTL).await?,
        };
        if done {
            return Ok(());
        }
        // Another writer appended in between: read again after a short random pause.
        let pause = fastrand::u64(1..=2 * u64::from(attempt.min(10)));
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    Err(Error::new(
        ErrorKind::Conflict,
        format!("run history {key}: changed by others {MAX_ATTEMPTS} times in a row"),
    ))
}

/// What [`load`] found.
#[derive(Clone, Debug, PartialEq)]
pub enum Loaded {
    /// The stored history.
    Found(History),
    /// No history is stored: none was recorded yet, or it was evicted, expired (no run for
    /// [`TTL`]) or deleted.
    Missing {
        /// The namespace has an index, so runs did happen: the history was lost (or every run
        /// predates history recording).
        index_exists: bool,
    },
}

/// Reads the history of `namespace`. Fails if the backend does, or if what is stored is not
/// a history of this format version (see [`History::decode`]).
pub async fn load(cache: &Cache, namespace: &Namespace) -> Result<Loaded> {
    match cache.get(&namespace.history_key()).await? {
        Some(bytes) => History::decode(&bytes).map(Loaded::Found),
        None => {
            let index = cache.exists_many(&[namespace.index_root_key()]).await?;
            Ok(Loaded::Missing {
                index_exists: index.first().copied().unwrap_or(false),
            })
        }
    }
}

/// When a run started, by the wall clock (recorded) and the monotonic clock (its duration).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Started {
    at: Timestamp,
    clock: Instant,
}

/// What the engines append their runs through: never fails a run, never holds it up longer
/// than [`APPEND_TIMEOUT`].
#[derive(Clone, Debug)]
pub(crate) struct Recorder {
    cache: Cache,
    namespace: Namespace,
    enabled: bool,
    limits: HistoryLimits,
}

impl Recorder {
    /// A recorder into the history of `namespace`; `enabled: false` records nothing.
    pub(crate) fn new(cache: &Cache, namespace: &Namespace, enabled: bool) -> Self {
        Recorder {
            cache: cache.clone(),
            namespace: namespace.clone(),
            enabled,
            limits: HistoryLimits::default(),
        }
    }

    /// A run starts now.
    pub(crate) fn start(&self) -> Started {
        Started {
            at: Timestamp::now(),
            clock: Instant::now(),
        }
    }

    /// Records a warm that started at `started`.
    pub(crate) async fn warm(&self, started: Started, result: &Result<WarmReport>) {
        let counts = match result {
            Ok(r) => WarmCounts {
                scanned: r.scanned as u64,
                written: r.written as u64,
                unchanged: r.unchanged as u64,
                failed: r.failed.len() as u64,
                bytes_written: r.bytes_written,
                files_hashed: r.files_hashed,
                evicted: r.evicted,
                cancelled: r.cancelled,
            },
            Err(_) => WarmCounts::default(),
        };
        self.record(started, RunCounts::Warm(counts), result.as_ref().err())
            .await;
    }

    /// Records a check in `mode` that started at `started`.
    pub(crate) async fn check(
        &self,
        started: Started,
        mode: CheckMode,
        result: &Result<CheckReport>,
    ) {
        let counts = match result {
            Ok(r) => CheckCounts {
                mode: r.mode,
                consistent: r.consistent,
                files: r.files as u64,
                entries: r.entries as u64,
                missing: r.missing.len() as u64,
                outdated: r.outdated.len() as u64,
                orphaned: r.orphaned.len() as u64,
                corrupt: r.corrupt.len() as u64,
                errors: r.errors.len() as u64,
            },
            Err(_) => CheckCounts {
                mode,
                ..CheckCounts::default()
            },
        };
        self.record(started, RunCounts::Check(counts), result.as_ref().err())
            .await;
    }

    /// Records a resolution (`dry_run` or not) that started at `started`; a refusal is a
    /// record with `refused` set.
    pub(crate) async fn resolve(
        &self,
        started: Started,
        dry_run: bool,
        result: &Result<ResolveReport>,
    ) {
        let counts = match result {
            Ok(r) => ResolveCounts {
                dry_run: r.dry_run,
                added: r.added as u64,
                updated: r.updated as u64,
                repaired: r.repaired as u64,
                deleted: r.deleted as u64,
                failed: r.failed.len() as u64,
                refused: r.refused.is_some(),
            },
            Err(e) => ResolveCounts {
                dry_run,
                refused: e.kind() == ErrorKind::Refused,
                ..ResolveCounts::default()
            },
        };
        self.record(started, RunCounts::Resolve(counts), result.as_ref().err())
            .await;
    }

    async fn record(&self, started: Started, counts: RunCounts, error: Option<&Error>) {
        if !self.enabled {
            return;
        }
        // The run failed because the backend cannot be reached (or refuses us): so would this.
        if error.is_some_and(|e| {
            matches!(
                e.kind(),
                ErrorKind::Unavailable | ErrorKind::PermissionDenied
            )
        }) {
            tracing::debug!("backend unreachable: run history not recorded");
            return;
        }
        let record = RunRecord::of_this_process(started, counts, error);
        let append = append(&self.cache, &self.namespace, &record, &self.limits);
        match tokio::time::timeout(APPEND_TIMEOUT, append).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(
                namespace = %self.namespace,
                error = %e.to_report_string(),
                "the run was not recorded in the run history"
            ),
            Err(_) => tracing::warn!(
                namespace = %self.namespace,
                "the run was not recorded in the run history: no answer within {APPEND_TIMEOUT:?}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use proptest::prelude::*;

    use super::*;
    use crate::backend::{CacheBackend, Capabilities, Expiry, IndexLayout};

    /// An in-memory backend whose compare-and-swap is atomic, and which pauses between reads
    /// and writes so that concurrent appends interleave.
    #[derive(Debug, Default)]
    struct Mem {
        map: Mutex<HashMap<String, Bytes>>,
        max_value_bytes: Option<usize>,
        swaps_refused: Mutex<usize>,
    }

    #[async_trait]
    impl CacheBackend for Mem {
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                max_value_bytes: self.max_value_bytes,
                ..Capabilities::new()
            }
        }
        fn index_layout(&self) -> IndexLayout {
            IndexLayout::Sharded
        }
        fn describe(&self) -> String {
            "mem".into()
        }
        async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
            tokio::task::yield_now().await;
            let map = self.map.lock().unwrap();
            Ok(keys.iter().map(|k| map.get(k).cloned()).collect())
        }
        async fn set_many(&self, entries: &[(String, Bytes)], _: Expiry) -> Result<()> {
            let mut map = self.map.lock().unwrap();
            for (k, v) in entries {
                map.insert(k.clone(), v.clone());
            }
            Ok(())
        }
        async fn delete_many(&self, keys: &[String]) -> Result<()> {
            let mut map = self.map.lock().unwrap();
            keys.iter().for_each(|k| drop(map.remove(k)));
            Ok(())
        }
        async fn put_if_absent(&self, key: &str, value: Bytes, _: Duration) -> Result<bool> {
            tokio::task::yield_now().await;
            let mut map = self.map.lock().unwrap();
            if map.contains_key(key) {
                *self.swaps_refused.lock().unwrap() += 1;
                return Ok(false);
            }
            map.insert(key.to_owned(), value);
            Ok(true)
        }
        async fn swap_if_equal(
            &self,
            key: &str,
            expected: &[u8],
            new: Option<Bytes>,
            _: Duration,
        ) -> Result<bool> {
            tokio::task::yield_now().await;
            let mut map = self.map.lock().unwrap();
            if map.get(key).map(|v| &v[..]) != Some(expected) {
                *self.swaps_refused.lock().unwrap() += 1;
                return Ok(false);
            }
            match new {
                Some(v) => map.insert(key.to_owned(), v),
                None => map.remove(key),
            };
            Ok(true)
        }
    }

    fn record(kind: RunKind, n: u64) -> RunRecord {
        let counts = match kind {
            RunKind::Warm => RunCounts::Warm(WarmCounts {
                scanned: n,
                written: n / 2,
                bytes_written: n * 100,
                cancelled: n % 2 == 1,
                ..WarmCounts::default()
            }),
            RunKind::Check => RunCounts::Check(CheckCounts {
                mode: CheckMode::Deep,
                files: n,
                missing: 1,
                corrupt: 2,
                ..CheckCounts::default()
            }),
            RunKind::Resolve => RunCounts::Resolve(ResolveCounts {
                added: 1,
                deleted: n,
                refused: n.is_multiple_of(2),
                ..ResolveCounts::default()
            }),
        };
        RunRecord {
            kind,
            host: "web-1".into(),
            pid: 4242,
            started_at: Timestamp::from_millis(1_700_000_000_000 + n),
            duration: Duration::from_millis(1234),
            ok: !n.is_multiple_of(3),
            error: n
                .is_multiple_of(3)
                .then(|| format!("run {n} failed: 50% of\n \"x\" é")),
            counts,
        }
    }

    /// Records whose lines all have the same length.
    fn plain(n: u64) -> RunRecord {
        RunRecord {
            started_at: Timestamp::from_millis(1_700_000_000_000 + n),
            ..record(RunKind::Warm, 1)
        }
    }

    fn mem_cache(mem: Mem) -> (Arc<Mem>, Cache) {
        let mem = Arc::new(mem);
        (mem.clone(), Cache::new(mem))
    }

    async fn stored(cache: &Cache, ns: &Namespace) -> History {
        match load(cache, ns).await.unwrap() {
            Loaded::Found(h) => h,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn timestamps_are_rfc_3339_utc() {
        assert_eq!(
            Timestamp::from_millis(0).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        let t = Timestamp::from_millis(1_700_000_000_123);
        assert_eq!(t.to_string(), "2023-11-14T22:13:20.123Z");
        assert_eq!(t.date(), "2023-11-14");
        assert_eq!(Timestamp::parse("2023-11-14T22:13:20.123Z"), Some(t));
        assert_eq!(Timestamp::parse("2023-11-14T22:13:20.123456789Z"), Some(t));
        assert_eq!(
            Timestamp::parse("2024-02-29T00:00:00Z").map(Timestamp::date),
            Some("2024-02-29".into())
        );
        for bad in [
            "",
            "2023-02-29T00:00:00Z",
            "1900-02-28T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-04-31T00:00:00Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:20+00:00",
            "2023-11-14T22:13:20.Z",
            "2023-11-14 22:13:20Z",
            "+023-11-14T22:13:20Z",
        ] {
            assert_eq!(Timestamp::parse(bad), None, "{bad}");
        }
        let end = Timestamp::from_millis(u64::MAX);
        assert_eq!(end.to_string(), "9999-12-31T23:59:59.999Z");
        assert_eq!(Timestamp::parse(&end.to_string()), Some(end));
    }

    #[test]
    fn records_round_trip_through_their_line() {
        for kind in RunKind::ALL {
            for n in 0..4 {
                let r = record(kind, n);
                let line = r.encode_line();
                assert!(!line.contains('\n') && line.is_ascii(), "{line}");
                assert!(
                    line.starts_with(&format!("kind={kind} started_at=")),
                    "{line}"
                );
                assert_eq!(RunRecord::decode_line(&line), Some(r), "{line}");
            }
        }
        let line = record(RunKind::Check, 3).encode_line();
        assert!(
            line.contains(" mode=deep ")
                && line.contains(" missing=1 ")
                && line.contains(" corrupt=2 "),
            "{line}"
        );
        assert!(
            line.ends_with(" error=run%203%20failed:%2050%25%20of%0A%20\"x\"%20%C3%A9"),
            "{line}"
        );
    }

    #[test]
    fn lines_of_other_versions_still_read_and_bad_lines_are_refused() {
        let r =
            RunRecord::decode_line("kind=warm started_at=2026-11-02T09:00:00Z future=7 written=3")
                .unwrap();
        assert_eq!(r.host, "unknown");
        assert!(matches!(
            r.counts,
            RunCounts::Warm(WarmCounts { written: 3, .. })
        ));
        for bad in [
            "",
            "kind=warm",
            "kind=nap started_at=2026-11-02T09:00:00Z",
            "kind=warm started_at=yesterday",
            "kind=warm started_at=2026-11-02T09:00:00Z written=-1",
            "kind=warm started_at=2026-11-02T09:00:00Z ok=yes",
            "kind=warm started_at=2026-11-02T09:00:00Z pid=99999999999",
            "kind=warm started_at=2026-11-02T09:00:00Z error=%ZZ",
            "kind=warm started_at=2026-11-02T09:00:00Z  written=1",
            "kind=check started_at=2026-11-02T09:00:00Z mode=shallow",
        ] {
            assert_eq!(RunRecord::decode_line(bad), None, "{bad}");
        }
        let many = format!(
            "kind=warm started_at=2026-11-02T09:00:00Z{}",
            " a=1".repeat(70)
        );
        assert_eq!(RunRecord::decode_line(&many), None);
    }

    #[test]
    fn histories_decode_what_they_can_and_name_what_they_cannot() {
        let good = record(RunKind::Warm, 1).encode_line();
        let value = format!(
            "{MAGIC} since=2026-11-02T09:00:00.000Z appended=9 extra=1\n{good}\n\ngarbage\n\
             kind=warm started_at=never\n{good}\n"
        );
        let h = History::decode(value.as_bytes()).unwrap();
        assert_eq!(h.records.len(), 2);
        assert_eq!(h.skipped, 2);
        assert_eq!(h.appended, 9);
        assert_eq!(h.dropped(), 5);
        assert_eq!(h.since, Timestamp::parse("2026-11-02T09:00:00Z"));
        let newer = History::decode(b"tcache-history/2 since=x\nkind=warm").unwrap_err();
        assert_eq!(newer.kind(), ErrorKind::Unsupported);
        assert!(newer.message().contains("tcache-history/2"), "{newer}");
        for not_history in [
            &b""[..],
            b"TPLC\x01",
            b"tcache-lease/1 token=ab",
            b"\xff\xfe",
        ] {
            let e = History::decode(not_history).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt, "{not_history:?}");
        }
        let h = History {
            since: Some(Timestamp::from_millis(5)),
            appended: 3,
            records: vec![record(RunKind::Check, 1), record(RunKind::Resolve, 2)],
            skipped: 0,
        };
        assert_eq!(History::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn appending_keeps_the_newest_records_within_both_bounds() {
        let limits = HistoryLimits {
            max_records: 10,
            max_bytes: 64 * 1024,
        };
        let mut value: Option<Bytes> = None;
        for n in 0..25 {
            let line = record(RunKind::Warm, n).encode_line();
            let now = Timestamp::from_millis(1000 + n);
            value = Some(appended(value.as_deref(), &line, now, &limits).unwrap());
        }
        let h = History::decode(value.as_deref().unwrap()).unwrap();
        assert_eq!(h.records.len(), 10);
        assert_eq!(h.appended, 25);
        assert_eq!(h.dropped(), 15);
        assert_eq!(
            h.since,
            Some(Timestamp::from_millis(1000)),
            "since the first append"
        );
        let firsts: Vec<u64> = h.records.iter().map(|r| r.started_at.as_millis()).collect();
        let want: Vec<u64> = (15..25).map(|n| 1_700_000_000_000 + n).collect();
        assert_eq!(firsts, want, "the newest, oldest first");

        // The byte bound: a few lines only.
        let line = record(RunKind::Warm, 1).encode_line();
        let small = HistoryLimits {
            max_records: 500,
            max_bytes: 100 + 3 * (line.len() + 1),
        };
        let mut value: Option<Bytes> = None;
        for n in 0..20 {
            let line = plain(n).encode_line();
            let v = appended(value.as_deref(), &line, Timestamp::from_millis(1), &small).unwrap();
            assert!(
                v.len() <= small.max_bytes,
                "{} > {}",
                v.len(),
                small.max_bytes
            );
            value = Some(v);
        }
        let h = History::decode(value.as_deref().unwrap()).unwrap();
        assert_eq!((h.records.len(), h.appended), (3, 20));
        assert_eq!(h.records[2], plain(19));

        // A record that cannot fit at all is an error, not an empty history.
        let tiny = HistoryLimits {
            max_records: 5,
            max_bytes: 50,
        };
        let e = appended(None, &line, Timestamp::from_millis(1), &tiny).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueTooLarge);
    }

    #[test]
    fn appending_replaces_damage_and_leaves_other_versions_alone() {
        let limits = HistoryLimits::default();
        let line = record(RunKind::Check, 1).encode_line();
        let now = Timestamp::from_millis(77);
        let v = appended(Some(b"\x00garbage"), &line, now, &limits).unwrap();
        let h = History::decode(&v).unwrap();
        assert_eq!((h.records.len(), h.appended, h.since), (1, 1, Some(now)));
        let e = appended(
            Some(b"tcache-history/2\nkind=warm x=1\n"),
            &line,
            now,
            &limits,
        );
        assert_eq!(e.unwrap_err().kind(), ErrorKind::Unsupported);
        // Unknown fields and records of other kinds are kept as they are; junk lines are not.
        let current = format!(
            "{MAGIC} since=1970-01-01T00:00:00.001Z appended=2\nkind=prune started_at=x n=1\n\u{1b}[31m\n"
        );
        let v = appended(Some(current.as_bytes()), &line, now, &limits).unwrap();
        let text = std::str::from_utf8(&v).unwrap();
        assert_eq!(
            text,
            format!(
                "{MAGIC} since=1970-01-01T00:00:00.001Z appended=3\nkind=prune started_at=x n=1\n{line}\n"
            )
        );
    }

    #[tokio::test]
    async fn append_and_load_through_the_cache() {
        let (_, cache) = mem_cache(Mem::default());
        let ns = Namespace::new("h1").unwrap();
        assert_eq!(
            load(&cache, &ns).await.unwrap(),
            Loaded::Missing {
                index_exists: false
            }
        );
        cache
            .set(&ns.index_root_key(), Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(
            load(&cache, &ns).await.unwrap(),
            Loaded::Missing { index_exists: true },
            "an index without a history: the history was lost"
        );
        let limits = HistoryLimits::default();
        for n in 0..3 {
            append(&cache, &ns, &record(RunKind::Resolve, n), &limits)
                .await
                .unwrap();
        }
        let h = stored(&cache, &ns).await;
        assert_eq!(
            h.records,
            (0..3)
                .map(|n| record(RunKind::Resolve, n))
                .collect::<Vec<_>>()
        );
        assert_eq!(h.appended, 3);
        // The backend's value limit bounds the history too.
        let line_len = record(RunKind::Warm, 1).encode_line().len();
        let (_, small) = mem_cache(Mem {
            max_value_bytes: Some(100 + 2 * (line_len + 1)),
            ..Mem::default()
        });
        for n in 0..5 {
            append(&small, &ns, &plain(n), &limits).await.unwrap();
        }
        assert_eq!(stored(&small, &ns).await.records.len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_lose_nothing() {
        let (mem, cache) = mem_cache(Mem::default());
        let ns = Namespace::default();
        let writers = 6u64;
        let each = 15u64;
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let (cache, ns) = (cache.clone(), ns.clone());
                tokio::spawn(async move {
                    for i in 0..each {
                        let mut r = record(RunKind::Warm, w * 1000 + i);
                        r.host = format!("host-{w}");
                        append(&cache, &ns, &r, &HistoryLimits::default())
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let h = stored(&cache, &ns).await;
        assert_eq!(h.records.len() as u64, writers * each);
        assert_eq!(h.appended, writers * each);
        for w in 0..writers {
            let mine: Vec<u64> = h
                .records
                .iter()
                .filter(|r| r.host == format!("host-{w}"))
                .map(|r| r.started_at.as_millis() - 1_700_000_000_000 - w * 1000)
                .collect();
            assert_eq!(mine, (0..each).collect::<Vec<_>>(), "writer {w}, in order");
        }
        assert!(
            *mem.swaps_refused.lock().unwrap() > 0,
            "the writers did race (the test exercised the retry)"
        );
    }

    #[tokio::test]
    async fn the_recorder_never_fails_and_can_be_switched_off() {
        let (mem, cache) = mem_cache(Mem::default());
        let ns = Namespace::default();
        let off = Recorder::new(&cache, &ns, false);
        off.warm(off.start(), &Ok(WarmReport::default())).await;
        assert!(mem.map.lock().unwrap().is_empty());

        let on = Recorder::new(&cache, &ns, true);
        let report = WarmReport {
            scanned: 4,
            written: 3,
            ..WarmReport::default()
        };
        on.warm(on.start(), &Ok(report)).await;
        let refused = Error::new(ErrorKind::Refused, "would delete 9 of 10 entries");
        on.resolve(on.start(), false, &Err(refused)).await;
        on.check(
            on.start(),
            CheckMode::Deep,
            &Err(Error::new(ErrorKind::NotFound, "no root")),
        )
        .await;
        // Unreachable: nothing is tried (it would fail too).
        let down = Error::new(ErrorKind::Unavailable, "connection refused");
        on.warm(on.start(), &Err(down)).await;
        let h = stored(&cache, &ns).await;
        let kinds: Vec<RunKind> = h.records.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [RunKind::Warm, RunKind::Resolve, RunKind::Check]);
        assert!(h.records[0].ok && h.records[0].error.is_none());
        assert_eq!(h.records[0].pid, std::process::id());
        assert!(matches!(
            &h.records[1],
            RunRecord {
                ok: false,
                counts: RunCounts::Resolve(ResolveCounts { refused: true, .. }),
                error: Some(e),
                ..
            } if e.contains("would delete 9")
        ));
        assert!(matches!(
            h.records[2].counts,
            RunCounts::Check(CheckCounts {
                mode: CheckMode::Deep,
                ..
            })
        ));

        // Something else under the key that a newer version wrote: the run goes on, and the
        // value is left alone.
        let key = ns.history_key();
        mem.map
            .lock()
            .unwrap()
            .insert(key.clone(), Bytes::from_static(b"tcache-history/9\n"));
        on.warm(on.start(), &Ok(WarmReport::default())).await;
        assert_eq!(
            mem.map.lock().unwrap().get(&key).map(|v| v.to_vec()),
            Some(b"tcache-history/9\n".to_vec())
        );
    }

    #[tokio::test]
    async fn engines_record_every_run_and_can_be_told_not_to() {
        use crate::{Checker, EngineConfig, ResolvePolicy, SourceConfig, Warmer};
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.html"), "a").unwrap();
        std::fs::write(dir.path().join("b.html"), "b").unwrap();
        let mem = Arc::new(Mem::default());
        let cache = Cache::new(mem.clone());
        let cfg = EngineConfig::new(SourceConfig::new(dir.path()));
        let ns = cfg.namespace.clone();
        let warm = Warmer::new(mem.clone(), cfg.clone())
            .unwrap()
            .run_once()
            .await
            .unwrap();
        assert_eq!(warm.written, 2);
        let checker = Checker::new(mem.clone(), cfg.clone()).unwrap();
        std::fs::remove_file(dir.path().join("b.html")).unwrap();
        let report = checker.check(CheckMode::Quick).await.unwrap();
        assert_eq!(report.orphaned, ["b.html"]);
        let strict = ResolvePolicy {
            max_delete: Some(0),
            ..ResolvePolicy::default()
        };
        let refused = checker.resolve(&report, &strict).await.unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Refused);
        let lenient = ResolvePolicy {
            max_delete_ratio: None,
            ..ResolvePolicy::default()
        };
        let fixed = checker.resolve(&report, &lenient).await.unwrap();
        assert_eq!(fixed.deleted, 1);

        let h = stored(&cache, &ns).await;
        let runs: Vec<(RunKind, bool)> = h.records.iter().map(|r| (r.kind, r.ok)).collect();
        assert_eq!(
            runs,
            [
                (RunKind::Warm, true),
                (RunKind::Check, true),
                (RunKind::Resolve, false),
                (RunKind::Resolve, true)
            ]
        );
        assert!(matches!(
            &h.records[0].counts,
            RunCounts::Warm(WarmCounts {
                scanned: 2,
                written: 2,
                ..
            })
        ));
        assert!(matches!(
            &h.records[1].counts,
            RunCounts::Check(CheckCounts {
                files: 1,
                orphaned: 1,
                consistent: false,
                ..
            })
        ));
        assert!(matches!(
            &h.records[2].counts,
            RunCounts::Resolve(ResolveCounts {
                refused: true,
                deleted: 0,
                ..
            })
        ));
        assert!(matches!(
            &h.records[3].counts,
            RunCounts::Resolve(ResolveCounts {
                refused: false,
                deleted: 1,
                ..
            })
        ));
        assert!(h.records.iter().all(|r| r.started_at <= Timestamp::now()));
        assert_eq!(
            h.since,
            Some(h.records[0].started_at),
            "since the first run started"
        );

        let quiet = EngineConfig {
            record_history: false,
            ..cfg
        };
        Warmer::new(mem.clone(), quiet.clone())
            .unwrap()
            .run_once()
            .await
            .unwrap();
        Checker::new(mem.clone(), quiet)
            .unwrap()
            .check(CheckMode::Deep)
            .await
            .unwrap();
        assert_eq!(stored(&cache, &ns).await.records.len(), 4);
    }

    #[test]
    fn the_json_form_is_flat() {
        let r = record(RunKind::Check, 1);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["kind"], "check");
        assert_eq!(v["started_at"], "2023-11-14T22:13:20.001Z");
        assert_eq!(v["duration_seconds"], 1.234);
        assert_eq!(v["mode"], "deep");
        assert_eq!(v["missing"], 1);
        assert_eq!(v["ok"], true);
        assert!(v["error"].is_null());
        assert!(v.get("counts").is_none(), "{v}");
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = History::decode(&data);
            let mut with_magic = format!("{MAGIC} since=x appended=y\n").into_bytes();
            with_magic.extend_from_slice(&data);
            let _ = History::decode(&with_magic);
            let limits = HistoryLimits { max_records: 3, max_bytes: 4096 };
            if let Ok(v) = appended(Some(&with_magic), "kind=warm started_at=x", Timestamp::from_millis(1), &limits) {
                prop_assert!(v.len() <= limits.max_bytes);
                prop_assert!(History::decode(&v).is_ok());
            }
        }

        #[test]
        fn decoding_arbitrary_lines_never_panics(line in "(kind=(warm|check|resolve)|started_at=[0-9T:.Z-]{0,30}|[a-z_]{1,12}=[ -~]{0,12}| |%[0-9A-Fa-f]{0,2}){0,12}") {
            let _ = RunRecord::decode_line(&line);
        }

        #[test]
        fn timestamps_round_trip(ms in 0..=MAX_MILLIS) {
            let t = Timestamp::from_millis(ms);
            prop_assert_eq!(Timestamp::parse(&t.to_string()), Some(t));
        }

        #[test]
        fn encode_then_decode_round_trips(
            kind in 0..3usize,
            host in "[!-~]{1,40}",
            pid in any::<u32>(),
            ms in 0..=MAX_MILLIS,
            duration_ms in any::<u32>(),
            counts in proptest::collection::vec(any::<u64>(), 9),
            flags in proptest::collection::vec(any::<bool>(), 3),
            error in proptest::option::of(".{0,100}"),
        ) {
            let c = |i: usize| counts[i];
            let counts = match kind {
                0 => RunCounts::Warm(WarmCounts {
                    scanned: c(0), written: c(1), unchanged: c(2), failed: c(3),
                    bytes_written: c(4), files_hashed: c(5), evicted: c(6), cancelled: flags[0],
                }),
                1 => RunCounts::Check(CheckCounts {
                    mode: if flags[0] { CheckMode::Deep } else { CheckMode::Quick },
                    consistent: flags[1], files: c(0), entries: c(1), missing: c(2),
                    outdated: c(3), orphaned: c(4), corrupt: c(5), errors: c(6),
                }),
                _ => RunCounts::Resolve(ResolveCounts {
                    dry_run: flags[0], added: c(0), updated: c(1), repaired: c(2),
                    deleted: c(3), failed: c(4), refused: flags[1],
                }),
            };
            let r = RunRecord {
                kind: counts.kind(),
                host,
                pid,
                started_at: Timestamp::from_millis(ms),
                duration: Duration::from_millis(u64::from(duration_ms)),
                ok: flags[2],
                error,
                counts,
            };
            let line = r.encode_line();
            prop_assert!(line.len() <= MAX_LINE_BYTES);
            prop_assert_eq!(RunRecord::decode_line(&line), Some(r.clone()));
            let h = History { since: Some(Timestamp::from_millis(ms)), appended: 1, records: vec![r], skipped: 0 };
            prop_assert_eq!(History::decode(&h.encode()).unwrap(), h);
        }
    }
}
