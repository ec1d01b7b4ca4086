//! Backend URL helpers shared by backends and the CLI.

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

#[cfg(test)]
mod tests {
    use super::redact;

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
}
