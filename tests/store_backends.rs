//! The store's behaviour on both backends: the same checks against a fresh SQLite file and a
//! throwaway PostgreSQL cluster (tests/common/postgres.rs).

mod common;

use common::postgres::Postgres;

/// The harness itself: a cluster on a free loopback port that answers queries, and is gone
/// (files and server) after drop.
#[test]
fn the_postgres_harness_starts_answers_and_cleans_up() {
    let Some(pg) = Postgres::start("the_postgres_harness_starts_answers_and_cleans_up") else {
        return;
    };
    pg.create_database("probe");
    assert_eq!(pg.psql("probe", "SELECT 1"), "1");
    assert_eq!(pg.psql("probe", "SELECT current_database()"), "probe");
    let socket = pg.socket_dir().join(format!(".s.PGSQL.{}", pg.port));
    assert!(socket.exists(), "the socket lives in the private folder");
    let port = pg.port;
    drop(pg);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server stopped"
    );
    assert!(!socket.exists());
}
