//! The README's code tables and the code catalogue
//! (`cardfleet_schemas::codes::Code`) agree in both directions: every code a
//! table lists is in the catalogue with that kind (and, for API errors, that
//! status), and every catalogue code of a kind is in its table. The store's
//! conflict codes, still written where the store raises them, are checked to
//! be catalogue codes too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use cardfleet_schemas::codes::{Code, Kind};

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The rows of the table whose header's first cell is `first`: the
/// backticked codes of each row's first cell with the row's other cells.
fn table(readme: &str, first: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let mut lines = readme
        .lines()
        .skip_while(|l| !l.starts_with('|') || l.split('|').nth(1).map(str::trim) != Some(first));
    assert!(
        lines.next().is_some(),
        "README has no table headed `{first}`"
    );
    lines
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let cells: Vec<String> = row
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect();
            let codes = cells[0]
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect();
            (codes, cells[1..].to_vec())
        })
        .collect()
}

fn catalogue(kind: Kind) -> BTreeSet<&'static str> {
    Code::ALL
        .iter()
        .filter(|c| c.is(kind))
        .map(|c| c.as_str())
        .collect()
}

fn both_directions(kind: Kind, listed: &BTreeSet<String>) {
    let listed: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
    let known = catalogue(kind);
    let unknown: Vec<_> = listed.difference(&known).collect();
    let missing: Vec<_> = known.difference(&listed).collect();
    assert!(
        unknown.is_empty(),
        "{kind:?}: the README lists codes the catalogue lacks: {unknown:?}"
    );
    assert!(
        missing.is_empty(),
        "{kind:?}: the README's table lacks catalogue codes: {missing:?}"
    );
}

#[test]
fn the_readme_api_error_table_is_the_catalogue_with_its_statuses() {
    let text = readme();
    let mut statuses = BTreeMap::new();
    for (codes, rest) in table(&text, "code") {
        assert!(!codes.is_empty(), "a row without a code: {rest:?}");
        for code in codes {
            statuses.insert(code, rest[0].parse::<u16>().unwrap());
        }
    }
    for (code, status) in &statuses {
        let known = Code::parse(code).unwrap_or_else(|| panic!("`{code}` is not in the catalogue"));
        assert_eq!(
            known.status(),
            Some(*status),
            "`{code}`: README and catalogue disagree on the status"
        );
    }
    both_directions(Kind::Api, &statuses.into_keys().collect());
}

#[test]
fn the_readme_rejection_failure_and_dead_letter_tables_are_the_catalogue() {
    let text = readme();
    for (kind, header) in [
        (Kind::Rejection, "rejection code"),
        (Kind::JobFailure, "failure code"),
        (Kind::DeadLetter, "dead-letter reason"),
    ] {
        let listed = table(&text, header)
            .into_iter()
            .flat_map(|(codes, _)| codes)
            .collect();
        both_directions(kind, &listed);
    }
}

#[test]
fn every_code_the_store_raises_is_in_the_catalogue() {
    let mut found = BTreeSet::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for piece in text.split("code: \"").skip(1) {
                    found.insert(piece.split('"').next().unwrap().to_owned());
                }
            }
        }
    }
    assert!(
        found.contains("process_disabled") || found.contains("token_exists"),
        "{found:?}"
    );
    for code in &found {
        let known = Code::parse(code)
            .unwrap_or_else(|| panic!("the store raises `{code}`, which the catalogue lacks"));
        assert!(
            known.is(Kind::Api) || known.is(Kind::Rejection),
            "`{code}` is raised by the store but is neither an API error nor a rejection"
        );
    }
}
