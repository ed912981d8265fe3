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
use crate::error::GatewayError;
use crate::future::ResponseFuture;
pub use crate::notes::{is_uuid, RouteMatch, RouteSource};
use crate::problem::ConfigProblem;
use crate::schema::{CompiledSchema, SchemaCache};

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

impl From<PathError> for GatewayError {
    /// A 400 `invalid_path`, whose message is the reason.
    fn from(reason: PathError) -> Self {
        GatewayError::InvalidPath(Box::new(reason))
    }
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

/// A place where a request names an organization, for organization-scoped
/// policy rules.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "in", content = "name", rename_all = "lowercase")]
pub enum OrganizationSource {
    /// A path parameter (`{id}` of `/api/organizations/{id}`, `{org_id}`).
    Path(String),
    /// A query parameter (`?organization_id=`).
    Query(String),
    /// A top-level field of the JSON body (`organization_id`), known only
    /// once the body is read and validated.
    Body(String),
}

/// One route to compile, from `[[routes]]` or from the catalog.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// The operation's name.
    pub operation: String,
    /// Its methods, as configured (checked when compiled).
    pub methods: Vec<String>,
    /// Its path template.
    pub path: String,
    /// The `[credentials.*]` injected upstream (`None`: the default one).
    pub credential: Option<String>,
    /// The schema write bodies must satisfy.
    pub schema: Option<Arc<CompiledSchema>>,
    /// Where it comes from.
    pub source: RouteSource,
    /// Path parameters that must be UUIDs.
    pub uuid_params: Vec<String>,
    /// Where requests name an organization.
    pub organizations: Vec<OrganizationSource>,
    /// Query parameters whose values are secret.
    pub secret_query: Vec<String>,
    /// Request headers whose values are secret (lower case; a trailing `*`
    /// matches any suffix).
    pub secret_headers: Vec<String>,
    /// The operation takes no body: any body is refused rather than
    /// forwarded unvalidated.
    pub bodyless: bool,
    /// The config key it came from, for errors (`routes[3]`, `catalog`).
    pub key: String,
}

impl RouteSpec {
    /// The spec of a `[[routes]]` entry, its schema loaded through `schemas`.
    /// As documented for `[[routes]]`, an `{id}` must be a UUID and names
    /// the organization.
    fn from_config(
        index: usize,
        route: &RouteConfig,
        schemas: &mut SchemaCache,
    ) -> Result<Self, ConfigProblem> {
        let key = format!("routes[{index}]");
        let schema = match &route.schema {
            None => None,
            Some(path) => Some(schemas.get(path).map_err(|e| {
                ConfigProblem::new(
                    format!("{key}.schema"),
                    format!("route {:?} ({key}): {e}", route.operation),
                )
            })?),
        };
        let has_id = route.path.split('/').any(|s| s == "{id}");
        Ok(Self {
            operation: route.operation.clone(),
            methods: route.methods.clone(),
            path: route.path.clone(),
            credential: route.credential.clone(),
            schema,
            source: RouteSource::Routes,
            uuid_params: if has_id { vec!["id".into()] } else { vec![] },
            organizations: if has_id {
                vec![OrganizationSource::Path("id".into())]
            } else {
                vec![]
            },
            secret_query: vec![],
            secret_headers: vec![],
            bodyless: false,
            key,
        })
    }
}

/// A template's parameter names, in path order (`{*rest}` as `rest`).
fn template_params(template: &str) -> Vec<String> {
    template
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|s| s.trim_start_matches('*').to_owned())
        .collect()
}

