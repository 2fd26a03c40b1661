fn main() -> std::process::ExitCode {
    zt_aas::cli::main()
}
