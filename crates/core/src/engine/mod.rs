//! The two engines and what they share.
//!
//! [`warm`] writes new and changed templates; [`check`] compares tree and cache both ways and
//! [`resolve`] repairs what it found. Both run on `pipeline` (retries, chunked backend calls,
//! the mark–write–confirm write protocol) under [`throttle`] limits, and return [`report`]s.
//! [`schedule`] runs checks periodically inside time windows. Every write happens under the
//! namespace write [`lease`].

pub mod check;
mod drops;
pub mod lease;
mod lookups;
pub(crate) mod phases;
pub(crate) mod pipeline;
mod plan;
pub mod report;
pub mod resolve;
pub mod schedule;
pub mod throttle;
pub mod warm;
