//! A guest runtime driven line by line on stdin, for cross-process tests
//! (see `xen_shim::peer`).

fn main() -> std::process::ExitCode {
    xen_shim::peer::main_from_env()
}
