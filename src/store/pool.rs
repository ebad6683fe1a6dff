//! The connection pools' type, and the replica's pools;
//! [`crate::connect::postgres::PgTarget::pool`] builds each.

use crate::config::ConfigError;
use crate::connect::postgres::PgTarget;

pub type Pool = deadpool_postgres::Pool;

/// A replica's Postgres connections: a pool for each writer, and one
/// connection for the monitor's readiness probe and heartbeat gauge.
///
/// A connection's I/O runs on the thread that opened it (tokio-postgres'
/// driver task is spawned there), and pools open connections lazily, from
/// whoever asks first. A writer's pool is asked by that writer alone, on its
/// own thread, so its round trips stay there; a pool shared with the monitor
/// had its first connection opened by the monitor on the consumers' thread,
/// and every round trip of the writer's went through that thread and back.
pub struct Pools {
    writers: Vec<Pool>,
    pub monitor: Pool,
}

impl Pools {
    /// `size` connections at most for the writers, shared out among
    /// `writers` (one each at least); one transaction at a time per writer
    /// keeps one of them open in practice.
    pub fn new(target: &PgTarget, size: u32, writers: u32) -> Result<Self, ConfigError> {
        let writers = writers.max(1);
        let each = (size / writers).max(1);
        Ok(Self {
            writers: (0..writers)
                .map(|_| target.pool(each))
                .collect::<Result<_, _>>()?,
            monitor: target.pool(1)?,
        })
    }

    /// The pool of writer `index`.
    pub fn writer(&self, index: usize) -> Pool {
        self.writers[index % self.writers.len()].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseSettings;

    fn target() -> PgTarget {
        DatabaseSettings {
            database_url: "postgres://u@db/x?sslmode=disable".parse().unwrap(),
            password_file: None,
            db_pool_size: 4,
            create_projects: crate::config::CreateProjects::Auto,
            toast_compression: crate::config::ToastCompression::Lz4,
            price_refresh_secs: 30,
        }
        .target()
        .unwrap()
    }

    fn sizes(pools: &Pools) -> (Vec<usize>, usize) {
        let writers = pools.writers.iter().map(|p| p.status().max_size).collect();
        (writers, pools.monitor.status().max_size)
    }

    #[test]
    fn each_writer_has_its_own_share_and_the_monitor_one_connection() {
        assert_eq!(sizes(&Pools::new(&target(), 4, 1).unwrap()), (vec![4], 1));
        assert_eq!(
            sizes(&Pools::new(&target(), 4, 2).unwrap()),
            (vec![2, 2], 1)
        );
        assert_eq!(
            sizes(&Pools::new(&target(), 2, 3).unwrap()),
            (vec![1, 1, 1], 1)
        );
    }
}
