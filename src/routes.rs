//! Routes: the Polytomic operations the gateway knows, and nothing else.
//!
//! Each `[[routes]]` entry names an operation (`organizations.update`), its
//! methods, a path template and the credential injected upstream. At startup
//! the templates are compiled into one `matchit` router; a template conflict,
//! a duplicate method on one template, an unknown credential or a bad
//! template fails `check` and `serve`, naming the route.
//!
//! Per request, [`RouteLayer`]:
//! 1. refuses ambiguous paths with 400 `invalid_path` (see [`check_path`]):
//!    the gateway never normalizes a path, so what the policy checks is
//!    byte for byte what the upstream receives;
//! 2. refuses method-override headers with 400, so the method checked is the
//!    method sent;
//! 3. matches the path (case-sensitively; the query is never used): no
//!    template matches is 404 `no_route`, a template without the method is
//!    405 with `Allow`; `{id}` must be a UUID;
//! 4. puts a [`RouteMatch`] in the request extensions for the policy, audit
//!    and telemetry layers, and selects the route's credential.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderName, Method, Request, Response};
use serde::{Deserialize, Serialize};
use tower::{Layer, Service};

use crate::body::GatewayBody;
use crate::config::ConfigProblem;
use crate::credentials::{CredentialSet, SelectedCredential};
use crate::error::GatewayError;
use crate::future::ResponseFuture;
use crate::validate::{CompiledSchema, SchemaCache};

/// The methods a route may list (upper case, as HTTP sends them).
pub const STANDARD_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// Paths longer than this are refused.
pub const MAX_PATH_BYTES: usize = 2048;

/// Headers that ask a server to act as another method; always refused.
pub const METHOD_OVERRIDE_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// `[[routes]]`: one operation the gateway forwards.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A stable name, used by the policy, audit records, metrics and traces.
    pub operation: String,
    /// The methods this operation answers to.
    pub methods: Vec<String>,
    /// Literal segments, `{param}` segments and an optional final `{*rest}`;
    /// `{id}` values must be UUIDs.
    pub path: String,
    /// Which `[credentials.*]` is injected upstream; default: the default one.
    pub credential: Option<String>,
    /// A JSON Schema file that write bodies must satisfy; relative paths
    /// resolve against the working directory.
    pub schema: Option<std::path::PathBuf>,
}

/// Why a path is refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Longer than [`MAX_PATH_BYTES`].
    #[error("path longer than 2048 bytes")]
    TooLong,
    /// Does not start with `/`.
    #[error("path must start with /")]
    NotAbsolute,
    /// An empty segment: `//`, or a trailing slash.
    #[error("empty path segment (// or a trailing slash)")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("dot segment (. or ..) in path")]
    DotSegment,
    /// `%2F`, `%5C`, `%2E`, `%25`, `%3F`, `%23`, `%3B` or an encoded control byte.
    #[error("ambiguous percent-encoding in path")]
    EncodedDelimiter,
    /// A percent-encoded letter, digit, `-`, `_` or `~`, which would route
    /// differently from the plain character it means.
    #[error("percent-encoded unreserved character in path")]
    EncodedUnreserved,
    /// `%` not followed by two hex digits.
    #[error("malformed percent-encoding in path")]
    BadPercent,
    /// A backslash.
    #[error("backslash in path")]
    Backslash,
    /// `;` (matrix parameters).
    #[error("matrix parameter (;) in path")]
    Semicolon,
    /// A control character or raw non-ASCII byte.
    #[error("control or non-ASCII character in path")]
    BadByte,
    /// A raw `#`.
    #[error("fragment (#) in request target")]
    Fragment,
}

