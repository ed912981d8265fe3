//! The catalog: every operation of the Polytomic API, so that `[catalog]`
//! routes the whole API without hand-written `[[routes]]` or schemas.
//!
//! The catalog is generated, never edited: `catalog/generate.py` reads the
//! official Python SDK (the version pinned in `catalog/requirements.txt`)
//! and the connection types' configuration schemas vendored in
//! `catalog/connection-types/`, and writes
//! `catalog/polytomic-<API version>.json`, which is embedded here. CI
//! regenerates it and fails if the committed copy differs
//! (`catalog/generate.sh --check`); `catalog/PROVENANCE.md` records where
//! every input came from.
//!
//! For each operation the catalog holds its SDK name (`resource.method`:
//! `organization.update`, `connections.proxy.execute_proxy`), methods, path
//! template, path parameters and their format (UUID or one segment), the
//! credential kind it needs (a partner key or an organization key), where
//! the request names an organization, the JSON Schema of its body (secret
//! fields marked `writeOnly`), and its secret query parameters and headers.
//! Connection `configuration` bodies are validated against their
//! connection `type`'s schema, whose secret fields are marked `sensitive`.
//!
//! [`route_table`] builds the route table from `[[routes]]` and the routed
//! part of the catalog: an operation is routed when a
//! `[[catalog.credentials]]` entry assigns it a credential.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::policy::glob_match;
use crate::problem::ConfigProblem;
use crate::routes::{OrganizationSource, RouteConfig, RouteSource, RouteSpec, RouteTable};
use crate::validate::{CompiledSchema, SchemaSet};

/// The Polytomic API version the embedded catalog describes.
pub const API_VERSION: &str = "2025-09-18";

/// The generated catalog, embedded.
const CATALOG_JSON: &str = include_str!("../catalog/polytomic-2025-09-18.json");

/// The catalog file format this code reads.
const FORMAT: u32 = 1;

/// `[catalog]`: routing every operation of the Polytomic API.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// Route every catalog operation of `polytomic.version` that a
    /// `[[catalog.credentials]]` entry assigns a credential.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Which `[credentials.*]` each operation is sent with; the first entry
    /// whose `operations` match wins. An operation no entry matches is not
    /// routed.
    #[serde(default)]
    pub credentials: Vec<CatalogCredentialConfig>,
    /// Forward connection configurations whose connection `type` has no
    /// schema in the catalog (unvalidated, and redacted whole in the audit
    /// trail) instead of refusing them with 422.
    #[serde(default)]
    pub allow_unknown_connection_types: bool,
}

fn default_enabled() -> bool {
    true
}

/// `[[catalog.credentials]]`: the credential for some operations.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogCredentialConfig {
    /// Operation names or patterns (`*` matches any run of characters).
    pub operations: Vec<String>,
    /// The `[credentials.NAME]` these operations are sent with.
    pub credential: String,
}

/// The credential an operation needs, as the API documents it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialKind {
    /// A partner key: the organization and user endpoints, and the
    /// partner-scoped `/api/organizations/...` paths.
    Partner,
    /// An organization API key: everything else.
    Organization,
}

impl CredentialKind {
    /// `partner` or `organization`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Partner => "partner",
            Self::Organization => "organization",
        }
    }
}

/// The format of a path parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamFormat {
    /// A UUID, checked as one.
    Uuid,
    /// One non-empty segment (a connection type, a schema id, …).
    Segment,
}

/// A path parameter.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PathParam {
    /// Its name in the path template.
    pub name: String,
    /// What it must look like.
    pub format: ParamFormat,
}

/// A request body.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BodySpec {
    /// Its JSON Schema (draft 2020-12); secret fields are `writeOnly`.
    pub schema: Value,
}

/// A connection configuration inside a body, checked against its type.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfiguration {
    /// The member holding the configuration (`configuration`).
    pub field: String,
    /// The member naming the connection type (`type`).
    pub type_field: String,
}

/// An operation's secrets.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    /// Body fields, as paths from the root (`/request/headers`; `*` is any
    /// item or key). The schema marks the same fields `writeOnly`.
    pub body: Vec<String>,
    /// Query parameters.
    pub query: Vec<String>,
    /// Request headers, lower case.
    pub headers: Vec<String>,
}

