//! `policy test`: cases that say what the policy must decide, checked
//! against the route table and policy exactly as `serve` builds them
//! ("policy as code", like `opa test`).
//!
//! A cases file is TOML, and its format is a public contract:
//!
//! ```toml
//! [[case]]
//! name = "support cannot rename organizations"
//! teams = ["support"]        # optional, as is `sub = "alice@corp"`
//! method = "PUT"
//! path = "/api/organizations/248df4b7-aa70-47b8-a036-33ac447e668d"
//! body = '{"name": "x"}'     # optional JSON, read where the policy reads the body
//! expect = "deny"            # "allow", "deny", or a status: 400, 403, 404, 405
//! ```
//!
//! Each case goes through [`explain`], the path checks, routing and
//! policy decision of `serve` (and of `policy explain`): no network, no
//! credential. A case is judged by the decision, not by what the mode does
//! with it: in `shadow` mode a request no rule allows is forwarded, but its
//! case still decides `deny` (403), so a cases file tests the policy that
//! `enforce` would apply. Routing refusals are `deny` with their own status:
//! 404 `no_route`, 405 `method_not_allowed`, 400 `invalid_path` (a dot or
//! empty segment, a parameter that must be a UUID).
//!
//! ```
//! use std::path::Path;
//! use polytomic_gateway::{config, policy::Policy, policy_cases::CaseSuite};
//!
//! let config = config::load(Path::new("config/gateway.toml")).unwrap();
//! let (table, _) = config.route_table().unwrap();
//! let policy = Policy::from_config(&config.policy, table.operations()).unwrap();
//! let cases = CaseSuite::load(Path::new("config/policy-tests.toml")).unwrap();
//! let report = cases.run(&table, &policy);
//! assert!(report.all_passed(), "{report}");
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use http::{Method, StatusCode};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::auth::Principal;
use crate::notes::{PolicyDecision, RouteMatch};
use crate::policy::Policy;
use crate::routes::{RouteTable, STANDARD_METHODS};
use crate::validate::{parse_strict, JsonLimits};
use crate::GatewayError;

/// The statuses a case may expect: the ones routing and the policy
/// decision can yield (400 `invalid_path`, 403 `forbidden`, 404
/// `no_route`, 405 `method_not_allowed`). Anything else (401, 413, 422,
/// ...) comes from a layer `policy test` does not run.
pub const EXPECTABLE_STATUSES: [StatusCode; 4] = [
    StatusCode::BAD_REQUEST,
    StatusCode::FORBIDDEN,
    StatusCode::NOT_FOUND,
    StatusCode::METHOD_NOT_ALLOWED,
];

/// One `[[case]]`, as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseConfig {
    /// Names the case in failures and errors. Non-empty, unique.
    pub name: String,
    /// The caller's teams; none is allowed.
    #[serde(default)]
    pub teams: Vec<String>,
    /// The caller's subject; default none.
    pub sub: Option<String>,
    /// One of the methods a route can list, in upper case.
    pub method: String,
    /// The request path, with a query if the operation reads an
    /// organization from it.
    pub path: String,
    /// The JSON body, for operations that name an organization in it.
    pub body: Option<String>,
    /// What the gateway must decide.
    pub expect: Expectation,
}

/// What a case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expectation {
    /// `"allow"`: a rule allows the request.
    Allow,
    /// `"deny"`: refused, by the policy (403) or by routing (400, 404, 405).
    Deny,
    /// A status: refused with exactly this status (one of
    /// [`EXPECTABLE_STATUSES`]).
    Status(StatusCode),
}

impl Expectation {
    /// Whether `decided` is what this expects.
    pub fn is_met_by(self, decided: &Decided) -> bool {
        match self {
            Self::Allow => matches!(decided, Decided::Allow { .. }),
            Self::Deny => !matches!(decided, Decided::Allow { .. }),
            Self::Status(status) => decided.status() == Some(status),
        }
    }
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Allow => f.write_str("allow"),
            Self::Deny => f.write_str("deny"),
            Self::Status(status) => write!(f, "{}", status.as_u16()),
        }
    }
}

