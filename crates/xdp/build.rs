//! Builds the XDP program (`bpf/relay.c`) with clang. Without clang (a fresh machine running `cargo run`) the build
//! still succeeds: it warns, and the crate reports at run time that the fast path is not built in.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=bpf/relay.c");
    println!("cargo:rerun-if-env-changed=TRAVERSE_CLANG");
    println!("cargo:rustc-check-cfg=cfg(traverse_xdp_built)");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("relay.o");
    let clang = std::env::var("TRAVERSE_CLANG").unwrap_or_else(|_| "clang".into());
    // Debian keeps <asm/types.h> under the multiarch directory; the BPF target does not look there by itself.
    let multiarch = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let status = Command::new(&clang)
        .args([
            "-O2",
            "-g",
            "-Wall",
            "-Werror",
            "-target",
            "bpf",
            "-I",
            &multiarch,
            "-c",
            "bpf/relay.c",
            "-o",
        ])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => println!("cargo:rustc-cfg=traverse_xdp_built"),
        Ok(s) => println!(
            "cargo:warning=XDP fast path not built: {clang} failed on bpf/relay.c ({s}); the binary will use the socket path"
        ),
        Err(e) => println!(
            "cargo:warning=XDP fast path not built: {clang} not found ({e}); install clang and libbpf-dev to build it"
        ),
    }
}