/// One operation of the API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    /// The SDK's name: resource path and method (`users.create_api_key`).
    pub name: String,
    /// The SDK resource (`bulk_sync.executions`).
    pub resource: String,
    /// Its methods.
    pub methods: Vec<String>,
    /// Its path template, exactly as the SDK sends it.
    pub path: String,
    /// Its path parameters, in path order.
    pub path_params: Vec<PathParam>,
    /// The credential it needs.
    pub credential_kind: CredentialKind,
    /// Where a request names an organization.
    pub organizations: Vec<OrganizationSource>,
    /// Its JSON body, if it takes one.
    pub body: Option<BodySpec>,
    /// A connection configuration in the body, checked against its type.
    pub connection_configuration: Option<ConnectionConfiguration>,
    /// Its secret fields, query parameters and headers.
    pub secrets: Secrets,
}

/// The catalog file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    format: u32,
    api_version: String,
    /// Where the inputs came from; for people (and `catalog/PROVENANCE.md`).
    #[allow(dead_code)]
    provenance: Value,
    operations: Vec<Operation>,
    connection_types: BTreeMap<String, Value>,
}

/// The parsed catalog.
#[derive(Debug)]
pub struct Catalog {
    api_version: String,
    operations: Vec<Operation>,
    connection_types: BTreeMap<String, Value>,
}

impl Catalog {
    /// The catalog embedded in the binary.
    pub fn embedded() -> Result<Self, String> {
        Self::parse(CATALOG_JSON)
    }

    /// Parses a catalog file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: CatalogFile =
            serde_json::from_str(text).map_err(|e| format!("the catalog is not readable: {e}"))?;
        if file.format != FORMAT {
            return Err(format!(
                "the catalog has format {}; this build reads format {FORMAT}",
                file.format
            ));
        }
        Ok(Self {
            api_version: file.api_version,
            operations: file.operations,
            connection_types: file.connection_types,
        })
    }

    /// The API version it describes.
    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    /// Every operation, by name.
    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    /// The connection types' configuration schemas, by type.
    pub fn connection_types(&self) -> &BTreeMap<String, Value> {
        &self.connection_types
    }
}

/// What `[catalog]` routes, for `check`, `routes` and the startup log.
#[derive(Debug, Default, Clone)]
pub struct CatalogSummary {
    /// Whether `[catalog]` is present and enabled.
    pub enabled: bool,
    /// The API version of the catalog.
    pub api_version: String,
    /// How many operations the catalog has.
    pub operations: usize,
    /// Operations no `[[catalog.credentials]]` entry assigns a credential,
    /// so not routed.
    pub unrouted: Vec<String>,
    /// Unrouted operations by resource, with their count.
    pub unrouted_resources: BTreeMap<String, usize>,
    /// Catalog operations replaced by a `[[routes]]` entry on every method.
    pub replaced: Vec<String>,
}

impl CatalogSummary {
    /// One line for `check` and the startup log.
    pub fn describe(&self) -> String {
        if !self.enabled {
            return "catalog: not enabled (only [[routes]] are routed)".into();
        }
        let routed = self.operations - self.unrouted.len();
        let mut line = format!(
            "catalog: {routed} of {} operations of API {} routed",
            self.operations, self.api_version
        );
        if !self.replaced.is_empty() {
            line.push_str(&format!(
                " ({} replaced by [[routes]])",
                self.replaced.len()
            ));
        }
        if !self.unrouted.is_empty() {
            let resources: Vec<String> = self
                .unrouted_resources
                .iter()
                .map(|(resource, n)| format!("{resource} ({n})"))
                .collect();
            line.push_str(&format!(
                "; {} not routed, no [[catalog.credentials]] entry matches them: {}",
                self.unrouted.len(),
                resources.join(", ")
            ));
        }
        line
    }
}

