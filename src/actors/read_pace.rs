//! When a consumer reads new entries outside a backlog. A consumer awaits
//! its page's commit before it reads again, so with one reader the page
//! after a commit was read and parsed only once the commit ended, and the
//! next transaction started that much later (and, taking what arrived
//! meanwhile, lasted longer). With two readers reading at will, the one
//! not waiting on a commit took the first few entries that arrived into a
//! transaction of their own.
//!
//! So the consumers take turns: one reads new entries at a time, and while
//! the first writer commits a page the next one is read when the commit is
//! about a read-and-parse from its end (both moving averages of the last
//! ones). That page holds what arrived during the commit and is parsed when
//! the commit ends; the writer starts it at once. During a backlog
//! ([`super::backlog`]) the consumers read at will.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The longest a consumer waits before it looks again (a commit that ends
/// wakes it sooner): bounds how late a stop is seen.
const MAX_WAIT: Duration = Duration::from_millis(20);

/// How soon a consumer looks again when another holds the turn.
const TURN_TAKEN_WAIT: Duration = Duration::from_millis(1);

/// Weight of the newest duration in the moving averages: 1/8.
const AVERAGE_SHIFT: u32 = 3;

/// Shared by a replica's consumers and its first writer (the one short
/// pages go to).
#[derive(Clone, Debug)]
pub struct ReadPace(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    epoch: Instant,
    /// One consumer reads new entries at a time.
    turn_taken: AtomicBool,
    /// When the first writer's transaction in flight began (ns since
    /// `epoch`, plus one); 0 while none is.
    writing_since: AtomicU64,
    /// Moving averages, ns: a transaction of the first writer (commit and
    /// acks); a read and the parse of its page.
    write_ns: AtomicU64,
    read_ns: AtomicU64,
    write_ended: Notify,
}

/// What a consumer may do now.
#[derive(Debug)]
pub enum Turn {
    Read(ReadTurn),
    /// Look again after this long (or once the writer's commit ends: see
    /// [`ReadPace::wait`]).
    Wait(Duration),
}

impl Default for ReadPace {
    fn default() -> Self {
        Self(Arc::new(Shared {
            epoch: Instant::now(),
            turn_taken: AtomicBool::new(false),
            writing_since: AtomicU64::new(0),
            write_ns: AtomicU64::new(0),
            read_ns: AtomicU64::new(0),
            write_ended: Notify::new(),
        }))
    }
}

impl ReadPace {
    /// Whether a consumer may read new entries at `now`: once the commit in
    /// flight is a read from its end (at once when none is), and while no
    /// other consumer holds the turn.
    pub fn turn(&self, now: Instant) -> Turn {
        if let Some(due) = self.read_ahead_at() {
            if now < due {
                return Turn::Wait((due - now).min(MAX_WAIT));
            }
        }
        let taken =
            self.0
                .turn_taken
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire);
        if taken.is_err() {
            return Turn::Wait(TURN_TAKEN_WAIT);
        }
        Turn::Read(ReadTurn {
            pace: self.clone(),
            since: now,
        })
    }

    /// Waits `wait` at most; less if the first writer's commit ends.
    pub async fn wait(&self, wait: Duration) {
        tokio::select! {
            () = self.0.write_ended.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }

    fn read_ahead_at(&self) -> Option<Instant> {
        let since = self
            .0
            .writing_since
            .load(Ordering::Acquire)
            .checked_sub(1)?;
        let write = self.0.write_ns.load(Ordering::Relaxed);
        let read = self.0.read_ns.load(Ordering::Relaxed);
        Some(self.0.epoch + Duration::from_nanos(since + write.saturating_sub(read)))
    }

    /// The first writer began a transaction.
    pub fn write_started(&self, now: Instant) {
        let since = self.nanos(now) + 1;
        self.0.writing_since.store(since, Ordering::Release);
    }

    /// The first writer's transaction ended (committed and acked).
    pub fn write_ended(&self, now: Instant) {
        if let Some(since) = self
            .0
            .writing_since
            .swap(0, Ordering::AcqRel)
            .checked_sub(1)
        {
            average_in(&self.0.write_ns, self.nanos(now).saturating_sub(since));
        }
        self.0.write_ended.notify_waiters();
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.0.epoch).as_nanos() as u64
    }
}

