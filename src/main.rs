fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(chatspace_mpi::run() as u8)
}
