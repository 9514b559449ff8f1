//! `cargo xtask bench`: run the workspace's benchmark suites and collect their `BENCH` lines.
//!
//! Convention: suite `<suite>` is a bench target `suite_<suite>` (harness = false) of some
//! workspace package, and prints one line per figure: `BENCH <suite>.<figure> <value> <unit>`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::workspace::{BenchSuite, bench_suites, cargo, metadata};

/// One figure printed by a suite.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchLine {
    /// The suite name (before the first `.`).
    pub suite: String,
    /// The figure name (after the first `.`).
    pub figure: String,
    /// The measured value.
    pub value: f64,
    /// The unit, e.g. `ms` or `ratio`.
    pub unit: String,
}

/// Parses a `BENCH <suite>.<figure> <value> <unit>` line. Returns `None` for lines that are not
/// `BENCH` lines and `Some(Err(reason))` for malformed ones.
pub fn parse_bench_line(line: &str) -> Option<Result<BenchLine, String>> {
    let rest = line.trim_end().strip_prefix("BENCH ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let parsed = (|| {
        let [name, value, unit] = fields.as_slice() else {
            return Err(format!(
                "expected `BENCH <suite>.<figure> <value> <unit>`, got {} fields after BENCH",
                fields.len()
            ));
        };
        let (suite, figure) = name
            .split_once('.')
            .filter(|(s, f)| !s.is_empty() && !f.is_empty())
            .ok_or_else(|| format!("`{name}` is not `<suite>.<figure>`"))?;
        let value: f64 = value
            .parse()
            .map_err(|_| format!("value `{value}` is not a number"))?;
        Ok(BenchLine {
            suite: suite.to_owned(),
            figure: figure.to_owned(),
            value,
            unit: (*unit).to_owned(),
        })
    })();
    Some(parsed)
}

/// The suites to run: the one named `wanted`, or all of them.
pub fn select_suites(all: &[BenchSuite], wanted: Option<&str>) -> Result<Vec<BenchSuite>> {
    let Some(wanted) = wanted else {
        return Ok(all.to_vec());
    };
    match all.iter().find(|s| s.name == wanted) {
        Some(suite) => Ok(vec![suite.clone()]),
        None if all.is_empty() => bail!(
            "unknown benchmark suite `{wanted}`: the workspace has no suites yet \
             (a suite is a bench target named `suite_<name>` with harness = false)"
        ),
        None => bail!(
            "unknown benchmark suite `{wanted}`; known suites: {}",
            all.iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs the selected suites with `cargo bench`, streaming their output, then reprints every
/// `BENCH` line as a summary. Returns false when a suite failed or printed a malformed line.
pub fn run_bench(root: &Path, wanted: Option<&str>, quick: bool) -> Result<bool> {
    let all = bench_suites(&metadata(root)?.packages);
    if all.is_empty() && wanted.is_none() {
        println!(
            "bench: no benchmark suites in the workspace yet (a suite is a bench target named \
             `suite_<name>` with harness = false)"
        );
        return Ok(true);
    }
    let suites = select_suites(&all, wanted)?;
    let mut collected: Vec<String> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    for suite in &suites {
        let target = suite.target();
        let mut args = vec!["bench", "-p", &suite.package, "--bench", &target];
        if quick {
            args.extend(["--", "--quick"]);
        }
        println!("==> bench {}: cargo {}", suite.name, args.join(" "));
        let mut child = Command::new(cargo())
            .args(&args)
            .current_dir(root)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `cargo {}`", args.join(" ")))?;
        let stdout = child.stdout.take().context("no stdout from cargo bench")?;
        let mut printed = 0usize;
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading cargo bench output")?;
            println!("{line}");
            // Progress must appear as it happens; a failed flush only delays it.
            let _ = std::io::stdout().flush();
            match parse_bench_line(&line) {
                None => {}
                Some(Ok(parsed)) if parsed.suite == suite.name => {
                    printed += 1;
                    collected.push(line.trim_end().to_owned());
                }
                // A baseline measured in this run beside the figure it anchors keeps the name
                // it has in its own suite (`store.append_single_per_s` beside `loop.runs_...`).
                Some(Ok(parsed)) if all.iter().any(|s| s.name == parsed.suite) => {
                    collected.push(line.trim_end().to_owned());
                }
                Some(Ok(parsed)) => problems.push(format!(
                    "suite `{}` printed a figure of suite `{}`, which does not exist: {line}",
                    suite.name, parsed.suite
                )),
                Some(Err(reason)) => {
                    problems.push(format!("suite `{}`: {reason}: {line}", suite.name));
                }
            }
        }
        let status = child.wait().context("waiting for cargo bench")?;
        if !status.success() {
            problems.push(format!("suite `{}` failed ({status})", suite.name));
            break;
        }
        if printed == 0 {
            problems.push(format!("suite `{}` printed no BENCH lines", suite.name));
        }
    }
    println!();
    println!("bench summary ({} lines):", collected.len());
    for line in &collected {
        println!("{line}");
    }
    for problem in &problems {
        println!("bench: {problem}");
    }
    Ok(problems.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_lines_parse_and_malformed_ones_say_why() {
        let ok = parse_bench_line("BENCH store.append_p50 1.25 ms")
            .unwrap()
            .unwrap();
        assert_eq!(ok.suite, "store");
        assert_eq!(ok.figure, "append_p50");
        assert_eq!(ok.value, 1.25);
        assert_eq!(ok.unit, "ms");
        assert!(parse_bench_line("Benchmarking foo").is_none());
        let err = parse_bench_line("BENCH store 1 ms").unwrap().unwrap_err();
        assert!(err.contains("<suite>.<figure>"), "{err}");
        let err = parse_bench_line("BENCH store.x fast ms")
            .unwrap()
            .unwrap_err();
        assert!(err.contains("not a number"), "{err}");
        let err = parse_bench_line("BENCH store.x 1").unwrap().unwrap_err();
        assert!(err.contains("2 fields"), "{err}");
    }

    #[test]
    fn unknown_suite_lists_the_known_ones() {
        let all = vec![
            BenchSuite {
                name: "loop".into(),
                package: "agentrt-core-loop".into(),
            },
            BenchSuite {
                name: "store".into(),
                package: "agentrt-session-store".into(),
            },
        ];
        let err = select_suites(&all, Some("nope")).unwrap_err().to_string();
        assert!(err.contains("unknown benchmark suite `nope`"), "{err}");
        assert!(err.contains("known suites: loop, store"), "{err}");
        assert_eq!(
            select_suites(&all, Some("store")).unwrap(),
            [all[1].clone()]
        );
        assert_eq!(select_suites(&all, None).unwrap(), all);
        let err = select_suites(&[], Some("x")).unwrap_err().to_string();
        assert!(err.contains("no suites yet"), "{err}");
    }
}
