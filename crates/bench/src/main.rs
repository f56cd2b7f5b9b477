//! `balsa-bench`: see the library's documentation (and `docs/BENCHMARKS.md`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = balsa_bench::args::Cli::parse();
    let runtime = match balsa_bench::runtime(&cli.args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(balsa_bench::execute(cli.args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
