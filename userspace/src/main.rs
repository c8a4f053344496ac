//! The `keel` daemon's entry point.
fn main() -> anyhow::Result<()> {
    keel::cli::main()
}
