//! Backend URL helpers shared by every backend: password redaction and query parameters read
//! one by one, with one error style that names the URL kind and the parameter.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// `url` with any password replaced by `***`, safe to print, log or put in a report.
///
/// `redis://user:secret@host:6379/0` becomes `redis://user:***@host:6379/0`.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let redacted = match authority.rfind('@') {
        Some(at) => {
            let user = match authority[..at].split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => authority[..at].to_owned(),
            };
            format!("{user}@{}{}", &authority[at + 1..], &rest[authority_end..])
        }
        None => rest.to_owned(),
    };
    match scheme {
        Some(s) => format!("{s}://{redacted}"),
        None => redacted,
    }
}

/// An [`ErrorKind::ConfigInvalid`] error about `url` (redacted), for example
/// `invalid Redis URL "redis://u:***@h": ttl="soon" is not a positive duration`.
pub fn invalid(kind: &str, url: &str, why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::ConfigInvalid,
        format!("invalid {kind} URL {:?}: {why}", redact(url)),
    )
}

/// The query parameters of a backend URL (`scheme://...?name=value&...`), taken one by one by
/// the backend that reads them; what is left is either passed on or refused by [`Self::finish`].
#[derive(Debug)]
pub struct UrlQuery<'a> {
    kind: &'a str,
    url: &'a str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> UrlQuery<'a> {
    /// Splits `url` into the part before `?` and its parameters. `kind` names the URL in errors
    /// (`"Redis"`, `"Memcached"`).
    pub fn parse(kind: &'a str, url: &'a str) -> (&'a str, Self) {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let pairs = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .collect();
        (base, UrlQuery { kind, url, pairs })
    }

    /// An error about this URL (see [`invalid`]).
    pub fn invalid(&self, why: impl std::fmt::Display) -> Error {
        invalid(self.kind, self.url, why)
    }

    /// The value of parameter `name` (the last one if repeated), removing it.
    pub fn take(&mut self, name: &str) -> Option<&'a str> {
        let mut found = None;
        self.pairs.retain(|&(k, v)| {
            let hit = k == name;
            if hit {
                found = Some(v);
            }
            !hit
        });
        found
    }

    /// Parameter `name` as a positive duration (`500ms`, `5s`, `1h`).
    pub fn duration(&mut self, name: &str) -> Result<Option<Duration>> {
        let Some(v) = self.take(name) else {
            return Ok(None);
        };
        match humantime::parse_duration(v) {
            Ok(d) if !d.is_zero() => Ok(Some(d)),
            _ => Err(self.invalid(format!(
                "{name}={v:?} is not a positive duration (for example 500ms, 5s, 1h)"
            ))),
        }
    }

    /// Parameter `name` as a positive whole number.
    pub fn count(&mut self, name: &str) -> Result<Option<usize>> {
        let Some(v) = self.take(name) else {
            return Ok(None);
        };
        match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(self.invalid(format!("{name}={v:?} is not a positive whole number"))),
        }
    }

    /// Parameter `name` as a file path.
    pub fn path(&mut self, name: &str) -> Option<PathBuf> {
        self.take(name).map(PathBuf::from)
    }

    /// The parameters nobody took, as `name=value` text joined by `&` (for a client library
    /// that reads its own).
    pub fn rest(&self) -> String {
        self.pairs
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    (*k).to_owned()
                } else {
                    format!("{k}={v}")
                }
            })
            .collect::<Vec<_>>()
            .join("&")
    }

    /// Refuses any parameter nobody took.
    pub fn finish(self) -> Result<()> {
        match self.pairs.first() {
            None => Ok(()),
            Some((k, _)) => Err(self.invalid(format!("unknown parameter {k:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://user:s3cret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact("redis://:s3cret@host"), "redis://:***@host");
        assert_eq!(redact("redis://user@host"), "redis://user@host");
        assert_eq!(
            redact("redis+cluster://u:p@h1:1,h2:2?ttl=5"),
            "redis+cluster://u:***@h1:1,h2:2?ttl=5"
        );
        assert_eq!(redact("sled://.tcache"), "sled://.tcache");
        assert_eq!(redact("a:b@c"), "a:***@c");
    }

    #[test]
    fn query_parameters_are_taken_one_by_one() {
        let url = "redis://u:secret@h:1?ttl=1h&batch_keys=7&protocol=resp3&ttl=2h";
        let (base, mut q) = UrlQuery::parse("Redis", url);
        assert_eq!(base, "redis://u:secret@h:1");
        assert_eq!(q.duration("ttl").unwrap(), Some(Duration::from_secs(7200)));
        assert_eq!(q.count("batch_keys").unwrap(), Some(7));
        assert_eq!(q.count("absent").unwrap(), None);
        assert_eq!(q.rest(), "protocol=resp3");
        let e = q.finish().unwrap_err().to_string();
        assert!(e.contains("unknown parameter \"protocol\""), "{e}");
        assert!(!e.contains("secret"), "{e}");
        for (url, want) in [
            (
                "m://h?io_timeout=0s",
                "io_timeout=\"0s\" is not a positive duration",
            ),
            (
                "m://h?batch_keys=-1",
                "batch_keys=\"-1\" is not a positive whole number",
            ),
        ] {
            let (_, mut q) = UrlQuery::parse("Memcached", url);
            let e = q
                .duration("io_timeout")
                .and_then(|_| q.count("batch_keys"))
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
            assert!(e.to_string().starts_with("invalid Memcached URL"), "{e}");
            assert!(e.to_string().contains(want), "{e}");
        }
    }
}
