//! Path classification and route matching.
//!
//! Input: one byte choosing the method (and whether a method-override header
//! is sent), then the request target's path-and-query. Targets that
//! `http::uri::PathAndQuery` refuses never reach the gateway and are skipped.
//!
//! Two tables are built once: the six organization routes of
//! `config/demo.toml` (the first round's `config/gateway.toml`), and the
//! same plus an explicit catch-all `/api/{*rest}`. Invariants:
//! - nothing panics;
//! - a path `check_path` refuses is refused by `resolve` with that error, and
//!   never matched; a method-override header is never matched either;
//! - a match names a template and operation of the table, the operation
//!   configured for that template and method, and the path has the
//!   template's shape (literal segments equal, `{id}` a UUID, returned
//!   lowercased);
//! - and the converse: an independent segment matcher agrees on which
//!   template, if any, the path belongs to, and so on 404 / 405 / 400.
#![no_main]

use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use polytomic_gateway::routes::{check_path, is_uuid, PathError, RouteConfig, RouteTable, Routed};
use polytomic_gateway::GatewayError;

/// One route as configured: (operation, methods, template, has schema).
type Spec = (&'static str, &'static [&'static str], &'static str, bool);

/// The `[[routes]]` of config/demo.toml.
const GATEWAY_TOML_ROUTES: &[Spec] = &[
    ("organization.current", &["GET"], "/api/organization", false),
    ("organizations.list", &["GET"], "/api/organizations", false),
    (
        "organizations.create",
        &["POST"],
        "/api/organizations",
        true,
    ),
    (
        "organizations.get",
        &["GET"],
        "/api/organizations/{id}",
        false,
    ),
    (
        "organizations.update",
        &["PATCH", "PUT"],
        "/api/organizations/{id}",
        true,
    ),
    (
        "organizations.delete",
        &["DELETE"],
        "/api/organizations/{id}",
        false,
    ),
];

/// The catch-all the configuration comments allow.
const CATCH_ALL: Spec = ("api.other", &["GET"], "/api/{*rest}", false);

struct Table {
    specs: Vec<Spec>,
    table: RouteTable,
}

fn build(specs: Vec<Spec>) -> Table {
    let schema = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schemas/organization-create.json"
    );
    let routes: Vec<RouteConfig> = specs
        .iter()
        .map(|(operation, methods, path, has_schema)| {
            let mut route = serde_json::json!({
                "operation": operation,
                "methods": methods,
                "path": path,
                "credential": "partner",
            });
            if *has_schema {
                route["schema"] = schema.into();
            }
            serde_json::from_value(route).expect("a valid RouteConfig")
        })
        .collect();
    let table = RouteTable::from_config(&routes, &|name| name == "partner")
        .expect("the configured routes compile");
    Table { specs, table }
}

fn tables() -> &'static [Table; 2] {
    static TABLES: OnceLock<[Table; 2]> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut with_catch_all = GATEWAY_TOML_ROUTES.to_vec();
        with_catch_all.push(CATCH_ALL);
        [build(GATEWAY_TOML_ROUTES.to_vec()), build(with_catch_all)]
    })
}

const METHODS: [&str; 12] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "get", "Put",
    "PROPFIND",
];

/// What an independent reading of the templates expects.
#[derive(Debug, PartialEq)]
enum Expect<'a> {
    NoRoute,
    MethodNotAllowed,
    InvalidId,
    Matched {
        operation: &'a str,
        template: &'a str,
    },
}

/// Whether `path` has the shape of `template`, ignoring what `{id}` holds.
fn shape_matches(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template[1..].split('/').collect();
    let p: Vec<&str> = path[1..].split('/').collect();
    if t.last().is_some_and(|s| s.starts_with("{*")) {
        let fixed = &t[..t.len() - 1];
        // A catch-all takes one or more non-empty segments.
        return p.len() > fixed.len()
            && fixed.iter().zip(&p).all(|(t, p)| segment_matches(t, p))
            && p[fixed.len()..].iter().all(|s| !s.is_empty());
    }
    t.len() == p.len() && t.iter().zip(&p).all(|(t, p)| segment_matches(t, p))
}

fn segment_matches(template: &str, segment: &str) -> bool {
    if template.starts_with('{') {
        !segment.is_empty()
    } else {
        template == segment
    }
}

fn id_segment<'p>(template: &str, path: &'p str) -> Option<&'p str> {
    let index = template[1..].split('/').position(|s| s == "{id}")?;
    path[1..].split('/').nth(index)
}

