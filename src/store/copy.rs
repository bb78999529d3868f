//! `pbxguard db copy`: one host's SQLite store copied into an empty PostgreSQL database, so a
//! site that started on one host can grow into several.
//!
//! The copy knows no table by name. It lists the tables the SQLite migrations made, reads each
//! column's type from PostgreSQL's `information_schema` (the twin migrations made the target
//! the same schema), and binds every value with that type; foreign keys decide the order. A
//! migration that adds a table or a column therefore needs no change here. Everything is
//! written in one PostgreSQL transaction holding the store's write lock: a failure leaves the
//! target as empty as it was.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::TryStreamExt;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{Postgres, QueryBuilder, Row};

use super::tx::WriteTx;
use super::{Backend, Store, StoreError, MIGRATOR};

/// sqlx's own bookkeeping: each side keeps its own, written by its migrator.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";
/// Not copied: which hosts run is the cluster's own, current knowledge (each node writes its
/// row when it starts); a copied row would name a host that may never join.
const NODES_TABLE: &str = "nodes";

/// Bind parameters per INSERT; PostgreSQL allows 65 535.
const MAX_PARAMS: usize = 30_000;
/// Rows per INSERT, whatever the width.
const MAX_ROWS: usize = 1_000;

/// How many rows one table received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCount {
    pub table: String,
    pub rows: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("the source of a copy must be a SQLite database")]
    SourceNotSqlite,
    #[error("the target of a copy must be a PostgreSQL database (postgres:// or postgresql://)")]
    TargetNotPostgres,
    #[error("the SQLite database holds no pbxguard schema (run `pbxguard init` first)")]
    SourceNotInitialised,
    #[error("the SQLite database is at schema version {found}, this pbxguard expects {expected}: run `pbxguard init` with this version first (it brings the database up to date), then copy")]
    SourceOlder { found: i64, expected: i64 },
    #[error("the SQLite database is at schema version {found}, newer than this pbxguard ({expected}): upgrade pbxguard to the version that wrote it, then copy")]
    SourceNewer { found: i64, expected: i64 },
    #[error("the target database is not empty (rows in {tables}); db copy fills an empty database only, and wrote nothing")]
    TargetNotEmpty { tables: String },
    #[error("table {0} of the SQLite database does not exist in the PostgreSQL database after migrating it (do both come from the same pbxguard version?)")]
    MissingTable(String),
    #[error(
        "column {table}.{column} of the SQLite database does not exist in the PostgreSQL database"
    )]
    MissingColumn { table: String, column: String },
    #[error(
        "column {table}.{column} has PostgreSQL type {data_type}, which db copy does not convert"
    )]
    UnsupportedType {
        table: String,
        column: String,
        data_type: String,
    },
    #[error("column {table}.{column} holds {value} where a boolean (0 or 1) belongs")]
    NotBoolean {
        table: String,
        column: String,
        value: i64,
    },
    #[error("reading table {table} from SQLite: {source}")]
    Read { table: String, source: sqlx::Error },
    #[error("writing table {table} to PostgreSQL (nothing was kept): {source}")]
    Write {
        table: String,
        #[source]
        source: StoreError,
    },
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// The PostgreSQL types a copied column may have, and how its SQLite values are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Float,
    Text,
    Bytes,
    /// SQLite keeps booleans as the integers 0 and 1.
    Bool,
}

impl Kind {
    fn of(data_type: &str) -> Option<Kind> {
        Some(match data_type {
            "bigint" | "integer" | "smallint" => Kind::Int,
            "double precision" | "real" => Kind::Float,
            "text" | "character varying" | "character" => Kind::Text,
            "bytea" => Kind::Bytes,
            "boolean" => Kind::Bool,
            _ => return None,
        })
    }
}

