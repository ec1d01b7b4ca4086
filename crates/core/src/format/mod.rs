//! The bytes template-cache puts in a cache: keys, template records, and the bounds-checked
//! reader every decoder uses. Index encodings live with their layouts in [`crate::index`].
//! Byte-level specification: `docs/format.md`.

pub(crate) mod bytes;
pub mod key;
pub mod record;
