//! Team policy: who may perform which operation on which organization.
//!
//! Deny by default. A request is allowed when at least one rule matches its
//! [`Principal`] (any of the rule's `teams`, or any of its `subjects`), its
//! operation (an `allow` pattern, where `*` matches any run of characters),
//! and, when the rule lists `organizations`, every organization the request
//! names: the route's organization path parameter (`{id}` of
//! `/api/organizations/{id}`, `{org_id}`), an `organization_id` query
//! parameter, and the body's `organization_id` (and `*_organization_id`)
//! on writes that carry one. A scoped rule never matches a request whose
//! organization cannot be determined. Otherwise it is 403 `forbidden`,
//! naming the operation but not the rules.
//!
//! Organizations in the body are known only once the body is read, and the
//! body is read only for callers that some rule lets perform the operation:
//! [`PolicyLayer`] decides everything it can before the body, and leaves the
//! rest to [`PolicyBodyLayer`], which sits after validation.
//!
//! The [`PolicyDecision`] goes into the request extensions for the audit and
//! telemetry layers. In `shadow` mode a would-be denial is logged at warn and
//! the request is forwarded anyway, for rolling a policy out.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tower::{Layer, Service};

use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::future::ResponseFuture;
use crate::notes::{is_uuid, ParsedBody, Principal, RouteMatch};
pub use crate::notes::{PolicyDecision, PolicyMode};
use crate::problem::ConfigProblem;
use crate::trace::RequestTrace;

/// `[policy]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// `enforce`, or `shadow` (decide and log, but forward anyway).
    #[serde(default)]
    pub mode: PolicyMode,
    /// `[[policy.rules]]`; none means every request is denied.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// `[[policy.rules]]`: one grant.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Names the rule in audit records and `policy explain`.
    pub name: String,
    /// The rule applies to members of any of these teams …
    #[serde(default)]
    pub teams: Vec<String>,
    /// … or to any of these subjects.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Operation names or patterns (`*` matches any run of characters).
    pub allow: Vec<String>,
    /// If set, only requests naming these organizations (UUIDs), and
    /// nothing else, match.
    pub organizations: Option<Vec<String>>,
}

/// A compiled rule.
#[derive(Debug)]
struct Rule {
    name: Arc<str>,
    teams: HashSet<String>,
    subjects: HashSet<String>,
    allow: Vec<String>,
    /// Lowercased UUIDs.
    organizations: Option<HashSet<String>>,
}

