//! `tcache completions SHELL` and `tcache man [COMMAND]`: the command line's own documentation,
//! generated from the clap definitions in `args.rs` (no backend is opened).

use clap::CommandFactory;
use template_cache::{Error, ErrorKind};

use crate::args::Cli;
use crate::{EXIT_OK, output};

/// Runs `tcache completions SHELL`: the completion script on stdout.
pub fn completions(shell: clap_complete::Shell) -> template_cache::Result<u8> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "tcache", &mut script);
    output::print_bytes(&script);
    Ok(EXIT_OK)
}

/// Runs `tcache man [COMMAND]`: tcache(1), or tcache-COMMAND(1), as roff on stdout.
pub fn man(command: Option<&str>) -> template_cache::Result<u8> {
    let mut cmd = Cli::command();
    // Propagates global options and names subcommands `tcache-COMMAND`.
    cmd.build();
    let source = format!("tcache {}", cmd.get_version().unwrap_or_default());
    let man = match command {
        None => clap_mangen::Man::new(cmd),
        Some(name) => {
            let sub = cmd.find_subcommand(name).cloned().ok_or_else(|| {
                Error::new(
                    ErrorKind::ConfigInvalid,
                    format!("tcache has no command {name:?}"),
                )
            })?;
            // tcache-COMMAND(1), from the tcache of this version.
            clap_mangen::Man::new(sub)
                .title(format!("tcache-{name}"))
                .source(source)
        }
    };
    let mut roff = Vec::new();
    man.render(&mut roff)
        .map_err(|e| Error::new(ErrorKind::Io, format!("rendering the man page: {e}")))?;
    output::print_bytes(&roff);
    Ok(EXIT_OK)
}
