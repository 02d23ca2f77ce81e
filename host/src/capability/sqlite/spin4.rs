//! The async functions of `spin:sqlite/sqlite@3.1.0` (Spin 4, component-model async) over the
//! same databases and grants as the other versions: a database the component is not granted is
//! `error::access-denied`. `execute-async` runs the statement, then streams its rows.

use wasmtime::component::{Accessor, FutureReader, Resource, StreamReader};

use super::guest::OpenError;
use super::{OpenDatabase, SqlValue, SqliteImports};
use crate::capability::bindings::spin_sqlite3_1 as v31;
use crate::capability::{listing, with_view};

fn open_error(err: OpenError) -> v31::Error {
    match err {
        OpenError::Denied => v31::Error::AccessDenied,
        OpenError::Failed(err) => v31::Error::Io(err.0),
    }
}

type Rows = (
    Vec<String>,
    StreamReader<v31::RowResult>,
    FutureReader<Result<(), v31::Error>>,
);

impl<T> v31::HostConnectionWithStore<T> for SqliteImports {
    async fn open_async(accessor: &Accessor<T, Self>, database: String) -> Result<Resource<OpenDatabase>, v31::Error> {
        let access = with_view(accessor, |view| view.sqlite().clone());
        let open = access.open_granted(&database).await.map_err(open_error)?;
        with_view(accessor, |mut view| view.table_mut().push(open)).map_err(|err| v31::Error::Io(err.to_string()))
    }

    async fn execute_async(
        accessor: &Accessor<T, Self>,
        connection: Resource<OpenDatabase>,
        statement: String,
        parameters: Vec<v31::Value>,
    ) -> wasmtime::Result<Result<Rows, v31::Error>> {
        let Some(target) = with_view(accessor, |view| view.statement_target(&connection)) else {
            return Ok(Err(v31::Error::InvalidConnection));
        };
        let parameters = parameters.into_iter().map(SqlValue::from).collect();
        let outcome = target.run(&statement, parameters).await;
        with_view(accessor, |mut view| view.record(&connection, &outcome));
        let result = match outcome {
            Ok(result) => result,
            Err(err) => return Ok(Err(v31::Error::Io(err.0))),
        };
        let v31::QueryResult { columns, rows } = result.into();
        let (rows, end) = listing(accessor, rows, async { Ok(()) })?;
        Ok(Ok((columns, rows, end)))
    }

    async fn last_insert_rowid_async(accessor: &Accessor<T, Self>, connection: Resource<OpenDatabase>) -> i64 {
        with_view(accessor, |view| view.last_insert_rowid_of(&connection))
    }

    async fn changes_async(accessor: &Accessor<T, Self>, connection: Resource<OpenDatabase>) -> u64 {
        with_view(accessor, |view| view.changes_of(&connection))
    }
}
