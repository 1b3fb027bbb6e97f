//! The OpenAPI document says exactly what the API answers. Handlers document their
//! own successes and the errors particular to them; this finishes the document
//! with what every operation may answer because of the layers in front of it
//! (authentication, rate limits, bodies, paths, idempotency), every error as
//! `application/problem+json` with the [`Problem`](super::problem::Problem)
//! schema, and hides what only tests use.

use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{AdditionalProperties, ArrayItems, Object, ObjectBuilder, Schema, Type};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Required};

use crate::rules;

const PROBLEM: &str = "application/problem+json";

/// What each status a layer adds means.
fn describe(status: &str) -> &'static str {
    match status {
        "400" => "Malformed request: a body that is not JSON, or cannot be read",
        "401" => "Missing, malformed or failed credentials",
        "403" => "Valid credentials of another scope",
        "404" => "No such resource, or not the caller's",
        "409" => "Conflicts with the current state (an Idempotency-Key in use, a quota, a taken name)",
        "413" => "Request body too large",
        "415" => "The body is not application/json",
        "422" => "A value, a query or an Idempotency-Key is invalid (the field is named)",
        "429" => "Rate limited; see Retry-After",
        _ => "Error",
    }
}

fn problem_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(PROBLEM, Content::new(Some(Ref::from_schema_name("Problem"))))
        .build()
}

/// Finishes the document (see the module's doc). `test_clock`: whether admin runs
/// with `--test-clock` (its endpoint is documented only then).
pub fn finish(doc: &mut OpenApi, test_clock: bool) {
    if !test_clock {
        doc.paths.paths.remove("/v1/test/clock");
    }
    shapes(doc);
    for (path, item) in doc.paths.paths.iter_mut() {
        let has_path_params = path.contains('{');
        let ops = [
            (&mut item.get, false),
            (&mut item.head, false),
            (&mut item.post, true),
            // PUT (an upload) is idempotent by nature and takes no Idempotency-Key.
            (&mut item.put, false),
            (&mut item.patch, true),
            (&mut item.delete, true),
        ];
        for (op, mutating) in ops {
            if let Some(op) = op {
                finish_operation(op, has_path_params, mutating);
            }
        }
    }
}

fn finish_operation(op: &mut Operation, has_path_params: bool, mutating: bool) {
    let authenticated = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let has_query =
        op.parameters.iter().flatten().any(|p| matches!(p, RefOr::T(p) if p.parameter_in == ParameterIn::Query));
    let body = op.request_body.as_ref().and_then(|b| match b {
        RefOr::T(b) => Some(b.content.keys().cloned().collect::<Vec<_>>()),
        RefOr::Ref(_) => None,
    });
    let json_body = body.as_ref().is_some_and(|types| types.iter().any(|t| t.contains("json")));
    let mut statuses = vec!["429"];
    if authenticated {
        statuses.extend(["401", "403"]);
    }
    if has_path_params {
        statuses.push("404");
    }
    if has_query {
        statuses.push("422");
    }
    if json_body {
        statuses.extend(["400", "413", "415", "422"]);
    } else if body.is_some() {
        statuses.extend(["400", "413"]);
    }
    if mutating {
        // Idempotency-Key: in use or reused with another body (409), invalid (422).
        statuses.extend(["409", "422"]);
        add_idempotency_key(op);
    }
    for status in statuses {
        op.responses.responses.entry(status.to_owned()).or_insert_with(|| RefOr::T(problem_response(describe(status))));
    }
    // Every error is a problem, whatever the handler's annotation said.
    for (status, response) in op.responses.responses.iter_mut() {
        if status.as_str() >= "400"
            && let RefOr::T(r) = response
        {
            r.content.clear();
            r.content.insert(PROBLEM.to_owned(), RefOr::T(Content::new(Some(Ref::from_schema_name("Problem")))));
        }
    }
}

fn add_idempotency_key(op: &mut Operation) {
    let schema = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(255))
        .pattern(Some("^[!-~]+$"))
        .build();
    let param = ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "Makes the request safe to retry: the same key, path and body answer the saved response \
             (`Idempotent-Replayed: true`) for a day; another request with the key is a 409 \
             (idempotency-key-reused), a key that is not 1 to 255 visible ASCII characters a 422. \
             An answer that showed a secret is not replayed (409 secret-not-replayed).",
        ))
        .schema(Some(schema))
        .build();
    op.parameters.get_or_insert_with(Vec::new).push(RefOr::T(param));
}

/// A string schema's shape, as [`rules`] has it.
#[derive(Clone, Copy)]
struct Shape {
    pattern: &'static str,
    max_length: Option<usize>,
}

fn shape(pattern: &'static str) -> Shape {
    Shape { pattern, max_length: None }
}

fn set_shape(s: &mut Object, sh: Shape) {
    s.pattern = Some(sh.pattern.to_owned());
    if sh.max_length.is_some() {
        s.max_length = sh.max_length;
    }
}

/// The string (or array of strings) schema of `property` in component `schema`.
fn property<'a>(doc: &'a mut OpenApi, schema: &str, property: &str) -> Option<&'a mut Schema> {
    let components = doc.components.as_mut()?;
    match components.schemas.get_mut(schema)? {
        RefOr::T(Schema::Object(o)) => match o.properties.get_mut(property)? {
            RefOr::T(s) => Some(s),
            RefOr::Ref(_) => None,
        },
        _ => None,
    }
}

