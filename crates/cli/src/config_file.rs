//! `--config FILE`: options from a TOML file, for every command.
//!
//! Keys are the long option names. Global options sit at the top level; a command's options
//! sit in the table named after it (`[serve]`, `[check]`, ...), where a nested table is a
//! prefix (`[serve.resolve] missing = "auto"` is `--resolve-missing auto`) and `dir` is the
//! template directory. The command line and the environment override the file. The file's
//! values become command-line arguments before parsing, so every value is checked by the same
//! parser as its flag; an unknown key, a value of the wrong type or out of range is an error
//! naming the key.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::args::Cli;

/// The environment variable naming a config file when `--config` is not given.
pub const CONFIG_ENV: &str = "TCACHE_CONFIG";

/// The largest config file read.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The command line with the config file's options in it.
#[derive(Debug, Default)]
pub struct Merged {
    /// The arguments to parse.
    pub argv: Vec<OsString>,
    /// The config file, if one was used.
    pub file: Option<PathBuf>,
    /// Each argument taken from the file: its flag (`--debounce`) and its key (`serve.debounce`).
    pub from_file: Vec<(String, String)>,
}

impl Merged {
    /// Explains a parse error caused by a value from the config file, naming the file and the
    /// key; `None` when the error is not about one.
    pub fn explain(&self, err: &clap::Error) -> Option<String> {
        let file = self.file.as_ref()?;
        let arg = match err.get(clap::error::ContextKind::InvalidArg)? {
            clap::error::ContextValue::String(s) => s.clone(),
            _ => return None,
        };
        let flag = arg.split([' ', '=']).next().unwrap_or_default();
        let (_, key) = self.from_file.iter().find(|(f, _)| f == flag)?;
        let text = err.render().to_string();
        let first = text.lines().next().unwrap_or_default();
        let why = first.strip_prefix("error: ").unwrap_or(first);
        Some(format!("config file {}: key {key}: {why}", file.display()))
    }
}

/// Merges the config file named by `--config` (or `TCACHE_CONFIG`) into `argv`. Without one,
/// `argv` is returned as it is.
pub fn merge(argv: Vec<OsString>) -> Result<Merged, String> {
    let cli = Cli::command();
    let scan = scan(&cli, &argv);
    let file = match scan.config.clone() {
        Some(f) => f,
        None => match std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()) {
            Some(f) => PathBuf::from(f),
            None => {
                return Ok(Merged {
                    argv,
                    ..Merged::default()
                });
            }
        },
    };
    let table = read(&file)?;
    let at = |key: &str| format!("config file {}: key {key}", file.display());
    let mut inserted: Vec<OsString> = Vec::new();
    let mut from_file = Vec::new();
    for (key, value) in &table {
        if let Some(sub) = cli.find_subcommand(key) {
            let toml::Value::Table(t) = value else {
                return Err(format!("{}: must be a table ([{key}])", at(key)));
            };
            let mut flat = Vec::new();
            flatten(&[], t, &mut flat);
            for (k, written, v) in flat {
                let path = format!("{key}.{written}");
                let Some(arg) = find(sub, &k) else {
                    return Err(format!(
                        "{}: unknown option of `tcache {key}`{}",
                        at(&path),
                        if find(&cli, &k).is_some() {
                            " (it is a global option: put it at the top level)"
                        } else {
                            ""
                        }
                    ));
                };
                // Only the running command's table applies; the others are still checked.
                let values = values(arg, &v).map_err(|why| format!("{}: {why}", at(&path)))?;
                if scan.subcommand.as_deref() != Some(key.as_str()) || given(arg, &scan) {
                    continue;
                }
                push(arg, values, &path, &mut inserted, &mut from_file);
            }
        } else if let Some(arg) = find(&cli, key).filter(|a| a.is_global_set()) {
            if arg.get_id() == "config" {
                return Err(format!("{}: a config file cannot name another", at(key)));
            }
            let values = values(arg, value).map_err(|why| format!("{}: {why}", at(key)))?;
            if !given(arg, &scan) {
                push(arg, values, key, &mut inserted, &mut from_file);
            }
        } else {
            return Err(format!(
                "{}: unknown key (global options sit at the top level, a command's options in \
                 its table, e.g. [serve])",
                at(key)
            ));
        }
    }
    let mut argv = argv;
    let at = scan.subcommand_at.map_or(argv.len(), |i| i + 1);
    argv.splice(at..at, inserted);
    Ok(Merged {
        argv,
        file: Some(file),
        from_file,
    })
}

