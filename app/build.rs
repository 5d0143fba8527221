//! Hands `hot-code.ld` to the linker: the functions the service runs, laid out together
//! ahead of the rest of its code, so that fewer pages of it are resident (written by
//! `cargo xtask hot-code`, which says why).
//!
//! ELF targets only (GNU ld and lld both read the script's `INSERT`). A linker that does
//! not read linker scripts (mold) builds with `SHOP_HOT_CODE=off`.

use std::path::Path;

fn main() {
    println!("cargo::rerun-if-changed=hot-code.ld");
    println!("cargo::rerun-if-env-changed=SHOP_HOT_CODE");
    let elf = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let off = std::env::var("SHOP_HOT_CODE").is_ok_and(|v| v == "off");
    let script =
        Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("hot-code.ld");
    // A build of the dependencies alone (a container's cached layer) may not have it.
    if elf && !off && script.is_file() {
        println!("cargo::rustc-link-arg-bins=-Wl,-T,{}", script.display());
    }
}
