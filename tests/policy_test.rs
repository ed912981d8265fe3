//! `policy test` end to end, as CI runs it: the real binary on the shipped
//! cases file (`config/policy-tests.toml` against `config/gateway.toml`),
//! on failing cases, and on broken cases files and configs, with each exit
//! code (0 all pass, 1 a case fails, 2 an invalid config or cases file).

use std::path::{Path, PathBuf};
use std::process::Command;

fn binary_path() -> &'static str {
    env!("CARGO_BIN_EXE_polytomic-gateway")
}

fn shipped(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(file)
}

/// Runs `policy test --config CONFIG CASES`; returns the exit code, stdout
/// and stderr.
fn policy_test(config: &Path, cases: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(binary_path())
        .args(["policy", "test", "--config"])
        .arg(config)
        .arg(cases)
        .env_remove("GATEWAY_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `text` to `name` in `dir`.
fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const ORG: &str = "248df4b7-aa70-47b8-a036-33ac447e668d";

/// The page that documents `policy test` (it was README.md's section).
fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/policy.md")).unwrap()
}

/// The cases-file example in docs/policy.md ("Testing a policy") is a valid
/// case, and passes against the shipped config.
#[test]
fn the_readme_example_case_passes() {
    let readme = readme();
    let section = readme
        .split_once("### Testing a policy: `policy test`")
        .expect("docs/policy.md has the section")
        .1;
    let example = section
        .split_once("```toml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("the section has a TOML example")
        .0;
    assert!(example.contains("[[case]]"), "{example}");
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "readme.toml", example);
    let (code, stdout, stderr) = policy_test(&shipped("gateway.toml"), &path);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(stdout, "1 passed, 0 failed (1 case)\n");
}

/// The shipped cases pass against the shipped config, and the summary
/// counts every case in the file.
#[test]
fn the_shipped_example_passes() {
    let cases = std::fs::read_to_string(shipped("policy-tests.toml")).unwrap();
    let count = cases.lines().filter(|l| *l == "[[case]]").count();
    assert!(count >= 20, "{count} cases");
    let (code, stdout, stderr) =
        policy_test(&shipped("gateway.toml"), &shipped("policy-tests.toml"));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        format!("{count} passed, 0 failed ({count} cases)\n")
    );
    // It covers each kind of decision.
    for expect in [
        "expect = \"allow\"",
        "expect = \"deny\"",
        "expect = 403",
        "expect = 404",
        "expect = 405",
        "expect = 400",
    ] {
        assert!(cases.contains(expect), "no case has {expect}");
    }
}

/// Every shipped case tells the policy apart: with each expectation turned
/// around, every case fails.
#[test]
fn every_shipped_case_can_fail() {
    let cases = std::fs::read_to_string(shipped("policy-tests.toml")).unwrap();
    let count = cases.lines().filter(|l| *l == "[[case]]").count();
    let flipped: String = cases
        .lines()
        .map(|line| match line.strip_prefix("expect = ") {
            Some("\"allow\"") => "expect = \"deny\"\n".to_owned(),
            Some(_) => "expect = \"allow\"\n".to_owned(),
            None => format!("{line}\n"),
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "flipped.toml", &flipped);
    let (code, stdout, stderr) = policy_test(&shipped("gateway.toml"), &path);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let failures = stdout.lines().filter(|l| l.starts_with("FAIL ")).count();
    assert_eq!(failures, count, "{stdout}");
    assert!(
        stdout.ends_with(&format!("0 passed, {count} failed ({count} cases)\n")),
        "{stdout}"
    );
}

/// A failing case exits 1, and its line names it, what it expected, what
/// was decided and the deciding rule (or that none allows it); passing
/// cases print nothing but the summary.
#[test]
fn a_failing_case_says_what_was_expected_and_decided() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "cases.toml",
        &format!(
            r#"
[[case]]
name = "support renames organizations"
teams = ["support"]
method = "PUT"
path = "/api/organizations/{ORG}"
expect = "allow"

[[case]]
name = "support lists organizations"
teams = ["support"]
method = "GET"
path = "/api/organizations"
expect = "allow"

[[case]]
name = "platform cannot delete organizations"
teams = ["platform"]
method = "DELETE"
path = "/api/organizations/{ORG}"
expect = 403

[[case]]
name = "a typo in the path"
teams = ["platform"]
method = "GET"
path = "/api/organisations"
expect = "allow"
"#
        ),
    );
    let (code, stdout, stderr) = policy_test(&shipped("gateway.toml"), &path);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        readme().contains(&format!("```text\n{stdout}```")),
        "docs/policy.md's example output is not:\n{stdout}"
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            r#"FAIL "support renames organizations": expected allow, got deny (403 forbidden: no rule allows organization.update)"#,
            r#"FAIL "platform cannot delete organizations": expected 403, got allow (rule "platform-admins")"#,
            r#"FAIL "a typo in the path": expected allow, got deny (404 no_route: no route for this path)"#,
            "1 passed, 3 failed (4 cases)",
        ]
    );
}