/// Checks that a path means one thing to every reader: no normalization
/// would change it and no decoding would add a delimiter.
pub fn check_path(path: &str) -> Result<(), PathError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if path == "/" {
        return Ok(()); // the root: unambiguous, and routed like any path
    }
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Semicolon),
            b'#' => return Err(PathError::Fragment),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadPercent)?;
                let decoded = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(PathError::BadPercent)?;
                if matches!(decoded, b'/' | b'\\' | b'.' | b'%' | b'?' | b'#' | b';')
                    || decoded.is_ascii_control()
                {
                    return Err(PathError::EncodedDelimiter);
                }
                // An encoded letter, digit, '-', '_' or '~' means the same as
                // the plain one to the upstream (RFC 3986 §2.3) but would not
                // match the same route here.
                if decoded.is_ascii_alphanumeric() || matches!(decoded, b'-' | b'_' | b'~') {
                    return Err(PathError::EncodedUnreserved);
                }
                i += 2;
            }
            b if b.is_ascii_control() || !b.is_ascii() => return Err(PathError::BadByte),
            _ => {}
        }
        i += 1;
    }
    for segment in path[1..].split('/') {
        match segment {
            "" => return Err(PathError::EmptySegment),
            "." | ".." => return Err(PathError::DotSegment),
            _ => {}
        }
    }
    Ok(())
}

/// Whether `s` is a UUID in its canonical hyphenated form (either case).
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A matched route, stored in the request extensions.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// The route's operation name.
    pub operation: Arc<str>,
    /// The route's path template (the `http.route` of traces).
    pub template: Arc<str>,
    /// The `{id}` value, lowercased, if the template has one.
    pub organization_id: Option<Arc<str>>,
    /// The credential name injected upstream (`None`: the default one).
    pub credential: Option<Arc<str>>,
    /// The schema write bodies must satisfy, if the route names one.
    pub schema: Option<Arc<CompiledSchema>>,
    /// Whether any route on this path template has a schema: bodies on other
    /// methods here are refused rather than forwarded unvalidated.
    pub path_has_schema: bool,
}

/// One compiled route.
#[derive(Debug)]
struct Route {
    operation: Arc<str>,
    template: Arc<str>,
    credential: Option<Arc<str>>,
    schema: Option<Arc<CompiledSchema>>,
}

/// All the routes of one template, by method.
#[derive(Debug)]
struct TemplateRoutes {
    by_method: BTreeMap<Method, Arc<Route>>,
    /// The `Allow` header value for a 405.
    allow: http::HeaderValue,
    /// Whether the template has an `{id}` parameter (a UUID).
    has_id: bool,
    /// Whether any route on the template has a schema.
    has_schema: bool,
}

/// The compiled route table.
#[derive(Debug)]
pub struct RouteTable {
    router: matchit::Router<TemplateRoutes>,
    operations: Vec<Arc<str>>,
}

/// The outcome of routing a request.
#[derive(Debug)]
pub enum Routed {
    /// The route and what it matched.
    Matched(RouteMatch),
    /// Refused, with the response to send.
    Refused(GatewayError),
}

