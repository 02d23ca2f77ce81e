//! The guest-facing side of MySQL: `fermyon:spin/mysql@2.0.0` (over `rdbms-types`) and Spin 4's
//! `spin:mysql/mysql@3.0.0` (async functions; a query's rows as a stream, read as the server
//! sends them), both over [`super::MysqlConnection`].

use wasmtime::component::{Accessor, FutureReader, Resource, StreamReader};

use super::values::{DbDataType, DbValue, ParameterValue};
use super::{MysqlConnection, MysqlError, MysqlImports, MysqlRows, MysqlView};
use crate::capability::bindings::{spin_mysql as v2, spin_mysql3 as v3, spin_rdbms_types as rdbms};
use crate::capability::{listing, with_view, ChannelStream};

impl MysqlView<'_> {
    fn connection(&self, handle: &Resource<MysqlConnection>) -> Result<MysqlConnection, MysqlError> {
        self.table()
            .get(handle)
            .cloned()
            .map_err(|err| MysqlError::Other(format!("invalid connection handle: {err}")))
    }
}

// ---- v2: fermyon:spin/mysql@2.0.0 over rdbms-types ----

fn error_v2(err: MysqlError) -> rdbms::Error {
    match err {
        MysqlError::ConnectionFailed(m) => rdbms::Error::ConnectionFailed(m),
        MysqlError::BadParameter(m) => rdbms::Error::BadParameter(m),
        MysqlError::QueryFailed(m) => rdbms::Error::QueryFailed(m),
        MysqlError::ValueConversionFailed(m) => rdbms::Error::ValueConversionFailed(m),
        MysqlError::Other(m) => rdbms::Error::Other(m),
    }
}

impl v2::Host for MysqlView<'_> {}

impl v2::HostConnection for MysqlView<'_> {
    async fn open(&mut self, address: String) -> Result<Resource<MysqlConnection>, rdbms::Error> {
        let access = self.mysql().clone();
        let connection = access.open(&address).await.map_err(error_v2)?;
        self.table_mut()
            .push(connection)
            .map_err(|err| rdbms::Error::Other(err.to_string()))
    }

    async fn query(
        &mut self,
        c: Resource<MysqlConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Result<rdbms::RowSet, rdbms::Error> {
        let connection = self.connection(&c).map_err(error_v2)?;
        let set = connection.query(&statement, &params).await.map_err(error_v2)?;
        Ok(rdbms::RowSet {
            columns: set.columns,
            rows: set.rows,
        })
    }

    async fn execute(
        &mut self,
        c: Resource<MysqlConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Result<(), rdbms::Error> {
        let connection = self.connection(&c).map_err(error_v2)?;
        connection.execute(&statement, &params).await.map_err(error_v2)
    }

    async fn drop(&mut self, c: Resource<MysqlConnection>) -> wasmtime::Result<()> {
        self.table_mut().delete(c)?;
        Ok(())
    }
}

// ---- v3: spin:mysql/mysql@3.0.0, the same types in an interface of their own ----

/// Maps between the same-named variants of two variant types.
macro_rules! same_variants {
    ($value:expr, $from:path => $to:path, [$($unit:ident),*], [$($variant:ident),*]) => {{
        use $from as F;
        use $to as T;
        match $value {
            $(F::$unit => T::$unit,)*
            $(F::$variant(v) => T::$variant(v),)*
        }
    }};
}

fn from_v3(value: v3::ParameterValue) -> ParameterValue {
    same_variants!(value, v3::ParameterValue => ParameterValue, [DbNull],
        [Boolean, Int8, Int16, Int32, Int64, Uint8, Uint16, Uint32, Uint64, Floating32, Floating64, Str, Binary])
}

fn to_v3(value: DbValue) -> v3::DbValue {
    same_variants!(value, DbValue => v3::DbValue, [DbNull, Unsupported],
        [Boolean, Int8, Int16, Int32, Int64, Uint8, Uint16, Uint32, Uint64, Floating32, Floating64, Str, Binary])
}

fn type_v3(ty: DbDataType) -> v3::DbDataType {
    same_variants!(ty, DbDataType => v3::DbDataType,
        [Boolean, Int8, Int16, Int32, Int64, Uint8, Uint16, Uint32, Uint64, Floating32, Floating64, Str, Binary, Other],
        [])
}

fn error_v3(err: MysqlError) -> v3::Error {
    match err {
        MysqlError::ConnectionFailed(m) => v3::Error::ConnectionFailed(m),
        MysqlError::BadParameter(m) => v3::Error::BadParameter(m),
        MysqlError::QueryFailed(m) => v3::Error::QueryFailed(m),
        MysqlError::ValueConversionFailed(m) => v3::Error::ValueConversionFailed(m),
        MysqlError::Other(m) => v3::Error::Other(m),
    }
}

/// The connection behind a guest's handle (a clone of the one pooled connection), taken out of
/// the view before any await.
fn connection_of<T>(
    accessor: &Accessor<T, MysqlImports>,
    handle: &Resource<MysqlConnection>,
) -> Result<MysqlConnection, MysqlError> {
    with_view(accessor, |view| view.connection(handle))
}

impl v3::Host for MysqlView<'_> {}

impl v3::HostConnection for MysqlView<'_> {
    async fn drop(&mut self, c: Resource<MysqlConnection>) -> wasmtime::Result<()> {
        self.table_mut().delete(c)?;
        Ok(())
    }
}

type Rows = (
    Vec<v3::Column>,
    StreamReader<v3::Row>,
    FutureReader<Result<(), v3::Error>>,
);

impl<T> v3::HostConnectionWithStore<T> for MysqlImports {
    async fn open(accessor: &Accessor<T, Self>, address: String) -> Result<Resource<MysqlConnection>, v3::Error> {
        let access = with_view(accessor, |view| view.mysql().clone());
        let connection = access.open(&address).await.map_err(error_v3)?;
        with_view(accessor, |mut view| view.table_mut().push(connection))
            .map_err(|err| v3::Error::Other(err.to_string()))
    }

    async fn query(
        accessor: &Accessor<T, Self>,
        connection: Resource<MysqlConnection>,
        statement: String,
        params: Vec<v3::ParameterValue>,
    ) -> wasmtime::Result<Result<Rows, v3::Error>> {
        let params: Vec<ParameterValue> = params.into_iter().map(from_v3).collect();
        let outcome = async {
            let convert = |row: Vec<DbValue>| -> v3::Row { row.into_iter().map(to_v3).collect() };
            connection_of(accessor, &connection)?
                .query_rows(&statement, &params, convert)
                .await
        }
        .await;
        let MysqlRows { columns, rows, end } = match outcome {
            Ok(rows) => rows,
            Err(err) => return Ok(Err(error_v3(err))),
        };
        let columns = columns
            .into_iter()
            .map(|column| v3::Column {
                name: column.name,
                data_type: type_v3(column.data_type),
            })
            .collect();
        // A query whose task vanished without a word ended with its last row.
        let end = async move { end.await.unwrap_or(Ok(())).map_err(error_v3) };
        let (rows, end) = listing(accessor, ChannelStream(rows), end)?;
        Ok(Ok((columns, rows, end)))
    }

    async fn execute(
        accessor: &Accessor<T, Self>,
        connection: Resource<MysqlConnection>,
        statement: String,
        params: Vec<v3::ParameterValue>,
    ) -> Result<(), v3::Error> {
        let params: Vec<ParameterValue> = params.into_iter().map(from_v3).collect();
        let connection = connection_of(accessor, &connection).map_err(error_v3)?;
        connection.execute(&statement, &params).await.map_err(error_v3)
    }
}
