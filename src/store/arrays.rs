//! One column of many rows as one Postgres array parameter, for
//! `INSERT ... SELECT * FROM unnest($1::text[], $2::jsonb[], ...)`: every
//! row of a table in one statement, with no staging table in between.

use std::fmt;

use bytes::BytesMut;
use postgres_protocol::types::{array_to_sql, ArrayDimension};
use tokio_postgres::types::{to_sql_checked, IsNull, Kind, ToSql, Type};

type BoxError = Box<dyn std::error::Error + Sync + Send>;

/// The values `cell` takes over `rows`, encoded as a one-dimensional array
/// of the parameter's element type while the statement's parameters are
/// written: no vector of values is built first.
pub struct ArrayColumn<'r, R, F> {
    rows: &'r [R],
    cell: F,
}

/// `cell` gives a row's value in this column.
pub fn column<'r, R, V, F>(rows: &'r [R], cell: F) -> ArrayColumn<'r, R, F>
where
    F: Fn(&'r R) -> V,
    V: ToSql,
{
    ArrayColumn { rows, cell }
}

impl<R, F> fmt::Debug for ArrayColumn<'_, R, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "array of {} values", self.rows.len())
    }
}

impl<'r, R, V, F> ToSql for ArrayColumn<'r, R, F>
where
    R: Sync,
    F: Fn(&'r R) -> V + Sync,
    V: ToSql,
{
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let Kind::Array(member) = ty.kind() else {
            return Err(format!("{ty} is not an array type").into());
        };
        let dimension = ArrayDimension {
            len: i32::try_from(self.rows.len())?,
            lower_bound: 1,
        };
        array_to_sql(
            Some(dimension),
            member.oid(),
            self.rows.iter(),
            |row, out| match (self.cell)(row).to_sql(member, out)? {
                IsNull::No => Ok(postgres_protocol::IsNull::No),
                IsNull::Yes => Ok(postgres_protocol::IsNull::Yes),
            },
            out,
        )?;
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        // The element type is checked per value by `V::to_sql`; the
        // statement casts each parameter to the column's array type.
        matches!(ty.kind(), Kind::Array(_))
    }

    to_sql_checked!();
}
