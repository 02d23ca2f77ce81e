//! The guest-facing side of PostgreSQL: v2 (`fermyon:spin/postgres@2.0.0` with
//! `rdbms-types`), v3, v4 and the functions of v4.2 that are not async
//! (`spin:postgres/postgres`; v4.2's async ones are in `spin4.rs`), all over
//! [`super::PgConnection`].

use wasmtime::component::Resource;

use super::values::{Bound, PgType, PgValue, RangeEnds};
use super::PostgresView;
use super::{PgConnection, PgError, PgRowSet};
use crate::capability::bindings::{
    spin_postgres as v2, spin_postgres3 as v3, spin_postgres4 as v4, spin_postgres4_2 as v4_2,
    spin_rdbms_types as rdbms,
};

impl PostgresView<'_> {
    async fn pg_open(&mut self, address: &str) -> Result<PgConnection, PgError> {
        let access = self.postgres().clone();
        access.open(address).await
    }

    pub(super) fn pg_connection(&self, handle: &Resource<PgConnection>) -> Result<&PgConnection, PgError> {
        self.table()
            .get(handle)
            .map_err(|err| PgError::Other(format!("invalid connection handle: {err}")))
    }

    async fn pg_query(
        &mut self,
        handle: &Resource<PgConnection>,
        statement: &str,
        params: Result<Vec<PgValue>, PgError>,
    ) -> Result<PgRowSet, PgError> {
        let params = params?;
        self.pg_connection(handle)?.query(statement, &params).await
    }

    async fn pg_execute(
        &mut self,
        handle: &Resource<PgConnection>,
        statement: &str,
        params: Result<Vec<PgValue>, PgError>,
    ) -> Result<u64, PgError> {
        let params = params?;
        self.pg_connection(handle)?.execute(statement, &params).await
    }
}

// ---- v2: fermyon:spin/postgres@2.0.0 over rdbms-types ----

/// `rdbms-types` holds only types; MySQL's v2 interface shares them.
impl rdbms::Host for PostgresView<'_> {}

fn from_v2(value: rdbms::ParameterValue) -> Result<PgValue, PgError> {
    use rdbms::ParameterValue as P;
    Ok(match value {
        P::Boolean(v) => PgValue::Boolean(v),
        P::Int8(v) => PgValue::Int8(v),
        P::Int16(v) => PgValue::Int16(v),
        P::Int32(v) => PgValue::Int32(v),
        P::Int64(v) => PgValue::Int64(v),
        // PostgreSQL has no unsigned types: each goes to the next wider signed one.
        P::Uint8(v) => PgValue::Int16(i16::from(v)),
        P::Uint16(v) => PgValue::Int32(i32::from(v)),
        P::Uint32(v) => PgValue::Int64(i64::from(v)),
        P::Uint64(v) => PgValue::Int64(
            i64::try_from(v).map_err(|_| PgError::BadParameter(format!("{v} does not fit a PostgreSQL bigint")))?,
        ),
        P::Floating32(v) => PgValue::Floating32(v),
        P::Floating64(v) => PgValue::Floating64(v),
        P::Str(v) => PgValue::Str(v),
        P::Binary(v) => PgValue::Binary(v),
        P::DbNull => PgValue::Null,
    })
}

fn to_v2(value: PgValue) -> rdbms::DbValue {
    use rdbms::DbValue as D;
    match value {
        PgValue::Boolean(v) => D::Boolean(v),
        PgValue::Int8(v) => D::Int8(v),
        PgValue::Int16(v) => D::Int16(v),
        PgValue::Int32(v) => D::Int32(v),
        PgValue::Int64(v) => D::Int64(v),
        PgValue::Floating32(v) => D::Floating32(v),
        PgValue::Floating64(v) => D::Floating64(v),
        PgValue::Str(v) => D::Str(v),
        PgValue::Binary(v) => D::Binary(v),
        PgValue::Null => D::DbNull,
        _ => D::Unsupported,
    }
}

fn type_v2(ty: PgType) -> rdbms::DbDataType {
    use rdbms::DbDataType as T;
    match ty {
        PgType::Boolean => T::Boolean,
        PgType::Int8 => T::Int8,
        PgType::Int16 => T::Int16,
        PgType::Int32 => T::Int32,
        PgType::Int64 => T::Int64,
        PgType::Floating32 => T::Floating32,
        PgType::Floating64 => T::Floating64,
        PgType::Str => T::Str,
        PgType::Binary => T::Binary,
        _ => T::Other,
    }
}

