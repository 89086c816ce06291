//! The real binary (`CARGO_BIN_EXE_tokengate`) as a child process: the test kit's free
//! ports, kill-on-drop guard, readiness polling and `/metrics` scraping.

pub use testkit::process::{free_port, scrape, wait_ready, Child, Launch};
