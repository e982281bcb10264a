//! Builds the guest's vDSO (`vdso/vdso.c`) with the system C compiler into
//! `$OUT_DIR/vdso.so`, which `src/vdso.rs` embeds with `include_bytes!`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for file in [
        "vdso/vdso.c",
        "vdso/vdso.h",
        "vdso/vdso.lds",
        "vdso/vdso.map",
    ] {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-env-changed=CC");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let so = out.join("vdso.so");
    let status = Command::new(&cc)
        .args([
            "-shared",
            "-nostdlib",
            "-fPIC",
            "-O2",
            "-fno-stack-protector",
            "-fno-asynchronous-unwind-tables",
            "-fno-unwind-tables",
            "-fcf-protection=none",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-Wl,--hash-style=both,-soname=linux-vdso.so.1",
            "-Wl,--version-script=vdso/vdso.map",
            "-Wl,-T,vdso/vdso.lds",
            "-Wl,-z,max-page-size=4096",
            "-Wl,--build-id=none",
            "-Wl,-Bsymbolic",
            "-Wl,--no-undefined",
            "vdso/vdso.c",
            "-o",
        ])
        .arg(&so)
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}` to build the vDSO: {e}"));
    assert!(
        status.success(),
        "building the vDSO with `{cc}` failed: {status}"
    );
}