impl<'de> Deserialize<'de> for Expectation {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ExpectationVisitor)
    }
}

/// Reads `"allow"`, `"deny"` or an expectable status.
struct ExpectationVisitor;

impl<'de> Visitor<'de> for ExpectationVisitor {
    type Value = Expectation;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"allow\", \"deny\", or one of the statuses 400, 403, 404, 405")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Expectation, E> {
        match value {
            "allow" => Ok(Expectation::Allow),
            "deny" => Ok(Expectation::Deny),
            _ => Err(E::invalid_value(de::Unexpected::Str(value), &self)),
        }
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Expectation, E> {
        EXPECTABLE_STATUSES
            .into_iter()
            .find(|status| u64::from(status.as_u16()) == value)
            .map(Expectation::Status)
            .ok_or_else(|| E::invalid_value(de::Unexpected::Unsigned(value), &self))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Expectation, E> {
        match u64::try_from(value) {
            Ok(value) => self.visit_u64(value),
            Err(_) => Err(E::invalid_value(de::Unexpected::Signed(value), &self)),
        }
    }
}

/// What the gateway decided for a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided {
    /// A rule allows the request.
    Allow {
        /// The operation routed to.
        operation: Arc<str>,
        /// The deciding rule.
        rule: Arc<str>,
    },
    /// A route matched and no rule allows it: 403 `forbidden` (forwarded
    /// anyway in shadow mode).
    Forbidden {
        /// The operation routed to.
        operation: Arc<str>,
        /// The body fields the route reads organizations from, when the
        /// case gave no body: a hint, since a rule scoped to organizations
        /// cannot match without them.
        unread_body_fields: Vec<Box<str>>,
    },
    /// The path checks or routing refused the request.
    Refused {
        /// 400, 404 or 405.
        status: StatusCode,
        /// The refusal's `key`, such as `no_route`.
        key: &'static str,
        /// The refusal's message.
        message: String,
    },
}

impl Decided {
    /// Judges what [`explain`] found; `body_given` says whether the
    /// case had a body.
    fn from_explanation(explanation: Explanation, body_given: bool) -> Self {
        let route = match explanation.route {
            Ok(route) => route,
            Err(refusal) => {
                return Self::Refused {
                    status: refusal.status(),
                    key: refusal.key(),
                    message: refusal.to_string(),
                }
            }
        };
        // Fails closed: a matched route without a decision is a denial.
        match explanation
            .decision
            .filter(|decision| decision.allowed)
            .and_then(|decision| decision.rule)
        {
            Some(rule) => Self::Allow {
                operation: route.operation,
                rule,
            },
            None => Self::Forbidden {
                operation: route.operation,
                unread_body_fields: if body_given {
                    Vec::new()
                } else {
                    route.body_organization_fields.to_vec()
                },
            },
        }
    }

    /// The status of a refusal (403 for a policy denial); `None` when allowed.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Allow { .. } => None,
            Self::Forbidden { .. } => Some(StatusCode::FORBIDDEN),
            Self::Refused { status, .. } => Some(*status),
        }
    }
}

impl fmt::Display for Decided {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Allow { rule, .. } => write!(f, "allow (rule {rule:?})"),
            Self::Forbidden {
                operation,
                unread_body_fields,
            } => {
                write!(f, "deny (403 forbidden: no rule allows {operation}")?;
                if !unread_body_fields.is_empty() {
                    let fields: Vec<&str> = unread_body_fields.iter().map(|f| &**f).collect();
                    write!(
                        f,
                        "; it reads organizations from the body ({}) and the case has no body",
                        fields.join(", ")
                    )?;
                }
                f.write_str(")")
            }
            Self::Refused {
                status,
                key,
                message,
            } => write!(f, "deny ({} {key}: {message})", status.as_u16()),
        }
    }
}