/// Builds the route table of a config: its `[[routes]]`, and the catalog's
/// operations when `[catalog]` is enabled, for `polytomic.version`;
/// `credential_exists` says which `[credentials.*]` names exist. (The config
/// calls it: `GatewayConfig::route_table`.)
pub fn route_table(
    routes: &[RouteConfig],
    catalog: Option<&CatalogConfig>,
    polytomic_version: &str,
    credential_exists: &dyn Fn(&str) -> bool,
) -> Result<(RouteTable, CatalogSummary), Vec<ConfigProblem>> {
    let (specs, mut summary) = match catalog {
        Some(catalog) if catalog.enabled => {
            let embedded =
                Catalog::embedded().map_err(|e| vec![ConfigProblem::new("catalog", e)])?;
            plan(catalog, &embedded, polytomic_version, credential_exists)?
        }
        _ => (Vec::new(), CatalogSummary::default()),
    };
    let catalog_names: Vec<(String, String)> = specs
        .iter()
        .map(|s| (s.operation.clone(), s.path.clone()))
        .collect();
    let table = RouteTable::build(routes, specs, credential_exists)?;
    let routed: HashSet<&str> = table.operations().iter().map(|o| &**o).collect();
    summary.replaced = catalog_names
        .into_iter()
        .filter(|(name, _)| !routed.contains(name.as_str()))
        .map(|(name, _)| name)
        .collect();
    Ok((table, summary))
}