/// One value on its way, typed for the bind.
enum Value {
    Int(Option<i64>),
    Float(Option<f64>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
    Bool(Option<bool>),
}

/// One table to copy: its name and the columns both sides have, with the target's kinds.
struct Table {
    name: String,
    columns: Vec<(String, Kind)>,
    /// Whether an identity column needs `OVERRIDING SYSTEM VALUE` to take the copied ids.
    has_identity: bool,
}

/// Copies every table of `source` (SQLite) into `target` (PostgreSQL), which is migrated first
/// and must hold no row in any table. Returns the rows copied per table, in copy order.
pub async fn copy_sqlite_to_postgres(
    source: &Store,
    target: &Store,
) -> Result<Vec<TableCount>, CopyError> {
    let Backend::Sqlite(src) = &source.backend else {
        return Err(CopyError::SourceNotSqlite);
    };
    let Backend::Postgres(dst) = &target.backend else {
        return Err(CopyError::TargetNotPostgres);
    };
    check_source_version(src).await?;
    // Before migrating: a database that holds rows is not touched at all, not even migrated.
    {
        let mut conn = dst.acquire().await.map_err(StoreError::from)?;
        refuse_rows(&mut conn).await?;
    }
    target.migrate().await?;

    let mut tx = WriteTx::<Postgres>::begin(dst, &target.health).await?;
    // Again under the write lock: a node may have started on it in the meantime.
    refuse_rows(&mut tx).await?;
    let tables = plan(src, &mut tx).await?;

    // One read transaction: every table from the same snapshot, even if something writes.
    let mut read = src.begin().await.map_err(StoreError::from)?;
    let mut counts = Vec::with_capacity(tables.len());
    for table in &tables {
        let rows = copy_table(&mut read, &mut tx, table).await?;
        counts.push(TableCount {
            table: table.name.clone(),
            rows,
        });
    }
    read.rollback().await.map_err(StoreError::from)?;
    // Links minted before node names existed were this host's files: say so, or every node
    // of the cluster would take them for its own.
    if let Some(node) = source.node() {
        sqlx::query("UPDATE recording_links SET node = $1 WHERE node IS NULL")
            .bind(node)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
    }
    move_sequences(&mut tx, &tables).await?;
    tx.commit().await?;
    Ok(counts)
}

/// The source must have exactly the migrations this binary embeds: an older file would be
/// copied into a newer schema with columns left to their defaults, a newer one would lose
/// what this version does not know.
async fn check_source_version(src: &SqlitePool) -> Result<(), CopyError> {
    let expected = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let table: Option<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name = $1")
            .bind(MIGRATIONS_TABLE)
            .fetch_optional(src)
            .await
            .map_err(StoreError::from)?;
    if table.is_none() {
        return Err(CopyError::SourceNotInitialised);
    }
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(src)
            .await
            .map_err(StoreError::from)?;
    let found = applied.iter().copied().max().unwrap_or(0);
    let known: BTreeSet<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    if found > expected || applied.iter().any(|v| !known.contains(v)) {
        return Err(CopyError::SourceNewer { found, expected });
    }
    if applied.len() < known.len() {
        return Err(CopyError::SourceOlder { found, expected });
    }
    Ok(())
}

/// Fails with [`CopyError::TargetNotEmpty`] when any table but sqlx's holds a row.
async fn refuse_rows(conn: &mut PgConnection) -> Result<(), CopyError> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::TEXT FROM pg_tables
         WHERE schemaname = current_schema() AND tablename <> $1 ORDER BY tablename",
    )
    .bind(MIGRATIONS_TABLE)
    .fetch_all(&mut *conn)
    .await
    .map_err(StoreError::from)?;
    let mut full = Vec::new();
    for table in tables {
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {})", quote(&table));
        let any: bool = sqlx::query_scalar(&sql)
            .fetch_one(&mut *conn)
            .await
            .map_err(StoreError::from)?;
        if any {
            full.push(table);
        }
    }
    if full.is_empty() {
        Ok(())
    } else {
        Err(CopyError::TargetNotEmpty {
            tables: full.join(", "),
        })
    }
}

/// The tables to copy, each with its columns typed from PostgreSQL, parents before the tables
/// whose foreign keys name them.
async fn plan(src: &SqlitePool, pg: &mut PgConnection) -> Result<Vec<Table>, CopyError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master
         WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name <> $1
           AND name <> $2
         ORDER BY name",
    )
    .bind(MIGRATIONS_TABLE)
    .bind(NODES_TABLE)
    .fetch_all(src)
    .await
    .map_err(StoreError::from)?;

    let mut pg_columns: BTreeMap<String, BTreeMap<String, (String, bool)>> = BTreeMap::new();
    let rows = sqlx::query(
        "SELECT table_name::TEXT, column_name::TEXT, data_type::TEXT,
                (is_identity = 'YES') AS identity
         FROM information_schema.columns WHERE table_schema = current_schema()",
    )
    .fetch_all(&mut *pg)
    .await
    .map_err(StoreError::from)?;
    for row in rows {
        let table: String = row.try_get(0).map_err(StoreError::from)?;
        let column: String = row.try_get(1).map_err(StoreError::from)?;
        let data_type: String = row.try_get(2).map_err(StoreError::from)?;
        let identity: bool = row.try_get(3).map_err(StoreError::from)?;
        pg_columns
            .entry(table)
            .or_default()
            .insert(column, (data_type, identity));
    }

    let mut tables = Vec::with_capacity(names.len());
    for name in names {
        let Some(target) = pg_columns.get(&name) else {
            return Err(CopyError::MissingTable(name));
        };
        let columns: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info($1) ORDER BY cid")
                .bind(&name)
                .fetch_all(src)
                .await
                .map_err(StoreError::from)?;
        let mut typed = Vec::with_capacity(columns.len());
        for column in columns {
            let Some((data_type, _)) = target.get(&column) else {
                return Err(CopyError::MissingColumn {
                    table: name,
                    column,
                });
            };
            let Some(kind) = Kind::of(data_type) else {
                return Err(CopyError::UnsupportedType {
                    table: name,
                    column,
                    data_type: data_type.clone(),
                });
            };
            typed.push((column, kind));
        }
        tables.push(Table {
            has_identity: target.values().any(|(_, identity)| *identity),
            name,
            columns: typed,
        });
    }

    let edges: Vec<(String, String)> = sqlx::query_as(
        "SELECT child.relname::TEXT, parent.relname::TEXT
         FROM pg_constraint c
         JOIN pg_class child ON child.oid = c.conrelid
         JOIN pg_class parent ON parent.oid = c.confrelid
         WHERE c.contype = 'f' AND c.connamespace = current_schema()::regnamespace",
    )
    .fetch_all(&mut *pg)
    .await
    .map_err(StoreError::from)?;
    Ok(parents_first(tables, &edges))
}

