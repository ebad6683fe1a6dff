//! The connection pool's type; [`crate::connect::postgres::PgTarget::pool`]
//! builds it.

pub type Pool = deadpool_postgres::Pool;