fn error_v2(err: PgError) -> rdbms::Error {
    match err {
        PgError::ConnectionFailed(m) => rdbms::Error::ConnectionFailed(m),
        PgError::BadParameter(m) => rdbms::Error::BadParameter(m),
        PgError::QueryFailed { text, .. } => rdbms::Error::QueryFailed(text),
        PgError::ValueConversionFailed(m) => rdbms::Error::ValueConversionFailed(m),
        PgError::Other(m) => rdbms::Error::Other(m),
    }
}

impl v2::Host for PostgresView<'_> {}

impl v2::HostConnection for PostgresView<'_> {
    async fn open(&mut self, address: String) -> Result<Resource<PgConnection>, rdbms::Error> {
        let connection = self.pg_open(&address).await.map_err(error_v2)?;
        self.table_mut()
            .push(connection)
            .map_err(|err| rdbms::Error::Other(err.to_string()))
    }

    async fn query(
        &mut self,
        c: Resource<PgConnection>,
        statement: String,
        params: Vec<rdbms::ParameterValue>,
    ) -> Result<rdbms::RowSet, rdbms::Error> {
        let params = params.into_iter().map(from_v2).collect();
        let set = self.pg_query(&c, &statement, params).await.map_err(error_v2)?;
        Ok(rdbms::RowSet {
            columns: set
                .columns
                .into_iter()
                .map(|(name, ty)| rdbms::Column {
                    name,
                    data_type: type_v2(ty),
                })
                .collect(),
            rows: set
                .rows
                .into_iter()
                .map(|row| row.into_iter().map(to_v2).collect())
                .collect(),
        })
    }

    async fn execute(
        &mut self,
        c: Resource<PgConnection>,
        statement: String,
        params: Vec<rdbms::ParameterValue>,
    ) -> Result<u64, rdbms::Error> {
        let params = params.into_iter().map(from_v2).collect();
        self.pg_execute(&c, &statement, params).await.map_err(error_v2)
    }

    async fn drop(&mut self, c: Resource<PgConnection>) -> wasmtime::Result<()> {
        self.table_mut().delete(c)?;
        Ok(())
    }
}

// ---- v3 and v4: spin:postgres/postgres; the v4 value set is a superset of v3's ----

macro_rules! common_params {
    ($module:ident, $value:expr, $($extra:tt)*) => {{
        use $module::ParameterValue as P;
        match $value {
            P::Boolean(v) => PgValue::Boolean(v),
            P::Int8(v) => PgValue::Int8(v),
            P::Int16(v) => PgValue::Int16(v),
            P::Int32(v) => PgValue::Int32(v),
            P::Int64(v) => PgValue::Int64(v),
            P::Floating32(v) => PgValue::Floating32(v),
            P::Floating64(v) => PgValue::Floating64(v),
            P::Str(v) => PgValue::Str(v),
            P::Binary(v) => PgValue::Binary(v),
            P::Date(v) => PgValue::Date(v),
            P::Time(v) => PgValue::Time(v),
            P::Datetime(v) => PgValue::Datetime(v),
            P::Timestamp(v) => PgValue::Timestamp(v),
            P::DbNull => PgValue::Null,
            $($extra)*
        }
    }};
}

macro_rules! common_values {
    ($module:ident, $value:expr, $($extra:tt)*) => {{
        use $module::DbValue as D;
        match $value {
            PgValue::Boolean(v) => D::Boolean(v),
            PgValue::Int8(v) => D::Int8(v),
            PgValue::Int16(v) => D::Int16(v),
            PgValue::Int32(v) => D::Int32(v),
            PgValue::Int64(v) => D::Int64(v),
            PgValue::Floating32(v) => D::Floating32(v),
            PgValue::Floating64(v) => D::Floating64(v),
            PgValue::Str(v) => D::Str(v),
            PgValue::Binary(v) => D::Binary(v),
            PgValue::Date(v) => D::Date(v),
            PgValue::Time(v) => D::Time(v),
            PgValue::Datetime(v) => D::Datetime(v),
            PgValue::Timestamp(v) => D::Timestamp(v),
            PgValue::Null => D::DbNull,
            $($extra)*
        }
    }};
}