/// Orders `tables` so that each comes after every table its foreign keys reference (`edges`
/// are child, parent). A circle (none exists today) keeps the remaining tables in name order;
/// the insert that breaks a key then fails and the copy is rolled back.
fn parents_first(mut tables: Vec<Table>, edges: &[(String, String)]) -> Vec<Table> {
    let mut ordered = Vec::with_capacity(tables.len());
    let mut placed = BTreeSet::new();
    while !tables.is_empty() {
        let ready = tables.iter().position(|t| {
            edges
                .iter()
                .filter(|(child, parent)| *child == t.name && *parent != t.name)
                .all(|(_, parent)| {
                    placed.contains(parent) || !tables.iter().any(|o| &o.name == parent)
                })
        });
        let table = tables.remove(ready.unwrap_or(0));
        placed.insert(table.name.clone());
        ordered.push(table);
    }
    ordered
}

/// Streams one table from SQLite into PostgreSQL in multi-row INSERTs; the rows written.
async fn copy_table(
    read: &mut sqlx::SqliteConnection,
    tx: &mut WriteTx<Postgres>,
    table: &Table,
) -> Result<u64, CopyError> {
    let columns: Vec<String> = table.columns.iter().map(|(c, _)| quote(c)).collect();
    let select = format!("SELECT {} FROM {}", columns.join(", "), quote(&table.name));
    let batch_rows = (MAX_PARAMS / table.columns.len().max(1)).clamp(1, MAX_ROWS);
    let read_err = |source| CopyError::Read {
        table: table.name.clone(),
        source,
    };
    let mut stream = sqlx::query(&select).fetch(&mut *read);
    let mut batch: Vec<Vec<Value>> = Vec::with_capacity(batch_rows);
    let (mut read_rows, mut written) = (0u64, 0u64);
    while let Some(row) = stream.try_next().await.map_err(read_err)? {
        batch.push(decode(&row, table)?);
        read_rows += 1;
        if batch.len() == batch_rows {
            written += insert(tx, table, &columns, std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        written += insert(tx, table, &columns, batch).await?;
    }
    if written != read_rows {
        // An INSERT without ON CONFLICT writes every row or fails; this would be a bug.
        return Err(CopyError::Write {
            table: table.name.clone(),
            source: StoreError::Query(sqlx::Error::Protocol(format!(
                "{read_rows} rows read, {written} written"
            ))),
        });
    }
    Ok(written)
}

/// One SQLite row as typed values, in the table's column order.
fn decode(row: &SqliteRow, table: &Table) -> Result<Vec<Value>, CopyError> {
    let err = |source| CopyError::Read {
        table: table.name.clone(),
        source,
    };
    let mut values = Vec::with_capacity(table.columns.len());
    for (i, (column, kind)) in table.columns.iter().enumerate() {
        values.push(match kind {
            Kind::Int => Value::Int(row.try_get(i).map_err(err)?),
            Kind::Float => Value::Float(row.try_get(i).map_err(err)?),
            Kind::Text => Value::Text(row.try_get(i).map_err(err)?),
            Kind::Bytes => Value::Bytes(row.try_get(i).map_err(err)?),
            Kind::Bool => {
                let raw: Option<i64> = row.try_get(i).map_err(err)?;
                Value::Bool(match raw {
                    None => None,
                    Some(0) => Some(false),
                    Some(1) => Some(true),
                    Some(value) => {
                        return Err(CopyError::NotBoolean {
                            table: table.name.clone(),
                            column: column.clone(),
                            value,
                        })
                    }
                })
            }
        });
    }
    Ok(values)
}

async fn insert(
    tx: &mut WriteTx<Postgres>,
    table: &Table,
    columns: &[String],
    rows: Vec<Vec<Value>>,
) -> Result<u64, CopyError> {
    let mut sql = QueryBuilder::<Postgres>::new(format!(
        "INSERT INTO {} ({}) {}",
        quote(&table.name),
        columns.join(", "),
        if table.has_identity {
            // The copied ids are kept; an identity GENERATED ALWAYS would refuse them.
            "OVERRIDING SYSTEM VALUE "
        } else {
            ""
        }
    ));
    sql.push_values(rows, |mut out, row| {
        for value in row {
            match value {
                Value::Int(v) => out.push_bind(v),
                Value::Float(v) => out.push_bind(v),
                Value::Text(v) => out.push_bind(v),
                Value::Bytes(v) => out.push_bind(v),
                Value::Bool(v) => out.push_bind(v),
            };
        }
    });
    let done = tx
        .exec(sql.build())
        .await
        .map_err(|source| CopyError::Write {
            table: table.name.clone(),
            source,
        })?;
    Ok(done.rows_affected())
}

/// Moves every identity (or serial) sequence of the copied tables past the highest copied
/// id, so the next row the daemon inserts does not collide with a copied one.
async fn move_sequences(tx: &mut WriteTx<Postgres>, tables: &[Table]) -> Result<(), CopyError> {
    let copied: BTreeSet<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::TEXT, column_name::TEXT FROM information_schema.columns
         WHERE table_schema = current_schema()
           AND (is_identity = 'YES' OR column_default LIKE 'nextval(%')",
    )
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)?;
    for (table, column) in columns {
        if !copied.contains(table.as_str()) {
            continue;
        }
        let write_err = |source: sqlx::Error| CopyError::Write {
            table: table.clone(),
            source: source.into(),
        };
        let sequence: Option<String> = sqlx::query_scalar("SELECT pg_get_serial_sequence($1, $2)")
            .bind(quote(&table))
            .bind(&column)
            .fetch_one(&mut **tx)
            .await
            .map_err(write_err)?;
        let Some(sequence) = sequence else {
            continue;
        };
        let max: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT MAX({})::BIGINT FROM {}",
            quote(&column),
            quote(&table)
        ))
        .fetch_one(&mut **tx)
        .await
        .map_err(write_err)?;
        // An empty table keeps its fresh sequence (setval cannot go below its minimum, 1).
        if let Some(max) = max.filter(|m| *m >= 1) {
            sqlx::query("SELECT setval($1::regclass, $2)")
                .bind(&sequence)
                .bind(max)
                .fetch_one(&mut **tx)
                .await
                .map_err(write_err)?;
        }
    }
    Ok(())
}

