//! Backend URL helpers shared by every backend: the one reading of a URL's parts that both the
//! backends and redaction use, secret scrubbing, and query parameters read one by one within
//! declared ranges, with one error style that names the URL kind and the parameter.
//!
//! # Where the credentials end
//!
//! A password may contain anything, `/`, `?`, `#`, `@` and `:` included, so no character after
//! `scheme://` can be trusted to end it except the **last `@` of the whole URL**: the userinfo
//! is everything between `://` and that `@`, the location (hosts, then an optional path) and
//! the query follow it. Any earlier `@` could be part of the password, so choosing one would
//! print the rest of the password as if it were a host. The price: an `@` after the host (in a
//! query value such as a certificate path) must be written `%40`; [`UrlQuery::path`] decodes it.
//!
//! In the userinfo, the user name is what precedes the first `:`, the password what follows it;
//! both are percent-decoded. A userinfo without `:` may well be a password written in the user
//! name's place, so redaction hides it whole.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// What replaces a secret in anything printed.
const MASK: &str = "***";

/// Secrets shorter than this are not scrubbed from free text: replacing every `a` of a message
/// would make it unreadable, and such a password is no secret anyway.
const MIN_SCRUB_CHARS: usize = 3;

/// A backend URL split into its parts: `scheme://[userinfo@]location[?query][#fragment]`.
///
/// Splitting never fails: a URL without a valid `scheme://` has no scheme, and everything up to
/// its last `@` is still treated as credentials (see the [module documentation](self)).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BackendUrl<'a> {
    raw: &'a str,
    scheme: Option<&'a str>,
    userinfo: Option<&'a str>,
    location: &'a str,
    query: Option<&'a str>,
    fragment: Option<&'a str>,
}

impl fmt::Debug for BackendUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BackendUrl").field(&self.redacted()).finish()
    }
}

impl<'a> BackendUrl<'a> {
    /// Splits `url` into its parts.
    pub fn parse(url: &'a str) -> Self {
        let (scheme, after) = match url.split_once("://") {
            Some((s, r)) if is_scheme(s) => (Some(s), r),
            _ => (None, url),
        };
        let (userinfo, rest) = match after.rfind('@') {
            Some(at) => (Some(&after[..at]), &after[at + 1..]),
            None => (None, after),
        };
        let (rest, fragment) = match rest.split_once('#') {
            Some((r, f)) => (r, Some(f)),
            None => (rest, None),
        };
        let (location, query) = match rest.split_once('?') {
            Some((l, q)) => (l, Some(q)),
            None => (rest, None),
        };
        BackendUrl {
            raw: url,
            scheme,
            userinfo,
            location,
            query,
            fragment,
        }
    }

