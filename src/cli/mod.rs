//! The `meshcast` command line: parses flags and dispatches to the library.

pub fn main() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