/// What the command line holds, read without parsing it fully.
#[derive(Debug, Default)]
struct Scan {
    /// `--config FILE`.
    config: Option<PathBuf>,
    /// The subcommand and its index in argv.
    subcommand: Option<String>,
    subcommand_at: Option<usize>,
    /// Long names of options given.
    longs: Vec<String>,
    /// Short names of options given.
    shorts: Vec<char>,
    /// Whether a positional argument follows the subcommand.
    positional: bool,
}

/// Reads argv as clap would: options (with their values) before and after the subcommand.
fn scan(cli: &clap::Command, argv: &[OsString]) -> Scan {
    let mut out = Scan::default();
    let mut args = argv.iter().enumerate().skip(1);
    let mut cmd = cli;
    while let Some((i, a)) = args.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            out.positional |= out.subcommand.is_some() && args.next().is_some();
            break;
        }
        if let Some(long) = s.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, _)) => (n, true),
                None => (long, false),
            };
            out.longs.push(name.to_owned());
            let arg = find(cmd, name).or_else(|| find(cli, name));
            let takes = arg.is_some_and(|a| a.get_action().takes_values());
            let value = if takes && !inline {
                args.next().map(|(_, v)| v.clone())
            } else {
                long.split_once('=').map(|(_, v)| OsString::from(v))
            };
            if name == "config" {
                out.config = value.map(PathBuf::from);
            }
        } else if let Some(shorts) = s.strip_prefix('-').filter(|x| !x.is_empty()) {
            out.shorts.extend(shorts.chars());
        } else if out.subcommand.is_none() {
            if let Some(sub) = cli.find_subcommand(s.as_ref()) {
                out.subcommand = Some(s.into_owned());
                out.subcommand_at = Some(i);
                cmd = sub;
            } else {
                break;
            }
        } else {
            out.positional = true;
        }
    }
    out
}

/// The argument of `cmd` with long name `key`, or its positional with id `key`.
fn find<'a>(cmd: &'a clap::Command, key: &str) -> Option<&'a clap::Arg> {
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(key) || (a.is_positional() && a.get_id().as_str() == key))
}

/// Whether the command line or the environment already gives `arg`.
fn given(arg: &clap::Arg, scan: &Scan) -> bool {
    if arg.is_positional() {
        return scan.positional;
    }
    let long = arg
        .get_long()
        .is_some_and(|l| scan.longs.iter().any(|g| g == l));
    let short = arg.get_short().is_some_and(|c| scan.shorts.contains(&c));
    let env = arg
        .get_env()
        .and_then(std::env::var_os)
        .is_some_and(|v| !v.is_empty());
    long || short || env
}

/// The command-line values of a TOML value for `arg`.
enum Values {
    /// A flag given (`true`) or not.
    Flag(bool),
    /// A flag given this many times (`verbose = 2`).
    Count(u64),
    /// Values, each passed as `--flag VALUE`.
    Each(Vec<String>),
}

fn values(arg: &clap::Arg, value: &toml::Value) -> Result<Values, String> {
    use clap::ArgAction;
    let scalar = |v: &toml::Value| -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            _ => Err(format!("{v} is not a string, number or boolean")),
        }
    };
    match arg.get_action() {
        ArgAction::SetTrue => match value {
            toml::Value::Boolean(b) => Ok(Values::Flag(*b)),
            other => Err(format!("{other} is not a boolean (true or false)")),
        },
        ArgAction::Count => match value {
            toml::Value::Integer(n) if (0..=8).contains(n) => Ok(Values::Count(*n as u64)),
            other => Err(format!("{other} is not a whole number from 0 to 8")),
        },
        ArgAction::Append => match value {
            toml::Value::Array(items) => items
                .iter()
                .map(scalar)
                .collect::<Result<_, _>>()
                .map(Values::Each),
            other => scalar(other).map(|s| Values::Each(vec![s])),
        },
        _ => match value {
            toml::Value::Array(_) => Err("takes one value, not a list".into()),
            other => scalar(other).map(|s| Values::Each(vec![s])),
        },
    }
}

