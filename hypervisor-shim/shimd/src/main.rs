//! `xen-shimd`: the hypervisor shim's control daemon (see the `xen_shimd`
//! library).

fn main() -> std::process::ExitCode {
    xen_shimd::main_from_env()
}