macro_rules! common_types {
    ($module:ident, $ty:expr, $($extra:tt)*) => {{
        use $module::DbDataType as T;
        match $ty {
            PgType::Boolean => T::Boolean,
            PgType::Int8 => T::Int8,
            PgType::Int16 => T::Int16,
            PgType::Int32 => T::Int32,
            PgType::Int64 => T::Int64,
            PgType::Floating32 => T::Floating32,
            PgType::Floating64 => T::Floating64,
            PgType::Str => T::Str,
            PgType::Binary => T::Binary,
            PgType::Date => T::Date,
            PgType::Time => T::Time,
            PgType::Datetime => T::Datetime,
            PgType::Timestamp => T::Timestamp,
            $($extra)*
        }
    }};
}

fn from_v3(value: v3::ParameterValue) -> Result<PgValue, PgError> {
    Ok(common_params!(v3, value,))
}

fn to_v3(value: PgValue) -> v3::DbValue {
    common_values!(v3, value, _ => D::Unsupported,)
}

fn type_v3(ty: PgType) -> v3::DbDataType {
    common_types!(v3, ty, _ => T::Other,)
}

fn error_v3(err: PgError) -> v3::Error {
    match err {
        PgError::ConnectionFailed(m) => v3::Error::ConnectionFailed(m),
        PgError::BadParameter(m) => v3::Error::BadParameter(m),
        PgError::QueryFailed { text, .. } => v3::Error::QueryFailed(text),
        PgError::ValueConversionFailed(m) => v3::Error::ValueConversionFailed(m),
        PgError::Other(m) => v3::Error::Other(m),
    }
}

/// The conversions of `spin:postgres/postgres@4.0.0` and `@4.2.0` (the same types), each in a
/// module of its own: `$name::from_v4`, `to_v4`, `type_v4`, `error_v4`.
macro_rules! v4_conversions {
    ($name:ident, $module:ident) => {
        pub(super) mod $name {
        use super::*;

        fn bound_v4(bound: Bound) -> $module::RangeBoundKind {
            match bound {
                Bound::Inclusive => $module::RangeBoundKind::Inclusive,
                Bound::Exclusive => $module::RangeBoundKind::Exclusive,
            }
        }

        fn bound_from_v4(bound: $module::RangeBoundKind) -> Bound {
            match bound {
                $module::RangeBoundKind::Inclusive => Bound::Inclusive,
                $module::RangeBoundKind::Exclusive => Bound::Exclusive,
            }
        }

        type V4Ends<T> = (Option<(T, $module::RangeBoundKind)>, Option<(T, $module::RangeBoundKind)>);

        fn ends_from_v4<T>(ends: V4Ends<T>) -> RangeEnds<T> {
            (
                ends.0.map(|(v, b)| (v, bound_from_v4(b))),
                ends.1.map(|(v, b)| (v, bound_from_v4(b))),
            )
        }

        fn ends_to_v4<T>(ends: RangeEnds<T>) -> V4Ends<T> {
            (
                ends.0.map(|(v, b)| (v, bound_v4(b))),
                ends.1.map(|(v, b)| (v, bound_v4(b))),
            )
        }

        pub(in crate::capability::postgres) fn from_v4(value: $module::ParameterValue) -> Result<PgValue, PgError> {
            Ok(common_params!($module, value,
                P::Uuid(v) => PgValue::Uuid(v),
                P::Jsonb(v) => PgValue::Jsonb(v),
                P::Decimal(v) => PgValue::Decimal(v),
                P::RangeInt32(v) => PgValue::RangeInt32(ends_from_v4(v)),
                P::RangeInt64(v) => PgValue::RangeInt64(ends_from_v4(v)),
                P::RangeDecimal(v) => PgValue::RangeDecimal(ends_from_v4(v)),
                P::ArrayInt32(v) => PgValue::ArrayInt32(v),
                P::ArrayInt64(v) => PgValue::ArrayInt64(v),
                P::ArrayDecimal(v) => PgValue::ArrayDecimal(v),
                P::ArrayStr(v) => PgValue::ArrayStr(v),
                P::Interval(v) => PgValue::Interval(crate::capability::postgres::values::Interval { micros: v.micros, days: v.days, months: v.months }),
            ))
        }

        pub(in crate::capability::postgres) fn to_v4(value: PgValue) -> $module::DbValue {
            common_values!($module, value,
                PgValue::Uuid(v) => D::Uuid(v),
                PgValue::Jsonb(v) => D::Jsonb(v),
                PgValue::Decimal(v) => D::Decimal(v),
                PgValue::RangeInt32(v) => D::RangeInt32(ends_to_v4(v)),
                PgValue::RangeInt64(v) => D::RangeInt64(ends_to_v4(v)),
                PgValue::RangeDecimal(v) => D::RangeDecimal(ends_to_v4(v)),
                PgValue::ArrayInt32(v) => D::ArrayInt32(v),
                PgValue::ArrayInt64(v) => D::ArrayInt64(v),
                PgValue::ArrayDecimal(v) => D::ArrayDecimal(v),
                PgValue::ArrayStr(v) => D::ArrayStr(v),
                PgValue::Interval(v) => D::Interval($module::Interval { micros: v.micros, days: v.days, months: v.months }),
                PgValue::Unsupported(raw) => D::Unsupported(raw),
            )
        }

        pub(in crate::capability::postgres) fn type_v4(ty: PgType) -> $module::DbDataType {
            common_types!($module, ty,
                PgType::Uuid => T::Uuid,
                PgType::Jsonb => T::Jsonb,
                PgType::Decimal => T::Decimal,
                PgType::RangeInt32 => T::RangeInt32,
                PgType::RangeInt64 => T::RangeInt64,
                PgType::RangeDecimal => T::RangeDecimal,
                PgType::ArrayInt32 => T::ArrayInt32,
                PgType::ArrayInt64 => T::ArrayInt64,
                PgType::ArrayDecimal => T::ArrayDecimal,
                PgType::ArrayStr => T::ArrayStr,
                PgType::Interval => T::Interval,
                PgType::Other(name) => T::Other(name),
            )
        }

        pub(in crate::capability::postgres) fn error_v4(err: PgError) -> $module::Error {
            match err {
                PgError::ConnectionFailed(m) => $module::Error::ConnectionFailed(m),
                PgError::BadParameter(m) => $module::Error::BadParameter(m),
                PgError::QueryFailed { text, db: Some(db) } => $module::Error::QueryFailed($module::QueryError::DbError($module::DbError {
                    as_text: text,
                    severity: db.severity,
                    code: db.code,
                    message: db.message,
                    detail: db.detail,
                    extras: Vec::new(),
                })),
                PgError::QueryFailed { text, db: None } => $module::Error::QueryFailed($module::QueryError::Text(text)),
                PgError::ValueConversionFailed(m) => $module::Error::ValueConversionFailed(m),
                PgError::Other(m) => $module::Error::Other(m),
            }
        }
        }
    };
}