/// The turn to read new entries; given back when dropped (by the writer
/// the page went to, once it has it).
#[derive(Debug)]
pub struct ReadTurn {
    pace: ReadPace,
    since: Instant,
}

impl ReadTurn {
    /// The page read with this turn is parsed: its time counts in the
    /// average a read ahead leaves for.
    pub fn parsed(self, now: Instant) -> Self {
        let took = now.saturating_duration_since(self.since).as_nanos() as u64;
        average_in(&self.pace.0.read_ns, took);
        self
    }
}

impl Drop for ReadTurn {
    fn drop(&mut self) {
        self.pace.0.turn_taken.store(false, Ordering::Release);
    }
}

/// Moves the average an eighth of the way to `sample` (the first sample
/// sets it). Two updates at once may lose one: an average, not a count.
fn average_in(average: &AtomicU64, sample: u64) {
    let old = average.load(Ordering::Relaxed);
    let new = if old == 0 {
        sample
    } else {
        (old - (old >> AVERAGE_SHIFT)) + (sample >> AVERAGE_SHIFT)
    };
    average.store(new.max(1), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn read_now(pace: &ReadPace, now: Instant) -> ReadTurn {
        match pace.turn(now) {
            Turn::Read(turn) => turn,
            Turn::Wait(wait) => panic!("told to wait {wait:?}"),
        }
    }

    fn waits(pace: &ReadPace, now: Instant) -> Duration {
        match pace.turn(now) {
            Turn::Read(_) => panic!("allowed to read"),
            Turn::Wait(wait) => wait,
        }
    }

    #[test]
    fn one_consumer_reads_at_a_time_and_the_turn_comes_back_when_dropped() {
        let pace = ReadPace::default();
        let now = Instant::now();
        let turn = read_now(&pace, now);
        assert_eq!(waits(&pace, now), TURN_TAKEN_WAIT);
        drop(turn);
        read_now(&pace, now);
    }

    #[test]
    fn while_a_commit_is_in_flight_the_next_read_waits_until_a_read_before_its_expected_end() {
        let pace = ReadPace::default();
        let t0 = Instant::now();
        // A read and parse took 4 ms; a transaction 20 ms.
        drop(read_now(&pace, t0).parsed(t0 + ms(4)));
        pace.write_started(t0 + ms(4));
        pace.write_ended(t0 + ms(24));
        // The next transaction starts at 30 ms: read at 30 + 20 - 4 = 46 ms.
        pace.write_started(t0 + ms(30));
        assert_eq!(waits(&pace, t0 + ms(31)), ms(15));
        assert_eq!(waits(&pace, t0 + ms(45)), ms(1));
        drop(read_now(&pace, t0 + ms(46)));
        // Once it ends, at once.
        pace.write_ended(t0 + ms(40));
        read_now(&pace, t0 + ms(40));
    }

    #[test]
    fn a_long_commit_is_waited_on_in_bounded_steps() {
        let pace = ReadPace::default();
        let t0 = Instant::now();
        pace.write_started(t0);
        pace.write_ended(t0 + ms(1000));
        pace.write_started(t0 + ms(1000));
        assert_eq!(waits(&pace, t0 + ms(1000)), MAX_WAIT);
    }

    #[test]
    fn the_averages_move_an_eighth_of_the_way_to_each_new_duration() {
        let average = AtomicU64::new(0);
        average_in(&average, 8_000);
        assert_eq!(average.load(Ordering::Relaxed), 8_000);
        average_in(&average, 16_000);
        assert_eq!(average.load(Ordering::Relaxed), 9_000);
    }

    #[tokio::test]
    async fn a_waiting_consumer_wakes_when_the_commit_ends() {
        let pace = ReadPace::default();
        pace.write_started(Instant::now());
        let waiting = tokio::spawn({
            let pace = pace.clone();
            async move { pace.wait(Duration::from_secs(60)).await }
        });
        tokio::time::sleep(ms(10)).await;
        pace.write_ended(Instant::now());
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("woken by the end of the commit")
            .expect("no panic");
    }
}