/// A case, checked and ready to run.
#[derive(Debug)]
struct Case {
    name: String,
    principal: Principal,
    method: Method,
    path: String,
    query: Option<String>,
    body: Option<Value>,
    expect: Expectation,
}

/// The cases of one file, in file order; at least one.
#[derive(Debug)]
pub struct CaseSuite {
    cases: Vec<Case>,
}

impl CaseSuite {
    /// Reads and checks the cases file at `path`.
    pub fn load(path: &Path) -> Result<Self, CasesErrors> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &file),
            Err(e) => Err(CasesErrors::file(
                &file,
                "",
                format!("cannot read the cases file: {e}"),
            )),
        }
    }

    /// Checks the cases in `text`, naming `file` in errors. Every case is
    /// checked, and every problem reported.
    pub fn parse(text: &str, file: &str) -> Result<Self, CasesErrors> {
        let document: Value = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| CasesErrors::file(file, "", e.to_string().trim_end().to_owned()))?;
        let Value::Object(mut document) = document else {
            return Err(CasesErrors::file(file, "", "not a TOML table".into()));
        };
        if let Some(key) = document.keys().find(|key| *key != "case") {
            return Err(CasesErrors::file(
                file,
                key,
                "unknown key (not part of the cases format); the file holds only [[case]] tables"
                    .into(),
            ));
        }
        let entries = match document.remove("case") {
            Some(Value::Array(entries)) if !entries.is_empty() => entries,
            Some(Value::Array(_)) | None => {
                return Err(CasesErrors::file(
                    file,
                    "",
                    "no [[case]]: a policy test that tests nothing cannot pass".into(),
                ))
            }
            Some(_) => {
                return Err(CasesErrors::file(
                    file,
                    "case",
                    "must be an array of tables: write each case as [[case]]".into(),
                ))
            }
        };
        let mut problems = Vec::new();
        let mut cases = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for (index, entry) in entries.into_iter().enumerate() {
            let name = entry.get("name").and_then(Value::as_str).map(str::to_owned);
            let mut fail = |key: &str, message: String| {
                problems.push(CaseProblem {
                    case: Some((index, name.clone())),
                    key: key.to_owned(),
                    message,
                });
            };
            let written: CaseConfig = match serde_path_to_error::deserialize(entry) {
                Ok(written) => written,
                Err(e) => {
                    let (key, message) = describe_deserialize_error(&e);
                    fail(&key, message);
                    continue;
                }
            };
            // Failures are reported by name: two cases with one name could
            // not be told apart.
            if written.name.is_empty() {
                fail("name", "must not be empty".into());
            } else if let Some(first) = names.get(&written.name) {
                fail("name", format!("is also the name of case[{first}]"));
            } else {
                names.insert(written.name.clone(), index);
            }
            let method = match Method::from_bytes(written.method.as_bytes()) {
                Ok(method) if STANDARD_METHODS.contains(&method) => Some(method),
                _ => {
                    fail(
                        "method",
                        format!(
                            "{:?} is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS (in upper case)",
                            written.method
                        ),
                    );
                    None
                }
            };
            if !written.path.starts_with('/') {
                fail("path", format!("{:?} must start with /", written.path));
            }
            // Parsed as the gateway parses a body: strictly, so a body
            // `serve` would refuse (duplicate keys) cannot pass here.
            let body = match written.body.as_deref().map(|body| {
                parse_strict(body.as_bytes(), JsonLimits::DEFAULT)
                    .map_err(|e| GatewayError::from(e).to_string())
            }) {
                None => Some(None),
                Some(Ok(body)) => Some(Some(body)),
                Some(Err(e)) => {
                    fail("body", format!("is not JSON: {e}"));
                    None
                }
            };
            if let (Some(method), Some(body)) = (method, body) {
                let (path, query) = match written.path.split_once('?') {
                    Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
                    None => (written.path, None),
                };
                cases.push(Case {
                    name: written.name,
                    principal: Principal::new(written.sub.unwrap_or_default(), written.teams),
                    method,
                    path,
                    query,
                    body,
                    expect: written.expect,
                });
            }
        }
        if problems.is_empty() {
            Ok(Self { cases })
        } else {
            Err(CasesErrors {
                file: file.to_owned(),
                problems,
            })
        }
    }

    /// Runs every case through the path checks, routing and `policy`, as
    /// [`explain`] does.
    pub fn run(&self, table: &RouteTable, policy: &Policy) -> Report {
        let results = self
            .cases
            .iter()
            .map(|case| {
                let explanation = explain(
                    table,
                    policy,
                    &case.principal,
                    &case.method,
                    &case.path,
                    case.query.as_deref(),
                    case.body.as_ref(),
                );
                CaseResult {
                    name: case.name.clone(),
                    expect: case.expect,
                    decided: Decided::from_explanation(explanation, case.body.is_some()),
                }
            })
            .collect();
        Report { results }
    }
}

