//! The real binary (`CARGO_BIN_EXE_tokengate`) as a child process: the test kit's free
//! ports, kill-on-drop guard, readiness polling and `/metrics` scraping.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use testkit::process::{free_port, scrape, wait_ready, wait_status, Child};

/// A directory of this test's own (by `name` and the test process) for the files the
/// binary reads.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tokengate-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    dir
}

/// The binary serving `config`, its stdout (the logs) going to `stdout`; its stderr is
/// the test's, where a start-up error shows. `RUST_LOG` is removed so that the config's
/// `log.filter` applies.
pub fn start_tokengate(config: &Path, stdout: Stdio) -> Child {
    Child(
        Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .stdout(stdout)
            .spawn()
            .expect("start tokengate"),
    )
}
