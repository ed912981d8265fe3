//! What routing costs, with the six organization routes of the first round
//! and with the whole API catalog (198 routes).
//!
//! ```sh
//! cargo bench --bench routing
//! ```
//!
//! - `resolve/{six,catalog}/org_get`: `GET /api/organizations/{id}`, the
//!   path both tables route: the path check, the method-override check,
//!   the router lookup, the UUID check and the organization id;
//! - `resolve/catalog/deep`: a five-parameter-deep catalog path
//!   (`GET /api/syncs/{sync_id}/executions/{id}/{type}/{filename}`);
//! - `resolve/catalog/literal_beside_param`: `GET /api/syncs/schedules`,
//!   where a literal wins over `{id}`;
//! - `build/catalog`: building the catalog's route table, schemas compiled
//!   (a start-up cost, paid once);
//! - `decide/{3,1000}_rules`: the policy decision for that GET by a caller
//!   of team `platform`, with the shipped three rules, and with 1,000 rules
//!   where the caller's comes last (997 for other teams before it), the
//!   worst case for a scan of the rules: what "policy at scale" costs.
//!
//! Only the library's public API is used.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};
use polytomic_gateway::catalog::{self, Catalog, CatalogConfig, CatalogCredentialConfig};
use polytomic_gateway::notes::Principal;
use polytomic_gateway::policy::{Policy, PolicyConfig, PolicyMode, RuleConfig};
use polytomic_gateway::routes::{RouteConfig, RouteTable, Routed};

const ORG: &str = "248df4b7-aa70-47b8-a036-33ac447e668d";

fn six() -> RouteTable {
    let route = |operation: &str, methods: &[&str], path: &str| RouteConfig {
        operation: operation.into(),
        methods: methods.iter().map(|m| m.to_string()).collect(),
        path: path.into(),
        credential: None,
        schema: None,
    };
    RouteTable::from_config(
        &[
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
        ],
        &|_| true,
    )
    .unwrap()
}

fn full_catalog() -> RouteTable {
    let config = CatalogConfig {
        enabled: true,
        credentials: vec![CatalogCredentialConfig {
            operations: vec!["*".into()],
            credential: "partner".into(),
        }],
        allow_unknown_connection_types: false,
    };
    let catalog = Catalog::embedded().unwrap();
    let (specs, _) = catalog::plan(&config, &catalog, catalog::API_VERSION, &|_| true).unwrap();
    RouteTable::build(&[], specs, &|_| true).unwrap()
}

fn resolve(table: &RouteTable, method: &Method, path: &str) -> bool {
    matches!(
        table.resolve(method, path, None, &HeaderMap::new()),
        Routed::Matched(_)
    )
}

fn routing(c: &mut Criterion) {
    let six = six();
    let full = full_catalog();
    assert_eq!(full.operations().len(), 198);
    let org_get = format!("/api/organizations/{ORG}");
    let deep = format!("/api/syncs/{ORG}/executions/{ORG}/records/file.json");
    for (name, table) in [("six", &six), ("catalog", &full)] {
        assert!(resolve(table, &Method::GET, &org_get));
        c.bench_function(&format!("resolve/{name}/org_get"), |b| {
            b.iter(|| resolve(black_box(table), &Method::GET, black_box(&org_get)))
        });
    }
    assert!(resolve(&full, &Method::GET, &deep));
    c.bench_function("resolve/catalog/deep", |b| {
        b.iter(|| resolve(black_box(&full), &Method::GET, black_box(&deep)))
    });
    assert!(resolve(&full, &Method::GET, "/api/syncs/schedules"));
    c.bench_function("resolve/catalog/literal_beside_param", |b| {
        b.iter(|| {
            resolve(
                black_box(&full),
                &Method::GET,
                black_box("/api/syncs/schedules"),
            )
        })
    });
    let mut group = c.benchmark_group("build");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("catalog", |b| b.iter(full_catalog));
    group.finish();
}

fn rule(
    name: String,
    teams: &[&str],
    allow: &[&str],
    organizations: Option<&[&str]>,
) -> RuleConfig {
    RuleConfig {
        name,
        teams: teams.iter().map(|t| t.to_string()).collect(),
        subjects: vec![],
        allow: allow.iter().map(|a| a.to_string()).collect(),
        organizations: organizations.map(|o| o.iter().map(|x| x.to_string()).collect()),
    }
}

/// The shipped config's rules, and the caller's (`platform`) placed after
/// `others` rules for other teams.
fn policy(table: &RouteTable, others: usize) -> Policy {
    let mut rules = vec![
        rule(
            "support-read-only".into(),
            &["support"],
            &["organization.list", "organization.get", "users.get"],
            None,
        ),
        rule(
            "billing-own-org".into(),
            &["billing"],
            &["organization.update", "webhooks.*"],
            Some(&[ORG]),
        ),
    ];
    for i in 0..others {
        let team = format!("team-{i:04}");
        let allow: &[&str] = match i % 3 {
            0 => &["connections.*"],
            1 => &["users.get", "users.list"],
            _ => &["organization.update"],
        };
        let orgs = (i % 3 == 2).then_some(&[ORG][..]);
        rules.push(rule(format!("generated-{i:04}"), &[&team], allow, orgs));
    }
    rules.push(rule("platform-admins".into(), &["platform"], &["*"], None));
    let config = PolicyConfig {
        mode: PolicyMode::Enforce,
        rules,
    };
    Policy::from_config(&config, table.operations()).unwrap()
}

fn decisions(c: &mut Criterion) {
    let full = full_catalog();
    let org_get = format!("/api/organizations/{ORG}");
    let Routed::Matched(route) = full.resolve(&Method::GET, &org_get, None, &HeaderMap::new())
    else {
        panic!("{org_get} is routed");
    };
    let caller = Principal::new("bench@example.com", vec!["platform".into()]);
    for (name, others) in [("3_rules", 0), ("1000_rules", 997)] {
        let policy = policy(&full, others);
        let decision = policy.decide(Some(&caller), &route);
        assert!(decision.allowed && decision.rule.as_deref() == Some("platform-admins"));
        c.bench_function(&format!("decide/{name}"), |b| {
            b.iter(|| black_box(&policy).decide(Some(black_box(&caller)), black_box(&route)))
        });
    }
}

criterion_group!(benches, routing, decisions);
criterion_main!(benches);
