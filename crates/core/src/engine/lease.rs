//! The namespace write lease: one writer per namespace, enforced in the backend itself.
//!
//! A writer (a warm with something to write, a resolution) holds the lease key
//! `{<namespace>:index}:lease` while it writes. The record names its holder's host and process
//! and when it expires; it is renewed every third of its TTL. Others wait or fail with
//! [`ErrorKind::Conflict`]. A holder that is killed frees the namespace when its record expires
//! (backends with expiry drop the key; the others compare the recorded time), at once for a
//! process on the same host that finds the holder's process gone. Every index update of the
//! holder is fenced by the lease (atomically on backends with hash indexes), so a writer that
//! lost its lease stops before its next index write.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::backend::{Cache, Fence};
use crate::error::{Error, ErrorKind, Result};
use crate::format::key::Namespace;

/// How the lease is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a record lives without renewal (default 15 s; 3 s to 300 s). A killed holder
    /// frees the namespace after at most this long.
    pub ttl: Duration,
    /// How long to wait for a busy namespace before giving up with [`ErrorKind::Conflict`];
    /// `None` gives up at once.
    pub wait: Option<Duration>,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            ttl: Duration::from_secs(15),
            wait: None,
        }
    }
}

impl LeaseConfig {
    /// The shortest and longest TTL accepted.
    pub const TTL_RANGE: (Duration, Duration) = (Duration::from_secs(3), Duration::from_secs(300));

    /// Checks the settings, naming the one out of range.
    pub fn validate(&self) -> Result<()> {
        let (min, max) = Self::TTL_RANGE;
        if self.ttl < min || self.ttl > max {
            return Err(Error::new(
                ErrorKind::ConfigInvalid,
                format!(
                    "lease ttl {:?} is out of range ({min:?} to {max:?})",
                    self.ttl
                ),
            ));
        }
        Ok(())
    }
}

const MAGIC: &str = "tcache-lease/1";

/// A lease record as stored: `tcache-lease/1 token=<hex> host=<host> pid=<pid> expires_ms=<ms>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Random identity of this holding, the fence.
    pub token: String,
    /// The holder's host name.
    pub host: String,
    /// The holder's process id.
    pub pid: u32,
    /// When the record expires, milliseconds since the Unix epoch (the holder's clock).
    pub expires_ms: u64,
}

