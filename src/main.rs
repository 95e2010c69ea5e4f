//! The `datumfs` command: parses the command line, runs it, prints the error chain, sets the
//! exit code. No logic lives here.

fn main() {
    datumfs::cli::exit_quietly_on_closed_stdout();
    let code = match datumfs::cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("datumfs: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