/// Whether `pattern` (with `*` wildcards) matches `name` entirely.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = parts.collect();
    let Some(last) = parts.pop() else {
        return rest.is_empty(); // no `*`: exact match
    };
    for middle in parts {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// The compiled policy.
#[derive(Debug)]
pub struct Policy {
    mode: PolicyMode,
    rules: Vec<Rule>,
    /// For each team, the rules naming it, in config order: a decision looks
    /// only at the caller's rules, so a thousand rules for other teams cost
    /// it nothing.
    by_team: HashMap<Arc<str>, Vec<usize>>,
    /// The same for subjects.
    by_subject: HashMap<Arc<str>, Vec<usize>>,
}

impl Policy {
    /// Compiles `[policy]`. `operations` are the routes' operation names: a
    /// pattern matching none of them is a typo and an error.
    pub fn from_config(
        config: &PolicyConfig,
        operations: &[Arc<str>],
    ) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut names = HashSet::new();
        let mut rules = Vec::new();
        for (i, rule) in config.rules.iter().enumerate() {
            let key = format!("policy.rules[{i}]");
            let mut fail = |field: &str, message: String| {
                problems.push(ConfigProblem::new(
                    format!("{key}.{field}"),
                    format!("rule {:?}: {message}", rule.name),
                ));
            };
            if rule.name.is_empty() {
                fail("name", "must not be empty".into());
            } else if !names.insert(rule.name.clone()) {
                fail("name", "is used by another rule".into());
            }
            if rule.teams.is_empty() && rule.subjects.is_empty() {
                fail(
                    "teams",
                    "list some teams or subjects: a rule for nobody is a mistake".into(),
                );
            }
            if rule.allow.is_empty() {
                fail("allow", "must list at least one operation".into());
            }
            for pattern in &rule.allow {
                if !operations.iter().any(|op| glob_match(pattern, op)) {
                    fail("allow", format!("{pattern:?} matches no route's operation"));
                }
            }
            let organizations = rule.organizations.as_ref().map(|ids| {
                if ids.is_empty() {
                    fail(
                        "organizations",
                        "is empty; remove it to allow every organization".into(),
                    );
                }
                for id in ids.iter().filter(|id| !is_uuid(id)) {
                    fail("organizations", format!("{id:?} is not a UUID"));
                }
                ids.iter().map(|id| id.to_ascii_lowercase()).collect()
            });
            rules.push(Rule {
                name: rule.name.as_str().into(),
                teams: rule.teams.iter().cloned().collect(),
                subjects: rule.subjects.iter().cloned().collect(),
                allow: rule.allow.clone(),
                organizations,
            });
        }
        if problems.is_empty() {
            let mut by_team: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
            let mut by_subject: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
            for (i, rule) in config.rules.iter().enumerate() {
                for (names, index) in [
                    (&rule.teams, &mut by_team),
                    (&rule.subjects, &mut by_subject),
                ] {
                    for name in names {
                        let list = index.entry(name.as_str().into()).or_default();
                        // A name listed twice in one rule indexes it once.
                        if list.last() != Some(&i) {
                            list.push(i);
                        }
                    }
                }
            }
            Ok(Self {
                mode: config.mode,
                rules,
                by_team,
                by_subject,
            })
        } else {
            Err(problems)
        }
    }

    /// The mode in force.
    pub fn mode(&self) -> PolicyMode {
        self.mode
    }

    /// Decides for a principal (if authenticated) and a matched route, from
    /// the organizations its path and query name.
    pub fn decide(&self, principal: Option<&Principal>, route: &RouteMatch) -> PolicyDecision {
        self.decide_with_body(principal, route, None)
    }

    /// Decides as [`Policy::decide`], adding the organizations `body` names
    /// in the route's body organization fields.
    pub fn decide_with_body(
        &self,
        principal: Option<&Principal>,
        route: &RouteMatch,
        body: Option<&Value>,
    ) -> PolicyDecision {
        let mut organizations: Vec<&str> = route.organization_ids.iter().map(|id| &**id).collect();
        let mut lowered = Vec::new();
        if let Some(body) = body {
            for field in route.body_organization_fields.iter() {
                if let Some(id) = body.get(&**field).and_then(Value::as_str) {
                    lowered.push(id.to_ascii_lowercase());
                }
            }
        }
        organizations.extend(lowered.iter().map(String::as_str));
        let rule = principal.and_then(|principal| {
            self.first_rule(principal, |rule| {
                rule.grants(principal, &route.operation)
                    && match &rule.organizations {
                        None => true,
                        // Every organization named, and at least one.
                        Some(allowed) => {
                            !organizations.is_empty()
                                && organizations.iter().all(|id| allowed.contains(*id))
                        }
                    }
            })
        });
        PolicyDecision {
            allowed: rule.is_some(),
            rule: rule.map(|r| r.name.clone()),
            mode: self.mode,
        }
    }

    /// Whether the decision must wait for the body: the route reads
    /// organizations from it, and some rule lets the caller perform the
    /// operation on some organization. (Callers no rule names are refused
    /// before their body is read.)
    pub fn needs_body(&self, principal: Option<&Principal>, route: &RouteMatch) -> bool {
        !route.body_organization_fields.is_empty()
            && principal.is_some_and(|p| {
                self.first_rule(p, |r| r.grants(p, &route.operation))
                    .is_some()
            })
    }

    /// The first rule, in config order, for `principal` (its subject or one
    /// of its teams) that `test` accepts. Only the principal's own rules are
    /// visited, from the indexes; the order, and so which rule decides, is
    /// the config's, as if every rule were tried in turn.
    fn first_rule(&self, principal: &Principal, test: impl Fn(&Rule) -> bool) -> Option<&Rule> {
        let mut lists = self.by_subject.get(principal.sub()).into_iter().chain(
            principal
                .teams()
                .iter()
                .filter_map(|t| self.by_team.get(t.as_str())),
        );
        let first = lists.next()?;
        let Some(second) = lists.next() else {
            // The usual case: one list, already in order.
            return first.iter().map(|&i| &self.rules[i]).find(|r| test(r));
        };
        let mut candidates: Vec<usize> = first.iter().chain(second).copied().collect();
        for list in lists {
            candidates.extend_from_slice(list);
        }
        candidates.sort_unstable();
        candidates.dedup();
        candidates
            .into_iter()
            .map(|i| &self.rules[i])
            .find(|r| test(r))
    }
}

