//! The front door cannot drift from the code: every `incept` command that README.md and docs/usage.md show
//! names a subcommand the binary has, and every flag in it is one that subcommand's `--help` lists.

use std::collections::BTreeSet;
use std::process::Command;

const DOCUMENTS: [&str; 2] = ["README.md", "docs/usage.md"];
const SUBCOMMANDS: [&str; 8] = [
    "train", "eval", "predict", "summary", "bench", "models", "quantize", "export",
];
/// Flags that exist only with a cargo feature this build may lack (the documents say which).
const FEATURE_FLAGS: [(&str, &str); 1] = [("--collective-timeout", "mpi")];

/// Every command line shown: the text after `incept ` (or `--bin incept -- `) in inline code and in
/// console blocks, up to the end of the span or line; in a table row that starts with a command, the
/// flags of the whole row.
fn commands(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        let spans: Vec<&str> = if in_block {
            vec![line]
        } else {
            line.split('`').skip(1).step_by(2).collect()
        };
        let before = found.len();
        for span in spans {
            let span = span.trim_start_matches("$ ");
            for start in ["--bin incept -- ", "incept "] {
                if let Some(at) = span.find(start) {
                    // `incept` must start the command (not a path or a word in prose).
                    let before = &span[..at];
                    if before.is_empty() || before.ends_with("cargo run --release ") || start.starts_with("--bin") {
                        found.push(span[at + start.len()..].to_string());
                        break;
                    }
                }
            }
        }
        // A table row that starts with a command lists that command's flags in its other cells.
        if line.starts_with('|') && found.len() > before {
            let flags: Vec<&str> = line
                .split(|c: char| c.is_whitespace() || c == '`')
                .filter(|w| w.starts_with("--") && w.len() > 2)
                .collect();
            let first = &mut found[before];
            for flag in flags {
                first.push(' ');
                first.push_str(flag);
            }
        }
    }
    found
}

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_incept"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?} --help: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Whether `help` lists `flag` as an option.
fn lists(help: &str, flag: &str) -> bool {
    help.lines().any(|l| {
        l.split(|c: char| c.is_whitespace() || c == ',')
            .any(|word| word == flag || word.starts_with(&format!("{flag}=")))
    })
}

#[test]
fn every_command_and_flag_the_documents_show_is_accepted() {
    let root = env!("CARGO_MANIFEST_DIR");
    let global = help(&[]);
    let mut checked = BTreeSet::new();
    for document in DOCUMENTS {
        let text = std::fs::read_to_string(format!("{root}/{document}")).unwrap();
        let shown = commands(&text);
        assert!(shown.len() >= 5, "{document}: only {} commands found", shown.len());
        for command in shown {
            let words: Vec<&str> = command.split_whitespace().collect();
            // Global flags (`--threads T`) may come before the subcommand.
            let mut i = 0;
            while i < words.len() && words[i].starts_with("--") {
                let flag = words[i].split('=').next().unwrap();
                assert!(
                    lists(&global, flag),
                    "{document}: `incept {command}`: {flag} is not a global flag"
                );
                i += if words[i].contains('=') { 1 } else { 2 };
            }
            // A placeholder (`incept -- ...`) names no subcommand.
            let Some(sub) = words
                .get(i)
                .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
                .filter(|w| !w.is_empty())
            else {
                continue;
            };
            assert!(
                SUBCOMMANDS.contains(&sub),
                "{document}: `incept {command}`: no subcommand {sub:?}"
            );
            let sub_help = help(&[sub]);
            for word in &words[i + 1..] {
                let flag = word
                    .trim_start_matches(['[', '('])
                    .split(['=', ']', ')', '\\', '|'])
                    .next()
                    .unwrap();
                if !flag.starts_with("--") || flag == "--" {
                    continue;
                }
                let feature_off = FEATURE_FLAGS
                    .iter()
                    .any(|&(f, feature)| f == flag && !(feature == "mpi" && cfg!(feature = "mpi")));
                if feature_off {
                    continue;
                }
                assert!(
                    lists(&sub_help, flag) || lists(&global, flag),
                    "{document}: `incept {command}`: `incept {sub}` has no flag {flag}"
                );
                checked.insert(format!("{sub} {flag}"));
            }
        }
    }
    eprintln!("{} (subcommand, flag) pairs checked", checked.len());
    assert!(
        checked.len() >= 40,
        "only {} flags found: is the parsing right?",
        checked.len()
    );
}