fn expect<'a>(specs: &'a [Spec], method: &str, path: &str) -> Expect<'a> {
    // Literal-only templates first, then ones with parameters, then the
    // catch-all: the most specific shape wins (all configured templates
    // are distinct, so at most one of each kind fits).
    let rank = |template: &str| {
        if template.contains("{*") {
            2
        } else if template.contains('{') {
            1
        } else {
            0
        }
    };
    let mut templates: Vec<&str> = specs.iter().map(|s| s.2).collect();
    templates.sort_by_key(|t| rank(t));
    templates.dedup();
    let Some(template) = templates.into_iter().find(|t| shape_matches(t, path)) else {
        return Expect::NoRoute;
    };
    let Some(spec) = specs
        .iter()
        .find(|s| s.2 == template && s.1.contains(&method))
    else {
        return Expect::MethodNotAllowed;
    };
    if let Some(id) = id_segment(template, path) {
        if !is_uuid(id) {
            return Expect::InvalidId;
        }
    }
    Expect::Matched {
        operation: spec.0,
        template,
    }
}

fn check(table: &Table, method_name: &str, path: &str, override_header: bool) {
    let method = Method::from_bytes(method_name.as_bytes()).expect("a valid token");
    let mut headers = HeaderMap::new();
    if override_header {
        headers.insert("x-http-method-override", HeaderValue::from_static("GET"));
    }
    let checked = check_path(path);
    let routed = table.table.resolve(&method, path, None, &headers);
    if let Err(e) = checked {
        match &routed {
            Routed::Refused(GatewayError::InvalidPath(got)) => {
                assert_eq!(got.downcast_ref::<PathError>(), Some(&e), "{path:?}")
            }
            other => panic!("check_path refused {path:?} ({e}) but resolve gave {other:?}"),
        }
        return;
    }
    if override_header {
        assert!(
            matches!(routed, Routed::Refused(GatewayError::MethodOverride(_))),
            "method override not refused: {routed:?}"
        );
        return;
    }
    if let Routed::Matched(m) = &routed {
        assert!(
            table.specs.iter().any(|s| *s.2 == *m.template),
            "template {:?} is not in the table",
            m.template
        );
        let owner = table
            .specs
            .iter()
            .find(|s| *s.2 == *m.template && s.1.contains(&method_name))
            .unwrap_or_else(|| panic!("{method_name} {} is not configured", m.template));
        assert_eq!(owner.0, &*m.operation, "{method_name} {path:?}");
        assert!(
            table.table.operations().contains(&m.operation),
            "operation {:?} is not in the table",
            m.operation
        );
        assert!(
            shape_matches(&m.template, path),
            "{path:?} vs {}",
            m.template
        );
        match (id_segment(&m.template, path), &m.organization_id) {
            (Some(id), Some(got)) => {
                assert!(is_uuid(id), "{path:?}");
                assert_eq!(id.to_ascii_lowercase(), **got);
            }
            (None, None) => {}
            other => panic!("organization id mismatch for {path:?}: {other:?}"),
        }
        let template_has_schema = table.specs.iter().any(|s| *s.2 == *m.template && s.3);
        assert_eq!(m.path_has_schema, template_has_schema, "{path:?}");
        assert_eq!(m.schema.is_some(), owner.3, "{method_name} {path:?}");
        assert_eq!(m.credential.as_deref(), Some("partner"));
    }
    let expected = expect(&table.specs, method_name, path);
    let got = match &routed {
        Routed::Matched(m) => Expect::Matched {
            operation: table
                .specs
                .iter()
                .find(|s| *s.0 == *m.operation)
                .expect("checked above")
                .0,
            template: table
                .specs
                .iter()
                .find(|s| *s.2 == *m.template)
                .expect("checked above")
                .2,
        },
        Routed::Refused(GatewayError::NoRoute) => Expect::NoRoute,
        Routed::Refused(GatewayError::MethodNotAllowed { .. }) => Expect::MethodNotAllowed,
        Routed::Refused(GatewayError::InvalidId { .. }) => Expect::InvalidId,
        Routed::Refused(other) => panic!("unexpected refusal of {method_name} {path:?}: {other:?}"),
    };
    assert_eq!(got, expected, "{method_name} {path:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, target)) = data.split_first() else {
        return;
    };
    // check_path takes any string: it must not panic on any.
    if let Ok(text) = std::str::from_utf8(target) {
        let _ = check_path(text);
    }
    let Ok(pq) = http::uri::PathAndQuery::try_from(target) else {
        return;
    };
    let path = pq.path();
    let method = METHODS[usize::from(selector & 0x7f) % METHODS.len()];
    let override_header = selector & 0x80 != 0;
    for table in tables() {
        check(table, method, path, override_header);
    }
});