/// Shadow mode forwards what the policy denies, but `policy test` judges
/// the decision: the shipped cases pass the same.
#[test]
fn shadow_mode_is_judged_by_the_decision() {
    let config = std::fs::read_to_string(shipped("gateway.toml")).unwrap();
    assert!(config.contains("mode = \"enforce\""));
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "shadow.toml",
        &config.replace("mode = \"enforce\"", "mode = \"shadow\""),
    );
    let (code, stdout, stderr) = policy_test(&path, &shipped("policy-tests.toml"));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains(" passed, 0 failed "), "{stdout}");
}

/// A broken cases file exits 2, runs nothing, and names the file, each
/// broken case (index and name) and the key.
#[test]
fn cases_file_errors_name_the_case_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "cases.toml",
        &format!(
            r#"
[[case]]
name = "fine"
method = "GET"
path = "/api/organizations"
expect = 403

[[case]]
name = "support reads"
teams = ["support"]
method = "GET"
path = "/api/organizations"
expect = "allowed"

[[case]]
name = "a typo"
team = ["support"]
method = "GET"
path = "/api/organizations"
expect = "allow"

[[case]]
name = "bad body"
teams = ["billing"]
method = "POST"
path = "/api/webhooks"
body = '{{"organization_id": "{ORG}",}}'
expect = "allow"

[[case]]
name = "no expectation"
method = "GET"
path = "/api/organizations"

[[case]]
name = "unauthenticated"
method = "GET"
path = "/api/organizations"
expect = 401

[[case]]
name = "lower case"
method = "get"
path = "/api/organizations"
expect = 403
"#
        ),
    );
    let file = path.display().to_string();
    let (code, stdout, stderr) = policy_test(&shipped("gateway.toml"), &path);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert_eq!(stdout, "", "nothing runs");
    let lines: Vec<&str> = stderr.lines().collect();
    let expected = [
        format!("{file}: case[1] \"support reads\": `expect`: invalid value: string \"allowed\", expected \"allow\", \"deny\", or one of the statuses 400, 403, 404, 405"),
        format!("{file}: case[2] \"a typo\": `team`: unknown key (not part of the cases format); expected one of `name`, `teams`, `sub`, `method`, `path`, `body`, `expect`"),
        format!("{file}: case[3] \"bad body\": `body`: is not JSON: invalid JSON at line 1 column 60: trailing comma"),
        format!("{file}: case[4] \"no expectation\": `expect`: missing: every case needs name, method, path and expect"),
        format!("{file}: case[5] \"unauthenticated\": `expect`: invalid value: integer `401`, expected \"allow\", \"deny\", or one of the statuses 400, 403, 404, 405"),
        format!("{file}: case[6] \"lower case\": `method`: \"get\" is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS (in upper case)"),
    ];
    assert_eq!(lines, expected);
}

/// A cases file with no case tests nothing, and a CI check on it must not
/// pass: exit 2. So does one that cannot be read.
#[test]
fn an_empty_or_missing_cases_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(&dir, "empty.toml", "# no cases yet\n");
    let (code, stdout, stderr) = policy_test(&shipped("gateway.toml"), &empty);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert_eq!(
        stderr,
        format!(
            "{}: no [[case]]: a policy test that tests nothing cannot pass\n",
            empty.display()
        )
    );
    let missing = dir.path().join("missing.toml");
    let (code, _, stderr) = policy_test(&shipped("gateway.toml"), &missing);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "{}: cannot read the cases file",
            missing.display()
        )),
        "{stderr}"
    );
}

/// An invalid config exits 2, before any case runs, naming the file and
/// the key, as `check` does.
#[test]
fn a_config_error_exits_2() {
    let config = std::fs::read_to_string(shipped("gateway.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let typo = write(
        &dir,
        "typo.toml",
        &format!(
            "{config}\n[[policy.rules]]\nname = \"typo\"\nteams = [\"x\"]\nallow = [\"organisation.get\"]\n"
        ),
    );
    let (code, stdout, stderr) = policy_test(&typo, &shipped("policy-tests.toml"));
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        format!(
            "{}: `policy.rules[3].allow`: rule \"typo\": \"organisation.get\" matches no route's operation\n",
            typo.display()
        )
    );
    let unknown = write(&dir, "unknown.toml", &format!("{config}\n[polcy]\n"));
    let (code, _, stderr) = policy_test(&unknown, &shipped("policy-tests.toml"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("`polcy`: unknown key"), "{stderr}");
    let missing = dir.path().join("missing.toml");
    let (code, _, stderr) = policy_test(&missing, &shipped("policy-tests.toml"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "{}: cannot read the config file",
            missing.display()
        )),
        "{stderr}"
    );
}
