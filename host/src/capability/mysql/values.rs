//! MySQL values both ways, as Spin maps them (`factor-outbound-mysql`): the `rdbms-types` of
//! `fermyon:spin/mysql@2.0.0` (the same shape as `spin:mysql/mysql@3.0.0`'s) to bound
//! parameters, and a result column's MySQL type to a `db-data-type` and its values:
//!
//! | MySQL column | `db-data-type` / `db-value` |
//! |---|---|
//! | TINYINT (also BOOLEAN, TINYINT(1)), SMALLINT, MEDIUMINT, INT, BIGINT | int8, int16, int32, int32, int64 |
//! | the same UNSIGNED | uint8, uint16, uint32, uint32, uint64 |
//! | FLOAT, DOUBLE | floating32, floating64 |
//! | CHAR, VARCHAR, TEXT (every size), ENUM, SET | str |
//! | BINARY, VARBINARY, BLOB (every size) | binary |
//! | anything else (DECIMAL, DATE, TIME, DATETIME, TIMESTAMP, YEAR, BIT, JSON ...) | other: a NULL is db-null, any other value value-conversion-failed |
//! | NULL | db-null |
//!
//! A boolean parameter is a TINYINT 1 or 0, read back as int8.

use sqlx::mysql::{MySql, MySqlArguments, MySqlRow, MySqlTypeInfo};
use sqlx::{Column as _, Row as _, TypeInfo as _, ValueRef as _};

use super::MysqlError;
use crate::capability::bindings::spin_rdbms_types as rdbms;

pub use rdbms::{DbDataType, DbValue, ParameterValue};

pub type Query<'q> = sqlx::query::Query<'q, MySql, MySqlArguments>;

/// `statement` with `params` bound in order (to its `?` placeholders), never interpolated.
pub fn bind<'q>(statement: &'q str, params: &[ParameterValue]) -> Query<'q> {
    let mut query = sqlx::query(statement);
    for param in params {
        query = match param.clone() {
            ParameterValue::Boolean(v) => query.bind(v),
            ParameterValue::Int8(v) => query.bind(v),
            ParameterValue::Int16(v) => query.bind(v),
            ParameterValue::Int32(v) => query.bind(v),
            ParameterValue::Int64(v) => query.bind(v),
            ParameterValue::Uint8(v) => query.bind(v),
            ParameterValue::Uint16(v) => query.bind(v),
            ParameterValue::Uint32(v) => query.bind(v),
            ParameterValue::Uint64(v) => query.bind(v),
            ParameterValue::Floating32(v) => query.bind(v),
            ParameterValue::Floating64(v) => query.bind(v),
            ParameterValue::Str(v) => query.bind(v),
            ParameterValue::Binary(v) => query.bind(v),
            ParameterValue::DbNull => query.bind(None::<String>),
        };
    }
    query
}

/// A result column's `db-data-type`, from its MySQL type as the server describes it.
pub fn data_type(ty: &MySqlTypeInfo) -> DbDataType {
    use DbDataType as T;
    let unsigned = <u64 as sqlx::Type<MySql>>::compatible(ty);
    match (ty.name(), unsigned) {
        ("BOOLEAN" | "TINYINT", false) => T::Int8,
        ("BOOLEAN" | "TINYINT UNSIGNED", true) => T::Uint8,
        ("SMALLINT", _) => T::Int16,
        ("SMALLINT UNSIGNED", _) => T::Uint16,
        ("MEDIUMINT" | "INT", _) => T::Int32,
        ("MEDIUMINT UNSIGNED" | "INT UNSIGNED", _) => T::Uint32,
        ("BIGINT", _) => T::Int64,
        ("BIGINT UNSIGNED", _) => T::Uint64,
        ("FLOAT", _) => T::Floating32,
        ("DOUBLE", _) => T::Floating64,
        ("CHAR" | "VARCHAR" | "TINYTEXT" | "TEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM" | "SET", _) => T::Str,
        ("BINARY" | "VARBINARY" | "TINYBLOB" | "BLOB" | "MEDIUMBLOB" | "LONGBLOB", _) => T::Binary,
        _ => T::Other,
    }
}

/// The columns of a result, named as the query names them.
pub fn columns_of(columns: &[sqlx::mysql::MySqlColumn]) -> Vec<rdbms::Column> {
    columns
        .iter()
        .map(|column| rdbms::Column {
            name: column.name().to_string(),
            data_type: data_type(column.type_info()),
        })
        .collect()
}

/// The values of `row`, each as its column's `db-data-type` says.
pub fn row_values(row: &MySqlRow, columns: &[rdbms::Column]) -> Result<Vec<DbValue>, MysqlError> {
    (0..row.len()).map(|index| value_at(row, index, columns)).collect()
}

fn value_at(row: &MySqlRow, index: usize, columns: &[rdbms::Column]) -> Result<DbValue, MysqlError> {
    let column = columns
        .get(index)
        .ok_or_else(|| MysqlError::Other(format!("the result has no column {index}")))?;
    let raw = row
        .try_get_raw(index)
        .map_err(|err| MysqlError::ValueConversionFailed(format!("column `{}`: {err}", column.name)))?;
    if raw.is_null() {
        return Ok(DbValue::DbNull);
    }
    let mysql_type = raw.type_info().name().to_string();
    macro_rules! get {
        ($variant:ident, $rust:ty) => {
            row.try_get_unchecked::<$rust, _>(index)
                .map(DbValue::$variant)
                .map_err(|err| {
                    MysqlError::ValueConversionFailed(format!("column `{}` ({mysql_type}): {err}", column.name))
                })
        };
    }
    match column.data_type {
        DbDataType::Boolean => get!(Boolean, bool),
        DbDataType::Int8 => get!(Int8, i8),
        DbDataType::Int16 => get!(Int16, i16),
        DbDataType::Int32 => get!(Int32, i32),
        DbDataType::Int64 => get!(Int64, i64),
        DbDataType::Uint8 => get!(Uint8, u8),
        DbDataType::Uint16 => get!(Uint16, u16),
        DbDataType::Uint32 => get!(Uint32, u32),
        DbDataType::Uint64 => get!(Uint64, u64),
        DbDataType::Floating32 => get!(Floating32, f32),
        DbDataType::Floating64 => get!(Floating64, f64),
        DbDataType::Str => get!(Str, String),
        DbDataType::Binary => get!(Binary, Vec<u8>),
        DbDataType::Other => Err(MysqlError::ValueConversionFailed(format!(
            "cannot convert the value of column `{}`: its MySQL type {mysql_type} has no db-value (as in Spin); \
             CAST it in the query, e.g. CAST({} AS CHAR)",
            column.name, column.name
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_types_keep_their_sign() {
        assert_eq!(data_type(&<i8 as sqlx::Type<MySql>>::type_info()), DbDataType::Int8);
        assert_eq!(data_type(&<u8 as sqlx::Type<MySql>>::type_info()), DbDataType::Uint8);
        assert_eq!(data_type(&<i64 as sqlx::Type<MySql>>::type_info()), DbDataType::Int64);
        assert_eq!(data_type(&<u64 as sqlx::Type<MySql>>::type_info()), DbDataType::Uint64);
        assert_eq!(
            data_type(&<f32 as sqlx::Type<MySql>>::type_info()),
            DbDataType::Floating32
        );
        assert_eq!(
            data_type(&<Vec<u8> as sqlx::Type<MySql>>::type_info()),
            DbDataType::Binary
        );
    }
}
