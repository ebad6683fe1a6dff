//! Fault injection for the fault tests, compiled only with the
//! `fault-injection` feature: `SWISPER_INGEST_CRASH_AT=<point>` makes the
//! process abort, an actor panic once, or the writer hang, at that point.

use std::sync::atomic::{AtomicBool, Ordering};

fn armed(point: &str) -> bool {
    std::env::var("SWISPER_INGEST_CRASH_AT").as_deref() == Ok(point)
}

/// Aborts the whole process (as kill -9 would) at `point`.
pub fn abort_at(point: &str) {
    if armed(point) {
        tracing::error!(point, "fault injection: aborting");
        std::process::abort();
    }
}

/// Panics the calling actor the first time `point` is reached.
pub fn panic_once_at(point: &str) {
    static FIRED: AtomicBool = AtomicBool::new(false);
    if armed(point) && !FIRED.swap(true, Ordering::Relaxed) {
        panic!("fault injection: panic at {point}");
    }
}

/// Never returns once `point` is reached: a stalled pipeline whose
/// dependencies are fine, for the liveness test.
pub async fn hang_at(point: &str) {
    if armed(point) {
        tracing::error!(point, "fault injection: hanging");
        std::future::pending::<()>().await;
    }
}
