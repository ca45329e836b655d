fn main() -> std::process::ExitCode {
    ptuning::cli::main()
}
