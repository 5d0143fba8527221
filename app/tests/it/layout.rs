//! The binary's code layout: `app/build.rs` hands `app/hot-code.ld` to the linker, which
//! gathers the functions the service runs ahead of the rest (`cargo xtask hot-code`).

/// An ELF section: its name, address and size.
#[derive(Debug)]
struct Section {
    name: String,
    address: u64,
    size: u64,
}

/// The sections of a 64-bit little-endian ELF file (the section header table).
fn sections(elf: &[u8]) -> Vec<Section> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!((elf[4], elf[5]), (2, 1), "not 64-bit little-endian");
    let field = |at: usize, width: usize| {
        let mut bytes = [0u8; 8];
        bytes[..width].copy_from_slice(&elf[at..at + width]);
        u64::from_le_bytes(bytes)
    };
    let u16_at = |at: usize| field(at, 2) as usize;
    let u32_at = |at: usize| field(at, 4) as usize;
    let u64_at = |at: usize| field(at, 8);
    let (table, entry, count, names) = (
        u64_at(0x28) as usize,
        u16_at(0x3a),
        u16_at(0x3c),
        u16_at(0x3e),
    );
    let header = |i: usize| table + i * entry;
    let strings = u64_at(header(names) + 24) as usize;
    (0..count)
        .map(|i| {
            let at = header(i);
            let name = &elf[strings + u32_at(at)..];
            let end = name.iter().position(|b| *b == 0).expect("a name ends");
            Section {
                name: String::from_utf8_lossy(&name[..end]).into_owned(),
                address: u64_at(at + 16),
                size: u64_at(at + 32),
            }
        })
        .collect()
}

#[cfg(target_os = "linux")]
#[test]
fn the_code_the_service_runs_is_laid_out_ahead_of_the_rest() {
    if std::env::var("SHOP_HOT_CODE").is_ok_and(|v| v == "off") {
        eprintln!("SHOP_HOT_CODE=off: this build links without the layout");
        return;
    }
    let elf = std::fs::read(env!("CARGO_BIN_EXE_app")).expect("the binary reads");
    let sections = sections(&elf);
    let find = |name: &str| {
        sections
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} in {sections:?}"))
    };
    let (hot, rest) = (find(".text.hot"), find(".text"));
    assert!(
        hot.address < rest.address,
        "the functions the service runs come first: {hot:?} {rest:?}"
    );
    // The script's patterns name thousands of functions (about 5 MB of this test build's
    // code, 7 MB of a release build's); built with the legacy symbol scheme (`RUSTFLAGS`
    // set, replacing .cargo/config.toml's) only the C functions and the standard library's
    // match, about 1 MB.
    assert!(
        hot.size > 2 << 20,
        "the layout gathers only {} bytes of code: {hot:?}",
        hot.size
    );
}