impl Rule {
    /// Whether the rule is for `principal` and allows `operation`, whatever
    /// the organization.
    fn grants(&self, principal: &Principal, operation: &str) -> bool {
        (self.subjects.contains(principal.sub())
            || principal.teams().iter().any(|t| self.teams.contains(t)))
            && self.allow.iter().any(|p| glob_match(p, operation))
    }
}

/// In the request extensions: the policy decision waits for the body
/// ([`PolicyBodyLayer`] makes it).
#[derive(Debug, Clone, Copy)]
pub struct DecisionAwaitsBody;

/// Records `decision`, and refuses the request when it is an enforced denial.
fn enforce<B>(
    decision: &PolicyDecision,
    req: &Request<B>,
    route: &RouteMatch,
) -> Result<(), GatewayError> {
    let mut span = RequestTrace::child_of(req.extensions(), "policy", SpanKind::Internal, Vec::new);
    crate::trace::set(&mut span, || {
        KeyValue::new(
            "gateway.decision",
            if decision.allowed { "allow" } else { "deny" },
        )
    });
    if let Some(rule) = &decision.rule {
        crate::trace::set(&mut span, || {
            KeyValue::new("gateway.rule", rule.to_string())
        });
    }
    drop(span);
    crate::notes::record(req.extensions(), |n| n.decision = Some(decision.clone()));
    if decision.allowed {
        return Ok(());
    }
    let operation = route.operation.clone();
    let sub = req
        .extensions()
        .get::<Principal>()
        .map(|p| p.sub().to_owned())
        .unwrap_or_default();
    match decision.mode {
        PolicyMode::Enforce => {
            tracing::debug!(%operation, %sub, "request denied by policy");
            Err(GatewayError::Forbidden { operation })
        }
        PolicyMode::Shadow => {
            tracing::warn!(%operation, %sub, "policy would deny this request (shadow mode): forwarding");
            Ok(())
        }
    }
}

/// Enforces a [`Policy`] after routing and authentication.
#[derive(Debug, Clone)]
pub struct PolicyLayer {
    policy: Arc<Policy>,
}

