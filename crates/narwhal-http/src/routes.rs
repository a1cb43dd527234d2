//! Every API route, declared once as data. The router and the OpenAPI document are
//! both built from [`ROUTES`]; the JSON Schemas of the bodies it names are in
//! [`schemas`], beside it.

use crate::auth::{self, require};
use crate::{
    audit, blasts, donations, feedback, imports, inbound, lists, people, segments, turnout,
    uploads, AppState,
};
use axum::routing::{on, MethodFilter, MethodRouter};
use narwhal_domain::Scope;
use serde_json::{json, Map, Value};

/// What a route reads from its request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Nothing.
    None,
    /// `application/json`, described by this schema in `components/schemas`.
    Json(&'static str),
    /// Raw bytes, streamed (uploads).
    Raw,
}

/// One API route.
pub struct Route {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: &'static str,
    /// The axum path, `{name}` for parameters; also the OpenAPI path.
    pub path: &'static str,
    /// Who may call it: anyone, holders of a scope, or poll watchers.
    pub access: Access,
    /// One line for the OpenAPI document.
    pub summary: &'static str,
    /// The status of a success.
    pub ok: u16,
    /// What the request body is.
    pub body: Body,
    /// The schema of a success's JSON body in `components/schemas`; `None` when the
    /// success has no body or is not JSON (CSV, 204).
    pub response: Option<&'static str>,
    /// Builds the handler for the given method.
    pub handler: fn(MethodFilter) -> MethodRouter<AppState>,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (logging in).
    Public,
    /// Callers holding this scope.
    Scoped(Scope),
    /// Any authenticated caller gets past the router; the handler then requires a
    /// watcher row for the calling user and acts only on that watcher's polling place.
    /// No scope grants this: a poll watcher is a volunteer with a watcher row.
    Watcher,
}

impl Access {
    /// The scope needed, if the route is scoped.
    pub fn scope(self) -> Option<Scope> {
        match self {
            Self::Scoped(s) => Some(s),
            _ => None,
        }
    }
}

macro_rules! routes {
    ($( $method:ident $path:literal $scope:expr, $ok:literal, $summary:literal, $body:expr, $resp:expr => $h:path; )*) => {
        &[$( Route {
            method: stringify!($method),
            path: $path,
            access: $scope,
            summary: $summary,
            ok: $ok,
            body: $body,
            response: $resp,
            handler: |m| on(m, $h),
        }, )*]
    };
}

use Access::{Public, Scoped, Watcher};
use Body::{Json, Raw};
use Scope::*;

/// No request body.
const NO_BODY: Body = Body::None;
/// A success without a JSON body.
const NONE: Option<&str> = None;