fn push(
    arg: &clap::Arg,
    values: Values,
    key: &str,
    out: &mut Vec<OsString>,
    from_file: &mut Vec<(String, String)>,
) {
    let flag = match (arg.get_long(), arg.is_positional()) {
        (_, true) => None,
        (Some(l), false) => Some(format!("--{l}")),
        (None, false) => return,
    };
    match (values, &flag) {
        (Values::Flag(true), Some(f)) => out.push(f.into()),
        (Values::Count(n), Some(f)) => out.extend((0..n).map(|_| OsString::from(f))),
        (Values::Each(vs), Some(f)) => {
            for v in vs {
                // `--flag=VALUE`: a value starting with `-` is never taken for a flag.
                out.push(format!("{f}={v}").into());
            }
        }
        (Values::Each(vs), None) => out.extend(vs.into_iter().map(OsString::from)),
        _ => {}
    }
    let shown = flag.unwrap_or_else(|| {
        arg.get_value_names()
            .and_then(|n| n.first())
            .map_or_else(|| arg.get_id().to_string(), |n| n.to_string())
    });
    from_file.push((shown, key.to_owned()));
}

/// The keys of `table` with nested tables as prefixes: `(option name, key as written, value)`,
/// e.g. `("resolve-missing", "resolve.missing", "auto")`.
fn flatten(prefix: &[&str], table: &toml::Table, out: &mut Vec<(String, String, toml::Value)>) {
    for (k, v) in table {
        let mut path = prefix.to_vec();
        path.push(k);
        match v {
            toml::Value::Table(t) => flatten(&path, t, out),
            other => out.push((path.join("-"), path.join("."), other.clone())),
        }
    }
}

fn read(file: &Path) -> Result<toml::Table, String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| format!("config file {}: {e}", file.display()))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!(
            "config file {} is larger than {MAX_CONFIG_BYTES} bytes",
            file.display()
        ));
    }
    text.parse::<toml::Table>().map_err(|e| {
        format!(
            "config file {}: {}",
            file.display(),
            e.to_string().trim_end()
        )
    })
}