impl RouteTable {
    /// Compiles `[[routes]]`. `credential_exists` says whether a
    /// `[credentials.NAME]` is configured.
    pub fn from_config(
        routes: &[RouteConfig],
        credential_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut templates: BTreeMap<String, BTreeMap<Method, Arc<Route>>> = BTreeMap::new();
        let mut operations = Vec::new();
        let mut seen_operations = HashSet::new();
        let mut schemas = SchemaCache::default();
        for (i, route) in routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            let name = format!("route {:?} (routes[{i}])", route.operation);
            let mut fail = |field: &str, message: String| {
                problems.push(ConfigProblem::new(
                    format!("{key}.{field}"),
                    format!("{name}: {message}"),
                ));
            };
            if !is_operation_name(&route.operation) {
                fail(
                    "operation",
                    "must be a non-empty name of letters, digits, '.', '_' and '-'".into(),
                );
            } else if !seen_operations.insert(route.operation.clone()) {
                fail("operation", "is defined twice".into());
            }
            if let Err(e) = check_template(&route.path) {
                fail("path", e);
                continue;
            }
            if let Some(credential) = &route.credential {
                if !credential_exists(credential) {
                    fail(
                        "credential",
                        format!("no [credentials.{credential}] is configured"),
                    );
                }
            }
            let schema = match &route.schema {
                None => None,
                Some(path) => match schemas.get(path) {
                    Ok(schema) => Some(schema),
                    Err(e) => {
                        fail("schema", e);
                        None
                    }
                },
            };
            if route.methods.is_empty() {
                fail("methods", "must list at least one method".into());
            }
            let compiled = Arc::new(Route {
                operation: route.operation.as_str().into(),
                template: route.path.as_str().into(),
                credential: route.credential.as_deref().map(Into::into),
                schema,
            });
            let entry = templates.entry(route.path.clone()).or_default();
            for method in &route.methods {
                match Method::from_bytes(method.as_bytes()) {
                    Ok(m) if STANDARD_METHODS.contains(&m) => {
                        if let Some(other) = entry.insert(m, compiled.clone()) {
                            fail(
                                "methods",
                                format!(
                                    "{method} {} is also routed to {:?}",
                                    route.path, other.operation
                                ),
                            );
                        }
                    }
                    _ => fail(
                        "methods",
                        format!(
                            "{method:?} is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
                        ),
                    ),
                }
            }
            operations.push(compiled.operation.clone());
        }
        let mut router = matchit::Router::new();
        for (template, by_method) in templates {
            let allow = by_method
                .keys()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            let allow = http::HeaderValue::from_str(&allow).expect("method names are header-safe");
            let has_id = template.split('/').any(|s| s == "{id}");
            let has_schema = by_method.values().any(|r| r.schema.is_some());
            let operations: Vec<String> = by_method
                .values()
                .map(|r| r.operation.to_string())
                .collect();
            if let Err(e) = router.insert(
                template.clone(),
                TemplateRoutes {
                    by_method,
                    allow,
                    has_id,
                    has_schema,
                },
            ) {
                problems.push(ConfigProblem::new(
                    "routes",
                    format!(
                        "the path of route {:?} ({template}) conflicts with another route: {e}",
                        operations.join(", ")
                    ),
                ));
            }
        }
        if problems.is_empty() {
            Ok(Self { router, operations })
        } else {
            Err(problems)
        }
    }

    /// Every operation name, in configuration order.
    pub fn operations(&self) -> &[Arc<str>] {
        &self.operations
    }

    /// Routes a method and path (the path already passed [`check_path`]).
    pub fn route(&self, method: &Method, path: &str) -> Routed {
        let Ok(matched) = self.router.at(path) else {
            return Routed::Refused(GatewayError::NoRoute);
        };
        let routes = matched.value;
        let Some(route) = routes.by_method.get(method) else {
            return Routed::Refused(GatewayError::MethodNotAllowed {
                method: method.clone(),
                allow: routes.allow.clone(),
            });
        };
        let organization_id = match matched.params.get("id") {
            Some(id) if is_uuid(id) => Some(id.to_ascii_lowercase().into()),
            Some(_) => return Routed::Refused(GatewayError::InvalidId),
            None => None,
        };
        debug_assert_eq!(routes.has_id, organization_id.is_some());
        Routed::Matched(RouteMatch {
            operation: route.operation.clone(),
            template: route.template.clone(),
            organization_id,
            credential: route.credential.clone(),
            schema: route.schema.clone(),
            path_has_schema: routes.has_schema,
        })
    }

    /// Everything [`RouteLayer`] checks, for a method, path and headers.
    pub fn resolve(&self, method: &Method, path: &str, headers: &http::HeaderMap) -> Routed {
        if let Err(e) = check_path(path) {
            return Routed::Refused(GatewayError::InvalidPath(e));
        }
        if let Some(name) = METHOD_OVERRIDE_HEADERS
            .iter()
            .find(|h| headers.contains_key(*h))
        {
            return Routed::Refused(GatewayError::MethodOverride(name.clone()));
        }
        self.route(method, path)
    }
}

