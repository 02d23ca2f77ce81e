//! The guest-facing side of SQLite: `fermyon:spin/sqlite@2.0.0` and `spin:sqlite/sqlite@3.0.0`.

use wasmtime::component::Resource;

use super::SqliteView;
use super::{OpenDatabase, SqlError, SqlResult, SqlValue};
use crate::capability::bindings::{spin_sqlite as v2, spin_sqlite3 as v3};

enum OpenError {
    Denied,
    Failed(SqlError),
}

impl SqliteView<'_> {
    async fn open_database(&mut self, label: &str) -> Result<OpenDatabase, OpenError> {
        let access = self.sqlite().clone();
        if !access.granted.iter().any(|granted| granted == label) {
            tracing::warn!(component = %access.component, database = %label, "SQLite database not granted: add it to the component's sqlite_databases");
            return Err(OpenError::Denied);
        }
        let database = access.databases.open(label).await.map_err(OpenError::Failed)?;
        Ok(OpenDatabase {
            database,
            held: None,
            last_insert_rowid: 0,
            changes: 0,
        })
    }

    async fn run_statement(
        &mut self,
        connection: &Resource<OpenDatabase>,
        statement: String,
        parameters: Vec<SqlValue>,
    ) -> Result<SqlResult, Option<SqlError>> {
        let open = self.table_mut().get_mut(connection).map_err(|_| None)?;
        let database = open.database.clone();
        // Taken out of the table for the await; if the call is cut short, dropping it rolls
        // back whatever it left open.
        let mut held = match open.held.take() {
            Some(held) => held,
            None => database.acquire().await.map_err(Some)?,
        };
        let outcome = database.execute_on(&mut held, &statement, parameters).await;
        if let Ok(open) = self.table_mut().get_mut(connection) {
            open.held = Some(held);
            if let Ok(result) = &outcome {
                open.last_insert_rowid = result.last_insert_rowid;
                open.changes = result.changes;
            }
        }
        outcome.map_err(Some)
    }
}

macro_rules! convert_values {
    ($module:ident) => {
        impl From<$module::Value> for SqlValue {
            fn from(value: $module::Value) -> Self {
                match value {
                    $module::Value::Integer(v) => SqlValue::Integer(v),
                    $module::Value::Real(v) => SqlValue::Real(v),
                    $module::Value::Text(v) => SqlValue::Text(v),
                    $module::Value::Blob(v) => SqlValue::Blob(v),
                    $module::Value::Null => SqlValue::Null,
                }
            }
        }

        impl From<SqlValue> for $module::Value {
            fn from(value: SqlValue) -> Self {
                match value {
                    SqlValue::Integer(v) => $module::Value::Integer(v),
                    SqlValue::Real(v) => $module::Value::Real(v),
                    SqlValue::Text(v) => $module::Value::Text(v),
                    SqlValue::Blob(v) => $module::Value::Blob(v),
                    SqlValue::Null => $module::Value::Null,
                }
            }
        }

        impl From<SqlResult> for $module::QueryResult {
            fn from(result: SqlResult) -> Self {
                $module::QueryResult {
                    columns: result.columns,
                    rows: result
                        .rows
                        .into_iter()
                        .map(|row| $module::RowResult {
                            values: row.into_iter().map(Into::into).collect(),
                        })
                        .collect(),
                }
            }
        }

        impl $module::Host for SqliteView<'_> {}
    };
}

convert_values!(v2);
convert_values!(v3);

macro_rules! connection_methods {
    ($module:ident) => {
        async fn open(&mut self, database: String) -> Result<Resource<OpenDatabase>, $module::Error> {
            match self.open_database(&database).await {
                Ok(open) => self
                    .table_mut()
                    .push(open)
                    .map_err(|err| $module::Error::Io(err.to_string())),
                Err(OpenError::Denied) => Err($module::Error::AccessDenied),
                Err(OpenError::Failed(err)) => Err($module::Error::Io(err.0)),
            }
        }

        async fn execute(
            &mut self,
            connection: Resource<OpenDatabase>,
            statement: String,
            parameters: Vec<$module::Value>,
        ) -> Result<$module::QueryResult, $module::Error> {
            let parameters = parameters.into_iter().map(SqlValue::from).collect();
            match self.run_statement(&connection, statement, parameters).await {
                Ok(result) => Ok(result.into()),
                Err(None) => Err($module::Error::InvalidConnection),
                Err(Some(err)) => Err($module::Error::Io(err.0)),
            }
        }

        async fn drop(&mut self, connection: Resource<OpenDatabase>) -> wasmtime::Result<()> {
            self.table_mut().delete(connection)?;
            Ok(())
        }
    };
}

impl v2::HostConnection for SqliteView<'_> {
    connection_methods!(v2);
}

impl v3::HostConnection for SqliteView<'_> {
    connection_methods!(v3);

    async fn last_insert_rowid(&mut self, connection: Resource<OpenDatabase>) -> i64 {
        self.table()
            .get(&connection)
            .map(|open| open.last_insert_rowid)
            .unwrap_or(0)
    }

    async fn changes(&mut self, connection: Resource<OpenDatabase>) -> u64 {
        self.table().get(&connection).map(|open| open.changes).unwrap_or(0)
    }
}