/// Every API route: method, path, scope, success status, summary, request body,
/// success schema, handler.
pub const ROUTES: &[Route] = routes! {
    POST "/api/v1/sessions" Public, 201, "Log in; sets the session cookie", Json("Login"), Some("Session") => auth::api_login;
    DELETE "/api/v1/sessions" Public, 204, "Log out", NO_BODY, NONE => auth::api_logout;
    POST "/api/v1/people" Scoped(PeopleWrite), 201, "Create or update a person from a draft (identity-resolved; 200 when updated)", Json("PersonDraft"), Some("Upserted") => people::upsert;
    GET "/api/v1/people" Scoped(PeopleRead), 200, "Search people by email, phone, voter id or name (q, after, limit)", NO_BODY, Some("PersonPage") => people::search;
    GET "/api/v1/people/{id}" Scoped(PeopleRead), 200, "A person with merges and history", NO_BODY, Some("PersonDetail") => people::get;
    PATCH "/api/v1/people/{id}" Scoped(PeopleWrite), 200, "Edit a person", Json("PersonPatch"), Some("PersonRecord") => people::edit;
    POST "/api/v1/people/{id}/merge" Scoped(PeopleWrite), 201, "Merge another person into this one", Json("MergeRequest"), Some("MergeResult") => people::merge;
    POST "/api/v1/merges/{id}/undo" Scoped(PeopleWrite), 200, "Undo a merge", NO_BODY, Some("UndoResult") => people::undo_merge;
    GET "/api/v1/lists" Scoped(ListsRead), 200, "All lists", NO_BODY, Some("Lists") => lists::index;
    POST "/api/v1/lists" Scoped(ListsWrite), 201, "Create a list", Json("NewList"), Some("Created") => lists::create;
    GET "/api/v1/lists/{id}" Scoped(ListsRead), 200, "One list", NO_BODY, Some("List") => lists::show;
    GET "/api/v1/lists/{id}/members" Scoped(ListsRead), 200, "A page of a list's members (after, limit)", NO_BODY, Some("PersonPage") => lists::members;
    POST "/api/v1/lists/{id}/members" Scoped(ListsWrite), 200, "Add people to a list", Json("Members"), Some("Added") => lists::add;
    DELETE "/api/v1/lists/{id}/members" Scoped(ListsWrite), 200, "Remove people from a list", Json("Members"), Some("Removed") => lists::remove;
    GET "/api/v1/lists/{id}/export.csv" Scoped(Export), 200, "A list's members as CSV", NO_BODY, NONE => lists::export;
    GET "/api/v1/segments" Scoped(ListsRead), 200, "All segments", NO_BODY, Some("Segments") => segments::index;
    POST "/api/v1/segments" Scoped(ListsWrite), 201, "Save a segment", Json("NewSegment"), Some("Created") => segments::create;
    POST "/api/v1/segments/preview" Scoped(ListsRead), 200, "Count the people a filter matches", Json("FilterBody"), Some("Count") => segments::preview;
    GET "/api/v1/segments/{id}" Scoped(ListsRead), 200, "One segment", NO_BODY, Some("Segment") => segments::show;
    PUT "/api/v1/segments/{id}" Scoped(ListsWrite), 200, "Change a segment's filter", Json("FilterBody"), Some("Segment") => segments::update;
    DELETE "/api/v1/segments/{id}" Scoped(ListsWrite), 204, "Delete a segment", NO_BODY, NONE => segments::delete;
    GET "/api/v1/segments/{id}/count" Scoped(ListsRead), 200, "How many people a segment matches now", NO_BODY, Some("Count") => segments::count;
    GET "/api/v1/segments/{id}/people" Scoped(PeopleRead), 200, "A page of a segment's people (after, limit)", NO_BODY, Some("PersonPage") => segments::people;
    GET "/api/v1/segments/{id}/export.csv" Scoped(Export), 200, "A segment's people as CSV, streamed", NO_BODY, NONE => segments::export;
    PUT "/api/v1/uploads/{name}" Scoped(ImportsWrite), 201, "Upload a file to the upload directory (raw body, streamed; never overwrites)", Raw, Some("Uploaded") => uploads::put;
    POST "/api/v1/imports" Scoped(ImportsWrite), 202, "Start an import of a file under the upload directory", Json("NewImport"), Some("ImportQueued") => imports::create;
    GET "/api/v1/imports" Scoped(ImportsWrite), 200, "Recent imports", NO_BODY, Some("ImportRuns") => imports::index;
    GET "/api/v1/imports/{id}" Scoped(ImportsWrite), 200, "An import's progress", NO_BODY, Some("ImportRun") => imports::show;
    GET "/api/v1/imports/{id}/rejects.csv" Scoped(ImportsWrite), 200, "The rows an import rejected, with reasons, as CSV", NO_BODY, NONE => imports::rejects;
    POST "/api/v1/inbound/{source}" Scoped(PeopleWrite), 202, "Receive a record from another system (Idempotency-Key required)", Json("InboundRecord"), Some("InboundAccepted") => inbound::receive;
    GET "/api/v1/audit" Scoped(AuditRead), 200, "The audit log, newest first (entity, id, before, limit)", NO_BODY, Some("AuditPage") => audit::index;
    POST "/api/v1/turnout/sessions" Public, 201, "Poll watcher login with a login-link token or username and PIN; sets the session cookie", Json("WatcherLogin"), Some("WatcherSession") => turnout::login;
    GET "/api/v1/turnout/me" Watcher, 200, "Readiness: the watcher's polling place and the size of their list", NO_BODY, Some("Readiness") => turnout::me;
    GET "/api/v1/turnout/list" Watcher, 200, "The watcher's polling place's supporters not yet voted, with voter codes (after, limit)", NO_BODY, Some("TurnoutList") => turnout::list;
    POST "/api/v1/turnout/reports" Watcher, 200, "Report voters as voted (or undo), idempotent by report_id; each item gets its own outcome", Json("ReportBatch"), Some("BatchResult") => turnout::reports;
    GET "/api/v1/turnout/summary" Scoped(ListsRead), 200, "Turnout per precinct and polling place against the GOTV universe", NO_BODY, Some("TurnoutSummary") => turnout::summary;
    GET "/api/v1/turnout/dashboard" Scoped(ListsRead), 200, "Live turnout per state, county, polling place and precinct, hour by hour against the expected curve", NO_BODY, Some("TurnoutDashboard") => turnout::dashboard;
    GET "/api/v1/turnout/live" Scoped(ListsRead), 200, "The dashboard as server-sent events (text/event-stream, event turnout), within 1 s of a report on any node", NO_BODY, NONE => turnout::live;
    GET "/api/v1/turnout/me/live" Watcher, 200, "The watcher's polling place figures as server-sent events (event place)", NO_BODY, NONE => turnout::my_live;
    GET "/api/v1/turnout/curve" Scoped(ListsRead), 200, "The expected turnout curve", NO_BODY, Some("ExpectedCurve") => turnout::curve;
    PUT "/api/v1/turnout/curve" Scoped(ListsWrite), 200, "Set the expected turnout curve for every node", Json("ExpectedCurve"), Some("ExpectedCurve") => turnout::set_curve;
    GET "/api/v1/turnout/lists" Scoped(ListsRead), 200, "Canvass turfs and call lists with what remains of them", NO_BODY, Some("GotvLists") => turnout::lists;
    POST "/api/v1/turnout/lists" Scoped(ListsWrite), 201, "Create a turf or call list from a segment, a polling place or a precinct", Json("NewGotvList"), Some("GotvList") => turnout::create_list;
    GET "/api/v1/turnout/lists/{id}" Scoped(ListsRead), 200, "A turf or call list and a page of its members not yet voted (after, limit)", NO_BODY, Some("GotvListPage") => turnout::list_remaining;
    POST "/api/v1/turnout/lists/{id}/members" Scoped(ListsWrite), 200, "Assign supporters to a turf or call list", Json("GotvAssign"), Some("Added") => turnout::assign;
    GET "/api/v1/turnout/lists/{id}/export.csv" Scoped(Export), 200, "Who remains: a walk sheet in address order (turf) or a call sheet with phones (calls)", NO_BODY, NONE => turnout::export_list;
    POST "/api/v1/turnout/early-vote" Scoped(ImportsWrite), 200, "Import an early-vote or absentee file from the upload directory; pre-flushes the lists", Json("NewEarlyVote"), Some("EarlyVoteCounts") => turnout::early_vote;
    POST "/api/v1/blasts" Scoped(MailSend), 201, "Create a blast (a draft); templates are checked first (422 invalid_template names part, line and column)", Json("NewBlast"), Some("Created") => blasts::create;
    GET "/api/v1/blasts" Scoped(MailRead), 200, "Recent blasts with their progress", NO_BODY, Some("Blasts") => blasts::index;
    GET "/api/v1/blasts/{id}" Scoped(MailRead), 200, "A blast's progress: sent, failed, throttled-waiting, pending, ETA", NO_BODY, Some("BlastStatus") => blasts::show;
    POST "/api/v1/blasts/{id}/preview" Scoped(MailRead), 200, "The message as one person would get it", Json("PreviewRequest"), Some("Preview") => blasts::preview;
    POST "/api/v1/blasts/{id}/test" Scoped(MailSend), 200, "Send the message to one address through the first account", Json("PreviewRequest"), Some("TestSend") => blasts::test_send;
    POST "/api/v1/blasts/{id}/schedule" Scoped(MailSend), 200, "Send now, or at a time (422 empty_audience when the target reaches nobody who can be emailed)", Json("ScheduleRequest"), Some("BlastStatus") => blasts::schedule;
    POST "/api/v1/blasts/{id}/pause" Scoped(MailSend), 200, "Pause; the worker stops within one slice", NO_BODY, Some("BlastStatus") => blasts::pause;
    POST "/api/v1/blasts/{id}/resume" Scoped(MailSend), 200, "Resume a paused blast", NO_BODY, Some("BlastStatus") => blasts::resume;
    POST "/api/v1/blasts/{id}/cancel" Scoped(MailSend), 200, "Cancel a blast", NO_BODY, Some("BlastStatus") => blasts::cancel;
    GET "/api/v1/blasts/{id}/failures" Scoped(MailRead), 200, "Who failed and why (after, limit)", NO_BODY, Some("FailurePage") => blasts::failures;
    POST "/api/v1/blasts/{id}/resend-failed" Scoped(MailSend), 201, "A new draft blast to the recipients this one failed", NO_BODY, Some("Created") => blasts::resend_failed;
    GET "/api/v1/suppressions" Scoped(MailRead), 200, "The suppression list (after, limit)", NO_BODY, Some("SuppressionPage") => blasts::suppressions;
    GET "/api/v1/blasts/{id}/feedback" Scoped(MailRead), 200, "Bounced, complained and delivered recipients of a blast (from provider feedback)", NO_BODY, Some("BlastFeedback") => feedback::blast_feedback;
    POST "/api/v1/mail/dsn" Scoped(MailSend), 200, "Ingest one delivery status notification (the raw message/rfc822): bounces update consent and suppressions", Raw, Some("FeedbackIngested") => feedback::dsn;
    POST "/api/v1/donations" Scoped(DonationsWrite), 201, "Take a donation (Idempotency-Key header or body field; 200 on a replay, 202 while an ambiguous charge is confirmed; 402 declined, 422 over_limit, 409 idempotency_in_flight, 429 card-testing limits)", Json("NewDonation"), Some("Donation") => donations::create;
    GET "/api/v1/donations" Scoped(DonationsRead), 200, "Search donations (state, refcode, email, since, until, before, limit), newest first", NO_BODY, Some("DonationPage") => donations::index;
    POST "/api/v1/donations/giving-links" Scoped(DonationsWrite), 201, "A single-use, expiring one-click giving link for a donor with a saved card (422 no_saved_method), to put in an email", Json("GivingLinkRequest"), Some("GivingLink") => donations::giving_link;
    GET "/api/v1/donations/{public_id}" Scoped(DonationsRead), 200, "One donation", NO_BODY, Some("Donation") => donations::show;
    POST "/api/v1/donations/{public_id}/refund" Scoped(DonationsRefund), 200, "Refund all or part of a donation at its processor, and record it", Json("RefundRequest"), Some("Donation") => donations::refund;
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
        (state.clone(), route.access),
        require,
    ))
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// The success response of a route: its JSON schema, or CSV, or nothing.
fn success(r: &Route) -> Value {
    match (r.response, r.path.ends_with(".csv")) {
        (Some(name), _) => json!({"description": "success",
            "content": {"application/json": {"schema": schema_ref(name)}}}),
        (None, true) => json!({"description": "success",
            "content": {"text/csv": {"schema": {"type": "string"}}}}),
        (None, false) => json!({"description": "success, no body"}),
    }
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
                r.ok.to_string(): success(r),
                "default": {"description": "error", "content": {"application/json": {"schema": schema_ref("Error")}}}
            }
        });
        match r.body {
            Body::Json(name) => {
                op["requestBody"] = json!({"required": true,
                    "content": {"application/json": {"schema": schema_ref(name)}}});
            }
            Body::Raw => {
                op["requestBody"] = json!({"required": true,
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}});
            }
            Body::None => {}
        }
        match r.access {
            Access::Scoped(s) => {
                op["security"] = json!([{"bearer": [s.as_str()]}, {"session": [s.as_str()]}]);
                op["x-scope"] = json!(s.as_str());
            }
            Access::Watcher => {
                op["security"] = json!([{"session": []}]);
                op["x-access"] = json!("watcher");
            }
            Access::Public => op["security"] = json!([]),
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
            "schemas": schemas()
        }
    })
}

