//! "Log once per outage": a problem that repeats on every retry is logged
//! the first time (and again when it changes), then only at debug level,
//! until the caller clears it on recovery.

use std::sync::Mutex;

use crate::connect::problem::Problem;

/// Logs a repeating problem once (and again when it changes), at error level
/// when a setting must change, warn when a server is merely unreachable.
#[derive(Debug, Default)]
pub struct OnceLog {
    last: Mutex<Option<String>>,
}

impl OnceLog {
    /// Logs `problem` unless it is the one logged last; true when it logged.
    pub fn report(&self, what: &str, problem: &Problem) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_deref() == Some(problem.message.as_str()) {
            tracing::debug!(error = %problem, "still cannot {what}");
            return false;
        }
        *last = Some(problem.message.clone());
        if problem.misconfigured {
            tracing::error!(error = %problem, "cannot {what}");
        } else {
            tracing::warn!(error = %problem, "cannot {what} yet");
        }
        true
    }

    /// Forgets the last problem, so that a recurrence is logged again.
    pub fn clear(&self) {
        self.recovered();
    }

    /// Forgets the last problem; true when there was one (an outage ended).
    pub fn recovered(&self) -> bool {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_problem_is_reported_once_per_outage() {
        let log = OnceLog::default();
        let problem = Problem {
            misconfigured: true,
            message: "x".into(),
        };
        assert!(log.report("connect", &problem));
        assert!(!log.report("connect", &problem));
        let other = Problem::transient("y");
        assert!(log.report("connect", &other));
        assert!(log.recovered());
        assert!(!log.recovered());
        assert!(log.report("connect", &problem));
    }
}
