//! The one error type shared by every backend and both engines.

use std::fmt;

/// What went wrong, independent of the backend that reported it.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A file, directory, key or template does not exist.
    NotFound,
    /// The backend cannot do what was asked (see [`crate::Capabilities`]).
    Unsupported,
    /// A setting, URL or argument is invalid.
    ConfigInvalid,
    /// The backend could not be reached or did not answer in time.
    Unavailable,
    /// The backend asked us to slow down.
    RateLimited,
    /// A value exceeds the backend's or the configured maximum size.
    ValueTooLarge,
    /// Stored bytes do not decode, or their content does not match its hash.
    Corrupt,
    /// A local file or directory could not be read or written.
    Io,
    /// A safety threshold refused a resolution; nothing was changed.
    Refused,
    /// Authentication or authorisation was rejected by the backend.
    PermissionDenied,
    /// Another writer holds the namespace (its write lease), or this writer lost it.
    Conflict,
    /// Anything else the backend reported.
    Unexpected,
}

impl ErrorKind {
    /// A short, stable, lowercase name for the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::ConfigInvalid => "invalid configuration",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::RateLimited => "rate limited",
            ErrorKind::ValueTooLarge => "value too large",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Io => "i/o error",
            ErrorKind::Refused => "refused",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::Conflict => "namespace busy",
            ErrorKind::Unexpected => "unexpected",
        }
    }

    /// Whether errors of this kind are temporary unless said otherwise.
    fn default_temporary(self) -> bool {
        matches!(self, ErrorKind::Unavailable | ErrorKind::RateLimited)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from a backend or an engine: a kind, whether retrying may help, a message that names
/// the file, key or setting involved, and an optional source.
///
/// Messages never contain secrets: backends redact passwords before building an error.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    temporary: bool,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error; temporary if `kind` is usually transient ([`ErrorKind::Unavailable`],
    /// [`ErrorKind::RateLimited`]).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            temporary: kind.default_temporary(),
            message: message.into(),
            source: None,
        }
    }

    /// Marks the error as temporary: retrying the same operation may succeed.
    pub fn temporary(mut self) -> Self {
        self.temporary = true;
        self
    }

    /// Marks the error as permanent: retrying will not help.
    pub fn permanent(mut self) -> Self {
        self.temporary = false;
        self
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Prefixes the message with context, for example the template name.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether retrying the same operation may succeed.
    pub fn is_temporary(&self) -> bool {
        self.temporary
    }

    /// The message, without the kind or the source.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// A one-line description including the source chain, for reports.
    pub fn to_report_string(&self) -> String {
        self.with_sources(self.to_string())
    }

    /// `s` followed by each source's text not already in it.
    fn with_sources(&self, mut s: String) -> String {
        use std::error::Error as _;
        let mut cur = self.source();
        while let Some(e) = cur {
            let text = e.to_string();
            if !s.contains(&text) {
                s.push_str(": ");
                s.push_str(&text);
            }
            cur = e.source();
        }
        s
    }

    /// An I/O error on a local path, classified by its [`std::io::ErrorKind`].
    pub fn io(path: &std::path::Path, err: std::io::Error) -> Self {
        let kind = match err.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            _ => ErrorKind::Io,
        };
        Error::new(kind, format!("{}: {err}", path.display()))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl Clone for Error {
    /// Clones kind, flag and message; the source is folded into the message.
    fn clone(&self) -> Self {
        Error {
            kind: self.kind,
            temporary: self.temporary,
            message: self.with_sources(self.message.clone()),
            source: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_default_to_the_right_temporariness() {
        assert!(Error::new(ErrorKind::Unavailable, "x").is_temporary());
        assert!(!Error::new(ErrorKind::Corrupt, "x").is_temporary());
        assert!(
            !Error::new(ErrorKind::Unavailable, "x")
                .permanent()
                .is_temporary()
        );
    }

    #[test]
    fn report_string_includes_sources_once() {
        let io = std::io::Error::other("disk on fire");
        let e = Error::new(ErrorKind::Io, "reading a.html").with_source(io);
        assert_eq!(
            e.to_report_string(),
            "reading a.html (i/o error): disk on fire"
        );
        assert_eq!(e.clone().message(), "reading a.html: disk on fire");
    }
}