impl LeaseRecord {
    fn mine(token: &str, ttl: Duration) -> Self {
        LeaseRecord {
            token: token.to_owned(),
            host: crate::host::name(),
            pid: std::process::id(),
            expires_ms: now_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// The stored form.
    pub fn encode(&self) -> Bytes {
        Bytes::from(format!(
            "{} pid={} host={} expires_ms={}",
            fence_prefix(&self.token),
            self.pid,
            self.host,
            self.expires_ms
        ))
    }

    /// Parses a stored record; `None` if it is not one (cache contents are untrusted).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut words = text.split(' ');
        if words.next()? != MAGIC {
            return None;
        }
        let mut field = |name: &str| {
            words
                .next()
                .and_then(|w| w.strip_prefix(name))
                .and_then(|w| w.strip_prefix('='))
                .map(str::to_owned)
        };
        let rec = LeaseRecord {
            token: field("token")?,
            pid: field("pid")?.parse().ok()?,
            host: field("host")?,
            expires_ms: field("expires_ms")?.parse().ok()?,
        };
        words.next().is_none().then_some(rec)
    }

    /// Whether a contender may take the namespace over from this holder: its record expired,
    /// or it ran on this host and its process is gone.
    fn is_abandoned(&self) -> bool {
        now_ms() > self.expires_ms || (self.host == crate::host::name() && !process_alive(self.pid))
    }

    fn describe(&self) -> String {
        let left = self.expires_ms.saturating_sub(now_ms());
        format!(
            "process {} on {} (its lease expires in {:.1} s unless renewed)",
            self.pid,
            self.host,
            left as f64 / 1000.0
        )
    }
}

/// What the fence of a holding checks: the stored record starts with this.
fn fence_prefix(token: &str) -> String {
    format!("{MAGIC} token={token}")
}

/// A held lease. Renewed in the background until [`Self::release`] or until renewal fails;
/// [`Self::check`] then refuses further writes.
#[derive(Debug)]
pub struct Lease {
    cache: Cache,
    key: String,
    token: String,
    ttl: Duration,
    state: Arc<Mutex<Held>>,
    stop: CancellationToken,
}

#[derive(Debug)]
struct Held {
    /// The record as stored now (renewals replace it).
    stored: Bytes,
    /// Until when the lease is surely ours: the last renewal plus the TTL, minus a margin.
    valid_until: Instant,
    lost: Option<String>,
    /// How many times the record vanished and was taken again: each time, the cache server
    /// may have lost everything (it restarted empty).
    retaken: u64,
}

impl Lease {
    /// Takes the write lease of `namespace`, waiting as `config` allows.
    pub async fn acquire(
        cache: &Cache,
        namespace: &Namespace,
        config: &LeaseConfig,
    ) -> Result<Self> {
        config.validate()?;
        let key = namespace.lease_key();
        let token = hex::encode(fastrand::u128(..).to_be_bytes());
        let deadline = config
            .wait
            .map(|w| Instant::now() + w.min(Duration::from_secs(365 * 86_400)));
        let mut vanished = 0u32;
        loop {
            let mine = LeaseRecord::mine(&token, config.ttl).encode();
            let started = Instant::now();
            let taken = if cache.put_if_absent(&key, mine.clone(), config.ttl).await? {
                true
            } else {
                match cache.get(&key).await? {
                    // Released meanwhile: try again, briefly paced so that a backend whose
                    // put_if_absent misbehaves cannot make this spin, and within the deadline.
                    None => {
                        vanished += 1;
                        if vanished > 200 || deadline.is_some_and(|d| Instant::now() >= d) {
                            return Err(Error::new(
                                ErrorKind::Conflict,
                                format!(
                                    "namespace {namespace}: its write lease could not be taken"
                                ),
                            ));
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        false
                    }
                    Some(current) => {
                        let holder = LeaseRecord::decode(&current);
                        // A record we cannot read was not written by a holder: take it over.
                        if holder.as_ref().is_none_or(LeaseRecord::is_abandoned) {
                            cache
                                .swap_if_equal(&key, &current, Some(mine.clone()), config.ttl)
                                .await?
                        } else {
                            let holder = holder.map_or_else(String::new, |h| h.describe());
                            if deadline.is_none_or(|d| Instant::now() >= d) {
                                return Err(Error::new(
                                    ErrorKind::Conflict,
                                    format!(
                                        "namespace {namespace} is busy: its write lease is held by {holder}"
                                    ),
                                ));
                            }
                            tracing::info!(%namespace, %holder, "namespace busy; waiting for its write lease");
                            let pause = Duration::from_millis(250 + fastrand::u64(..250));
                            tokio::time::sleep(pause).await;
                            false
                        }
                    }
                }
            };
            if taken {
                tracing::info!(%namespace, ttl = ?config.ttl, "write lease acquired");
                metrics::gauge!("tcache_lease_held").set(1.0);
                let lease = Lease {
                    cache: cache.clone(),
                    key,
                    token,
                    ttl: config.ttl,
                    state: Arc::new(Mutex::new(Held {
                        stored: mine,
                        valid_until: started + config.ttl.mul_f64(0.8),
                        lost: None,
                        retaken: 0,
                    })),
                    stop: CancellationToken::new(),
                };
                lease.spawn_renewal();
                return Ok(lease);
            }
        }
    }

    /// The fence every index write of the holder carries.
    pub fn fence(&self) -> Fence {
        Fence {
            key: self.key.clone(),
            token: Bytes::from(fence_prefix(&self.token)),
        }
    }

    /// Fails with [`ErrorKind::Conflict`] if the lease is lost or may have expired unrenewed.
    pub fn check(&self) -> Result<()> {
        let held = lock(&self.state);
        let why = match &held.lost {
            Some(why) => why.clone(),
            None if Instant::now() >= held.valid_until => {
                "it could not be renewed in time".to_owned()
            }
            None => return Ok(()),
        };
        Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "lost the write lease {}: {why}; stopping before the next index write",
                self.key
            ),
        ))
    }

    /// Takes the lease again if its record vanished (a cache server restarted empty, or evicted
    /// it) and nobody else took it meanwhile. Fails with [`ErrorKind::Conflict`] otherwise.
    pub async fn reassert(&self) -> Result<()> {
        let stored = lock(&self.state).stored.clone();
        match self.cache.get(&self.key).await? {
            Some(v) if v == stored => {}
            Some(_) => {
                lock(&self.state).lost = Some("another writer took it over".into());
            }
            None => {
                if self
                    .cache
                    .put_if_absent(&self.key, stored, self.ttl)
                    .await?
                {
                    tracing::warn!(key = %self.key, "the write lease record vanished (server restart or eviction); taken again");
                    let mut held = lock(&self.state);
                    held.valid_until = Instant::now() + self.ttl.mul_f64(0.8);
                    held.retaken += 1;
                } else {
                    lock(&self.state).lost = Some("another writer took it over".into());
                }
            }
        }
        self.check()
    }

    /// Stops renewing and deletes the record if it is still ours.
    pub async fn release(self) {
        self.stop.cancel();
        let stored = lock(&self.state).stored.clone();
        match self
            .cache
            .swap_if_equal(&self.key, &stored, None, self.ttl)
            .await
        {
            Ok(_) => tracing::info!(key = %self.key, "write lease released"),
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "could not release the write lease; it expires by itself")
            }
        }
        metrics::gauge!("tcache_lease_held").set(0.0);
    }

    /// How many times the lease's record vanished from the backend and was taken again: a
    /// change means the cache server may have lost everything (restarted empty).
    pub fn times_retaken(&self) -> u64 {
        lock(&self.state).retaken
    }

    /// Whether the lease still holds (see [`Self::check`]).
    pub fn is_valid(&self) -> bool {
        self.check().is_ok()
    }

    fn spawn_renewal(&self) {
        let (cache, key, token, ttl) = (
            self.cache.clone(),
            self.key.clone(),
            self.token.clone(),
            self.ttl,
        );
        let (state, stop) = (Arc::clone(&self.state), self.stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(ttl / 3) => {}
                }
                let old = lock(&state).stored.clone();
                let new = LeaseRecord::mine(&token, ttl).encode();
                let started = Instant::now();
                match cache
                    .swap_if_equal(&key, &old, Some(new.clone()), ttl)
                    .await
                {
                    Ok(true) => {
                        let mut held = lock(&state);
                        held.stored = new;
                        held.valid_until = started + ttl.mul_f64(0.8);
                    }
                    Ok(false) => {
                        // Vanished (a server restarted empty) and free: take it again.
                        if let Ok(true) = cache.put_if_absent(&key, new.clone(), ttl).await {
                            tracing::warn!(%key, "the write lease record vanished; taken again");
                            let mut held = lock(&state);
                            held.stored = new;
                            held.valid_until = started + ttl.mul_f64(0.8);
                            held.retaken += 1;
                            continue;
                        }
                        tracing::error!(%key, "write lease lost: another writer holds it now");
                        metrics::gauge!("tcache_lease_held").set(0.0);
                        lock(&state).lost = Some("another writer took it over".into());
                        return;
                    }
                    // A temporary failure is retried at the next tick; `check` refuses writes
                    // once the lease may have expired.
                    Err(e) => tracing::warn!(%key, error = %e, "could not renew the write lease"),
                }
            }
        });
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    u64::try_from(crate::time::now_ns() / 1_000_000).unwrap_or(0)
}

