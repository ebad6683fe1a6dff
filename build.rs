//! Rebuilds when a migration is added or changed: refinery embeds the SQL
//! files of `migrations/` at compile time.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
