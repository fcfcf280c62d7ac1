//! The binaries' debug info (line tables, for backtraces) is stored zlib-compressed: about a
//! third of its size, and a panic's backtrace still names files and lines (std decompresses
//! it). Only the binaries: test executables are not shipped.
fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,--compress-debug-sections=zlib");
}