/// The key a template is routed under: its parameters renamed by position
/// (`/api/syncs/{p0}/executions`), since the API names one parameter
/// differently on different methods (`GET /api/syncs/{sync_id}/executions`,
/// `POST /api/syncs/{id}/executions`) and the router allows one name per
/// place.
fn router_key(template: &str) -> String {
    let mut i = 0;
    template
        .split('/')
        .map(|segment| {
            if !segment.starts_with('{') {
                return segment.to_owned();
            }
            let star = if segment.starts_with("{*") { "*" } else { "" };
            i += 1;
            format!("{{{star}p{}}}", i - 1)
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The shape of a path template: its parameters unnamed, so that
/// `/api/organizations/{id}` and `/api/organizations/{org}` are one path.
pub fn template_shape(template: &str) -> String {
    template
        .split('/')
        .map(|segment| {
            if segment.starts_with("{*") {
                "{*}"
            } else if segment.starts_with('{') {
                "{}"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// One compiled route.
#[derive(Debug)]
struct Route {
    operation: Arc<str>,
    template: Arc<str>,
    source: RouteSource,
    credential: Option<Arc<str>>,
    schema: Option<Arc<CompiledSchema>>,
    /// The template's parameter names, in path order: the router matches
    /// positional names (see [`router_key`]).
    param_names: Box<[Box<str>]>,
    /// Positions of the parameters that must be UUIDs.
    uuid_params: Box<[usize]>,
    /// Positions of the parameters naming organizations.
    path_organizations: Box<[usize]>,
    query_organizations: Box<[Box<str>]>,
    body_organization_fields: Arc<[Box<str>]>,
    secret_headers: Arc<[Box<str>]>,
    bodyless: bool,
}

/// All the routes of one template, by method.
#[derive(Debug)]
struct TemplateRoutes {
    by_method: BTreeMap<Method, Arc<Route>>,
    /// The `Allow` header value for a 405.
    allow: http::HeaderValue,
    /// Whether any route on the template has a schema or comes from the
    /// catalog, which knows every operation's body.
    has_schema: bool,
    /// Whether the template ends with `/`, which then is no empty segment.
    trailing_slash: bool,
}

/// One routed operation, as `polytomic-gateway routes` lists it.
#[derive(Debug, Clone)]
pub struct RouteSummary {
    /// The operation's name.
    pub operation: Arc<str>,
    /// Its methods.
    pub methods: Vec<Method>,
    /// Its path template.
    pub template: Arc<str>,
    /// The `[credentials.*]` it is sent with (`None`: the default one).
    pub credential: Option<Arc<str>>,
    /// Whether write bodies are validated against a schema.
    pub has_schema: bool,
    /// Where it comes from.
    pub source: RouteSource,
}

/// The compiled route table.
#[derive(Debug)]
pub struct RouteTable {
    router: matchit::Router<TemplateRoutes>,
    operations: Vec<Arc<str>>,
    summaries: Vec<RouteSummary>,
    /// Every route's secret query parameters.
    secret_query: Vec<Box<str>>,
}

/// The outcome of routing a request.
#[derive(Debug)]
pub enum Routed {
    /// The route and what it matched.
    Matched(RouteMatch),
    /// Refused, with the response to send.
    Refused(GatewayError),
}

fn boxed(items: &[String]) -> Box<[Box<str>]> {
    items.iter().map(|s| s.as_str().into()).collect()
}

impl RouteTable {
    /// Compiles `[[routes]]`. `credential_exists` says whether a
    /// `[credentials.NAME]` is configured.
    pub fn from_config(
        routes: &[RouteConfig],
        credential_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Self, Vec<ConfigProblem>> {
        Self::build(routes, Vec::new(), credential_exists)
    }

    /// Compiles `[[routes]]` and the catalog's routes together. A
    /// `[[routes]]` entry replaces the catalog's route for the same method
    /// on the same path (parameter names aside), so names already in use
    /// keep working.
    pub fn build(
        routes: &[RouteConfig],
        catalog: Vec<RouteSpec>,
        credential_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut schemas = SchemaCache::default();
        let mut specs = Vec::with_capacity(routes.len() + catalog.len());
        for (i, route) in routes.iter().enumerate() {
            match RouteSpec::from_config(i, route, &mut schemas) {
                Ok(spec) => specs.push(spec),
                Err(problem) => problems.push(problem),
            }
        }
        let overridden: HashSet<(String, String)> = routes
            .iter()
            .flat_map(|r| {
                let shape = template_shape(&r.path);
                r.methods
                    .iter()
                    .map(move |m| (shape.clone(), m.to_ascii_uppercase()))
            })
            .collect();
        for mut spec in catalog {
            let shape = template_shape(&spec.path);
            spec.methods
                .retain(|m| !overridden.contains(&(shape.clone(), m.clone())));
            if !spec.methods.is_empty() {
                specs.push(spec);
            }
        }
        Self::compile(&specs, credential_exists, problems)
    }

    fn compile(
        specs: &[RouteSpec],
        credential_exists: &dyn Fn(&str) -> bool,
        mut problems: Vec<ConfigProblem>,
    ) -> Result<Self, Vec<ConfigProblem>> {
        let mut templates: BTreeMap<String, BTreeMap<Method, Arc<Route>>> = BTreeMap::new();
        let mut operations = Vec::new();
        let mut seen_operations = HashSet::new();
        let mut summaries = Vec::new();
        let mut secret_query: Vec<Box<str>> = Vec::new();
        for spec in specs {
            let key = &spec.key;
            let name = format!("route {:?} ({key})", spec.operation);
            let mut fail = |field: &str, message: String| {
                let key = match spec.source {
                    RouteSource::Routes => format!("{key}.{field}"),
                    RouteSource::Catalog => key.clone(),
                };
                problems.push(ConfigProblem::new(key, format!("{name}: {message}")));
            };
            if !is_operation_name(&spec.operation) {
                fail(
                    "operation",
                    "must be a non-empty name of letters, digits, '.', '_' and '-'".into(),
                );
            } else if !seen_operations.insert(spec.operation.clone()) {
                fail("operation", "is defined twice".into());
            }
            if let Err(e) = check_template(&spec.path) {
                fail("path", e);
                continue;
            }
            if let Some(credential) = &spec.credential {
                if !credential_exists(credential) {
                    fail(
                        "credential",
                        format!("no [credentials.{credential}] is configured"),
                    );
                }
            }
            if spec.methods.is_empty() {
                fail("methods", "must list at least one method".into());
            }
            let param_names = template_params(&spec.path);
            let positions = |names: &[&String]| -> Box<[usize]> {
                names
                    .iter()
                    .filter_map(|n| param_names.iter().position(|p| p == *n))
                    .collect()
            };
            let organizations = |pick: fn(&OrganizationSource) -> Option<&String>| {
                spec.organizations
                    .iter()
                    .filter_map(pick)
                    .map(|s| s.as_str().into())
                    .collect::<Vec<Box<str>>>()
            };
            let compiled = Arc::new(Route {
                operation: spec.operation.as_str().into(),
                template: spec.path.as_str().into(),
                source: spec.source,
                credential: spec.credential.as_deref().map(Into::into),
                schema: spec.schema.clone(),
                param_names: boxed(&param_names),
                uuid_params: positions(&spec.uuid_params.iter().collect::<Vec<_>>()),
                path_organizations: positions(
                    &spec
                        .organizations
                        .iter()
                        .filter_map(|o| match o {
                            OrganizationSource::Path(p) => Some(p),
                            _ => None,
                        })
                        .collect::<Vec<_>>(),
                ),
                query_organizations: organizations(|o| match o {
                    OrganizationSource::Query(p) => Some(p),
                    _ => None,
                })
                .into(),
                body_organization_fields: organizations(|o| match o {
                    OrganizationSource::Body(p) => Some(p),
                    _ => None,
                })
                .into(),
                secret_headers: boxed(&spec.secret_headers).into(),
                bodyless: spec.bodyless,
            });
            let entry = templates.entry(router_key(&spec.path)).or_default();
            let mut methods = Vec::new();
            for method in &spec.methods {
                match Method::from_bytes(method.as_bytes()) {
                    Ok(m) if STANDARD_METHODS.contains(&m) => {
                        if let Some(other) = entry.insert(m.clone(), compiled.clone()) {
                            fail(
                                "methods",
                                format!(
                                    "{method} {} is also routed to {:?}",
                                    spec.path, other.operation
                                ),
                            );
                        }
                        methods.push(m);
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
            secret_query.extend(spec.secret_query.iter().map(|q| q.as_str().into()));
            summaries.push(RouteSummary {
                operation: compiled.operation.clone(),
                methods,
                template: compiled.template.clone(),
                credential: compiled.credential.clone(),
                has_schema: compiled.schema.is_some(),
                source: spec.source,
            });
        }
        let mut router = matchit::Router::new();
        for (template, by_method) in templates {
            let allow = by_method
                .keys()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            let allow = http::HeaderValue::from_str(&allow).expect("method names are header-safe");
            let has_schema = by_method
                .values()
                .any(|r| r.schema.is_some() || r.source == RouteSource::Catalog);
            let operations: Vec<String> = by_method
                .values()
                .map(|r| r.operation.to_string())
                .collect();
            if let Err(e) = router.insert(
                template.clone(),
                TemplateRoutes {
                    by_method,
                    allow,
                    has_schema,
                    trailing_slash: template.len() > 1 && template.ends_with('/'),
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
            Ok(Self {
                router,
                operations,
                summaries,
                secret_query,
            })
        } else {
            Err(problems)
        }
    }

    /// Every operation name, in configuration order (`[[routes]]`, then the
    /// catalog).
    pub fn operations(&self) -> &[Arc<str>] {
        &self.operations
    }

    /// Every routed operation, in configuration order.
    pub fn summaries(&self) -> &[RouteSummary] {
        &self.summaries
    }

    /// The query parameters some route marks secret, once each.
    pub fn secret_query_params(&self) -> Vec<Box<str>> {
        let mut names: Vec<Box<str>> = self.secret_query.clone();
        names.sort();
        names.dedup();
        names
    }

    /// Routes a method and path (the path already passed [`check_path`],
    /// or failed it only by a trailing slash). `query` supplies
    /// organizations a route reads from the query.
    pub fn route(&self, method: &Method, path: &str, query: Option<&str>) -> Routed {
        let trailing_slash = path.len() > 1 && path.ends_with('/');
        let Ok(matched) = self.router.at(path) else {
            return Routed::Refused(if trailing_slash {
                PathError::EmptySegment.into()
            } else {
                GatewayError::NoRoute
            });
        };
        let routes = matched.value;
        if trailing_slash != routes.trailing_slash {
            // Only a template that ends with `/` takes a trailing slash.
            return Routed::Refused(PathError::EmptySegment.into());
        }
        let Some(route) = routes.by_method.get(method) else {
            return Routed::Refused(GatewayError::MethodNotAllowed {
                method: method.clone(),
                allow: routes.allow.clone(),
            });
        };
        // The router's parameters are positional (`p0`, `p1`, …), in path order.
        let param = |i: usize| matched.params.iter().nth(i).map(|(_, value)| value);
        if let Some(&i) = route
            .uuid_params
            .iter()
            .find(|&&i| !param(i).is_some_and(is_uuid))
        {
            return Routed::Refused(GatewayError::InvalidId {
                param: route.param_names[i].as_ref().into(),
            });
        }
        let mut organization_ids: Vec<Arc<str>> = route
            .path_organizations
            .iter()
            .filter_map(|&i| param(i))
            .map(|id| id.to_ascii_lowercase().into())
            .collect();
        if let (false, Some(query)) = (route.query_organizations.is_empty(), query) {
            organization_ids.extend(
                url::form_urlencoded::parse(query.as_bytes())
                    .filter(|(name, _)| route.query_organizations.iter().any(|q| **q == **name))
                    .map(|(_, id)| id.to_ascii_lowercase().into()),
            );
        }
        Routed::Matched(RouteMatch {
            operation: route.operation.clone(),
            template: route.template.clone(),
            source: route.source,
            organization_id: organization_ids.first().cloned(),
            organization_ids,
            body_organization_fields: route.body_organization_fields.clone(),
            credential: route.credential.clone(),
            schema: route.schema.clone(),
            path_has_schema: routes.has_schema,
            bodyless: route.bodyless,
            secret_headers: route.secret_headers.clone(),
        })
    }

    /// Everything [`RouteLayer`] checks, for a method, path, query and headers.
    pub fn resolve(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &http::HeaderMap,
    ) -> Routed {
        match check_path(path) {
            Ok(()) => {}
            // A trailing slash is an empty segment, unless the template
            // the path matches ends with one.
            Err(PathError::EmptySegment)
                if path.len() > 1
                    && path.ends_with('/')
                    && check_path(&path[..path.len() - 1]).is_ok()
                    && self.router.at(path).is_ok_and(|m| m.value.trailing_slash) => {}
            Err(e) => return Routed::Refused(e.into()),
        }
        if let Some(name) = METHOD_OVERRIDE_HEADERS
            .iter()
            .find(|h| headers.contains_key(*h))
        {
            return Routed::Refused(GatewayError::MethodOverride(name.clone()));
        }
        self.route(method, path, query)
    }
}

fn is_operation_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Checks a path template: `/`-separated literal segments, `{param}`
/// segments, and at most a final `{*rest}`. A trailing `/` is part of the
/// template (the API has `POST /api/connections/connect/`): only paths with
/// it match.
fn check_template(template: &str) -> Result<(), String> {
    if !template.starts_with('/') {
        return Err(format!("{template:?} must start with /"));
    }
    let trimmed = match template.strip_suffix('/') {
        Some(rest) if !rest.is_empty() && !rest.ends_with('}') => rest,
        _ => template,
    };
    if check_path(&trimmed.replace(['{', '}', '*'], "x")).is_err() {
        return Err(format!(
            "{template:?} has an empty, dot or ambiguous segment"
        ));
    }
    let segments: Vec<&str> = trimmed[1..].split('/').collect();
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

/// Marks the values of `secret` headers sensitive, so that no `Debug` print
/// of the request shows them (they are never logged or recorded either).
fn mark_sensitive(headers: &mut http::HeaderMap, secret: &[Box<str>]) {
    for (name, value) in headers.iter_mut() {
        let name = name.as_str();
        let is_secret = secret.iter().any(|s| match s.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == &**s,
        });
        if is_secret {
            value.set_sensitive(true);
        }
    }
}

/// Marks a matched request with the credential its route names
/// (`credential = "NAME"`), in its extensions; `false` when there is no
/// such credential. The assembly gives it (the credentials layer's
/// selection), so routing needs no credential type.
pub type SelectCredential = Arc<dyn Fn(&str, &mut http::Extensions) -> bool + Send + Sync>;

/// Routes every request, refusing what it does not know.
#[derive(Clone)]
pub struct RouteLayer {
    table: Arc<RouteTable>,
    credentials: Option<SelectCredential>,
}

impl std::fmt::Debug for RouteLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteLayer")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl RouteLayer {
    /// Routes with `table`; with `credentials`, marks each request with
    /// the credential its route names, refusing it (500 `internal_error`)
    /// if there is none, so it is never sent with the wrong key.
    pub fn new(table: Arc<RouteTable>, credentials: Option<SelectCredential>) -> Self {
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
#[derive(Clone)]
pub struct RouteService<S> {
    inner: S,
    table: Arc<RouteTable>,
    credentials: Option<SelectCredential>,
}

impl<S> std::fmt::Debug for RouteService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteService")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
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
        match self.table.resolve(
            req.method(),
            req.uri().path(),
            req.uri().query(),
            req.headers(),
        ) {
            Routed::Refused(error) => {
                tracing::debug!(key = error.key(), reason = %error, "request refused by routing");
                ResponseFuture::early(error.to_response())
            }
            Routed::Matched(matched) => {
                if let (Some(select), Some(name)) = (&self.credentials, &matched.credential) {
                    // Validated at startup; never forward with the wrong key.
                    if !select(name, req.extensions_mut()) {
                        return ResponseFuture::early(GatewayError::Internal.to_response());
                    }
                }
                if !matched.secret_headers.is_empty() {
                    mark_sensitive(req.headers_mut(), &matched.secret_headers);
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
            match t.route(&method, &path, None) {
                Routed::Matched(m) => assert_eq!(&*m.operation, operation),
                Routed::Refused(e) => panic!("{method} {path}: {e}"),
            }
        }
        let Routed::Matched(m) = t.route(
            &Method::GET,
            &format!("/api/organizations/{}", ORG.to_uppercase()),
            None,
        ) else {
            panic!()
        };
        assert_eq!(m.organization_id.as_deref(), Some(ORG));
    }

    #[test]
    fn unknown_paths_wrong_methods_and_bad_ids_are_refused() {
        let t = table(&organization_routes());
        assert!(matches!(
            t.route(&Method::GET, "/api/syncs", None),
            Routed::Refused(GatewayError::NoRoute)
        ));
        assert!(matches!(
            t.route(&Method::GET, "/API/organization", None),
            Routed::Refused(GatewayError::NoRoute)
        ));
        match t.route(&Method::POST, &format!("/api/organizations/{ORG}"), None) {
            Routed::Refused(GatewayError::MethodNotAllowed { allow, .. }) => {
                assert_eq!(allow, "DELETE, GET, PATCH, PUT")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            t.route(&Method::GET, "/api/organizations/not-a-uuid", None),
            Routed::Refused(GatewayError::InvalidId { .. })
        ));
    }

    #[test]
    fn a_catch_all_must_be_explicit_and_yields_to_specific_routes() {
        let mut routes = organization_routes();
        assert!(matches!(
            table(&routes).route(&Method::GET, "/api/syncs/1", None),
            Routed::Refused(GatewayError::NoRoute)
        ));
        routes.push(route("api.other", &["GET"], "/api/{*rest}"));
        let t = table(&routes);
        let Routed::Matched(m) = t.route(&Method::GET, "/api/syncs/1", None) else {
            panic!()
        };
        assert_eq!(&*m.operation, "api.other");
        let Routed::Matched(m) = t.route(&Method::GET, "/api/organizations", None) else {
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
        assert!(
            text.contains("GET /api/{name} is also routed to \"a\""),
            "{text}"
        );
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