    /// The URL as given (it may hold a password: never print it).
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// The scheme (`redis`, `memcache`, ...), if the URL starts with a valid `scheme://`.
    pub fn scheme(&self) -> Option<&'a str> {
        self.scheme
    }

    /// The raw credentials between `://` and the last `@` (never print them).
    pub fn userinfo(&self) -> Option<&'a str> {
        self.userinfo
    }

    /// What follows the credentials up to `?` or `#`: hosts, then an optional `/path`.
    pub fn location(&self) -> &'a str {
        self.location
    }

    /// The text after the first `?` of what follows the credentials, up to `#`.
    pub fn query(&self) -> Option<&'a str> {
        self.query
    }

    /// The text after the first `#` of what follows the credentials.
    pub fn fragment(&self) -> Option<&'a str> {
        self.fragment
    }

    /// The percent-decoded user name and password. A userinfo without `:` is a user name; empty
    /// parts are `None`. `kind` names the URL in the error (a part that is not UTF-8 once
    /// decoded).
    pub fn credentials(&self, kind: &str) -> Result<(Option<String>, Option<String>)> {
        let Some(info) = self.userinfo else {
            return Ok((None, None));
        };
        let (user, password) = match info.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (info, None),
        };
        let decode = |part: &str, what: &str| -> Result<Option<String>> {
            match String::from_utf8(percent_decode(part)) {
                Ok(s) if s.is_empty() => Ok(None),
                Ok(s) => Ok(Some(s)),
                Err(_) => Err(invalid(
                    kind,
                    self.raw,
                    format!("the {what} is not UTF-8 once percent-decoded"),
                )),
            }
        };
        let user = decode(user, "user name")?;
        let password = match password {
            Some(p) => decode(p, "password")?,
            None => None,
        };
        Ok((user, password))
    }

    /// The URL with the credentials `user` and `password` (plain text, percent-encoded here)
    /// instead of its own, and `query` instead of its query (nothing if empty). `user` and
    /// `password` are taken as they are: pass the ones from [`Self::credentials`] to keep them.
    pub fn rebuild(&self, user: Option<&str>, password: Option<&str>, query: &str) -> String {
        let mut out = String::with_capacity(self.raw.len() + 16);
        if let Some(s) = self.scheme {
            out.push_str(s);
            out.push_str("://");
        }
        match (user, password) {
            (None, None) => {}
            (user, password) => {
                out.push_str(&percent_encode(user.unwrap_or("")));
                if let Some(p) = password {
                    out.push(':');
                    out.push_str(&percent_encode(p));
                }
                out.push('@');
            }
        }
        out.push_str(self.location);
        if !query.is_empty() {
            out.push('?');
            out.push_str(query);
        }
        if let Some(f) = self.fragment {
            out.push('#');
            out.push_str(f);
        }
        out
    }

    /// The URL with the password, and any query parameter that looks like one, replaced by
    /// `***`: `redis://user:***@host:6379/0`. A userinfo without `:` is hidden whole.
    pub fn redacted(&self) -> String {
        let mut out = String::with_capacity(self.raw.len());
        if let Some(s) = self.scheme {
            out.push_str(s);
            out.push_str("://");
        }
        if let Some(info) = self.userinfo {
            match info.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(MASK);
                }
                None => out.push_str(MASK),
            }
            out.push('@');
        }
        out.push_str(self.location);
        if let Some(q) = self.query {
            out.push('?');
            let pairs: Vec<Cow<'_, str>> = q
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if is_secret_parameter(k) => Cow::Owned(format!("{k}={MASK}")),
                    _ => Cow::Borrowed(pair),
                })
                .collect();
            out.push_str(&pairs.join("&"));
        }
        if let Some(f) = self.fragment {
            out.push('#');
            out.push_str(f);
        }
        out
    }

    /// Every secret of the URL, to scrub from text that may echo it.
    pub fn secrets(&self) -> Secrets {
        let mut s = Secrets::default();
        if let Some(info) = self.userinfo {
            match info.split_once(':') {
                Some((_, password)) => s.add(password),
                None => s.add(info),
            }
        }
        for pair in self.query.unwrap_or("").split('&') {
            if let Some((k, v)) = pair.split_once('=')
                && is_secret_parameter(k)
            {
                s.add(v);
            }
        }
        s
    }
}

/// Whether `s` is a URL scheme (`ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`).
fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Whether a query parameter's value is a credential (`password=`, `pass=`, `token=`, ...).
fn is_secret_parameter(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["pass", "secret", "token"].iter().any(|w| n.contains(w))
}