/// One case's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// What it expected.
    pub expect: Expectation,
    /// What the gateway decided.
    pub decided: Decided,
}

impl CaseResult {
    /// Whether the decision is the expected one.
    pub fn passed(&self) -> bool {
        self.expect.is_met_by(&self.decided)
    }
}

/// The outcome of a suite. Displayed as one `FAIL` line per failing case,
/// then `N passed, M failed (T cases)`.
#[derive(Debug)]
pub struct Report {
    results: Vec<CaseResult>,
}

impl Report {
    /// Every case's outcome, in file order.
    pub fn results(&self) -> &[CaseResult] {
        &self.results
    }

    /// How many cases passed.
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed()).count()
    }

    /// How many cases failed.
    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// Whether every case passed.
    pub fn all_passed(&self) -> bool {
        self.failed() == 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for result in self.results.iter().filter(|r| !r.passed()) {
            writeln!(
                f,
                "FAIL {:?}: expected {}, got {}",
                result.name, result.expect, result.decided
            )?;
        }
        let total = self.results.len();
        write!(
            f,
            "{} passed, {} failed ({total} case{})",
            self.passed(),
            self.failed(),
            if total == 1 { "" } else { "s" }
        )
    }
}

/// One problem with a cases file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseProblem {
    /// The case's index in the file (from 0, as in config errors) and its
    /// name if it has one; `None` for a problem with the file as a whole.
    pub case: Option<(usize, Option<String>)>,
    /// The key concerned (`expect`, `teams[1]`), or empty.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Every problem found in a cases file; displayed one a line as
/// `FILE: case[I] "NAME": `KEY`: MESSAGE`.
#[derive(Debug)]
pub struct CasesErrors {
    file: String,
    problems: Vec<CaseProblem>,
}

impl CasesErrors {
    /// One problem with the file as a whole.
    fn file(file: &str, key: &str, message: String) -> Self {
        Self {
            file: file.to_owned(),
            problems: vec![CaseProblem {
                case: None,
                key: key.to_owned(),
                message,
            }],
        }
    }

    /// The problems, in file order.
    pub fn problems(&self) -> &[CaseProblem] {
        &self.problems
    }
}