/// Whether process `pid` runs on this host (Linux: `/proc/<pid>` exists). Elsewhere it is
/// assumed alive: the record then frees the namespace when it expires.
fn process_alive(pid: u32) -> bool {
    if !std::path::Path::new("/proc/self").exists() {
        return true;
    }
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let r = LeaseRecord::mine("ab12", Duration::from_secs(15));
        let enc = r.encode();
        assert!(enc.starts_with(fence_prefix("ab12").as_bytes()));
        assert_eq!(LeaseRecord::decode(&enc), Some(r));
        for bad in [
            &b""[..],
            b"tcache-lease/1",
            b"tcache-lease/1 token=a pid=x host=h expires_ms=1",
        ] {
            assert_eq!(LeaseRecord::decode(bad), None);
        }
    }

    #[test]
    fn a_dead_local_holder_or_an_expired_record_is_abandoned() {
        let mut r = LeaseRecord::mine("t", Duration::from_secs(60));
        assert!(!r.is_abandoned(), "our own live process");
        r.pid = u32::MAX; // no such process
        assert!(r.is_abandoned());
        let mut r = LeaseRecord::mine("t", Duration::from_secs(60));
        r.host = "elsewhere".into();
        r.pid = u32::MAX;
        assert!(
            !r.is_abandoned(),
            "another host's process cannot be checked"
        );
        r.expires_ms = 1;
        assert!(r.is_abandoned());
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = LeaseRecord::decode(&data);
        }
    }
}

