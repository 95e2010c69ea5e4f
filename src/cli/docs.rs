//! `datumfs completions SHELL` and `datumfs man`: shell completions and man pages, made from the
//! same command-line definitions the parser uses, so they never drift from it.

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, ValueEnum};
use std::path::PathBuf;

/// A shell to complete in.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    /// bash
    Bash,
    /// zsh
    Zsh,
    /// fish
    Fish,
}

/// Flags of `datumfs completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell (the script goes to stdout: e.g. `datumfs completions bash >
    /// /etc/bash_completion.d/datumfs`).
    shell: Shell,
}

/// Flags of `datumfs man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write datumfs.1 and one page per subcommand (datumfs-mount.1, datumfs-model-version.1,
    /// ...) into this directory; without it, datumfs.1 goes to stdout.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Runs `datumfs completions`.
pub fn completions(args: CompletionsArgs) -> Result<i32> {
    let mut cmd = super::Cli::command();
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "datumfs", &mut script);
    write_out(&script)
}

/// Writes to stdout; a reader that stopped early (`| head`) is no error.
fn write_out(bytes: &[u8]) -> Result<i32> {
    use std::io::Write;
    match std::io::stdout().write_all(bytes).and_then(|()| std::io::stdout().flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(0),
    }
}

/// Runs `datumfs man`.
pub fn man(args: ManArgs) -> Result<i32> {
    let cmd = super::Cli::command();
    let Some(dir) = args.dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page)?;
        return write_out(&page);
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = 0;
    let mut stack = vec![(String::from("datumfs"), cmd)];
    while let Some((name, cmd)) = stack.pop() {
        // The page's title is the display name, its synopsis the full command line.
        let cmd = cmd
            .display_name(name.clone())
            .bin_name(name.replace('-', " "))
            .version(env!("CARGO_PKG_VERSION"))
            .disable_version_flag(true);
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            stack.push((format!("{name}-{}", sub.get_name()), sub.clone()));
        }
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
        written += 1;
    }
    eprintln!("datumfs: {written} man page(s) written to {}", dir.display());
    Ok(0)
}