fn is_operation_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Checks a path template: `/`-separated literal segments, `{param}`
/// segments, and at most a final `{*rest}`.
fn check_template(template: &str) -> Result<(), String> {
    if !template.starts_with('/') {
        return Err(format!("{template:?} must start with /"));
    }
    if check_path(&template.replace(['{', '}', '*'], "x")).is_err() {
        return Err(format!(
            "{template:?} has an empty, dot or ambiguous segment"
        ));
    }
    let segments: Vec<&str> = template[1..].split('/').collect();
    let mut params = HashSet::new();
    for (i, segment) in segments.iter().enumerate() {
        if let Some(inner) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let (name, catch_all) = match inner.strip_prefix('*') {
                Some(name) => (name, true),
                None => (inner, false),
            };
            if catch_all && i + 1 != segments.len() {
                return Err(format!(
                    "{template:?}: a catch-all {{*{name}}} must be the last segment"
                ));
            }
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("{template:?}: bad parameter name {name:?}"));
            }
            if !params.insert(name) {
                return Err(format!("{template:?}: parameter {name:?} appears twice"));
            }
            if catch_all && name == "id" {
                return Err(format!(
                    "{template:?}: {{id}} must be a whole segment, not a catch-all"
                ));
            }
        } else if segment.contains(['{', '}', '*']) {
            return Err(format!(
                "{template:?}: segment {segment:?} must be literal or a whole {{param}}"
            ));
        } else if !segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
        {
            return Err(format!(
                "{template:?}: segment {segment:?} has characters outside A-Z a-z 0-9 - _ . ~"
            ));
        }
    }
    Ok(())
}

/// Routes every request, refusing what it does not know.
#[derive(Debug, Clone)]
pub struct RouteLayer {
    table: Arc<RouteTable>,
    credentials: Option<CredentialSet>,
}

impl RouteLayer {
    /// Routes with `table`; with `credentials`, selects each route's credential.
    pub fn new(table: Arc<RouteTable>, credentials: Option<CredentialSet>) -> Self {
        Self { table, credentials }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = RouteService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteService {
            inner,
            table: self.table.clone(),
            credentials: self.credentials.clone(),
        }
    }
}

/// The service built by [`RouteLayer`].
#[derive(Debug, Clone)]
pub struct RouteService<S> {
    inner: S,
    table: Arc<RouteTable>,
    credentials: Option<CredentialSet>,
}

