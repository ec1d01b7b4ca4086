//! The template-cache service behind `tcache serve`.