impl fmt::Display for CasesErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: ", self.file)?;
            match &problem.case {
                Some((index, Some(name))) => write!(f, "case[{index}] {name:?}: ")?,
                Some((index, None)) => write!(f, "case[{index}]: ")?,
                None => {}
            }
            if !problem.key.is_empty() {
                write!(f, "`{}`: ", problem.key)?;
            }
            f.write_str(&problem.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for CasesErrors {}

/// Names the key of an error deserializing one case, including an unknown
/// or missing one (serde reports those from the table around them).
fn describe_deserialize_error(
    e: &serde_path_to_error::Error<serde_json::Error>,
) -> (String, String) {
    let mut key = e.path().to_string();
    if key == "." {
        key.clear();
    }
    let message = e.inner().to_string();
    let field_in = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned)
    };
    // Depending on the deserializer, the path may already end with it.
    let with_field = |key: &str, field: &str| {
        if key.is_empty() {
            field.to_owned()
        } else if key == field || key.ends_with(&format!(".{field}")) {
            key.to_owned()
        } else {
            format!("{key}.{field}")
        }
    };
    if let Some(field) = field_in("unknown field `") {
        let expected = message.split_once(", ").map_or("", |(_, rest)| rest);
        return (
            with_field(&key, &field),
            format!("unknown key (not part of the cases format); {expected}"),
        );
    }
    if let Some(field) = field_in("missing field `") {
        return (
            with_field(&key, &field),
            "missing: every case needs name, method, path and expect".into(),
        );
    }
    (key, message)
}

/// What `policy explain` reports for one hypothetical request.
#[derive(Debug)]
pub struct Explanation {
    /// The matched route, or why there is none.
    pub route: Result<RouteMatch, GatewayError>,
    /// The decision, when a route matched.
    pub decision: Option<PolicyDecision>,
}

impl Explanation {
    /// Whether the request would be forwarded (in enforce mode).
    pub fn allowed(&self) -> bool {
        self.decision.as_ref().is_some_and(|d| d.allowed)
    }
}

