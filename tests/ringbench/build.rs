//! Compiles the C peer (`csrc/ioring.c`: Xen's public `io/ring.h` from libxen-dev).

fn main() {
    println!("cargo:rerun-if-changed=csrc/ioring.c");
    let header = std::path::Path::new("/usr/include/xen/io/ring.h");
    if !header.exists() {
        // A clear failure instead of a compiler error deep in the C file.
        panic!(
            "ringbench needs Xen's public headers ({}): apt-get install libxen-dev \
             (tests/setup-host.sh installs it)",
            header.display()
        );
    }
    println!("cargo:rerun-if-changed={}", header.display());
    cc::Build::new()
        .file("csrc/ioring.c")
        .opt_level(2)
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .compile("ioring");
}
