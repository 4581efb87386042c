//! Shared core of topolvm-rs.