/// Explains what the gateway would decide for `principal` calling `method
/// path?query` with `body` (the organizations a body names count only
/// when it is given).
pub fn explain(
    table: &crate::routes::RouteTable,
    policy: &Policy,
    principal: &Principal,
    method: &http::Method,
    path: &str,
    query: Option<&str>,
    body: Option<&Value>,
) -> Explanation {
    match table.resolve(method, path, query, &http::HeaderMap::new()) {
        crate::routes::Routed::Refused(error) => Explanation {
            route: Err(error),
            decision: None,
        },
        crate::routes::Routed::Matched(route) => {
            let decision = policy.decide_with_body(Some(principal), &route, body);
            Explanation {
                route: Ok(route),
                decision: Some(decision),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const ORG: &str = "248df4b7-aa70-47b8-a036-33ac447e668d";
    const OTHER_ORG: &str = "0b7f3c1e-5d2a-4c6e-9f8a-1b2c3d4e5f60";

    /// The catalog, its credentials and three rules, as in
    /// `config/gateway.toml`.
    fn table_and_policy(mode: &str) -> (RouteTable, Policy) {
        let text = format!(
            r#"
[credentials.partner]
env = "POLYTOMIC_PARTNER_KEY"
[credentials.acme]
env = "POLYTOMIC_ORG_KEY"
[catalog]
enabled = true
[[catalog.credentials]]
operations = ["organization.*", "users.*"]
credential = "partner"
[[catalog.credentials]]
operations = ["*"]
credential = "acme"
[policy]
mode = "{mode}"
[[policy.rules]]
name = "platform-admins"
teams = ["platform"]
allow = ["*"]
[[policy.rules]]
name = "support-read-only"
teams = ["support"]
allow = ["organization.list", "organization.get"]
[[policy.rules]]
name = "billing-own-org"
teams = ["billing"]
allow = ["organization.update", "webhooks.*", "events.list"]
organizations = ["{ORG}"]
"#
        );
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        let config = crate::config::load(file.path()).unwrap();
        let (table, _) = config.route_table().unwrap();
        let policy = Policy::from_config(&config.policy, table.operations()).unwrap();
        (table, policy)
    }

    fn run(cases: &str, mode: &str) -> Report {
        let suite = CaseSuite::parse(cases, "cases.toml").unwrap_or_else(|e| panic!("{e}"));
        let (table, policy) = table_and_policy(mode);
        suite.run(&table, &policy)
    }

    fn errors(cases: &str) -> String {
        CaseSuite::parse(cases, "cases.toml")
            .unwrap_err()
            .to_string()
    }

    fn case(name: &str, teams: &str, method: &str, path: &str, expect: &str) -> String {
        format!(
            "[[case]]\nname = {name:?}\nteams = [{teams}]\nmethod = {method:?}\npath = {path:?}\nexpect = {expect}\n"
        )
    }

    #[test]
    fn each_expectation_passes_on_its_decisions_only() {
        let cases = [
            case(
                "platform renames",
                "\"platform\"",
                "PUT",
                &format!("/api/organizations/{OTHER_ORG}"),
                "\"allow\"",
            ),
            case(
                "support renames",
                "\"support\"",
                "PUT",
                &format!("/api/organizations/{ORG}"),
                "403",
            ),
            case("unknown", "\"platform\"", "GET", "/api/nothing", "404"),
            case(
                "wrong method",
                "\"platform\"",
                "POST",
                &format!("/api/organizations/{ORG}"),
                "405",
            ),
            case(
                "not a uuid",
                "\"platform\"",
                "GET",
                "/api/organizations/nope",
                "400",
            ),
            case(
                "deny covers 404",
                "\"platform\"",
                "GET",
                "/api/nothing",
                "\"deny\"",
            ),
            case(
                "deny covers 403",
                "",
                "GET",
                "/api/organizations",
                "\"deny\"",
            ),
        ]
        .concat();
        let report = run(&cases, "enforce");
        assert!(report.all_passed(), "{report}");
        assert_eq!(report.passed(), 7);
        assert_eq!(report.to_string(), "7 passed, 0 failed (7 cases)");
        let decided: Vec<Option<u16>> = report
            .results()
            .iter()
            .map(|r| r.decided.status().map(|s| s.as_u16()))
            .collect();
        assert_eq!(
            decided,
            [
                None,
                Some(403),
                Some(404),
                Some(405),
                Some(400),
                Some(404),
                Some(403)
            ]
        );
    }

    #[test]
    fn failures_name_the_case_what_was_expected_and_the_deciding_rule() {
        let org_path = format!("/api/organizations/{ORG}");
        let cases = [
            case(
                "platform cannot rename",
                "\"platform\"",
                "PUT",
                &org_path,
                "\"deny\"",
            ),
            case(
                "support renames",
                "\"support\"",
                "PUT",
                &org_path,
                "\"allow\"",
            ),
            case("a 403 is not a 404", "\"support\"", "PUT", &org_path, "404"),
            case(
                "a 404 is not a 403",
                "\"platform\"",
                "GET",
                "/api/nothing",
                "403",
            ),
            case(
                "a 404 is not allowed",
                "\"platform\"",
                "GET",
                "/api/nothing",
                "\"allow\"",
            ),
            case("passes", "\"platform\"", "PUT", &org_path, "\"allow\""),
        ]
        .concat();
        let report = run(&cases, "enforce");
        assert_eq!((report.passed(), report.failed()), (1, 5));
        assert!(!report.all_passed());
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                r#"FAIL "platform cannot rename": expected deny, got allow (rule "platform-admins")"#,
                r#"FAIL "support renames": expected allow, got deny (403 forbidden: no rule allows organization.update)"#,
                r#"FAIL "a 403 is not a 404": expected 404, got deny (403 forbidden: no rule allows organization.update)"#,
                r#"FAIL "a 404 is not a 403": expected 403, got deny (404 no_route: no route for this path)"#,
                r#"FAIL "a 404 is not allowed": expected allow, got deny (404 no_route: no route for this path)"#,
                "1 passed, 5 failed (6 cases)",
            ]
        );
    }

    #[test]
    fn organizations_come_from_the_path_the_query_and_the_body() {
        let org_path = format!("/api/organizations/{ORG}");
        let other_path = format!("/api/organizations/{OTHER_ORG}");
        let body = |org: &str| {
            format!("body = '{{\"organization_id\": \"{org}\", \"endpoint\": \"https://x\"}}'\n")
        };
        let cases = [
            case("own org", "\"billing\"", "PATCH", &org_path, "\"allow\""),
            case(
                "own org, upper case",
                "\"billing\"",
                "PATCH",
                &format!("/api/organizations/{}", ORG.to_uppercase()),
                "\"allow\"",
            ),
            case("other org", "\"billing\"", "PATCH", &other_path, "403"),
            case(
                "own org in the body",
                "\"billing\"",
                "POST",
                "/api/webhooks",
                "\"allow\"",
            ) + &body(ORG),
            case(
                "other org in the body",
                "\"billing\"",
                "POST",
                "/api/webhooks",
                "403",
            ) + &body(OTHER_ORG),
            case(
                "no body",
                "\"billing\"",
                "POST",
                "/api/webhooks",
                "\"allow\"",
            ),
        ]
        .concat();
        let report = run(&cases, "enforce");
        assert_eq!(report.failed(), 1, "{report}");
        assert!(
            report.to_string().starts_with(
                r#"FAIL "no body": expected allow, got deny (403 forbidden: no rule allows webhooks.create; it reads organizations from the body (organization_id) and the case has no body)"#
            ),
            "{report}"
        );
        // `events.list` reads the organization from its query.
        let events = |org: &str| format!("/api/events?limit=5&organization_id={org}");
        let cases = [
            case(
                "own org's events",
                "\"billing\"",
                "GET",
                &events(ORG),
                "\"allow\"",
            ),
            case(
                "other org's events",
                "\"billing\"",
                "GET",
                &events(OTHER_ORG),
                "403",
            ),
            case(
                "no org's events",
                "\"billing\"",
                "GET",
                "/api/events",
                "403",
            ),
        ]
        .concat();
        let report = run(&cases, "enforce");
        assert!(report.all_passed(), "{report}");
    }

    #[test]
    fn subjects_are_callers_too() {
        let cases = "[[case]]\nname = \"alice\"\nsub = \"alice@corp\"\nmethod = \"GET\"\npath = \"/api/organizations\"\nexpect = 403\n";
        let report = run(cases, "enforce");
        assert!(report.all_passed(), "{report}");
    }

    /// Shadow mode forwards a denied request, but the case judges the
    /// decision: the policy `enforce` would apply.
    #[test]
    fn shadow_mode_is_judged_by_the_decision() {
        let cases = case(
            "support renames",
            "\"support\"",
            "PUT",
            &format!("/api/organizations/{ORG}"),
            "\"deny\"",
        ) + &case(
            "support renames, 403",
            "\"support\"",
            "PUT",
            &format!("/api/organizations/{ORG}"),
            "403",
        );
        let report = run(&cases, "shadow");
        assert!(report.all_passed(), "{report}");
    }

    #[test]
    fn expect_takes_allow_deny_and_the_decision_statuses_only() {
        for (written, parsed) in [
            ("\"allow\"", Expectation::Allow),
            ("\"deny\"", Expectation::Deny),
            ("400", Expectation::Status(StatusCode::BAD_REQUEST)),
            ("403", Expectation::Status(StatusCode::FORBIDDEN)),
            ("404", Expectation::Status(StatusCode::NOT_FOUND)),
            ("405", Expectation::Status(StatusCode::METHOD_NOT_ALLOWED)),
        ] {
            let suite =
                CaseSuite::parse(&case("c", "", "GET", "/", written), "cases.toml").unwrap();
            assert_eq!(suite.cases[0].expect, parsed, "{written}");
        }
        for written in [
            "\"Allow\"",
            "\"denied\"",
            "401",
            "200",
            "422",
            "-403",
            "403.0",
            "true",
        ] {
            let err = errors(&case("c", "", "GET", "/", written));
            assert!(
                err.starts_with("cases.toml: case[0] \"c\": `expect`: "),
                "{written}: {err}"
            );
            assert!(err.contains("400, 403, 404, 405"), "{written}: {err}");
        }
    }

    #[test]
    fn every_problem_names_the_file_the_case_and_the_key() {
        let text = [
            case("fine", "", "GET", "/", "403"),
            case("typo", "", "GET", "/", "403") + "bdy = '{}'\n",
            case("lower", "", "get", "/", "403"),
            case("relative", "", "GET", "api/x", "403"),
            case("bad body", "", "POST", "/", "403") + "body = '{\"a\": 1,}'\n",
            case("duplicate keys", "", "POST", "/", "403") + "body = '{\"a\": 1, \"a\": 2}'\n",
            "[[case]]\nmethod = \"GET\"\npath = \"/\"\nexpect = 403\n".into(),
            "[[case]]\nname = \"no expect\"\nmethod = \"GET\"\npath = \"/\"\n".into(),
            case("fine", "", "GET", "/", "403"),
            case("", "", "GET", "/", "403"),
            case("teams", "1", "GET", "/", "403"),
        ]
        .concat();
        let err = CaseSuite::parse(&text, "cases.toml").unwrap_err();
        let lines: Vec<String> = err.to_string().lines().map(str::to_owned).collect();
        let keys: Vec<(Option<usize>, &str)> = err
            .problems()
            .iter()
            .map(|p| (p.case.as_ref().map(|c| c.0), p.key.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                (Some(1), "bdy"),
                (Some(2), "method"),
                (Some(3), "path"),
                (Some(4), "body"),
                (Some(5), "body"),
                (Some(6), "name"),
                (Some(7), "expect"),
                (Some(8), "name"),
                (Some(9), "name"),
                (Some(10), "teams[0]"),
            ],
            "{err}"
        );
        assert!(
            lines[0].starts_with(
                "cases.toml: case[1] \"typo\": `bdy`: unknown key (not part of the cases format); expected one of `name`"
            ),
            "{}",
            lines[0]
        );
        assert!(
            lines[2].contains("\"api/x\" must start with /"),
            "{}",
            lines[2]
        );
        assert!(lines[3].contains("is not JSON"), "{}", lines[3]);
        assert!(lines[4].contains("duplicate"), "{}", lines[4]);
        assert_eq!(
            lines[5],
            "cases.toml: case[6]: `name`: missing: every case needs name, method, path and expect"
        );
        assert_eq!(
            lines[6],
            "cases.toml: case[7] \"no expect\": `expect`: missing: every case needs name, method, path and expect"
        );
        assert_eq!(
            lines[7],
            "cases.toml: case[8] \"fine\": `name`: is also the name of case[0]"
        );
        assert_eq!(
            lines[8],
            "cases.toml: case[9] \"\": `name`: must not be empty"
        );
    }

    #[test]
    fn a_file_without_cases_or_with_other_tables_is_an_error() {
        for (text, expected) in [
            ("", "cases.toml: no [[case]]: a policy test that tests nothing cannot pass"),
            ("case = []\n", "cases.toml: no [[case]]: a policy test that tests nothing cannot pass"),
            (
                "[[cases]]\nname = \"x\"\n",
                "cases.toml: `cases`: unknown key (not part of the cases format); the file holds only [[case]] tables",
            ),
            (
                "[case]\nname = \"x\"\n",
                "cases.toml: `case`: must be an array of tables: write each case as [[case]]",
            ),
        ] {
            assert_eq!(errors(text), expected, "{text}");
        }
        let err = errors("[[case]\n");
        assert!(err.starts_with("cases.toml: "), "{err}");
        let missing = CaseSuite::load(Path::new("/nonexistent/cases.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            missing.starts_with("/nonexistent/cases.toml: cannot read the cases file"),
            "{missing}"
        );
    }

    /// Keys are matched as written: `Name` is not `name`.
    #[test]
    fn keys_are_case_sensitive() {
        let err = errors(&case("c", "", "GET", "/", "403").replace("name =", "Name ="));
        assert!(err.contains("`Name`: unknown key"), "{err}");
    }
}