/// `s` with `%XX` sequences decoded; a `%` not followed by two hex digits stays as it is.
pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| (*c as char).to_digit(16)),
                b.get(i + 2).and_then(|c| (*c as char).to_digit(16)),
            )
        {
            // Two hex digits: at most 0xff.
            out.push(u8::try_from(h * 16 + l).unwrap_or(u8::MAX));
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// `s` with every byte but the unreserved ones (`A-Z a-z 0-9 - . _ ~`) percent-encoded: safe in
/// any part of a URL, credentials included.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `url` with any password replaced by `***`, safe to print, log or put in a report.
///
/// `redis://user:secret@host:6379/0` becomes `redis://user:***@host:6379/0`; whatever the
/// password contains, no byte of it is left (see the [module documentation](self)).
pub fn redact(url: &str) -> String {
    BackendUrl::parse(url).redacted()
}

/// `url` with its password replaced by `password` (plain text, percent-encoded here, so it may
/// contain anything), keeping its user name. `kind` names the URL in errors.
pub fn with_password(kind: &str, url: &str, password: &str) -> Result<String> {
    let parsed = BackendUrl::parse(url);
    if parsed.scheme.is_none() {
        return Err(invalid(kind, url, "expected SCHEME://..."));
    }
    let (user, _) = parsed.credentials(kind)?;
    Ok(parsed.rebuild(user.as_deref(), Some(password), parsed.query.unwrap_or("")))
}

/// Secrets to remove from text that may echo them (messages of client libraries, logs). Each
/// is kept as given, percent-decoded and percent-encoded. Its `Debug` shows only how many there
/// are.
#[derive(Clone, Default)]
pub struct Secrets(Vec<String>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} hidden)", self.0.len())
    }
}

impl Secrets {
    /// The secrets of backend URL `url`: its password (or a userinfo without `:`) and query
    /// parameters that look like credentials.
    pub fn of(url: &str) -> Self {
        BackendUrl::parse(url).secrets()
    }

    /// No secret.
    pub const fn new() -> Self {
        Secrets(Vec::new())
    }

    /// Adds the secrets of `other`.
    pub fn extend(&mut self, other: Secrets) {
        for s in other.0 {
            if !self.0.contains(&s) {
                self.0.push(s);
            }
        }
        self.0.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    /// Adds `secret` in its forms: as given, percent-decoded, percent-encoded.
    pub fn add(&mut self, secret: &str) {
        let decoded = String::from_utf8_lossy(&percent_decode(secret)).into_owned();
        for form in [
            secret.to_owned(),
            percent_encode(secret),
            percent_encode(&decoded),
            decoded,
        ] {
            if form.chars().count() >= MIN_SCRUB_CHARS && !self.0.contains(&form) {
                self.0.push(form);
            }
        }
        // Longest first, so a form containing another is replaced whole.
        self.0.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    /// Whether there is nothing to scrub.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `text` with every secret replaced by `***`.
    pub fn scrub<'t>(&self, text: &'t str) -> Cow<'t, str> {
        if !self.0.iter().any(|s| text.contains(s.as_str())) {
            return Cow::Borrowed(text);
        }
        let mut out = text.to_owned();
        for s in &self.0 {
            out = out.replace(s.as_str(), MASK);
        }
        Cow::Owned(out)
    }

    /// `err` unchanged if neither its message nor its sources contain a secret; otherwise the
    /// same kind and temporariness with the whole text, sources folded in, scrubbed.
    pub fn scrub_error(&self, err: Error) -> Error {
        use std::error::Error as _;
        let mut text = err.message().to_owned();
        let mut cur = err.source();
        while let Some(e) = cur {
            let t = e.to_string();
            if !text.contains(&t) {
                text.push_str(": ");
                text.push_str(&t);
            }
            cur = e.source();
        }
        match self.scrub(&text) {
            Cow::Borrowed(_) => err,
            Cow::Owned(clean) => {
                let new = Error::new(err.kind(), clean);
                if err.is_temporary() {
                    new.temporary()
                } else {
                    new.permanent()
                }
            }
        }
    }
}

/// An [`ErrorKind::ConfigInvalid`] error about `url` (redacted), for example
/// `invalid Redis URL "redis://u:***@h": ttl="soon" must be a duration from 1s to 365d`.
pub fn invalid(kind: &str, url: &str, why: impl fmt::Display) -> Error {
    let parsed = BackendUrl::parse(url);
    let why = why.to_string();
    Error::new(
        ErrorKind::ConfigInvalid,
        format!(
            "invalid {kind} URL {:?}: {}",
            parsed.redacted(),
            parsed.secrets().scrub(&why)
        ),
    )
}

