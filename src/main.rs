fn main() -> std::process::ExitCode {
    meshcast::cli::main()
}
