//! The service turns transparent huge pages off for itself (src/main.rs:
//! with them, mimalloc's arenas were faulted in 2 MiB at a time and a drain
//! peaked 30-45 MiB higher), unless the operator chose otherwise with
//! mimalloc's own `MIMALLOC_ALLOW_THP`. The kernel shows the process's
//! choice in /proc/PID/status (`THP_enabled`).

use std::time::Duration;

use crate::harness::env::TestEnv;
use crate::harness::service::Service;

/// `THP_enabled` of a running process: 1 allowed, 0 turned off.
fn thp_enabled(service: &Service) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", service.child.id()))
        .expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .unwrap_or_else(|| panic!("no THP_enabled line (kernel older than 5.0?): {status}"))
        .trim()
        .parse()
        .expect("THP_enabled is a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_turns_transparent_huge_pages_off_unless_told_otherwise() {
    let env = TestEnv::new("thp").await;
    env.migrate();

    // The defaults, whatever this test's own environment holds.
    let default = env.spawn_wrapped("default", &[], &["env", "-u", "MIMALLOC_ALLOW_THP"]);
    default.wait_ready(Duration::from_secs(30));
    assert_eq!(thp_enabled(&default), 0, "log: {}", default.log());

    // The operator's choice stands.
    let allowed = env.spawn("allowed", &[("MIMALLOC_ALLOW_THP", "1")]);
    allowed.wait_ready(Duration::from_secs(30));
    assert_eq!(thp_enabled(&allowed), 1, "log: {}", allowed.log());
}
