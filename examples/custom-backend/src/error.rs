//! `object_store` errors as template-cache errors: a kind, and whether retrying may help.

use std::io;

use template_cache_core::{Error, ErrorKind};

/// Converts an `object_store` error met while doing `what` (which names the key).
///
/// - `NotFound` is [`ErrorKind::NotFound`] (the callers turn it into "absent" where the contract
///   says so); `InvalidPath` and unknown configuration keys are [`ErrorKind::ConfigInvalid`];
///   `NotSupported`/`NotImplemented` are [`ErrorKind::Unsupported`]; `PermissionDenied` and
///   `Unauthenticated` are [`ErrorKind::PermissionDenied`]. All permanent.
/// - `AlreadyExists`, `Precondition` and `NotModified` only come from conditional requests, which
///   this crate handles itself; met anywhere else they are [`ErrorKind::Unexpected`].
/// - Everything else (`Generic`, and variants added later) is classified by the first
///   [`io::Error`] in its source chain: timeouts, refused or reset connections and interrupted
///   calls are [`ErrorKind::Unavailable`] and temporary; a permission error is
///   [`ErrorKind::PermissionDenied`]; any other I/O error (disk full, read-only file system, name
///   too long) is [`ErrorKind::Io`] and permanent. Without an I/O error in the chain, the error
///   came from a cloud store's HTTP client, which has already retried 5xx answers, 429s and
///   timeouts with backoff before giving up: the outage outlasted that, and it is
///   [`ErrorKind::Unavailable`], temporary, so the engines retry it with their own policy.
///
/// Messages are never parsed. They name the key and the object path, never a credential
/// (`object_store` does not put credentials in its errors).
pub(crate) fn convert(err: object_store::Error, what: &str) -> Error {
    use object_store::Error as E;
    let (kind, temporary) = match &err {
        E::NotFound { .. } => (ErrorKind::NotFound, false),
        E::InvalidPath { .. } | E::UnknownConfigurationKey { .. } => {
            (ErrorKind::ConfigInvalid, false)
        }
        E::NotSupported { .. } | E::NotImplemented { .. } => (ErrorKind::Unsupported, false),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            (ErrorKind::PermissionDenied, false)
        }
        E::AlreadyExists { .. } | E::Precondition { .. } | E::NotModified { .. } => {
            (ErrorKind::Unexpected, false)
        }
        _ => classify_chain(&err),
    };
    let e = Error::new(kind, format!("{what}: {err}")).with_source(err);
    if temporary {
        e.temporary()
    } else {
        e.permanent()
    }
}

/// The kind and temporariness of an error known only by its source chain.
fn classify_chain(err: &(dyn std::error::Error + 'static)) -> (ErrorKind, bool) {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return classify_io(io.kind());
        }
        cur = e.source();
    }
    (ErrorKind::Unavailable, true)
}

fn classify_io(kind: io::ErrorKind) -> (ErrorKind, bool) {
    use io::ErrorKind as K;
    match kind {
        K::TimedOut
        | K::Interrupted
        | K::WouldBlock
        | K::ConnectionRefused
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::NotConnected
        | K::BrokenPipe
        | K::HostUnreachable
        | K::NetworkUnreachable
        | K::NetworkDown
        | K::ResourceBusy => (ErrorKind::Unavailable, true),
        K::PermissionDenied => (ErrorKind::PermissionDenied, false),
        _ => (ErrorKind::Io, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(source: impl std::error::Error + Send + Sync + 'static) -> object_store::Error {
        object_store::Error::Generic {
            store: "test",
            source: Box::new(source),
        }
    }

    #[test]
    fn kinds_and_temporariness() {
        let cases: Vec<(object_store::Error, ErrorKind, bool)> = vec![
            (
                object_store::Error::NotFound {
                    path: "p".into(),
                    source: "gone".into(),
                },
                ErrorKind::NotFound,
                false,
            ),
            (
                object_store::Error::PermissionDenied {
                    path: "p".into(),
                    source: "403".into(),
                },
                ErrorKind::PermissionDenied,
                false,
            ),
            (
                object_store::Error::NotImplemented {
                    operation: "put_opts with PutMode::Update".into(),
                    implementer: "LocalFileSystem".into(),
                },
                ErrorKind::Unsupported,
                false,
            ),
            (
                generic(io::Error::from(io::ErrorKind::ConnectionRefused)),
                ErrorKind::Unavailable,
                true,
            ),
            (
                generic(io::Error::from(io::ErrorKind::TimedOut)),
                ErrorKind::Unavailable,
                true,
            ),
            (
                generic(io::Error::from(io::ErrorKind::StorageFull)),
                ErrorKind::Io,
                false,
            ),
            (
                generic(io::Error::from(io::ErrorKind::PermissionDenied)),
                ErrorKind::PermissionDenied,
                false,
            ),
            // An HTTP failure after object_store's own retries: no io::Error in the chain.
            (generic(std::fmt::Error), ErrorKind::Unavailable, true),
        ];
        for (err, kind, temporary) in cases {
            let text = err.to_string();
            let e = convert(err, "reading key tpl:x");
            assert_eq!((e.kind(), e.is_temporary()), (kind, temporary), "{text}");
            assert!(e.message().starts_with("reading key tpl:x: "), "{e}");
        }
    }

    #[test]
    fn io_errors_are_found_deep_in_the_chain() {
        #[derive(Debug)]
        struct Wrapper(io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("request failed")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = convert(
            generic(Wrapper(io::Error::from(io::ErrorKind::ConnectionReset))),
            "x",
        );
        assert_eq!((e.kind(), e.is_temporary()), (ErrorKind::Unavailable, true));
    }
}
