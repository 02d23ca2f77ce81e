//! What `spin:postgres/postgres@4.2.0` adds to v4 (Spin 4, component-model async): the
//! `connection-builder`, and async `open`, `query` and `execute` over the same pools and
//! `allowed_outbound_hosts` checks as every other version. `query-async` streams the rows as
//! the server sends them (a few dozen read ahead), not the whole result at once.

use wasmtime::component::{Accessor, FutureReader, Resource, StreamReader};

use super::guest::v4_2_values::{error_v4 as error, from_v4 as from, to_v4 as to, type_v4 as ty};
use super::{PgConnection, PgConnectionBuilder, PgError, PgRows, PgValue, PostgresImports, PostgresView};
use crate::capability::bindings::spin_postgres4_2 as v4_2;
use crate::capability::{listing, with_view, ChannelStream};

/// Mosaic connects to PostgreSQL without TLS (`NoTls`), so a CA root has nothing to verify.
const NO_TLS: &str = "Mosaic connects to PostgreSQL without TLS, so a CA root cannot be set; \
                      reach the server over a trusted network, or leave the CA root out";

fn params(values: Vec<v4_2::ParameterValue>) -> Result<Vec<PgValue>, PgError> {
    values.into_iter().map(from).collect()
}

/// The connection behind a guest's handle (a clone of the one pooled connection), taken out of
/// the view before any await.
fn connection_of<T>(
    accessor: &Accessor<T, PostgresImports>,
    handle: &Resource<PgConnection>,
) -> Result<PgConnection, PgError> {
    with_view(accessor, |view| view.pg_connection(handle).cloned())
}

/// Opens `address` for the component behind `accessor` and puts the connection in its table.
async fn open<T>(
    accessor: &Accessor<T, PostgresImports>,
    address: &str,
) -> Result<Resource<PgConnection>, v4_2::Error> {
    let access = with_view(accessor, |view| view.postgres().clone());
    let connection = access.open(address).await.map_err(error)?;
    with_view(accessor, |mut view| view.table_mut().push(connection)).map_err(|err| v4_2::Error::Other(err.to_string()))
}

impl PostgresView<'_> {
    fn builder_address(&self, builder: &Resource<PgConnectionBuilder>) -> Result<String, PgError> {
        self.table()
            .get(builder)
            .map(|builder| builder.address.clone())
            .map_err(|err| PgError::Other(format!("invalid connection builder handle: {err}")))
    }
}

impl v4_2::HostConnectionBuilder for PostgresView<'_> {
    async fn new(&mut self, address: String) -> wasmtime::Result<Resource<PgConnectionBuilder>> {
        Ok(self.table_mut().push(PgConnectionBuilder { address })?)
    }

    async fn set_ca_root(
        &mut self,
        builder: Resource<PgConnectionBuilder>,
        _certificate: String,
    ) -> Result<(), v4_2::Error> {
        self.builder_address(&builder).map_err(error)?;
        Err(v4_2::Error::ConnectionFailed(NO_TLS.to_string()))
    }

    async fn build(&mut self, builder: Resource<PgConnectionBuilder>) -> Result<Resource<PgConnection>, v4_2::Error> {
        let address = self.builder_address(&builder).map_err(error)?;
        let access = self.postgres().clone();
        let connection = access.open(&address).await.map_err(error)?;
        self.table_mut()
            .push(connection)
            .map_err(|err| v4_2::Error::Other(err.to_string()))
    }

    async fn drop(&mut self, builder: Resource<PgConnectionBuilder>) -> wasmtime::Result<()> {
        self.table_mut().delete(builder)?;
        Ok(())
    }
}

impl<T> v4_2::HostConnectionBuilderWithStore<T> for PostgresImports {
    async fn build_async(
        accessor: &Accessor<T, Self>,
        builder: Resource<PgConnectionBuilder>,
    ) -> Result<Resource<PgConnection>, v4_2::Error> {
        let address = with_view(accessor, |view| view.builder_address(&builder)).map_err(error)?;
        open(accessor, &address).await
    }
}

type Rows = (
    Vec<v4_2::Column>,
    StreamReader<v4_2::Row>,
    FutureReader<Result<(), v4_2::Error>>,
);

impl<T> v4_2::HostConnectionWithStore<T> for PostgresImports {
    async fn open_async(accessor: &Accessor<T, Self>, address: String) -> Result<Resource<PgConnection>, v4_2::Error> {
        open(accessor, &address).await
    }

    async fn query_async(
        accessor: &Accessor<T, Self>,
        connection: Resource<PgConnection>,
        statement: String,
        parameters: Vec<v4_2::ParameterValue>,
    ) -> wasmtime::Result<Result<Rows, v4_2::Error>> {
        let outcome = async {
            let parameters = params(parameters)?;
            let convert = |row: Vec<PgValue>| -> v4_2::Row { row.into_iter().map(to).collect() };
            connection_of(accessor, &connection)?
                .query_rows(&statement, &parameters, convert)
                .await
        }
        .await;
        let PgRows { columns, rows, end } = match outcome {
            Ok(rows) => rows,
            Err(err) => return Ok(Err(error(err))),
        };
        let columns = columns
            .into_iter()
            .map(|(name, data_type)| v4_2::Column {
                name,
                data_type: ty(data_type),
            })
            .collect();
        // A query whose task vanished without a word ended with its last row.
        let end = async move { end.await.unwrap_or(Ok(())).map_err(error) };
        let (rows, end) = listing(accessor, ChannelStream(rows), end)?;
        Ok(Ok((columns, rows, end)))
    }

    async fn execute_async(
        accessor: &Accessor<T, Self>,
        connection: Resource<PgConnection>,
        statement: String,
        parameters: Vec<v4_2::ParameterValue>,
    ) -> Result<u64, v4_2::Error> {
        let parameters = params(parameters).map_err(error)?;
        let connection = connection_of(accessor, &connection).map_err(error)?;
        connection.execute(&statement, &parameters).await.map_err(error)
    }
}