impl<S, B> Service<Request<B>> for RouteService<S>
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
        match self
            .table
            .resolve(req.method(), req.uri().path(), req.headers())
        {
            Routed::Refused(error) => {
                tracing::debug!(key = error.key(), reason = %error, "request refused by routing");
                ResponseFuture::early(error.to_response())
            }
            Routed::Matched(matched) => {
                if let (Some(set), Some(name)) = (&self.credentials, &matched.credential) {
                    match set.get(name) {
                        Some(credential) => {
                            req.extensions_mut()
                                .insert(SelectedCredential(credential.clone()));
                        }
                        // Validated at startup; never forward with the wrong key.
                        None => return ResponseFuture::early(GatewayError::Internal.to_response()),
                    }
                }
                crate::notes::record(req.extensions(), |n| n.route = Some(matched.clone()));
                req.extensions_mut().insert(matched);
                ResponseFuture::inner(self.inner.call(req))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(operation: &str, methods: &[&str], path: &str) -> RouteConfig {
        RouteConfig {
            operation: operation.into(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            path: path.into(),
            credential: None,
            schema: None,
        }
    }

    fn organization_routes() -> Vec<RouteConfig> {
        vec![
            route("organization.current", &["GET"], "/api/organization"),
            route("organizations.list", &["GET"], "/api/organizations"),
            route("organizations.create", &["POST"], "/api/organizations"),
            route("organizations.get", &["GET"], "/api/organizations/{id}"),
            route(
                "organizations.update",
                &["PATCH", "PUT"],
                "/api/organizations/{id}",
            ),
            route(
                "organizations.delete",
                &["DELETE"],
                "/api/organizations/{id}",
            ),
        ]
    }

    fn table(routes: &[RouteConfig]) -> RouteTable {
        RouteTable::from_config(routes, &|name| name == "partner").unwrap()
    }

    const ORG: &str = "248df4b7-aa70-47b8-a036-33ac447e668d";

    #[test]
    fn organization_operations_are_routed() {
        let t = table(&organization_routes());
        let cases = [
            (
                Method::GET,
                "/api/organization".to_owned(),
                "organization.current",
            ),
            (
                Method::GET,
                "/api/organizations".to_owned(),
                "organizations.list",
            ),
            (
                Method::POST,
                "/api/organizations".to_owned(),
                "organizations.create",
            ),
            (
                Method::GET,
                format!("/api/organizations/{ORG}"),
                "organizations.get",
            ),
            (
                Method::PUT,
                format!("/api/organizations/{ORG}"),
                "organizations.update",
            ),
            (
                Method::PATCH,
                format!("/api/organizations/{ORG}"),
                "organizations.update",
            ),
            (
                Method::DELETE,
                format!("/api/organizations/{ORG}"),
                "organizations.delete",
            ),
        ];
        for (method, path, operation) in cases {
            match t.route(&method, &path) {
                Routed::Matched(m) => assert_eq!(&*m.operation, operation),
                Routed::Refused(e) => panic!("{method} {path}: {e}"),
            }
        }
        let Routed::Matched(m) = t.route(
            &Method::GET,
            &format!("/api/organizations/{}", ORG.to_uppercase()),
        ) else {
            panic!()
        };
        assert_eq!(m.organization_id.as_deref(), Some(ORG));
    }

    #[test]
    fn unknown_paths_wrong_methods_and_bad_ids_are_refused() {
        let t = table(&organization_routes());
        assert!(matches!(
            t.route(&Method::GET, "/api/syncs"),
            Routed::Refused(GatewayError::NoRoute)
        ));
        assert!(matches!(
            t.route(&Method::GET, "/API/organization"),
            Routed::Refused(GatewayError::NoRoute)
        ));
        match t.route(&Method::POST, &format!("/api/organizations/{ORG}")) {
            Routed::Refused(GatewayError::MethodNotAllowed { allow, .. }) => {
                assert_eq!(allow, "DELETE, GET, PATCH, PUT")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            t.route(&Method::GET, "/api/organizations/not-a-uuid"),
            Routed::Refused(GatewayError::InvalidId)
        ));
    }

    #[test]
    fn a_catch_all_must_be_explicit_and_yields_to_specific_routes() {
        let mut routes = organization_routes();
        assert!(matches!(
            table(&routes).route(&Method::GET, "/api/syncs/1"),
            Routed::Refused(GatewayError::NoRoute)
        ));
        routes.push(route("api.other", &["GET"], "/api/{*rest}"));
        let t = table(&routes);
        let Routed::Matched(m) = t.route(&Method::GET, "/api/syncs/1") else {
            panic!()
        };
        assert_eq!(&*m.operation, "api.other");
        let Routed::Matched(m) = t.route(&Method::GET, "/api/organizations") else {
            panic!()
        };
        assert_eq!(&*m.operation, "organizations.list");
    }

    #[test]
    fn route_table_errors_name_the_route() {
        let problems = |routes: Vec<RouteConfig>| {
            RouteTable::from_config(&routes, &|name| name == "partner")
                .unwrap_err()
                .into_iter()
                .map(|p| format!("{}: {}", p.key, p.message))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let mut dup = organization_routes();
        dup.push(route(
            "organizations.replace",
            &["PUT"],
            "/api/organizations/{id}",
        ));
        let text = problems(dup);
        assert!(
            text.contains("organizations.replace") && text.contains("organizations.update"),
            "{text}"
        );
        let text = problems(vec![
            route("a", &["GET"], "/api/{id}"),
            route("b", &["GET"], "/api/{name}"),
        ]);
        assert!(text.contains("conflicts"), "{text}");
        let mut bad = route("c", &["GET"], "/api/x");
        bad.credential = Some("nope".into());
        assert!(problems(vec![bad]).contains("[credentials.nope]"));
        for template in [
            "api/x",
            "/api//x",
            "/api/../x",
            "/api/x{id}",
            "/api/{*rest}/more",
            "/api/x;y",
            "/api/%2e",
        ] {
            assert!(
                problems(vec![route("d", &["GET"], template)]).contains("routes[0].path"),
                "{template}"
            );
        }
        assert!(problems(vec![route("e", &["get"], "/api/x")]).contains("routes[0].methods"));
        assert!(problems(vec![route("f", &["PTACH"], "/api/x")]).contains("routes[0].methods"));
    }

    /// Runs `check` on its own thread and fails if it has not finished
    /// within 10 s: a path check that loops forever fails the test instead
    /// of hanging the suite.
    fn bounded(check: impl FnOnce() + Send + 'static) {
        use std::sync::mpsc::RecvTimeoutError;
        let (done, finished) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            check();
            let _ = done.send(());
        });
        match finished.recv_timeout(std::time::Duration::from_secs(10)) {
            Err(RecvTimeoutError::Timeout) => panic!("check_path did not return within 10 s"),
            // Finished, or panicked (the join below re-raises it).
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {}
        }
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        bounded(|| {
            for (path, error) in [
                (
                    "/api/organizations%2F..%2Fadmin",
                    PathError::EncodedDelimiter,
                ),
                ("/api/organizations%2f", PathError::EncodedDelimiter),
                ("/api/%2e%2e/organizations", PathError::EncodedDelimiter),
                ("/api/%5Corganizations", PathError::EncodedDelimiter),
                ("/api/organizations%252F", PathError::EncodedDelimiter),
                ("/api/organizations%3Fx", PathError::EncodedDelimiter),
                ("/api/organizations%00", PathError::EncodedDelimiter),
                ("/api/organizations%zz", PathError::BadPercent),
                ("/api/organizations%2", PathError::BadPercent),
                ("/api/org%61nizations", PathError::EncodedUnreserved),
                ("/api/organizations%2D1", PathError::EncodedUnreserved),
                ("/api/./organizations", PathError::DotSegment),
                ("/api/../api/organizations", PathError::DotSegment),
                ("/api//organizations", PathError::EmptySegment),
                ("/api/organizations/", PathError::EmptySegment),
                ("/api\\organizations", PathError::Backslash),
                ("/api/organizations;jsessionid=1", PathError::Semicolon),
                ("/api/organizations\u{0}", PathError::BadByte),
                ("/api/organizations\t", PathError::BadByte),
                ("/api/organizatiøns", PathError::BadByte),
                ("/api/organizations#x", PathError::Fragment),
                ("api/organizations", PathError::NotAbsolute),
                // What follows a valid escape is checked too, byte by byte.
                ("/api/a%20;x", PathError::Semicolon),
                ("/api/a%20%2F", PathError::EncodedDelimiter),
            ] {
                assert_eq!(check_path(path), Err(error), "{path:?}");
            }
            // The limit is inclusive: MAX_PATH_BYTES bytes pass, one more does not.
            let longest = format!("/{}", "a".repeat(MAX_PATH_BYTES - 1));
            assert_eq!(check_path(&longest), Ok(()));
            assert_eq!(check_path(&format!("{longest}a")), Err(PathError::TooLong));
            assert_eq!(check_path("/api/organizations/a%20b~c.d%C3%A9"), Ok(()));
        });
    }
}