/// An SQL identifier in double quotes: table and column names come from the databases'
/// catalogues, never from a user, but a name is quoted all the same.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str) -> Table {
        Table {
            name: name.into(),
            columns: Vec::new(),
            has_identity: false,
        }
    }

    #[test]
    fn parents_come_before_the_tables_that_reference_them() {
        let tables = ["mfa_totp", "nodes", "sessions", "users", "zeta"]
            .into_iter()
            .map(table)
            .collect();
        let edges = [
            ("sessions".to_string(), "users".to_string()),
            ("mfa_totp".to_string(), "users".to_string()),
            ("users".to_string(), "nodes".to_string()),
            ("zeta".to_string(), "zeta".to_string()),
        ];
        let order: Vec<String> = parents_first(tables, &edges)
            .into_iter()
            .map(|t| t.name)
            .collect();
        let at = |n: &str| order.iter().position(|t| t == n).unwrap();
        assert!(at("nodes") < at("users"), "{order:?}");
        assert!(at("users") < at("sessions"), "{order:?}");
        assert!(at("users") < at("mfa_totp"), "{order:?}");
        assert_eq!(order.len(), 5);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote("users"), "\"users\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn known_types_only() {
        assert_eq!(Kind::of("bigint"), Some(Kind::Int));
        assert_eq!(Kind::of("bytea"), Some(Kind::Bytes));
        assert_eq!(Kind::of("boolean"), Some(Kind::Bool));
        assert_eq!(Kind::of("text"), Some(Kind::Text));
        assert_eq!(Kind::of("jsonb"), None);
        assert_eq!(Kind::of("timestamp with time zone"), None);
    }
}