/// `d` in the largest unit that states it exactly (`30d`, `1h`, `1500ms`), as
/// `humantime::parse_duration` reads it.
pub fn format_duration(d: Duration) -> String {
    const UNITS: [(u128, &str); 5] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
        (1, "ms"),
    ];
    let ms = d.as_millis();
    if d.subsec_nanos().is_multiple_of(1_000_000) && ms > 0 {
        for (unit, name) in UNITS {
            if ms.is_multiple_of(unit) {
                return format!("{}{name}", ms / unit);
            }
        }
    }
    humantime::format_duration(d).to_string()
}

/// Checks that `value` of setting `name` lies in `min..=max`; the error names the setting and
/// the range.
pub fn check_duration(name: &str, value: Duration, min: Duration, max: Duration) -> Result<()> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::ConfigInvalid,
        format!(
            "{name} is {}; it must be from {} to {}",
            format_duration(value),
            format_duration(min),
            format_duration(max)
        ),
    ))
}

/// Checks that count `value` of setting `name` lies in `min..=max`; the error names the setting
/// and the range.
pub fn check_count(name: &str, value: usize, min: usize, max: usize) -> Result<()> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::ConfigInvalid,
        format!("{name} is {value}; it must be from {min} to {max}"),
    ))
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
    /// Splits `url` into its parts and its parameters. `kind` names the URL in errors
    /// (`"Redis"`, `"Memcached"`).
    pub fn parse(kind: &'a str, url: &'a str) -> (BackendUrl<'a>, Self) {
        let parsed = BackendUrl::parse(url);
        let pairs = parsed
            .query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .collect();
        (parsed, UrlQuery { kind, url, pairs })
    }

    /// An error about this URL (see [`invalid`]).
    pub fn invalid(&self, why: impl fmt::Display) -> Error {
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

    /// Parameter `name` as a duration (`500ms`, `5s`, `1h`) from `min` to `max`.
    pub fn duration_in(
        &mut self,
        name: &str,
        min: Duration,
        max: Duration,
    ) -> Result<Option<Duration>> {
        let Some(v) = self.take(name) else {
            return Ok(None);
        };
        match humantime::parse_duration(v) {
            Ok(d) if (min..=max).contains(&d) => Ok(Some(d)),
            _ => Err(self.invalid(format!(
                "{name}={v:?} must be a duration from {} to {} (for example 500ms, 5s, 1h)",
                format_duration(min),
                format_duration(max)
            ))),
        }
    }

    /// Parameter `name` as a whole number from `min` to `max`.
    pub fn count_in(&mut self, name: &str, min: usize, max: usize) -> Result<Option<usize>> {
        let Some(v) = self.take(name) else {
            return Ok(None);
        };
        match v.parse::<usize>() {
            Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(self.invalid(format!(
                "{name}={v:?} must be a whole number from {min} to {max}"
            ))),
        }
    }

    /// Parameter `name` as a file path, percent-decoded (an `@` must be written `%40`).
    pub fn path(&mut self, name: &str) -> Result<Option<PathBuf>> {
        let Some(v) = self.take(name) else {
            return Ok(None);
        };
        match String::from_utf8(percent_decode(v)) {
            Ok(p) if !p.is_empty() => Ok(Some(PathBuf::from(p))),
            _ => Err(self.invalid(format!("{name}={v:?} is not a file path"))),
        }
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

    /// Passwords no delimiter can be trusted to end.
    const HOSTILE: [&str; 11] = [
        "p/ss",
        "p?ss",
        "p#ss",
        "p@ss",
        "p:ss",
        "%41%42",
        "a/b?c#d@e:f",
        "@@@",
        "///",
        "pässwörd€",
        "x@h:1?ttl=1h#y",
    ];

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://user:s3cret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact("redis://:s3cret@host"), "redis://:***@host");
        assert_eq!(redact("redis://s3cret@host"), "redis://***@host");
        assert_eq!(redact("redis://host:1/0?ttl=1h"), "redis://host:1/0?ttl=1h");
        assert_eq!(
            redact("redis+cluster://u:p@h1:1,h2:2?ttl=5"),
            "redis+cluster://u:***@h1:1,h2:2?ttl=5"
        );
        assert_eq!(redact("sled://.tcache"), "sled://.tcache");
        assert_eq!(redact("moka://"), "moka://");
        assert_eq!(redact("a:b@c"), "a:***@c");
        assert_eq!(
            redact("redis+unix:///s.sock?db=1&pass=s3cret"),
            "redis+unix:///s.sock?db=1&pass=***"
        );
        assert_eq!(
            redact("rediss://h:1?tls_ca=/ca%40x.pem#insecure"),
            "rediss://h:1?tls_ca=/ca%40x.pem#insecure"
        );
    }

    #[test]
    fn no_byte_of_a_hostile_password_survives_redaction() {
        let long = "Z".repeat(5000);
        for pw in HOSTILE.iter().copied().chain([long.as_str()]) {
            for url in [
                format!("redis://:{pw}@127.0.0.1:6379/0?ttl=1h"),
                format!("redis://user:{pw}@127.0.0.1:6379"),
                format!("rediss://user:{pw}@h:1#insecure"),
                format!("redis+cluster://u:{pw}@h1:1,h2:2/"),
                format!("memcache://:{pw}@h:1"),
                format!("ftp://:{pw}@h"),
                format!("redis//:{pw}@h"),
                format!(":{pw}@"),
                format!("redis://{pw}@h:1"),
            ] {
                let r = redact(&url);
                assert!(!r.contains(pw), "{url} -> {r}");
                assert!(!r.contains(&percent_encode(pw)), "{url} -> {r}");
                assert!(r.contains("***"), "{url} -> {r}");
                let e = invalid("Redis", &url, "bad").to_string();
                assert!(!e.contains(pw), "{e}");
            }
        }
    }

    #[test]
    fn credentials_are_decoded_and_rebuilt_encoded() {
        for pw in HOSTILE {
            let url = format!("redis://us%40er:{pw}@h:1/2?protocol=resp3#insecure");
            let p = BackendUrl::parse(&url);
            assert_eq!(p.scheme(), Some("redis"));
            assert_eq!(p.location(), "h:1/2");
            assert_eq!(p.query(), Some("protocol=resp3"));
            assert_eq!(p.fragment(), Some("insecure"));
            let (user, password) = p.credentials("Redis").unwrap();
            assert_eq!(user.as_deref(), Some("us@er"));
            let want = String::from_utf8(percent_decode(pw)).unwrap();
            assert_eq!(password.as_deref(), Some(want.as_str()));
            let rebuilt = p.rebuild(user.as_deref(), password.as_deref(), "x=1");
            let again = BackendUrl::parse(&rebuilt);
            assert_eq!(again.credentials("Redis").unwrap(), (user, password));
            assert_eq!(
                (again.location(), again.query(), again.fragment()),
                ("h:1/2", Some("x=1"), Some("insecure"))
            );
        }
        let p = BackendUrl::parse("redis://h:1");
        assert_eq!(p.credentials("Redis").unwrap(), (None, None));
        assert_eq!(p.rebuild(None, None, ""), "redis://h:1");
        assert!(
            BackendUrl::parse("redis://:%ff@h")
                .credentials("Redis")
                .is_err()
        );
    }

    #[test]
    fn a_password_from_elsewhere_needs_no_encoding() {
        for pw in HOSTILE {
            let url = with_password("backend", "redis://admin:old@h:1/0?ttl=1h", pw).unwrap();
            assert!(!url.contains("old"), "{url}");
            let (user, password) = BackendUrl::parse(&url).credentials("Redis").unwrap();
            assert_eq!(
                (user.as_deref(), password.as_deref()),
                (Some("admin"), Some(pw))
            );
            assert!(!redact(&url).contains(pw));
        }
        assert!(with_password("backend", "nonsense", "pw").is_err());
    }

    #[test]
    fn secrets_are_scrubbed_in_every_form() {
        let s = Secrets::of("redis://u:p%2Fss%40word@h?token=tok123");
        for leak in ["p%2Fss%40word", "p/ss@word", "tok123"] {
            let text = format!("error near {leak}!");
            assert_eq!(s.scrub(&text), "error near ***!");
        }
        assert!(matches!(s.scrub("harmless"), Cow::Borrowed(_)));
        assert_eq!(format!("{s:?}"), "Secrets(4 hidden)");
        let err = Error::new(ErrorKind::Unavailable, "auth p/ss@word failed");
        let clean = s.scrub_error(err);
        assert_eq!(clean.kind(), ErrorKind::Unavailable);
        assert!(clean.is_temporary());
        assert_eq!(clean.message(), "auth *** failed");
        assert!(Secrets::of("redis://h:1").is_empty());
        assert!(
            Secrets::of("redis://:ab@h:1").is_empty(),
            "too short to scrub"
        );
    }

    #[test]
    fn durations_print_as_they_parse() {
        for (d, s) in [
            (Duration::from_millis(1), "1ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(30 * 86_400), "30d"),
            (Duration::from_secs(90), "90s"),
        ] {
            assert_eq!(format_duration(d), s);
            assert_eq!(humantime::parse_duration(s).unwrap(), d);
        }
        let e = check_duration(
            "ttl",
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(3),
        )
        .unwrap_err();
        assert_eq!(e.message(), "ttl is 1s; it must be from 2s to 3s");
        assert!(check_count("n", 0, 1, 5).is_err());
        assert!(check_count("n", 5, 1, 5).is_ok());
    }

    #[test]
    fn query_parameters_are_taken_one_by_one_within_ranges() {
        let url = "redis://u:se?cr@et@h:1?ttl=1h&batch_keys=7&protocol=resp3&ttl=2h&ca=/a%40b";
        let (parts, mut q) = UrlQuery::parse("Redis", url);
        assert_eq!(parts.location(), "h:1");
        let day = Duration::from_secs(86_400);
        assert_eq!(
            q.duration_in("ttl", Duration::from_secs(1), day).unwrap(),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(q.count_in("batch_keys", 1, 10).unwrap(), Some(7));
        assert_eq!(q.count_in("absent", 1, 10).unwrap(), None);
        assert_eq!(q.path("ca").unwrap(), Some(PathBuf::from("/a@b")));
        assert_eq!(q.rest(), "protocol=resp3");
        let e = q.finish().unwrap_err().to_string();
        assert!(e.contains("unknown parameter \"protocol\""), "{e}");
        assert!(!e.contains("se?cr@et"), "{e}");
        for (url, want) in [
            (
                "m://h?io_timeout=0s",
                "io_timeout=\"0s\" must be a duration from 1ms to 1h",
            ),
            (
                "m://h?io_timeout=100000000000s",
                "io_timeout=\"100000000000s\" must be a duration from 1ms to 1h",
            ),
            (
                "m://h?io_timeout=99999999999999999999999s",
                "must be a duration from 1ms to 1h",
            ),
            (
                "m://h?batch_keys=-1",
                "batch_keys=\"-1\" must be a whole number from 1 to 1000",
            ),
            (
                "m://h?batch_keys=1001",
                "batch_keys=\"1001\" must be a whole number from 1 to 1000",
            ),
        ] {
            let (_, mut q) = UrlQuery::parse("Memcached", url);
            let e = q
                .duration_in(
                    "io_timeout",
                    Duration::from_millis(1),
                    Duration::from_secs(3600),
                )
                .and_then(|_| q.count_in("batch_keys", 1, 1000))
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
            assert!(e.to_string().starts_with("invalid Memcached URL"), "{e}");
            assert!(e.to_string().contains(want), "{e}");
        }
    }
}