/// The route specs of the catalog operations `config` routes.
pub fn plan(
    config: &CatalogConfig,
    catalog: &Catalog,
    polytomic_version: &str,
    credential_exists: &dyn Fn(&str) -> bool,
) -> Result<(Vec<RouteSpec>, CatalogSummary), Vec<ConfigProblem>> {
    let mut problems = Vec::new();
    if polytomic_version != catalog.api_version() {
        problems.push(ConfigProblem::new(
            "catalog.enabled",
            format!(
                "the catalog describes Polytomic API version {}, but polytomic.version is {polytomic_version:?}: set polytomic.version to {0:?}, or disable the catalog",
                catalog.api_version()
            ),
        ));
    }
    if config.credentials.is_empty() {
        problems.push(ConfigProblem::new(
            "catalog.credentials",
            "assigns no credential, so no catalog operation would be routed: add [[catalog.credentials]] entries",
        ));
    }
    for (i, entry) in config.credentials.iter().enumerate() {
        let key = format!("catalog.credentials[{i}]");
        if !credential_exists(&entry.credential) {
            problems.push(ConfigProblem::new(
                format!("{key}.credential"),
                format!("no [credentials.{}] is configured", entry.credential),
            ));
        }
        if entry.operations.is_empty() {
            problems.push(ConfigProblem::new(
                format!("{key}.operations"),
                "must list at least one operation or pattern",
            ));
        }
        for pattern in &entry.operations {
            if !catalog
                .operations()
                .iter()
                .any(|op| glob_match(pattern, &op.name))
            {
                problems.push(ConfigProblem::new(
                    format!("{key}.operations"),
                    format!("{pattern:?} matches no catalog operation"),
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut summary = CatalogSummary {
        enabled: true,
        api_version: catalog.api_version().to_owned(),
        operations: catalog.operations().len(),
        ..CatalogSummary::default()
    };
    let mut connection_types: Option<Arc<SchemaSet>> = None;
    let mut specs = Vec::new();
    for op in catalog.operations() {
        let credential = config
            .credentials
            .iter()
            .find(|entry| entry.operations.iter().any(|p| glob_match(p, &op.name)))
            .map(|entry| entry.credential.clone());
        let Some(credential) = credential else {
            summary.unrouted.push(op.name.clone());
            *summary
                .unrouted_resources
                .entry(op.resource.clone())
                .or_default() += 1;
            continue;
        };
        let schema = match &op.body {
            None => None,
            Some(body) => {
                let label = format!("the catalog's body schema of {}", op.name);
                let mut schema = CompiledSchema::compile(&label, body.schema.clone())
                    .map_err(|e| vec![ConfigProblem::new("catalog", e)])?;
                if let Some(conn) = &op.connection_configuration {
                    let types = match &connection_types {
                        Some(types) => types.clone(),
                        None => {
                            let types = SchemaSet::compile(
                                "the catalog's connection type",
                                catalog.connection_types(),
                            )
                            .map(Arc::new)
                            .map_err(|e| vec![ConfigProblem::new("catalog", e)])?;
                            connection_types = Some(types.clone());
                            types
                        }
                    };
                    schema = schema.with_discriminated(
                        &conn.field,
                        &conn.type_field,
                        types,
                        config.allow_unknown_connection_types,
                    );
                }
                Some(Arc::new(schema))
            }
        };
        specs.push(RouteSpec {
            operation: op.name.clone(),
            methods: op.methods.clone(),
            path: op.path.clone(),
            credential: Some(credential),
            schema,
            source: RouteSource::Catalog,
            uuid_params: op
                .path_params
                .iter()
                .filter(|p| p.format == ParamFormat::Uuid)
                .map(|p| p.name.clone())
                .collect(),
            organizations: op.organizations.clone(),
            secret_query: op.secrets.query.clone(),
            secret_headers: op.secrets.headers.clone(),
            bodyless: op.body.is_none(),
            key: "catalog".into(),
        });
    }
    Ok((specs, summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::Routed;
    use crate::GatewayError;
    use http::Method;

    fn catalog() -> Catalog {
        Catalog::embedded().unwrap()
    }

    /// `[catalog]` sending organization and user operations with the
    /// partner key, and everything else with an organization key.
    fn config() -> CatalogConfig {
        CatalogConfig {
            enabled: true,
            credentials: vec![
                CatalogCredentialConfig {
                    operations: vec!["organization.*".into(), "users.*".into()],
                    credential: "partner".into(),
                },
                CatalogCredentialConfig {
                    operations: vec!["*".into()],
                    credential: "acme".into(),
                },
            ],
            allow_unknown_connection_types: false,
        }
    }

    fn exists(name: &str) -> bool {
        matches!(name, "partner" | "acme")
    }

    fn table(routes: &[RouteConfig]) -> RouteTable {
        let (specs, _) = plan(&config(), &catalog(), API_VERSION, &exists).unwrap();
        RouteTable::build(routes, specs, &exists).unwrap()
    }

    #[test]
    fn the_embedded_catalog_is_the_whole_sdk_api() {
        let catalog = catalog();
        assert_eq!(catalog.api_version(), API_VERSION);
        assert_eq!(
            crate::version::PolytomicConfig::default().version,
            API_VERSION,
            "the default polytomic.version is the catalog's"
        );
        let ops = catalog.operations();
        assert_eq!(ops.len(), 198);
        let resources: HashSet<&str> = ops.iter().map(|o| o.resource.as_str()).collect();
        assert_eq!(resources.len(), 31);
        let names: HashSet<&str> = ops.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names.len(), ops.len(), "names are unique");
        for name in [
            "organization.update",
            "organization.get_current",
            "organization.update_record_logging",
            "users.create_api_key",
            "connections.create",
            "connections.proxy.execute_proxy",
            "bulk_sync.start",
            "bulk_sync.executions.cancel",
            "model_sync.create",
        ] {
            assert!(names.contains(name), "{name}");
        }
        for op in ops {
            assert!(
                op.name.starts_with(&format!("{}.", op.resource)),
                "{}",
                op.name
            );
            let kind = if op.resource.starts_with("organization")
                || op.resource.starts_with("users")
                || op.path.starts_with("/api/organizations/")
            {
                CredentialKind::Partner
            } else {
                CredentialKind::Organization
            };
            assert_eq!(op.credential_kind, kind, "{}", op.name);
        }
        let update = ops
            .iter()
            .find(|o| o.name == "organization.update")
            .unwrap();
        assert_eq!(
            update.methods,
            ["PATCH", "PUT"],
            "the SDK's PUT and the docs' PATCH"
        );
    }

    /// The catalog lists each operation's secret body fields; the schema
    /// marks the same fields, and redaction finds them by following the
    /// schema (through `$ref`, `items`, `anyOf`, …) on its own.
    #[test]
    fn the_schemas_mark_exactly_the_listed_secret_fields() {
        let mut with_body = 0;
        for op in catalog().operations() {
            let Some(body) = &op.body else {
                assert!(op.secrets.body.is_empty(), "{}", op.name);
                continue;
            };
            with_body += 1;
            let schema = CompiledSchema::compile(&op.name, body.schema.clone()).unwrap();
            let listed: Vec<Vec<String>> = op
                .secrets
                .body
                .iter()
                .map(|p| p[1..].split('/').map(str::to_owned).collect())
                .collect();
            assert_eq!(schema.write_only_paths(), listed, "{}", op.name);
        }
        assert_eq!(with_body, 63);
        let secret = |name: &str| {
            let op = catalog()
                .operations()
                .iter()
                .find(|o| o.name == name)
                .cloned()
                .unwrap();
            op.secrets
        };
        assert_eq!(secret("organization.update").body, ["/client_secret"]);
        assert_eq!(secret("webhooks.create").body, ["/secret"]);
        assert_eq!(secret("model_sync.create").body, ["/encryption_passphrase"]);
        assert_eq!(
            secret("connections.get_type_parameter_values").body,
            ["/parameters"]
        );
        let proxy = secret("connections.proxy.execute_proxy").body;
        for field in [
            "/request/headers",
            "/request/body",
            "/request/query",
            "/request/rawQuery",
        ] {
            assert!(proxy.iter().any(|p| p == field), "{proxy:?}");
        }
        assert_eq!(secret("query_runner.run_query").query, ["query"]);
    }

    #[test]
    fn connection_type_schemas_compile_and_mark_their_secrets() {
        let catalog = catalog();
        let types = SchemaSet::compile("connection type", catalog.connection_types()).unwrap();
        assert_eq!(types.len(), 226);
        let sensitive: usize = catalog
            .connection_types()
            .keys()
            .map(|t| types.get(t).unwrap().write_only_paths().len())
            .sum();
        // 360 as published, and 19 values of the generic HTTP types that the
        // generator marks (CONNECTION_TYPE_SECRETS in catalog/generate.py).
        assert_eq!(sensitive, 379, "every field a type marks sensitive");
        let postgres = types.get("postgresql").unwrap();
        for field in ["password", "ssh_private_key"] {
            assert!(postgres
                .write_only_paths()
                .contains(&vec![field.to_owned()]));
        }
    }

    #[test]
    fn the_sdk_paths_route_exactly_as_sent() {
        let t = table(&[]);
        let id = "248df4b7-aa70-47b8-a036-33ac447e668d";
        let routed = |method: Method, path: &str| match t.route(&method, path, None) {
            Routed::Matched(m) => Ok(m.operation.to_string()),
            Routed::Refused(e) => Err(e.key()),
        };
        // Literal segments win over a parameter at the same place.
        assert_eq!(
            routed(Method::GET, "/api/syncs/schedules"),
            Ok("model_sync.get_schedule_options".into())
        );
        assert_eq!(
            routed(Method::GET, &format!("/api/syncs/{id}")),
            Ok("model_sync.get".into())
        );
        assert_eq!(
            routed(Method::POST, "/api/connections/test"),
            Ok("connections.test_connection".into())
        );
        assert_eq!(
            routed(Method::GET, "/api/connections/connect/session"),
            Ok("connections.get_connect_session".into())
        );
        assert_eq!(
            routed(Method::GET, &format!("/api/connections/{id}")),
            Ok("connections.get".into())
        );
        // Different parameter names at one position.
        assert_eq!(
            routed(Method::GET, &format!("/api/organizations/{id}")),
            Ok("organization.get".into())
        );
        assert_eq!(
            routed(Method::GET, &format!("/api/organizations/{id}/users")),
            Ok("users.list".into())
        );
        // A trailing slash in the template, and only there.
        assert_eq!(
            routed(Method::POST, "/api/connections/connect/"),
            Ok("connections.connect".into())
        );
        assert_eq!(
            routed(Method::POST, "/api/connections/test/"),
            Err("invalid_path")
        );
        assert_eq!(
            routed(Method::GET, &format!("/api/syncs/{id}/")),
            Err("invalid_path")
        );
        // UUID parameters are checked; other parameters are one segment.
        assert_eq!(
            routed(Method::GET, "/api/syncs/not-a-uuid"),
            Err("invalid_path")
        );
        assert_eq!(
            routed(Method::GET, "/api/connections/connect"),
            Err("invalid_path")
        );
        assert_eq!(
            routed(Method::POST, "/api/connections/connect"),
            Err("method_not_allowed")
        );
        assert_eq!(
            routed(
                Method::GET,
                &format!("/api/connections/{id}/schemas/public.users")
            ),
            Ok("schemas.get".into())
        );
        assert_eq!(
            routed(Method::GET, "/api/connection_types/postgresql"),
            Ok("connections.get_connection_type_schema".into())
        );
        assert_eq!(
            routed(Method::PATCH, &format!("/api/organizations/{id}")),
            Ok("organization.update".into())
        );
        assert_eq!(routed(Method::GET, "/api/nope"), Err("no_route"));
        // The full resolver still refuses ambiguous paths first.
        let refused =
            |path: &str| match t.resolve(&Method::GET, path, None, &http::HeaderMap::new()) {
                Routed::Refused(GatewayError::InvalidPath(_)) => true,
                other => panic!("{path}: {other:?}"),
            };
        assert!(refused("/api/connections//test"));
        assert!(refused("/api/connections/%2e%2e/test"));
        assert!(refused("/api/connections/connect//"));
    }

    #[test]
    fn organizations_come_from_the_path_the_query_and_the_body() {
        let t = table(&[]);
        let id = "248DF4B7-aa70-47b8-a036-33ac447e668d";
        let matched =
            |method: Method, path: &str, query: Option<&str>| match t.route(&method, path, query) {
                Routed::Matched(m) => m,
                Routed::Refused(e) => panic!("{path}: {e}"),
            };
        let m = matched(Method::PUT, &format!("/api/organizations/{id}"), None);
        assert_eq!(m.organization_ids, [id.to_ascii_lowercase().into()]);
        let m = matched(
            Method::POST,
            &format!("/api/organizations/{id}/users/{id}/keys"),
            None,
        );
        assert_eq!(
            m.organization_ids,
            [id.to_ascii_lowercase().into()],
            "{{org_id}}, not the user's {{id}}"
        );
        let m = matched(
            Method::GET,
            &format!("/api/organizations/entities/{id}"),
            None,
        );
        assert!(
            m.organization_ids.is_empty(),
            "an entity id is no organization"
        );
        let m = matched(
            Method::GET,
            "/api/events",
            Some(&format!("organization_id={id}&limit=1")),
        );
        assert_eq!(m.organization_ids, [id.to_ascii_lowercase().into()]);
        let m = matched(Method::POST, "/api/connections", None);
        assert_eq!(
            &*m.body_organization_fields,
            [Box::<str>::from("organization_id")]
        );
        let m = matched(Method::GET, &format!("/api/connections/{id}"), None);
        assert!(m.organization_ids.is_empty() && m.body_organization_fields.is_empty());
    }

    #[test]
    fn credentials_follow_the_first_matching_entry_and_routes_replace_the_catalog() {
        let id = "248df4b7-aa70-47b8-a036-33ac447e668d";
        let legacy = RouteConfig {
            operation: "organizations.update".into(),
            methods: vec!["PATCH".into(), "PUT".into()],
            path: "/api/organizations/{id}".into(),
            credential: None,
            schema: None,
        };
        let t = table(&[legacy]);
        let get = |method: Method, path: &str| match t.route(&method, path, None) {
            Routed::Matched(m) => m,
            Routed::Refused(e) => panic!("{path}: {e}"),
        };
        let m = get(Method::PUT, &format!("/api/organizations/{id}"));
        assert_eq!(
            (&*m.operation, m.source),
            ("organizations.update", RouteSource::Routes)
        );
        let m = get(Method::GET, &format!("/api/organizations/{id}"));
        assert_eq!(
            (&*m.operation, m.source),
            ("organization.get", RouteSource::Catalog)
        );
        assert_eq!(m.credential.as_deref(), Some("partner"));
        let m = get(Method::GET, "/api/webhooks");
        assert_eq!(m.credential.as_deref(), Some("acme"));
        assert!(!t.operations().iter().any(|o| &**o == "organization.update"));

        // Only the partner entry: the rest is not routed, and said so.
        let mut partner_only = config();
        partner_only.credentials.truncate(1);
        let (specs, summary) = plan(&partner_only, &catalog(), API_VERSION, &exists).unwrap();
        assert_eq!(specs.len() + summary.unrouted.len(), 198);
        assert!(summary.unrouted_resources.contains_key("connections"));
        assert!(!summary.unrouted_resources.contains_key("users"));
        assert!(
            summary.describe().contains("not routed"),
            "{}",
            summary.describe()
        );
    }

    #[test]
    fn catalog_config_errors_name_their_key() {
        let mut bad = config();
        bad.credentials[0].credential = "missing".into();
        bad.credentials[1].operations = vec!["conections.*".into()];
        let problems = plan(&bad, &catalog(), "2024-01-01", &exists).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "catalog.enabled",
                "catalog.credentials[0].credential",
                "catalog.credentials[1].operations"
            ]
        );
    }
}
