//! The `roomcast` binary: a thin shell over the library (see `roomcast::cli`).

fn main() -> std::process::ExitCode {
    roomcast::cli::main()
}
