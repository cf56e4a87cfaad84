//! `xen-shimd`: the hypervisor shim's control daemon (see `xen_shim::daemon`).

fn main() -> std::process::ExitCode {
    xen_shim::daemon::main_from_env()
}
