//! Shell completions and man pages, generated from the clap definitions so they never drift.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use super::Cli;

pub fn completions(shell: clap_complete::Shell) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "pbxguard", &mut std::io::stdout());
}

/// Writes `pbxguard.8` and `pbxguard-SUB.8` (nested: `pbxguard-secret-set.8`) into `dir`, or
/// prints `pbxguard(8)` when no folder is given.
pub fn man(dir: Option<&Path>) -> anyhow::Result<()> {
    let cmd = Cli::command();
    let Some(dir) = dir else {
        clap_mangen::Man::new(cmd)
            .section("8")
            .render(&mut std::io::stdout())
            .context("writing the man page")?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_pages(&cmd, "pbxguard", dir)
}

fn write_pages(cmd: &clap::Command, name: &str, dir: &Path) -> anyhow::Result<()> {
    let page = cmd.clone().name(name.to_string());
    let path = dir.join(format!("{name}.8"));
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .section("8")
        .render(&mut out)
        .context("rendering a man page")?;
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}