impl PolicyLayer {
    /// A layer enforcing `policy`.
    pub fn new(policy: Arc<Policy>) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for PolicyLayer {
    type Service = PolicyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PolicyService {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The service built by [`PolicyLayer`].
#[derive(Debug, Clone)]
pub struct PolicyService<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S, B> Service<Request<B>> for PolicyService<S>
where
    S: Service<Request<B>, Response = Response<GatewayBody>>,
{
    type Response = Response<GatewayBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // Without a route there is nothing to allow: fail closed.
        let Some(route) = req.extensions().get::<RouteMatch>() else {
            return ResponseFuture::early(GatewayError::NoRoute.to_response());
        };
        let principal = req.extensions().get::<Principal>();
        if self.policy.needs_body(principal, route) {
            req.extensions_mut().insert(DecisionAwaitsBody);
            return ResponseFuture::inner(self.inner.call(req));
        }
        let decision = self.policy.decide(principal, route);
        if let Err(refusal) = enforce(&decision, &req, route) {
            return ResponseFuture::early(refusal.to_response());
        }
        req.extensions_mut().insert(decision);
        ResponseFuture::inner(self.inner.call(req))
    }
}

/// Makes the decisions [`PolicyLayer`] left for the body: after validation,
/// which parsed it ([`ParsedBody`]).
#[derive(Debug, Clone)]
pub struct PolicyBodyLayer {
    policy: Arc<Policy>,
}

impl PolicyBodyLayer {
    /// A layer finishing `policy`'s decisions.
    pub fn new(policy: Arc<Policy>) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for PolicyBodyLayer {
    type Service = PolicyBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PolicyBody {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The service built by [`PolicyBodyLayer`].
#[derive(Debug, Clone)]
pub struct PolicyBody<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S, B> Service<Request<B>> for PolicyBody<S>
where
    S: Service<Request<B>, Response = Response<GatewayBody>>,
{
    type Response = Response<GatewayBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if req
            .extensions_mut()
            .remove::<DecisionAwaitsBody>()
            .is_none()
        {
            return ResponseFuture::inner(self.inner.call(req));
        }
        let Some(route) = req.extensions().get::<RouteMatch>() else {
            return ResponseFuture::early(GatewayError::NoRoute.to_response());
        };
        let body = req.extensions().get::<ParsedBody>().map(|b| &*b.0);
        let decision =
            self.policy
                .decide_with_body(req.extensions().get::<Principal>(), route, body);
        if let Err(refusal) = enforce(&decision, &req, route) {
            return ResponseFuture::early(refusal.to_response());
        }
        req.extensions_mut().insert(decision);
        ResponseFuture::inner(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names() {
        assert!(glob_match("organizations.*", "organizations.update"));
        assert!(glob_match("*", "organization.current"));
        assert!(glob_match("organizations.get", "organizations.get"));
        assert!(glob_match("*.get", "organizations.get"));
        assert!(glob_match("org*s.*e", "organizations.update"));
        assert!(!glob_match("organizations.*", "organization.current"));
        // Each `*` part consumes what it matched: the middle `.get` and the
        // final `.get` cannot be the same characters.
        assert!(!glob_match("*.get*.get", "users.get"));
        assert!(glob_match("*.get*.get", "users.get.x.get"));
        assert!(!glob_match("organizations.get", "organizations.getx"));
        assert!(!glob_match("*.get", "organizations.list"));
        assert!(!glob_match("a*b*c", "acb"));
    }

    fn route(operation: &str, id: Option<&str>) -> RouteMatch {
        RouteMatch {
            operation: operation.into(),
            template: "/t".into(),
            source: crate::notes::RouteSource::Routes,
            organization_id: id.map(Into::into),
            organization_ids: id.map(Into::into).into_iter().collect(),
            body_organization_fields: Arc::new([]),
            credential: None,
            schema: None,
            path_has_schema: false,
            bodyless: false,
            secret_headers: Arc::new([]),
        }
    }

    fn policy(rules: Vec<RuleConfig>) -> Policy {
        let ops: Vec<Arc<str>> = [
            "organizations.update",
            "organizations.list",
            "organization.current",
        ]
        .into_iter()
        .map(Into::into)
        .collect();
        Policy::from_config(
            &PolicyConfig {
                mode: PolicyMode::Enforce,
                rules,
            },
            &ops,
        )
        .unwrap()
    }

    fn rule(name: &str, teams: &[&str], allow: &[&str], orgs: Option<&[&str]>) -> RuleConfig {
        RuleConfig {
            name: name.into(),
            teams: teams.iter().map(|s| s.to_string()).collect(),
            subjects: vec![],
            allow: allow.iter().map(|s| s.to_string()).collect(),
            organizations: orgs.map(|o| o.iter().map(|s| s.to_string()).collect()),
        }
    }

    const ORG: &str = "248df4b7-aa70-47b8-a036-33ac447e668d";

    /// The indexes change which rules are looked at, never which one
    /// decides: over many rules, principals with several teams and a
    /// subject of their own, every decision is the first rule in config
    /// order, as a scan of every rule finds it.
    #[test]
    fn the_rule_indexes_decide_as_a_scan_of_every_rule() {
        let teams = ["a", "b", "c", "d", "e"];
        let ops = [
            "organizations.update",
            "organizations.list",
            "organization.current",
        ];
        let patterns = ["organizations.*", "*", "organization.current", "*.list"];
        let mut rules = Vec::new();
        for i in 0..200usize {
            let mut r = rule(
                &format!("r{i}"),
                &[teams[i % 5], teams[(i * 7 + 3) % 5]],
                &[patterns[i % 4]],
                (i % 3 == 0).then_some(&[ORG][..]),
            );
            if i % 11 == 0 {
                r.teams.clear();
                r.subjects = vec![format!("user{}", i % 4)];
            }
            rules.push(r);
        }
        let p = policy(rules.clone());
        let scan = |principal: &Principal, route: &RouteMatch| {
            rules
                .iter()
                .find(|r| {
                    (r.subjects.iter().any(|s| s == principal.sub())
                        || principal.teams().iter().any(|t| r.teams.contains(t)))
                        && r.allow.iter().any(|pat| glob_match(pat, &route.operation))
                        && r.organizations.as_ref().is_none_or(|o| {
                            route
                                .organization_ids
                                .iter()
                                .all(|id| o.iter().any(|x| x == &**id))
                                && !route.organization_ids.is_empty()
                        })
                })
                .map(|r| r.name.clone())
        };
        let mut decided = 0;
        for sub in ["user0", "user1", "user3", "nobody"] {
            for team_set in [
                &[][..],
                &["a"][..],
                &["c", "a"][..],
                &["e", "d", "b"][..],
                &["zz"][..],
            ] {
                let principal =
                    Principal::new(sub, team_set.iter().map(|t| t.to_string()).collect());
                for op in ops {
                    for id in [
                        Some(ORG),
                        Some("00000000-0000-0000-0000-000000000000"),
                        None,
                    ] {
                        let route = route(op, id);
                        let decision = p.decide(Some(&principal), &route);
                        let expected = scan(&principal, &route);
                        assert_eq!(
                            decision.rule.as_deref(),
                            expected.as_deref(),
                            "{sub} {team_set:?} {op} {id:?}"
                        );
                        decided += usize::from(decision.allowed);
                    }
                }
            }
        }
        assert!(decided > 50, "the cases allow some requests: {decided}");
    }

    #[test]
    fn organization_scoped_rules_need_a_matching_id() {
        let p = policy(vec![rule(
            "billing",
            &["billing"],
            &["organizations.update"],
            Some(&[&ORG.to_uppercase()]),
        )]);
        let billing = Principal::new("b", vec!["billing".into()]);
        assert!(
            p.decide(Some(&billing), &route("organizations.update", Some(ORG)))
                .allowed
        );
        let other = "00000000-0000-0000-0000-000000000000";
        assert!(
            !p.decide(Some(&billing), &route("organizations.update", Some(other)))
                .allowed
        );
        assert!(
            !p.decide(Some(&billing), &route("organizations.list", None))
                .allowed
        );
        assert!(
            !p.decide(None, &route("organizations.update", Some(ORG)))
                .allowed
        );
    }

    #[test]
    fn subjects_match_without_teams() {
        let mut r = rule("alice", &[], &["organizations.*"], None);
        r.subjects = vec!["alice@corp".into()];
        let p = policy(vec![r]);
        let decision = p.decide(
            Some(&Principal::new("alice@corp", vec![])),
            &route("organizations.list", None),
        );
        assert_eq!(decision.rule.as_deref(), Some("alice"));
        assert!(
            !p.decide(
                Some(&Principal::new("bob@corp", vec![])),
                &route("organizations.list", None)
            )
            .allowed
        );
    }

    #[test]
    fn typos_and_empty_rules_are_config_problems() {
        let ops: Vec<Arc<str>> = vec!["organizations.update".into()];
        let config = PolicyConfig {
            mode: PolicyMode::Enforce,
            rules: vec![
                rule("a", &["x"], &["organisations.*"], None),
                rule("a", &[], &["organizations.update"], Some(&["nope"])),
            ],
        };
        let problems = Policy::from_config(&config, &ops).unwrap_err();
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "policy.rules[0].allow",
                "policy.rules[1].name",
                "policy.rules[1].teams",
                "policy.rules[1].organizations"
            ]
        );
    }
}