/// Whether `s` names a config file option on the command line (for tests).
#[cfg(test)]
fn is_config_flag(s: &std::ffi::OsStr) -> bool {
    s.to_string_lossy().starts_with("--config")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(toml: &str, args: &[&str]) -> Result<Vec<String>, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, toml).unwrap();
        let mut argv: Vec<OsString> = vec!["tcache".into(), "--config".into(), file.clone().into()];
        argv.extend(args.iter().map(OsString::from));
        merge(argv).map(|m| {
            m.argv
                .iter()
                .filter(|a| !is_config_flag(a) && a.as_os_str() != file.as_os_str())
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        })
    }

    #[test]
    fn file_options_go_after_the_subcommand_and_flags_win() {
        let toml = r#"
            namespace = "prod"
            verbose = 1
            [check]
            dir = "/srv/t"
            batch-size = 64
            deep = true
            exclude = ["a/**", "b/**"]
            [warm]
            batch-size = 9
        "#;
        let argv = merged(toml, &["check", "--batch-size", "8"]).unwrap();
        // The file's options (in the file's key order) go right after the subcommand, before
        // the command line's, which come last as given.
        assert_eq!(argv[..2], ["tcache", "check"], "{argv:?}");
        assert_eq!(argv[argv.len() - 2..], ["--batch-size", "8"], "{argv:?}");
        let mut from_file = argv[2..argv.len() - 2].to_vec();
        from_file.sort();
        assert_eq!(
            from_file,
            [
                "--deep",
                "--exclude=a/**",
                "--exclude=b/**",
                "--namespace=prod",
                "--verbose",
                "/srv/t"
            ],
            "{argv:?}"
        );
        use clap::Parser;
        let cli = Cli::try_parse_from(&argv).unwrap();
        assert_eq!(cli.namespace, "prod");
        // A directory on the command line wins over the file's.
        let argv = merged(toml, &["check", "/other"]).unwrap();
        assert!(!argv.iter().any(|a| a == "/srv/t"), "{argv:?}");
    }

    #[test]
    fn the_example_config_parses_with_every_key() {
        use clap::{CommandFactory, Parser};
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/serve.toml");
        let m = merge(vec![
            "tcache".into(),
            "--config".into(),
            file.into(),
            "serve".into(),
        ])
        .unwrap();
        let cli = Cli::try_parse_from(&m.argv).unwrap_or_else(|e| panic!("{e}"));
        let crate::args::Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        assert_eq!(args.time_zone, "Europe/Paris");
        assert_eq!(args.check_windows, ["01:00-05:00"]);
        assert_eq!(args.max_delete_ratio, 0.25);
        assert_eq!(args.observe.metrics_addr.as_deref(), Some("127.0.0.1:9187"));
        assert_eq!(cli.namespace, "tpl");

        // Every option of serve, and every global one, is in the file (set or commented out).
        let text = std::fs::read_to_string(file).unwrap();
        let mut keys = std::collections::HashSet::new();
        let mut table = String::new();
        for line in text.lines() {
            let line = line.trim_start_matches(['#', ' ']);
            if let Some(t) = line.strip_prefix('[') {
                table = t.trim_end_matches(']').replace('.', "-");
                continue;
            }
            if let Some((k, _)) = line.split_once(" =") {
                let k = k.trim();
                if !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                    keys.insert(match table.as_str() {
                        "" | "serve" => k.to_owned(),
                        t => format!("{}-{k}", t.trim_start_matches("serve-")),
                    });
                }
            }
        }
        let cmd = Cli::command();
        let serve = cmd.find_subcommand("serve").unwrap();
        for arg in cmd.get_arguments().chain(serve.get_arguments()) {
            let name = arg.get_long().unwrap_or(arg.get_id().as_str());
            if ["help", "version", "config"].contains(&name) {
                continue;
            }
            assert!(keys.contains(name), "examples/serve.toml lacks {name}");
        }
    }

    #[test]
    fn nested_tables_are_prefixes() {
        let argv = merged("[check]\n[check.max]\ndelete = 3\n", &["check", "d"]).unwrap();
        assert!(argv.contains(&"--max-delete=3".to_owned()), "{argv:?}");
    }

    #[test]
    fn unknown_keys_and_bad_types_name_the_key() {
        for (toml, want) in [
            ("colour = 1", "key colour: unknown key"),
            (
                "[check]\nfrobnicate = 1",
                "key check.frobnicate: unknown option",
            ),
            ("[check]\nnamespace = \"x\"", "it is a global option"),
            (
                "[check]\ndeep = \"yes\"",
                "key check.deep: \"yes\" is not a boolean",
            ),
            (
                "[check]\nbatch-size = [1, 2]",
                "key check.batch-size: takes one value",
            ),
            ("check = 3", "key check: must be a table"),
            ("config = \"x\"", "cannot name another"),
            ("[check\n", "config file"),
        ] {
            let e = merged(toml, &["check", "d"]).unwrap_err();
            assert!(e.contains(want), "{toml:?}: {e}");
        }
        // Keys of another command's table are checked too.
        let e = merged("[warm]\nnope = 1", &["check", "d"]).unwrap_err();
        assert!(e.contains("warm.nope"), "{e}");
    }

    #[test]
    fn bad_values_are_explained_with_the_key() {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[check]\nbatch-size = 0\n").unwrap();
        let m = merge(vec![
            "tcache".into(),
            "--config".into(),
            file.clone().into(),
            "check".into(),
            "d".into(),
        ])
        .unwrap();
        let err = Cli::try_parse_from(&m.argv).unwrap_err();
        let why = m.explain(&err).expect("explained");
        assert!(why.contains("key check.batch-size"), "{why}");
        assert!(why.contains("from 1 to 100000"), "{why}");
    }
}
