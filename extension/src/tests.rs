//! In-database tests of the SQL surface (run by `cargo pgrx test`).
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn emit_returns_increasing_ids() {
        let a = Spi::get_one::<i64>("SELECT herald.emit('invoice', 'created')")
            .unwrap()
            .unwrap();
        let b = Spi::get_one::<i64>("SELECT herald.emit('invoice', 'created')")
            .unwrap()
            .unwrap();
        assert!(b > a);
    }
}
