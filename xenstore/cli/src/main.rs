//! `xenstore`: Xen's xenstore command-line verbs (see `xenstore --help`).

fn main() {
    let code = xenstore_cli::run(
        std::env::args_os().collect(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    std::process::exit(code);
}
