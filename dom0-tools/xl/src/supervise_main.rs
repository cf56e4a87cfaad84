//! `xen-supervise`: see `xen_xl::supervise`.

fn main() -> std::process::ExitCode {
    xen_xl::supervise::main_from_env()
}