v4_conversions!(v4_values, v4);
v4_conversions!(v4_2_values, v4_2);

macro_rules! spin_postgres_connection {
    ($module:ident, $from:path, $to:path, $ty:path, $error:path) => {
        impl $module::Host for PostgresView<'_> {}

        impl $module::HostConnection for PostgresView<'_> {
            async fn open(&mut self, address: String) -> Result<Resource<PgConnection>, $module::Error> {
                let connection = self.pg_open(&address).await.map_err($error)?;
                self.table_mut()
                    .push(connection)
                    .map_err(|err| $module::Error::Other(err.to_string()))
            }

            async fn query(
                &mut self,
                c: Resource<PgConnection>,
                statement: String,
                params: Vec<$module::ParameterValue>,
            ) -> Result<$module::RowSet, $module::Error> {
                let params = params.into_iter().map($from).collect();
                let set = self.pg_query(&c, &statement, params).await.map_err($error)?;
                Ok($module::RowSet {
                    columns: set
                        .columns
                        .into_iter()
                        .map(|(name, ty)| $module::Column {
                            name,
                            data_type: $ty(ty),
                        })
                        .collect(),
                    rows: set
                        .rows
                        .into_iter()
                        .map(|row| row.into_iter().map($to).collect())
                        .collect(),
                })
            }

            async fn execute(
                &mut self,
                c: Resource<PgConnection>,
                statement: String,
                params: Vec<$module::ParameterValue>,
            ) -> Result<u64, $module::Error> {
                let params = params.into_iter().map($from).collect();
                self.pg_execute(&c, &statement, params).await.map_err($error)
            }

            async fn drop(&mut self, c: Resource<PgConnection>) -> wasmtime::Result<()> {
                self.table_mut().delete(c)?;
                Ok(())
            }
        }
    };
}

spin_postgres_connection!(v3, from_v3, to_v3, type_v3, error_v3);
spin_postgres_connection!(
    v4,
    v4_values::from_v4,
    v4_values::to_v4,
    v4_values::type_v4,
    v4_values::error_v4
);
spin_postgres_connection!(
    v4_2,
    v4_2_values::from_v4,
    v4_2_values::to_v4,
    v4_2_values::type_v4,
    v4_2_values::error_v4
);