/// `{"type": ["string", "null"]}` with an example.
fn opt_str(example: &str) -> Value {
    json!({"type": ["string", "null"], "examples": [example]})
}

/// A page of people with its keyset cursor.
fn page_of(item: &str, key: &str, cursor: &str) -> Value {
    json!({"type": "object", "required": [key, cursor], "properties": {
        key: {"type": "array", "items": schema_ref(item)},
        cursor: {"type": ["integer", "null"], "description": "pass as the next page's cursor; null on the last page"}}})
}

/// `components/schemas`: every request and response body named in [`ROUTES`], and the
/// types they are made of. Request schemas mirror the Rust types' serde shapes
/// (`additionalProperties: false` where the type denies unknown fields); tests check
/// that every listed property is accepted and every produced property is listed.
pub fn schemas() -> Value {
    let consent = json!({"type": "string", "enum": ["unknown", "subscribed", "unsubscribed", "bounced", "complained"],
        "description": "Where a person stands on a channel. Bulk sources cannot lift unsubscribed, bounced or complained."});
    let tag = json!({"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[\\p{L}\\p{N} _:.-]+$",
        "description": "Lower-cased; letters, digits, spaces and _-:."});
    let custom_key = "^[a-z][a-z0-9_]{0,63}$";
    let timestamp = json!({"type": "integer", "description": "Unix time in milliseconds"});
    let id = json!({"type": "integer", "minimum": 1});
    let mut all = json!({
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message", "request_id"],
            "properties": {
                "code": {"type": "string", "description": "stable machine code, e.g. not_found, invalid_field, timeout"},
                "message": {"type": "string", "description": "safe to show; never holds field values"},
                "request_id": {"type": "string"}}}}},
        "ConsentState": consent,
        "Tag": tag,
        "Address": {"type": "object", "description": "Every part optional; state is a USPS code or name.",
            "properties": {
                "line1": opt_str("12 Main St"), "line2": opt_str("Apt 3"), "city": opt_str("Columbus"),
                "state": opt_str("OH"), "zip": opt_str("43215"), "county": opt_str("FRANKLIN"),
                "precinct": opt_str("25-B")}},
        "PersonDraft": {"type": "object", "additionalProperties": false,
            "description": "What one source says about one person. Absent fields never erase what the hub has.",
            "properties": {
                "voter_id": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9-]{1,32}$", "examples": ["OH-000123"]},
                "first_name": opt_str("Ada"), "middle_name": opt_str("King"),
                "last_name": opt_str("Lovelace"), "suffix": opt_str("Jr"),
                "emails": {"type": "array", "items": {"type": "string", "format": "email"}, "examples": [["ada@example.org"]]},
                "phones": {"type": "array", "items": {"type": "string", "description": "a phone number in any common format; stored as E.164"}, "examples": [["+16145550101"]]},
                "address": {"anyOf": [schema_ref("Address"), {"type": "null"}], "examples": [{"line1": "12 Main St", "state": "OH"}]},
                "custom": {"type": "object", "propertyNames": {"pattern": custom_key}, "additionalProperties": {"type": "string"}, "examples": [{"party": "D"}]},
                "tags": {"type": "array", "items": schema_ref("Tag"), "examples": [["volunteer"]]},
                "email_consent": {"$ref": "#/components/schemas/ConsentState", "examples": ["subscribed"]},
                "sms_consent": {"$ref": "#/components/schemas/ConsentState", "examples": ["unknown"]}}},
        "PersonPatch": {"type": "object", "additionalProperties": false,
            "description": "A staff edit. Absent fields stay as they are; an empty name part clears it.",
            "properties": {
                "first_name": opt_str("Ada"), "middle_name": opt_str(""),
                "last_name": opt_str("Lovelace"), "suffix": opt_str("Jr"),
                "add_emails": {"type": "array", "items": {"type": "string", "format": "email"}, "examples": [["ada@example.org"]]},
                "add_phones": {"type": "array", "items": {"type": "string"}, "examples": [["+16145550101"]]},
                "address": {"anyOf": [schema_ref("Address"), {"type": "null"}], "description": "replaces the whole address", "examples": [{"city": "Dayton"}]},
                "custom": {"type": "object", "propertyNames": {"pattern": custom_key}, "additionalProperties": {"type": ["string", "null"]},
                    "description": "null removes a field", "examples": [{"party": null}]},
                "add_tags": {"type": "array", "items": schema_ref("Tag"), "examples": [["donor"]]},
                "remove_tags": {"type": "array", "items": schema_ref("Tag"), "examples": [["volunteer"]]},
                "email_consent": {"anyOf": [schema_ref("ConsentState"), {"type": "null"}], "examples": ["unsubscribed"]},
                "sms_consent": {"anyOf": [schema_ref("ConsentState"), {"type": "null"}], "examples": [null]}}},
        "PersonRecord": {"type": "object", "description": "A stored person.",
            "required": ["id", "search_name", "email_consent", "sms_consent", "custom", "provenance", "emails", "phones", "tags", "version", "created_at", "updated_at"],
            "properties": {
                "id": id, "voter_id": opt_str("OH-000123"),
                "first_name": opt_str("Ada"), "middle_name": opt_str("King"), "last_name": opt_str("Lovelace"), "suffix": opt_str("Jr"),
                "search_name": {"type": "string"},
                "email": {"type": ["string", "null"], "description": "the primary email"},
                "phone": {"type": ["string", "null"], "description": "the primary phone, E.164"},
                "addr_line1": opt_str("12 Main St"), "addr_line2": opt_str("Apt 3"), "city": opt_str("Columbus"),
                "state": opt_str("OH"), "zip": opt_str("43215"), "county": opt_str("FRANKLIN"), "precinct": opt_str("25-B"),
                "addr_key": {"type": ["string", "null"], "description": "normalized address used for matching"},
                "email_consent": schema_ref("ConsentState"), "sms_consent": schema_ref("ConsentState"),
                "custom": {"type": "object", "additionalProperties": {"type": "string"}},
                "provenance": {"type": "object", "description": "field name -> where its value came from; the key \"*\" covers every field the person was created with",
                    "additionalProperties": {"type": "object", "properties": {"source": {"type": "string"}, "at": timestamp}}},
                "row_hash": {"type": "integer", "description": "fingerprint of the last source record folded in"},
                "emails": {"type": "array", "items": {"type": "string"}},
                "phones": {"type": "array", "items": {"type": "string"}},
                "tags": {"type": "array", "items": schema_ref("Tag")},
                "version": {"type": "integer"}, "created_at": timestamp, "updated_at": timestamp}},
        "PersonSummary": {"type": "object", "required": ["id", "email_consent", "sms_consent"], "properties": {
            "id": id, "voter_id": opt_str("OH-000123"), "first_name": opt_str("Ada"), "last_name": opt_str("Lovelace"),
            "email": opt_str("ada@example.org"), "phone": opt_str("+16145550101"), "city": opt_str("Columbus"),
            "state": opt_str("OH"), "zip": opt_str("43215"), "county": opt_str("FRANKLIN"), "precinct": opt_str("25-B"),
            "email_consent": schema_ref("ConsentState"), "sms_consent": schema_ref("ConsentState")}},
        "PersonPage": page_of("PersonSummary", "people", "next_after"),
        "Merge": {"type": "object", "required": ["id", "survivor_id", "merged_id", "reason", "actor", "created_at"], "properties": {
            "id": id, "survivor_id": id, "merged_id": id, "reason": {"type": "string"}, "actor": {"type": "string"},
            "created_at": timestamp, "undone_at": {"type": ["integer", "null"]}}},
        "AuditEntry": {"type": "object", "required": ["id", "at", "actor", "action", "entity", "entity_id", "detail"], "properties": {
            "id": id, "at": timestamp, "actor": {"type": "string", "examples": ["user:ada"]},
            "action": {"type": "string", "examples": ["person.update"]}, "entity": {"type": "string"},
            "entity_id": {"type": "string"}, "detail": {"type": "object", "description": "field names, counts; never personal values"}}},
        "AuditPage": page_of("AuditEntry", "entries", "next_before"),
        "PersonDetail": {"type": "object", "required": ["person", "merges", "history"], "properties": {
            "person": schema_ref("PersonRecord"),
            "merges": {"type": "array", "items": schema_ref("Merge")},
            "history": {"type": "array", "items": schema_ref("AuditEntry")}}},
        "Upserted": {"type": "object", "required": ["id", "outcome", "merged"], "properties": {
            "id": id, "outcome": {"type": "string", "enum": ["created", "updated", "unchanged"]},
            "merged": {"type": "array", "items": id, "description": "people merged into id because this record proved them one"}}},
        "MergeRequest": {"type": "object", "additionalProperties": false, "required": ["other"], "properties": {
            "other": {"type": "integer", "minimum": 1, "description": "the person merged into the one in the path", "examples": [42]},
            "reason": {"type": "string", "examples": ["same phone and name"]}}},
        "MergeResult": {"type": "object", "required": ["merge_id", "survivor", "merged"], "properties": {
            "merge_id": id, "survivor": id, "merged": id}},
        "UndoResult": {"type": "object", "required": ["merge_id", "undone"], "properties": {
            "merge_id": id, "undone": {"type": "boolean"}}},
        "Login": {"type": "object", "additionalProperties": false, "required": ["username", "password"], "properties": {
            "username": {"type": "string", "examples": ["ada"]}, "password": {"type": "string", "format": "password", "examples": ["correct horse"]}}},
        "Session": {"type": "object", "required": ["username", "role"], "properties": {
            "username": {"type": "string"}, "role": {"type": "string", "enum": ["admin", "staff", "volunteer"]}}},
        "List": {"type": "object", "required": ["id", "name", "description", "members", "created_at"], "properties": {
            "id": id, "name": {"type": "string"}, "description": {"type": "string"},
            "members": {"type": "integer"}, "created_at": timestamp}},
        "Lists": {"type": "object", "required": ["lists"], "properties": {"lists": {"type": "array", "items": schema_ref("List")}}},
        "NewList": {"type": "object", "additionalProperties": false, "required": ["name"], "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 200, "examples": ["Door knockers"]},
            "description": {"type": "string", "examples": ["Saturday canvass"]}}},
        "Members": {"type": "object", "additionalProperties": false, "required": ["people"], "properties": {
            "people": {"type": "array", "items": id, "maxItems": 10000, "examples": [[1, 2]]}}},
        "Added": {"type": "object", "required": ["added"], "properties": {"added": {"type": "integer"}}},
        "Removed": {"type": "object", "required": ["removed"], "properties": {"removed": {"type": "integer"}}},
        "Created": {"type": "object", "required": ["id"], "properties": {"id": id}},
        "SegmentFilter": {
            "description": "The segment language: externally tagged, nested at most 8 deep, at most 200 conditions.",
            "examples": [{"all": [{"state": "OH"}, {"county": "FRANKLIN"}, {"consent": {"channel": "email", "state": "subscribed"}}, {"not": {"tag": "donor"}}]}],
            "oneOf": [
                {"type": "object", "additionalProperties": false, "required": ["all"], "properties": {"all": {"type": "array", "minItems": 1, "items": schema_ref("SegmentFilter")}}},
                {"type": "object", "additionalProperties": false, "required": ["any"], "properties": {"any": {"type": "array", "minItems": 1, "items": schema_ref("SegmentFilter")}}},
                {"type": "object", "additionalProperties": false, "required": ["not"], "properties": {"not": schema_ref("SegmentFilter")}},
                {"type": "object", "additionalProperties": false, "required": ["tag"], "properties": {"tag": schema_ref("Tag")}},
                {"type": "object", "additionalProperties": false, "required": ["state"], "properties": {"state": {"type": "string", "description": "USPS code or name"}}},
                {"type": "object", "additionalProperties": false, "required": ["county"], "properties": {"county": {"type": "string", "minLength": 1}}},
                {"type": "object", "additionalProperties": false, "required": ["precinct"], "properties": {"precinct": {"type": "string", "minLength": 1}}},
                {"type": "object", "additionalProperties": false, "required": ["zip"], "properties": {"zip": {"type": "string", "minLength": 1}}},
                {"type": "object", "additionalProperties": false, "required": ["in_list"], "properties": {"in_list": id}},
                {"type": "object", "additionalProperties": false, "required": ["consent"], "properties": {"consent": {
                    "type": "object", "additionalProperties": false, "required": ["channel", "state"], "properties": {
                        "channel": {"type": "string", "enum": ["email", "sms"]}, "state": schema_ref("ConsentState")}}}},
                {"type": "object", "additionalProperties": false, "required": ["field"], "properties": {"field": {
                    "type": "object", "additionalProperties": false, "required": ["key", "op"], "properties": {
                        "key": {"type": "string", "pattern": custom_key},
                        "op": {"type": "string", "enum": ["eq", "ne", "exists"]},
                        "value": {"type": ["string", "null"], "description": "required for eq and ne"}}}}},
                {"type": "string", "enum": ["has_email", "has_phone", "has_voter_id"]}
            ]},
        "Segment": {"type": "object", "required": ["id", "name", "filter", "created_at", "updated_at"], "properties": {
            "id": id, "name": {"type": "string"}, "filter": schema_ref("SegmentFilter"),
            "created_at": timestamp, "updated_at": timestamp}},
        "Segments": {"type": "object", "required": ["segments"], "properties": {"segments": {"type": "array", "items": schema_ref("Segment")}}},
        "NewSegment": {"type": "object", "additionalProperties": false, "required": ["name", "filter"], "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 200}, "filter": schema_ref("SegmentFilter")}},
        "FilterBody": {"type": "object", "additionalProperties": false, "required": ["filter"], "properties": {
            "filter": schema_ref("SegmentFilter")}},
        "Count": {"type": "object", "required": ["count"], "properties": {"id": id, "count": {"type": "integer"}}},
        "Uploaded": {"type": "object", "required": ["path", "bytes"], "properties": {
            "path": {"type": "string", "description": "the name to pass as path to POST /api/v1/imports"},
            "bytes": {"type": "integer"}}},
        "NewImport": {"type": "object", "additionalProperties": false, "required": ["source", "path", "mapping"], "properties": {
            "source": {"type": "string", "minLength": 1, "maxLength": 100, "examples": ["county-voter-file"]},
            "path": {"type": "string", "description": "a file under the upload directory", "examples": ["voters.csv"]},
            "mapping": {"type": "string", "description": "the column mapping, as TOML", "examples": ["[fields]\nfirst_name = \"FIRST\"\n"]}}},
        "ImportQueued": {"type": "object", "required": ["id", "job_id", "state"], "properties": {
            "id": id, "job_id": {"type": ["integer", "null"]}, "state": {"type": "string"}}},
        "ImportRun": {"type": "object",
            "required": ["id", "source_name", "path", "mapping", "state", "bytes_total", "bytes_read", "rows_read", "inserted", "updated", "unchanged", "merged", "rejected", "created_by", "created_at"],
            "properties": {
                "id": id, "job_id": {"type": ["integer", "null"]}, "source_name": {"type": "string"},
                "path": {"type": "string"}, "mapping": {"type": "string"},
                "state": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
                "bytes_total": {"type": "integer"}, "bytes_read": {"type": "integer"}, "rows_read": {"type": "integer"},
                "inserted": {"type": "integer"}, "updated": {"type": "integer"}, "unchanged": {"type": "integer"},
                "merged": {"type": "integer"}, "rejected": {"type": "integer"},
                "rejects_path": {"type": ["string", "null"], "description": "download with GET /api/v1/imports/{id}/rejects.csv"},
                "error": {"type": ["string", "null"]}, "created_by": {"type": "string"},
                "created_at": timestamp, "finished_at": {"type": ["integer", "null"]}}},
        "ImportRuns": {"type": "object", "required": ["imports"], "properties": {"imports": {"type": "array", "items": schema_ref("ImportRun")}}},
        "InboundRecord": {"type": "object", "description": "Any JSON object; translated into a person later by a job."},
        "InboundAccepted": {"type": "object", "required": ["id", "duplicate"], "properties": {
            "id": id, "duplicate": {"type": "boolean", "description": "true when this Idempotency-Key was seen before"}}},
        "WatcherLogin": {"type": "object", "additionalProperties": false,
            "description": "Either token (from a login link), or username and pin.",
            "properties": {
                "token": {"type": ["string", "null"], "examples": ["nwt_5f2c..."]},
                "username": {"type": ["string", "null"], "examples": ["watcher-fra-12"]},
                "pin": {"type": ["string", "null"], "examples": ["042913"]}}},
        "WatcherSession": {"type": "object", "required": ["username", "polling_place"], "properties": {
            "username": {"type": "string"}, "polling_place": {"type": "string"}}},
        "PollingPlace": {"type": "object", "required": ["code", "name", "address", "precincts", "universe", "remaining"], "properties": {
            "code": {"type": "string"}, "name": {"type": "string"}, "address": {"type": "string"},
            "precincts": {"type": "integer"}, "universe": {"type": "integer", "description": "supporters who vote here"},
            "remaining": {"type": "integer", "description": "of those, not yet reported as voted"}}},
        "Readiness": {"type": "object", "required": ["polling_place", "login", "message"], "properties": {
            "polling_place": schema_ref("PollingPlace"),
            "login": {"type": "string", "enum": ["pin", "link"]},
            "expires_at": {"type": ["integer", "null"]},
            "message": {"type": "string", "examples": ["You are set up for polling place FRA-12 (Lincoln Elementary); your list has 212 voters."]}}},
        "ListedVoter": {"type": "object", "required": ["person_id", "voter_code", "precinct"], "properties": {
            "person_id": id, "voter_code": {"type": "string", "pattern": "^[0-9]{8}$", "description": "7 digits and a check digit"},
            "first_name": {"type": ["string", "null"]}, "last_name": {"type": ["string", "null"]},
            "address": {"type": ["string", "null"]}, "precinct": {"type": "string"}}},
        "TurnoutList": {"type": "object", "required": ["polling_place", "voters"], "properties": {
            "polling_place": {"type": "string"},
            "voters": {"type": "array", "items": schema_ref("ListedVoter")},
            "next_after": {"type": ["integer", "null"], "description": "pass as after for the next page; null on the last"}}},
        "ReportItem": {"type": "object", "additionalProperties": false, "required": ["report_id"],
            "description": "One report: exactly one of voter_code and person_id.",
            "properties": {
                "report_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$", "description": "client-generated (UUID or ULID); a retry with the same id never counts twice", "examples": ["01HZX3Q9J7K2M4N6P8R0S2T4V6"]},
                "voter_code": {"type": ["string", "null"], "examples": ["12345678"]},
                "person_id": {"type": ["integer", "null"], "examples": [null]},
                "voted_at": {"type": ["integer", "null"], "description": "ms since the epoch; default now", "examples": [1730764800000i64]},
                "undo": {"type": "boolean", "description": "undo the report with this report_id", "examples": [false]}}},
        "ReportBatch": {"type": "object", "additionalProperties": false, "required": ["reports"], "properties": {
            "reports": {"type": "array", "maxItems": 1000, "items": schema_ref("ReportItem"), "examples": [[{"report_id": "01HZX3Q9J7K2M4N6P8R0S2T4V6", "voter_code": "12345678"}]]},
            "channel": {"type": ["string", "null"], "enum": ["app", "bulk", "sms", null], "examples": ["app"]}}},
        "ItemResult": {"type": "object", "required": ["report_id", "outcome"], "properties": {
            "report_id": {"type": "string"},
            "outcome": {"type": "string", "enum": ["accepted", "duplicate", "rejected"]},
            "reason": {"type": "string", "enum": ["invalid_report_id", "invalid_voter_code", "invalid_target", "unknown_voter", "other_polling_place", "report_id_reused"]},
            "message": {"type": "string", "description": "safe to show the watcher"},
            "person_id": id}},
        "BatchResult": {"type": "object", "required": ["accepted", "duplicates", "rejected", "results"], "properties": {
            "accepted": {"type": "integer"}, "duplicates": {"type": "integer"}, "rejected": {"type": "integer"},
            "results": {"type": "array", "items": schema_ref("ItemResult"), "description": "one per report, in order"}}},
        "PrecinctTurnout": {"type": "object", "required": ["county", "precinct", "polling_place", "universe", "voted"], "properties": {
            "county": {"type": "string"}, "precinct": {"type": "string"}, "polling_place": {"type": "string"},
            "universe": {"type": "integer"}, "voted": {"type": "integer"}}},
        "NewBlast": {"type": "object", "additionalProperties": false, "required": ["name", "target", "subject"], "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 200, "examples": ["GOTV reminder"]},
            "target": {"type": "object", "additionalProperties": false, "description": "exactly one of list, segment, filter",
                "properties": {"list": {"type": ["integer", "null"]}, "segment": {"type": ["integer", "null"]},
                    "filter": {"anyOf": [schema_ref("SegmentFilter"), {"type": "null"}]}},
                "examples": [{"list": 1}]},
            "subject": {"type": "string", "description": "a template: {{ first_name | default('friend') }}", "examples": ["Hi {{ first_name | default('friend') }}"]},
            "text": {"type": ["string", "null"], "examples": ["Polls are open until 7:30pm."]},
            "html": {"type": ["string", "null"], "examples": ["<p>Polls are open until 7:30pm.</p>"]},
            "from": {"type": ["string", "null"], "format": "email", "description": "default: mail.from_address", "examples": ["team@campaign.example"]},
            "keep_message_ids": {"type": "boolean", "examples": [false]}}},
        "BlastStatus": {"type": "object", "required": ["id", "name", "state", "from", "created_at", "total", "sent", "failed", "skipped", "ambiguous", "throttled_waiting", "pending", "in_flight_or_due", "throttle_answers", "possible_duplicates"], "properties": {
            "id": id, "name": {"type": "string"},
            "state": {"type": "string", "enum": ["draft", "scheduled", "sending", "paused", "cancelled", "done"]},
            "reason": {"type": ["string", "null"], "description": "why it paused"},
            "from": {"type": "string"}, "scheduled_at": {"type": ["integer", "null"]}, "created_at": timestamp,
            "finished_at": {"type": ["integer", "null"]},
            "total": {"type": "integer"}, "sent": {"type": "integer"}, "failed": {"type": "integer"},
            "skipped": {"type": "integer", "description": "unsubscribed, bounced or suppressed during the blast"},
            "ambiguous": {"type": "integer", "description": "maybe delivered (timeout after sending); not resent"},
            "throttled_waiting": {"type": "integer", "description": "pending and waiting for a throttle or backoff"},
            "pending": {"type": "integer", "description": "not final yet (includes throttled_waiting)"},
            "in_flight_or_due": {"type": "integer"},
            "throttle_answers": {"type": "integer", "description": "throttle answers from providers (requeued, never failures)"},
            "possible_duplicates": {"type": "integer", "description": "recipients taken over from a node that died mid-send"},
            "audience": {"type": "integer", "description": "when scheduling: the recipients the blast reaches (422 empty_audience when none)"},
            "eta_seconds": {"type": ["integer", "null"], "description": "estimated seconds to finish (when scheduling: from the audience, the accounts' rates and the start time)"}}},
        "Blasts": {"type": "object", "required": ["blasts"], "properties": {"blasts": {"type": "array", "items": schema_ref("BlastStatus")}}},
        "PreviewRequest": {"type": "object", "additionalProperties": false, "properties": {
            "person_id": {"type": ["integer", "null"], "examples": [1]},
            "to": {"type": ["string", "null"], "format": "email", "description": "test sends only", "examples": ["staff@campaign.example"]}}},
        "Preview": {"type": "object", "required": ["subject"], "properties": {
            "subject": {"type": "string"}, "text": {"type": ["string", "null"]}, "html": {"type": ["string", "null"]}}},
        "TestSend": {"type": "object", "required": ["outcome", "provider"], "properties": {
            "outcome": {"type": "string", "examples": ["accepted"]}, "reason": {"type": ["string", "null"]}, "provider": {"type": "string"}}},
        "ScheduleRequest": {"type": "object", "additionalProperties": false, "properties": {
            "at": {"type": ["integer", "null"], "description": "ms since the epoch; absent or past: now", "examples": [null]}}},
        "Failure": {"type": "object", "required": ["person_id", "reason", "at"], "properties": {
            "person_id": id, "reason": {"type": "string"}, "at": timestamp}},
        "FailurePage": page_of("Failure", "failures", "next_after"),
        "Suppression": {"type": "object", "required": ["email", "reason", "at"], "properties": {
            "email": {"type": "string"}, "reason": {"type": "string"}, "at": timestamp}},
        "SuppressionPage": {"type": "object", "required": ["suppressions", "next_after"], "properties": {
            "suppressions": {"type": "array", "items": schema_ref("Suppression")},
            "next_after": {"type": ["string", "null"]}}},
        "BlastFeedback": {"type": "object", "required": ["blast_id", "bounced", "transient_bounced", "complained", "delivered", "rejected"], "properties": {
            "blast_id": id,
            "bounced": {"type": "integer", "description": "recipients with a permanent bounce"},
            "transient_bounced": {"type": "integer", "description": "recipients with a transient or undetermined bounce"},
            "complained": {"type": "integer"}, "delivered": {"type": "integer"}, "rejected": {"type": "integer"}}},
        "FeedbackIngested": {"type": "object", "required": ["id", "kind", "duplicate", "state"], "properties": {
            "id": id, "kind": {"type": "string", "examples": ["dsn"]},
            "duplicate": {"type": "boolean", "description": "already processed: nothing changed"},
            "state": {"type": "string", "enum": ["received", "processed", "rejected"]},
            "applied": {"type": ["object", "null"], "properties": {
                "recorded": {"type": "integer"}, "duplicates": {"type": "integer"}, "consent_changed": {"type": "integer"},
                "suppressed": {"type": "integer"}, "matched_blast": {"type": "integer"}}},
            "note": {"type": ["string", "null"]}}},
        "TurnoutSummary": {"type": "object", "required": ["universe", "voted", "precincts", "polling_places"], "properties": {
            "universe": {"type": "integer"}, "voted": {"type": "integer"},
            "precincts": {"type": "array", "items": schema_ref("PrecinctTurnout")},
            "polling_places": {"type": "array", "items": schema_ref("PollingPlace")}}}
    });
    if let Some(o) = all.as_object_mut() {
        o.extend(crate::turnout::schemas());
        o.extend(crate::donations::schemas());
    }
    all
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

    /// Every `$ref` in `v` names a schema that exists.
    fn refs_resolve(v: &Value, schemas: &Value) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    let name = r.strip_prefix("#/components/schemas/").unwrap_or(r);
                    assert!(schemas[name].is_object(), "dangling $ref {r}");
                }
                m.values().for_each(|x| refs_resolve(x, schemas));
            }
            Value::Array(a) => a.iter().for_each(|x| refs_resolve(x, schemas)),
            _ => {}
        }
    }

    #[test]
    fn bodies_name_schemas_that_exist() {
        let text = openapi().to_string();
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let schemas = &doc["components"]["schemas"];
        for r in ROUTES {
            let op = &doc["paths"][r.path][r.method.to_lowercase()];
            match r.body {
                Body::Json(name) => {
                    assert!(
                        schemas[name].is_object(),
                        "{} {}: no schema {name}",
                        r.method,
                        r.path
                    );
                    assert_eq!(
                        op["requestBody"]["content"]["application/json"]["schema"]["$ref"],
                        format!("#/components/schemas/{name}")
                    );
                }
                Body::Raw => {
                    assert!(op["requestBody"]["content"]["application/octet-stream"].is_object())
                }
                Body::None => assert!(op.get("requestBody").is_none()),
            }
            if let Some(name) = r.response {
                assert!(
                    schemas[name].is_object(),
                    "{} {}: no schema {name}",
                    r.method,
                    r.path
                );
            }
            // Every write with a JSON body must say so; GETs never take one.
            if r.method == "GET" {
                assert_eq!(r.body, Body::None, "{}", r.path);
            }
        }
        refs_resolve(&doc, schemas);
    }

    /// An object made of each property's first example.
    fn example_of(name: &str) -> Value {
        let s = &schemas()[name];
        let mut o = Map::new();
        for (k, p) in s["properties"].as_object().into_iter().flatten() {
            let ex = p["examples"][0].clone();
            assert!(!p["examples"].is_null(), "{name}.{k} has an example");
            o.insert(k.clone(), ex);
        }
        Value::Object(o)
    }

    #[test]
    fn request_schemas_match_the_rust_types() {
        // Every documented property is accepted (the types deny unknown fields)...
        let d: narwhal_domain::PersonDraft =
            serde_json::from_value(example_of("PersonDraft")).unwrap();
        assert_eq!(d.emails.len(), 1);
        assert!(d.address.is_some());
        let p: narwhal_people::PersonPatch =
            serde_json::from_value(example_of("PersonPatch")).unwrap();
        assert_eq!(p.remove_tags.len(), 1);
        serde_json::from_value::<crate::auth::LoginBody>(example_of("Login")).unwrap();
        serde_json::from_value::<crate::lists::NewList>(example_of("NewList")).unwrap();
        serde_json::from_value::<crate::lists::Members>(example_of("Members")).unwrap();
        serde_json::from_value::<crate::people::MergeBody>(example_of("MergeRequest")).unwrap();
        serde_json::from_value::<crate::imports::NewImport>(example_of("NewImport")).unwrap();
        serde_json::from_value::<crate::blasts::NewBlastBody>(example_of("NewBlast")).unwrap();
        serde_json::from_value::<crate::blasts::PreviewBody>(example_of("PreviewRequest")).unwrap();
        serde_json::from_value::<crate::blasts::ScheduleBody>(example_of("ScheduleRequest"))
            .unwrap();
        serde_json::from_value::<crate::turnout::WatcherLogin>(example_of("WatcherLogin")).unwrap();
        let b: crate::turnout::ReportBatch =
            serde_json::from_value(example_of("ReportBatch")).unwrap();
        assert_eq!(b.reports.len(), 1);
        serde_json::from_value::<narwhal_turnout::ReportItem>(example_of("ReportItem")).unwrap();
        // ...and every property a draft has is documented.
        let props = schemas()["PersonDraft"]["properties"].clone();
        let full = serde_json::to_value(&d).unwrap();
        for k in full.as_object().unwrap().keys() {
            assert!(props.get(k).is_some(), "PersonDraft.{k} is not documented");
        }
        assert_eq!(
            full.as_object().unwrap().len(),
            props.as_object().unwrap().len()
        );
        // The filter language's example is a real filter, and each branch is listed.
        let f = &schemas()["SegmentFilter"];
        narwhal_domain::SegmentFilter::parse(&f["examples"][0]).unwrap();
        for key in [
            "all", "any", "not", "tag", "state", "county", "precinct", "zip", "in_list", "consent",
            "field",
        ] {
            assert!(
                f["oneOf"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|b| b["required"][0] == key),
                "SegmentFilter branch {key}"
            );
        }
        for word in ["has_email", "has_phone", "has_voter_id"] {
            narwhal_domain::SegmentFilter::parse(&json!(word)).unwrap();
        }
    }
}
