//! The guest-facing side of SQLite: `fermyon:spin/sqlite@2.0.0`, `spin:sqlite/sqlite@3.0.0`
//! and the functions of `@3.1.0` that are not async (its async ones are in `spin4.rs`).

use wasmtime::component::Resource;

use super::{OpenDatabase, SqlError, SqlResult, SqlValue, SqliteAccess, SqliteView, StatementTarget};
use crate::capability::bindings::{spin_sqlite as v2, spin_sqlite3 as v3, spin_sqlite3_1 as v31};

pub(super) enum OpenError {
    Denied,
    Failed(SqlError),
}

impl SqliteAccess {
    /// Opens `label` if this component is granted it: every SQLite interface opens through here.
    pub(super) async fn open_granted(&self, label: &str) -> Result<OpenDatabase, OpenError> {
        if !self.granted.iter().any(|granted| granted == label) {
            tracing::warn!(component = %self.component, database = %label, "SQLite database not granted: add it to the component's sqlite_databases");
            return Err(OpenError::Denied);
        }
        let database = self.databases.open(label).await.map_err(OpenError::Failed)?;
        Ok(OpenDatabase::new(database))
    }
}

impl SqliteView<'_> {
    async fn open_database(&mut self, label: &str) -> Result<OpenDatabase, OpenError> {
        let access = self.sqlite().clone();
        access.open_granted(label).await
    }

    /// Runs one statement on a guest's handle; `None`: the handle is not valid.
    async fn run_statement(
        &mut self,
        connection: &Resource<OpenDatabase>,
        statement: String,
        parameters: Vec<SqlValue>,
    ) -> Result<SqlResult, Option<SqlError>> {
        let target = self.statement_target(connection).ok_or(None)?;
        let outcome = target.run(&statement, parameters).await;
        self.record(connection, &outcome);
        outcome.map_err(Some)
    }

    pub(super) fn statement_target(&self, connection: &Resource<OpenDatabase>) -> Option<StatementTarget> {
        let span_parent = self.sqlite().span_parent();
        self.table().get(connection).ok().map(|open| StatementTarget {
            span_parent,
            ..open.statement_target()
        })
    }

    /// Keeps the rowid and change count of a statement that succeeded on a handle still open.
    pub(super) fn record(&mut self, connection: &Resource<OpenDatabase>, outcome: &Result<SqlResult, SqlError>) {
        if let (Ok(result), Ok(open)) = (outcome, self.table_mut().get_mut(connection)) {
            open.record(result);
        }
    }

    pub(super) fn last_insert_rowid_of(&self, connection: &Resource<OpenDatabase>) -> i64 {
        self.table()
            .get(connection)
            .map(|open| open.last_insert_rowid)
            .unwrap_or(0)
    }

    pub(super) fn changes_of(&self, connection: &Resource<OpenDatabase>) -> u64 {
        self.table().get(connection).map(|open| open.changes).unwrap_or(0)
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
convert_values!(v31);

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

macro_rules! v3_connection {
    ($module:ident) => {
        impl $module::HostConnection for SqliteView<'_> {
            connection_methods!($module);

            async fn last_insert_rowid(&mut self, connection: Resource<OpenDatabase>) -> i64 {
                self.last_insert_rowid_of(&connection)
            }

            async fn changes(&mut self, connection: Resource<OpenDatabase>) -> u64 {
                self.changes_of(&connection)
            }
        }
    };
}

v3_connection!(v3);
v3_connection!(v31);