/// A write lease held across runs by several engines of one process (a service's warmer and
/// checker): runs that share it take it when they first write and leave it held when they end;
/// its owner releases it. Cloning shares the slot.
#[derive(Clone, Debug, Default)]
pub struct SharedLease(Arc<tokio::sync::Mutex<Option<Lease>>>);

impl SharedLease {
    /// An empty slot: nothing held yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Holds the lease of `namespace`: keeps one that is still valid, or takes it as `config`
    /// allows (a lost one is dropped first). Fails with [`ErrorKind::Conflict`] when another
    /// writer holds it.
    pub async fn hold(
        &self,
        cache: &Cache,
        namespace: &Namespace,
        config: &LeaseConfig,
    ) -> Result<()> {
        let mut slot = self.0.lock().await;
        if slot.as_ref().is_some_and(Lease::is_valid) {
            return Ok(());
        }
        if let Some(lost) = slot.take() {
            lost.release().await;
        }
        *slot = Some(Lease::acquire(cache, namespace, config).await?);
        Ok(())
    }

    /// How many times the held lease's record vanished and was taken again (0 when none is
    /// held); see [`Lease::times_retaken`].
    pub async fn times_retaken(&self) -> u64 {
        self.0.lock().await.as_ref().map_or(0, Lease::times_retaken)
    }

    /// Whether a valid lease is held.
    pub async fn is_held(&self) -> bool {
        self.0.lock().await.as_ref().is_some_and(Lease::is_valid)
    }

    /// The fence of the held lease, if it still holds.
    pub async fn fence(&self) -> Result<Fence> {
        match self.0.lock().await.as_ref() {
            Some(l) => l.check().map(|()| l.fence()),
            None => Err(Error::new(
                ErrorKind::Conflict,
                "writing without the namespace write lease",
            )),
        }
    }

    /// Checks the held lease again against the backend ([`Lease::reassert`]).
    pub async fn reassert(&self) -> Result<()> {
        match self.0.lock().await.as_ref() {
            Some(l) => l.reassert().await,
            None => Ok(()),
        }
    }

    /// Releases the lease if one is held.
    pub async fn release(&self) {
        if let Some(l) = self.0.lock().await.take() {
            l.release().await;
        }
    }
}