fn string_schema(s: &mut Schema) -> Option<&mut Object> {
    match s {
        Schema::Object(o) => Some(o),
        Schema::Array(a) => match &mut a.items {
            ArrayItems::RefOrSchema(item) => match item.as_mut() {
                RefOr::T(Schema::Object(o)) => Some(o),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// Puts the validators' patterns on the fields and parameters they check.
fn shapes(doc: &mut OpenApi) {
    let email = Shape { pattern: &rules::EMAIL, max_length: Some(rules::EMAIL_MAX) };
    let fields: [(&str, &str, Shape); 26] = [
        (
            "CreateCustomer",
            "name",
            Shape { pattern: &rules::CUSTOMER_NAME, max_length: Some(rules::CUSTOMER_NAME_MAX) },
        ),
        ("CreateCustomer", "email", email),
        ("CreateAccount", "name", shape(rules::ACCOUNT_NAME)),
        ("CreateAccount", "origin_type", shape(rules::ORIGIN_TYPE)),
        ("CreateAccount", "ip_allow", shape(&rules::IP_NETWORK)),
        ("CreateAccount", "allow_origins", shape(&rules::WEB_ORIGIN)),
        ("UpdateAccount", "ip_allow", shape(&rules::IP_NETWORK)),
        ("UpdateAccount", "allow_origins", shape(&rules::WEB_ORIGIN)),
        ("CreateOriginType", "name", shape(rules::ORIGIN_TYPE)),
        ("CreateImage", "version", shape(rules::IMAGE_VERSION)),
        ("CreateImage", "command", Shape { pattern: &rules::COMMAND, max_length: Some(rules::COMMAND_MAX) }),
        ("CreateImage", "args", shape(rules::NO_NUL)),
        ("RouterSightings", "router", shape(rules::ZONE)),
        ("SignPlaybackUrl", "path", Shape { pattern: &rules::ASSET_FILE, max_length: Some(rules::FILE_PATH_MAX) }),
        ("SignPlaybackUrl", "client_ip", shape(&rules::IP_ADDRESS)),
        ("SetCustomDomain", "domain", Shape { pattern: rules::DOMAIN, max_length: Some(rules::DOMAIN_MAX) }),
        ("CreateImage", "container_image", Shape { pattern: rules::CONTAINER_IMAGE, max_length: Some(255) }),
        ("UpdateTarget", "zone", shape(rules::ZONE)),
        ("UpdateTarget", "region", shape(rules::ZONE)),
        ("NodeSettings", "node_admin_url", shape(&rules::WEB_ORIGIN)),
        ("NodeSettings", "node_listen", shape(&rules::LISTEN_ADDRESS)),
        ("NodeSettings", "trusted_proxies", shape(&rules::IP_NETWORK)),
        ("KubernetesSettings", "namespace", shape(rules::TARGET_NAME)),
        ("KubernetesSettings", "image", Shape { pattern: rules::CONTAINER_IMAGE, max_length: Some(255) }),
        ("KubernetesSettings", "env_from_secret", shape(rules::TARGET_NAME)),
        ("KubernetesSettings", "kubeconfig", Shape { pattern: rules::ABSOLUTE_PATH, max_length: Some(4096) }),
    ];
    for (schema, field, sh) in fields {
        if let Some(o) = property(doc, schema, field).and_then(string_schema) {
            set_shape(o, sh);
        }
    }
    // warm_pools' sizes: keys 1 to 64, counts 0 to 16.
    if let Some(RefOr::T(Schema::OneOf(one))) = doc.components.as_mut().and_then(|c| c.schemas.get_mut("WarmPools")) {
        for item in &mut one.items {
            if let RefOr::T(Schema::Object(o)) = item
                && o.additional_properties.is_some()
            {
                o.property_names = Some(Box::new(Schema::Object(
                    ObjectBuilder::new().schema_type(Type::String).pattern(Some(rules::WARM_POOL_SIZE)).build(),
                )));
                o.additional_properties = Some(Box::new(AdditionalProperties::RefOr(RefOr::T(Schema::Object(
                    ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)).maximum(Some(16)).build(),
                )))));
            }
        }
    }
    // An offer's variants take no other fields (serde's deny_unknown_fields on a
    // tagged enum, which utoipa leaves open).
    if let Some(RefOr::T(Schema::OneOf(one))) = doc.components.as_mut().and_then(|c| c.schemas.get_mut("OfferBody")) {
        for item in &mut one.items {
            if let RefOr::T(Schema::Object(o)) = item {
                o.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
        }
    }
    // A new target's variants: no other fields, and the name and labels' patterns.
    if let Some(RefOr::T(Schema::OneOf(one))) = doc.components.as_mut().and_then(|c| c.schemas.get_mut("CreateTarget"))
    {
        for item in &mut one.items {
            if let RefOr::T(Schema::Object(o)) = item {
                o.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
                for (field, pattern) in [("name", rules::TARGET_NAME), ("zone", rules::ZONE), ("region", rules::ZONE)] {
                    if let Some(RefOr::T(Schema::Object(p))) = o.properties.get_mut(field) {
                        set_shape(p, shape(pattern));
                    }
                }
            }
        }
    }
    // Path parameters of uploads.
    let file = Shape { pattern: &rules::FILE_PATH, max_length: Some(rules::FILE_PATH_MAX) };
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.contains("/assets/{asset}") {
            continue;
        }
        for op in [&mut item.put, &mut item.delete].into_iter().flatten() {
            for p in op.parameters.iter_mut().flatten() {
                let RefOr::T(p) = p else { continue };
                let sh = match p.name.as_str() {
                    "asset" => shape(&rules::ASSET),
                    "path" => file,
                    _ => continue,
                };
                if let Some(RefOr::T(Schema::Object(o))) = p.schema.as_mut() {
                    set_shape(o, sh);
                }
            }
        }
    }
}
