//! Every API route, declared once as data. The router and the OpenAPI document are
//! both built from [`ROUTES`].

use crate::auth::{self, require};
use crate::{audit, imports, inbound, lists, people, segments, uploads, AppState};
use axum::routing::{on, MethodFilter, MethodRouter};
use narwhal_domain::Scope;
use serde_json::{json, Map, Value};

/// One API route.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    /// The scope needed; `None` for public routes.
    pub scope: Option<Scope>,
    pub summary: &'static str,
    /// The status of a success.
    pub ok: u16,
    /// Builds the handler for the given method.
    pub handler: fn(MethodFilter) -> MethodRouter<AppState>,
}

macro_rules! routes {
    ($( $method:ident $path:literal $scope:expr, $ok:literal, $summary:literal => $h:path; )*) => {
        &[$( Route {
            method: stringify!($method),
            path: $path,
            scope: $scope,
            summary: $summary,
            ok: $ok,
            handler: |m| on(m, $h),
        }, )*]
    };
}

use Scope::*;

pub const ROUTES: &[Route] = routes! {
    POST "/api/v1/sessions" None, 201, "Log in; sets the session cookie" => auth::api_login;
    DELETE "/api/v1/sessions" None, 204, "Log out" => auth::api_logout;
    POST "/api/v1/people" Some(PeopleWrite), 201, "Create or update a person from a draft (identity-resolved)" => people::upsert;
    GET "/api/v1/people" Some(PeopleRead), 200, "Search people by email, phone, voter id or name (q, after, limit)" => people::search;
    GET "/api/v1/people/{id}" Some(PeopleRead), 200, "A person with merges and history" => people::get;
    PATCH "/api/v1/people/{id}" Some(PeopleWrite), 200, "Edit a person" => people::edit;
    POST "/api/v1/people/{id}/merge" Some(PeopleWrite), 201, "Merge another person into this one" => people::merge;
    POST "/api/v1/merges/{id}/undo" Some(PeopleWrite), 200, "Undo a merge" => people::undo_merge;
    GET "/api/v1/lists" Some(ListsRead), 200, "All lists" => lists::index;
    POST "/api/v1/lists" Some(ListsWrite), 201, "Create a list" => lists::create;
    GET "/api/v1/lists/{id}" Some(ListsRead), 200, "One list" => lists::show;
    GET "/api/v1/lists/{id}/members" Some(ListsRead), 200, "A page of a list's members (after, limit)" => lists::members;
    POST "/api/v1/lists/{id}/members" Some(ListsWrite), 200, "Add people to a list" => lists::add;
    DELETE "/api/v1/lists/{id}/members" Some(ListsWrite), 200, "Remove people from a list" => lists::remove;
    GET "/api/v1/lists/{id}/export.csv" Some(Export), 200, "A list's members as CSV" => lists::export;
    GET "/api/v1/segments" Some(ListsRead), 200, "All segments" => segments::index;
    POST "/api/v1/segments" Some(ListsWrite), 201, "Save a segment" => segments::create;
    POST "/api/v1/segments/preview" Some(ListsRead), 200, "Count the people a filter matches" => segments::preview;
    GET "/api/v1/segments/{id}" Some(ListsRead), 200, "One segment" => segments::show;
    PUT "/api/v1/segments/{id}" Some(ListsWrite), 200, "Change a segment's filter" => segments::update;
    DELETE "/api/v1/segments/{id}" Some(ListsWrite), 204, "Delete a segment" => segments::delete;
    GET "/api/v1/segments/{id}/count" Some(ListsRead), 200, "How many people a segment matches now" => segments::count;
    GET "/api/v1/segments/{id}/people" Some(PeopleRead), 200, "A page of a segment's people (after, limit)" => segments::people;
    GET "/api/v1/segments/{id}/export.csv" Some(Export), 200, "A segment's people as CSV, streamed" => segments::export;
    PUT "/api/v1/uploads/{name}" Some(ImportsWrite), 201, "Upload a file to the upload directory (raw body, streamed; never overwrites)" => uploads::put;
    POST "/api/v1/imports" Some(ImportsWrite), 202, "Start an import of a file under the upload directory" => imports::create;
    GET "/api/v1/imports" Some(ImportsWrite), 200, "Recent imports" => imports::index;
    GET "/api/v1/imports/{id}" Some(ImportsWrite), 200, "An import's progress" => imports::show;
    GET "/api/v1/imports/{id}/rejects.csv" Some(ImportsWrite), 200, "The rows an import rejected, with reasons, as CSV" => imports::rejects;
    POST "/api/v1/inbound/{source}" Some(PeopleWrite), 202, "Receive a record from another system (Idempotency-Key required)" => inbound::receive;
    GET "/api/v1/audit" Some(AuditRead), 200, "The audit log, newest first (entity, id, before, limit)" => audit::index;
};

fn filter(method: &str) -> MethodFilter {
    match method {
        "GET" => MethodFilter::GET,
        "POST" => MethodFilter::POST,
        "PUT" => MethodFilter::PUT,
        "PATCH" => MethodFilter::PATCH,
        _ => MethodFilter::DELETE,
    }
}

/// The route's handler wrapped in its scope check.
pub fn method_router(route: &Route, state: &AppState) -> MethodRouter<AppState> {
    (route.handler)(filter(route.method)).route_layer(axum::middleware::from_fn_with_state(
        (state.clone(), route.scope),
        require,
    ))
}

/// The OpenAPI 3.1 document for [`ROUTES`].
pub fn openapi() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for r in ROUTES {
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| {
                json!({"name": name, "in": "path", "required": true,
                       "schema": if name == "id" { json!({"type": "integer"}) } else { json!({"type": "string"}) }})
            })
            .collect();
        let mut op = json!({
            "summary": r.summary,
            "operationId": format!("{}_{}", r.method.to_lowercase(), r.path.trim_start_matches("/api/v1/").replace(['/', '.'], "_").replace(['{', '}'], "")),
            "parameters": params,
            "responses": {
                r.ok.to_string(): {"description": "success"},
                "default": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        });
        match r.scope {
            Some(s) => {
                op["security"] = json!([{"bearer": [s.as_str()]}, {"session": [s.as_str()]}]);
                op["x-scope"] = json!(s.as_str());
            }
            None => op["security"] = json!([]),
        }
        if let Some(item) = paths
            .entry(r.path.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
        {
            item.insert(r.method.to_lowercase(), op);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Narwhal API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": auth::SESSION_COOKIE}
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message", "request_id"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "request_id": {"type": "string"}}}}}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_is_declared_once_and_documented() {
        let mut seen = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(
                seen.insert((r.method, r.path)),
                "{} {} twice",
                r.method,
                r.path
            );
            assert!(r.path.starts_with("/api/v1/"));
            assert!(["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&r.method));
        }
        let doc = openapi();
        for r in ROUTES {
            assert!(doc["paths"][r.path][r.method.to_lowercase()].is_object());
        }
    }
}
