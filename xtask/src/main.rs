//! The `cargo xtask` binary.

fn main() -> anyhow::Result<()> {
    xtask::main()
}
